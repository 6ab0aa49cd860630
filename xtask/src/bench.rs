//! `cargo xtask bench`: measures and reports, never asserts. Every benchmark adds named
//! numbers to `target/bench/report.json` (one flat object) and a line to `report.md`.
//! Metric names are stable once published.

use crate::{build, cargo, setup};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use taproot_testbed::bochs::Bochs;
use taproot_testbed::console::field;
use taproot_testbed::paths::{self, Profile};
use taproot_testbed::qemu::Qemu;

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Report {
    metrics: BTreeMap<String, f64>,
    lines: Vec<String>,
}

impl Report {
    fn add(&mut self, name: &str, value: f64) {
        self.metrics.insert(name.to_string(), value);
    }

    fn line(&mut self, text: String) {
        eprintln!("bench: {text}");
        self.lines.push(text);
    }

    fn write(&self) -> Result<(), String> {
        let dir = paths::workspace_root().join("target").join("bench");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let json = serde_json::to_string_pretty(&self.metrics).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("report.json"), json + "\n").map_err(|e| e.to_string())?;
        let mut md = String::from("# Taproot benchmarks\n\n");
        for line in &self.lines {
            md.push_str("- ");
            md.push_str(line);
            md.push('\n');
        }
        std::fs::write(dir.join("report.md"), md).map_err(|e| e.to_string())?;
        eprintln!("bench: wrote {} and report.md", dir.join("report.json").display());
        Ok(())
    }
}

pub fn run() -> Result<(), String> {
    setup::ensure_target()?;
    setup::ensure_packages(setup::Need::All)?;
    let mut report = Report::default();
    let result = mmu(&mut report)
        .and_then(|()| boot(&mut report))
        .and_then(|()| interrupts(&mut report))
        .and_then(|()| api(&mut report))
        .and_then(|()| abuse(&mut report));
    report.write()?;
    result
}

/// The host MMU benchmark binary prints one flat JSON object of metrics.
fn mmu(report: &mut Report) -> Result<(), String> {
    let output = cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "hypervisor",
            "--features",
            "std",
            "--bin",
            "mmu-bench",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run mmu-bench: {e}"))?;
    if !output.status.success() {
        return Err(format!("mmu-bench failed ({})", output.status));
    }
    let metrics: BTreeMap<String, f64> = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("mmu-bench printed no flat JSON object of numbers: {e}"))?;
    let summary: Vec<String> = metrics.iter().map(|(k, v)| format!("{k}={v:.3}")).collect();
    report.line(format!("MMU (host, native): {}", summary.join(", ")));
    for (name, value) in metrics {
        report.add(&name, value);
    }
    Ok(())
}

/// Image size, and boot to banner: wall time under QEMU TCG, instructions under QEMU
/// `-icount` and Bochs (the image logs the TSC at the banner; both emulators tie the TSC to
/// instructions there).
fn boot(report: &mut Report) -> Result<(), String> {
    let elf = build::elf(Profile::Release)?;
    let bytes = std::fs::metadata(&elf).map_err(|e| e.to_string())?.len();
    let loaded = loaded_bytes(&std::fs::read(&elf).map_err(|e| e.to_string())?)
        .ok_or("cannot read the image's program headers")?;
    report.add("boot.image_file_bytes", bytes as f64);
    report.add("boot.image_loaded_bytes", loaded as f64);
    report.line(format!("image: {bytes} bytes on disk (with symbols), {loaded} bytes loaded"));

    let mut console = Qemu::kernel(&elf, "exit=1").spawn().map_err(|e| e.to_string())?;
    console.wait_for("taproot: ready", BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    let tcg_ms = console.elapsed().as_secs_f64() * 1000.0;
    drop(console);
    report.add("boot.qemu_tcg_wall_ms", tcg_ms);

    // One run per emulator counts everything in instructions: QEMU with `-icount shift=0`
    // (guest time in ns = instructions) and Bochs (TSC ticks = instructions at ips=50M).
    let mut qemu = Qemu::kernel(&elf, GUEST_BENCH_CMDLINE);
    qemu.icount = true;
    let mut console = qemu.spawn().map_err(|e| e.to_string())?;
    let svm = measure(&mut console)?;
    drop(console);
    report.add("boot.qemu_icount_instructions", svm.banner_tsc);
    report.line(format!(
        "boot to banner, QEMU TCG: {tcg_ms:.0} ms wall; {:.0} instructions under -icount shift=0",
        svm.banner_tsc
    ));

    let iso = paths::workspace_root().join("target/testbed/bench-boot.iso");
    taproot_testbed::iso::make(&elf, GUEST_BENCH_CMDLINE, &iso)?;
    let mut console = Bochs::new(&iso).spawn("bench-bochs").map_err(|e| e.to_string())?;
    let vmx = measure(&mut console)?;
    let bochs_ms = console.elapsed().as_secs_f64() * 1000.0;
    drop(console);
    report.add("boot.bochs_ticks", vmx.banner_tsc);
    report.line(format!(
        "boot to banner, Bochs (BIOS + GRUB + Taproot): {:.0} emulated ticks (1 tick = 1 instruction at ips=50M); whole run {bochs_ms:.0} ms wall",
        vmx.banner_tsc
    ));

    for (kind, svm_value, vmx_value) in [
        ("cpuid", svm.cpuid, vmx.cpuid),
        ("hypercall", svm.hypercall, vmx.hypercall),
        ("pio", svm.pio, vmx.pio),
    ] {
        report.add(&format!("exit.svm_{kind}_instructions"), svm_value);
        report.add(&format!("exit.vmx_{kind}_ticks"), vmx_value);
    }
    report.add("exit.vmx_over_svm_cpuid", vmx.cpuid / svm.cpuid);
    report.line(format!(
        "exit round trips (guest exit + Taproot's handling + re-entry): CPUID {:.0} instructions under SVM (QEMU -icount), {:.0} ticks under VMX (Bochs), ratio {:.2}; hypercall {:.0} / {:.0}; port read {:.0} / {:.0}",
        svm.cpuid, vmx.cpuid, vmx.cpuid / svm.cpuid, svm.hypercall, vmx.hypercall, svm.pio, vmx.pio
    ));
    report.add("irq.eoi_xapic_mmio_svm_instructions", svm.eoi_xapic_mmio);
    report.add("irq.eoi_xapic_mmio_vmx_ticks", vmx.eoi_xapic_mmio);
    report.line(format!(
        "LAPIC EOI through the xAPIC page (nested page fault, fetch, decode, emulate, re-entry): {:.0} instructions under SVM (QEMU -icount), {:.0} ticks under VMX (Bochs); {:.2} and {:.2} port reads",
        svm.eoi_xapic_mmio,
        vmx.eoi_xapic_mmio,
        svm.eoi_xapic_mmio / svm.pio,
        vmx.eoi_xapic_mmio / vmx.pio
    ));
    for (backend, unit, numbers) in [("svm", "instructions", &svm), ("vmx", "ticks", &vmx)] {
        report.add(&format!("isolation.ibpb_offered_{backend}"), numbers.ibpb.is_some() as u8 as f64);
        if let Some(cost) = numbers.ibpb {
            report.add(&format!("isolation.ibpb_{backend}_{unit}"), cost);
        }
    }
    let describe = |cost: Option<f64>, unit: &str| match cost {
        Some(cost) => format!("{cost:.0} {unit} per barrier"),
        None => "not offered by the emulated CPU, so never issued".to_string(),
    };
    report.line(format!(
        "IBPB between VMs on one CPU: SVM (QEMU -icount) {}; VMX (Bochs) {}",
        describe(svm.ibpb, "instructions"),
        describe(vmx.ibpb, "ticks")
    ));
    report.add("guest.hello_start_to_console_svm_instructions", svm.hello_to_console);
    report.add("guest.hello_start_to_console_vmx_ticks", vmx.hello_to_console);
    report.line(format!(
        "hello, VM start to first console byte: {:.0} instructions (SVM, QEMU -icount), {:.0} ticks (VMX, Bochs)",
        svm.hello_to_console, vmx.hello_to_console
    ));
    Ok(())
}

/// The `apic` guest's `bench` on 2 vCPUs: interrupt latency, IPI round trip, x2APIC EOI.
const APIC_BENCH_CMDLINE: &str = "exit=1 guest=apic guest.test=bench vcpus=2 mem=16";

/// The `apic` guest's `running`: TSC-deadline expiries while the vCPU spins with IF=1.
const APIC_RUNNING_CMDLINE: &str = "exit=1 guest=apic guest.test=running mem=16";

/// Interrupt delivery in instructions, under QEMU `-icount` (SVM) and Bochs (VMX): a
/// TSC-deadline expiry to the guest's handler with the vCPU halted and with it running
/// (spinning, no exit of its own: the host's timer must interrupt it at the deadline), an
/// IPI round trip between two vCPUs (each halted until its IPI comes), and an x2APIC EOI
/// (a WRMSR exit).
fn interrupts(report: &mut Report) -> Result<(), String> {
    let (svm, vmx) = svm_and_vmx(APIC_BENCH_CMDLINE, "bench-apic", apic_numbers)?;
    for (i, name) in ["irq_latency", "ipi_round_trip", "eoi"].into_iter().enumerate() {
        report.add(&format!("irq.svm_{name}_instructions"), svm[i]);
        report.add(&format!("irq.vmx_{name}_ticks"), vmx[i]);
    }
    let (svm_running, vmx_running) =
        svm_and_vmx(APIC_RUNNING_CMDLINE, "bench-apic-running", running_latency)?;
    report.add("irq.timer_running_latency_svm_instructions", svm_running);
    report.add("irq.timer_running_latency_vmx_ticks", vmx_running);
    report.line(format!(
        "interrupts (SVM instructions under QEMU -icount / VMX Bochs ticks): timer expiry to handler, halted {:.0} / {:.0}, running {svm_running:.0} / {vmx_running:.0}; IPI round trip {:.0} / {:.0}; x2APIC EOI {:.0} / {:.0}",
        svm[0], vmx[0], svm[1], vmx[1], svm[2], vmx[2]
    ));
    Ok(())
}

/// Runs the release image with `cmdline` under QEMU `-icount` (SVM) and then Bochs (VMX,
/// from `target/testbed/<iso>.iso`) and reads each console with `read`.
fn svm_and_vmx<T>(
    cmdline: &str,
    iso: &str,
    read: fn(&mut taproot_testbed::Console) -> Result<T, String>,
) -> Result<(T, T), String> {
    let elf = build::elf(Profile::Release)?;
    let mut qemu = Qemu::kernel(&elf, cmdline);
    qemu.icount = true;
    let mut console = qemu.spawn().map_err(|e| e.to_string())?;
    let svm = read(&mut console)?;
    drop(console);
    let iso_path = paths::workspace_root().join(format!("target/testbed/{iso}.iso"));
    taproot_testbed::iso::make(&elf, cmdline, &iso_path)?;
    let mut console = Bochs::new(&iso_path).spawn(iso).map_err(|e| e.to_string())?;
    let vmx = read(&mut console)?;
    Ok((svm, vmx))
}

/// The mean latency from the `apic` guest's `running` line.
fn running_latency(console: &mut taproot_testbed::Console) -> Result<f64, String> {
    let line = console.wait_for("apic: running: latency ", BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    field(&line, "mean").and_then(|v| v.parse().ok()).ok_or_else(|| format!("no mean= in {line:?}"))
}

/// `[irq_latency, ipi_round_trip, eoi]` from the `apic` guest's bench line.
fn apic_numbers(console: &mut taproot_testbed::Console) -> Result<[f64; 3], String> {
    let line = console.wait_for("apic: bench ", BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    let number = |key: &str| {
        field(&line, key).and_then(|v| v.parse().ok()).ok_or_else(|| format!("no {key}= in {line:?}"))
    };
    Ok([number("irq_latency")?, number("ipi_round_trip")?, number("eoi")?])
}

/// `hello` then `exitbench`, printing TSC deltas even where the TSC is not invariant.
const GUEST_BENCH_CMDLINE: &str = "exit=1 guest=hello,exitbench guest.tsc=1 guest.iters=2000";

struct GuestNumbers {
    banner_tsc: f64,
    hello_to_console: f64,
    cpuid: f64,
    hypercall: f64,
    pio: f64,
    eoi_xapic_mmio: f64,
    /// TSC ticks per IBPB, as the image timed it at start-up; `None` where the CPU does not
    /// offer IBPB (the image then issues none).
    ibpb: Option<f64>,
}

fn measure(console: &mut taproot_testbed::Console) -> Result<GuestNumbers, String> {
    let banner = console.wait_for("boot: banner at tsc=", BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    let hello = console.wait_for("taproot: vm 1 exited", BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    let mut per_exit = |kind: &str| -> Result<f64, String> {
        let line = console
            .wait_for(&format!("exitbench: {kind} exits="), BOOT_TIMEOUT)
            .map_err(|e| e.to_string())?;
        field(&line, "tsc_per_exit")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no tsc_per_exit in {line:?}"))
    };
    let (cpuid, hypercall, pio) = (per_exit("cpuid")?, per_exit("hypercall")?, per_exit("pio_in")?);
    let eoi_xapic_mmio = per_exit("eoi_xapic_mmio")?;
    let hello_to_console = hello
        .split("\"start_to_first_console_ns\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<f64>().ok())
        .ok_or_else(|| format!("no start_to_first_console_ns in {hello:?}"))?;
    let ibpb = console
        .transcript()
        .lines()
        .find(|l| l.contains("isolation: ibpb offered="))
        .ok_or("no `isolation: ibpb` line once virtualization was on")?;
    let ibpb = field(ibpb, "tsc_per_barrier").and_then(|v| v.parse().ok());
    Ok(GuestNumbers {
        banner_tsc: tsc_of(&banner)?,
        hello_to_console,
        cpuid,
        hypercall,
        pio,
        eoi_xapic_mmio,
        ibpb,
    })
}

/// The control plane under QEMU TCG: image upload throughput and request latency, seen
/// from the host through QEMU's user network (which is part of what is measured).
fn api(report: &mut Report) -> Result<(), String> {
    use taproot_testbed::api::{Client, free_port};
    let elf = build::elf(Profile::Release)?;
    let port = free_port().map_err(|e| e.to_string())?;
    let mut qemu = Qemu::kernel(&elf, "ip=10.0.2.15/24 gw=10.0.2.2 token=bench");
    qemu.api_port = Some(port);
    qemu.memory_mib = 1024;
    let mut console = qemu.spawn().map_err(|e| e.to_string())?;
    console.wait_for("taproot: api listening", BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    let client = Client::new(port, "bench");
    let expect = |r: std::io::Result<taproot_testbed::api::Response>| match r {
        Ok(r) if r.status < 300 => Ok(r),
        Ok(r) => Err(format!("{} {}", r.status, r.text())),
        Err(e) => Err(e.to_string()),
    };
    expect(client.put("/v1/vms/bench", br#"{"vcpus": 1, "memory_mib": 64}"#))?;
    // A flat image is accepted whole (entered in real mode at its load address): 16 MiB.
    const UPLOAD_BYTES: usize = 16 << 20;
    let image = vec![0xF4u8; UPLOAD_BYTES];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        expect(client.put("/v1/vms/bench/image?format=flat&load=0x10000", &image))?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    let mb_per_s = UPLOAD_BYTES as f64 / (1 << 20) as f64 / best;
    let mut latencies: Vec<f64> = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        expect(client.get("/v1/info"))?;
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    report.add("api.image_upload_mb_per_s", mb_per_s);
    report.add("api.request_latency_p50_ms", p50);
    report.add("api.request_latency_p99_ms", p99);
    report.line(format!(
        "API under QEMU TCG (user network, one connection per request): image upload {mb_per_s:.1} MB/s (16 MiB, best of 3); GET /v1/info latency p50 {p50:.2} ms, p99 {p99:.2} ms over 200 requests"
    ));
    Ok(())
}

/// How long the abuse run lasts: fixed, so that its counts compare between runs.
const ABUSE_SECS: u64 = 30;

/// The abuse run of issue 12 (`taproot_testbed::abuse`) for [`ABUSE_SECS`] on 2 CPUs:
/// requests sent, the operator's p99, and what did not come back afterwards (both must
/// be 0; the end-to-end tests assert it, the bench reports it).
fn abuse(report: &mut Report) -> Result<(), String> {
    use taproot_testbed::abuse::Abuse;
    use taproot_testbed::api::{Client, free_port};
    let elf = build::elf(Profile::Release)?;
    let hello_path = paths::workspace_root().join("target/x86_64-unknown-none/release/hello");
    let hello = std::fs::read(&hello_path).map_err(|e| format!("{}: {e}", hello_path.display()))?;
    let port = free_port().map_err(|e| e.to_string())?;
    let mut qemu = Qemu::kernel(&elf, "ip=10.0.2.15/24 gw=10.0.2.2 token=bench");
    qemu.api_port = Some(port);
    qemu.memory_mib = 1024;
    let mut console = qemu.spawn().map_err(|e| e.to_string())?;
    console.wait_for("taproot: api listening", BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    let client = Client::new(port, "bench");
    let run = Abuse { duration: Duration::from_secs(ABUSE_SECS), spinner_vcpus: None, hello };
    let abuse = run.run(&client, &mut console)?;
    let p99 = abuse.operator_quantile_ms(0.99);
    report.add("api.abuse_requests_total", abuse.requests_total as f64);
    report.add("api.abuse_operator_p99_ms", p99);
    report.add("api.leaked_frames", abuse.leaked_frames as f64);
    report.add("api.leaked_sockets", abuse.leaked_sockets as f64);
    report.line(format!(
        "API under abuse ({ABUSE_SECS} s, QEMU TCG, 2 CPUs; 64 unauthenticated idle/trickling connections, cut uploads, garbage, VM and slot floods): {} requests, operator {} rounds with p99 {p99:.0} ms; afterwards {} frames and {} sockets not returned",
        abuse.requests_total, abuse.operator_rounds, abuse.leaked_frames, abuse.leaked_sockets
    ));
    Ok(())
}

fn tsc_of(line: &str) -> Result<f64, String> {
    field(line, "tsc").and_then(|v| v.parse::<f64>().ok()).ok_or_else(|| format!("no tsc= in {line:?}"))
}

/// Sum of the memory sizes of an ELF64's PT_LOAD segments.
fn loaded_bytes(elf: &[u8]) -> Option<u64> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    if elf.get(0..4)? != b"\x7fELF" || *elf.get(4)? != 2 {
        return None;
    }
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    let mut total = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        const PT_LOAD: u32 = 1;
        if u32_at(ph)? == PT_LOAD {
            total += u64_at(ph + 0x28)?;
        }
    }
    Some(total)
}
