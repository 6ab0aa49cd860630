//! `cargo xtask run`: boot the image with its serial console on this terminal, its API on
//! `127.0.0.1:<port>`, and launch the demo guest through the API like a user would.

use crate::{build, setup};
use std::time::{Duration, Instant};
use taproot_testbed::api::{Client, free_port};
use taproot_testbed::bochs::Bochs;
use taproot_testbed::console::field;
use taproot_testbed::paths::{self, Profile};
use taproot_testbed::qemu::{Accel, Qemu};

pub struct Options {
    pub profile: Profile,
    pub accel: String,
    pub bochs: bool,
    pub cpus: u32,
    pub memory_mib: u32,
    pub cmdline: String,
    /// The demo guest: a guest-images ELF launched through the API, or `none`.
    pub guest: String,
    pub api_port: u16,
}

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// The guests `guest-images/` builds, which the API can load.
const API_GUESTS: [&str; 11] = [
    "hello",
    "memtouch",
    "roots",
    "tlbprobe",
    "exitbench",
    "cpuid",
    "xmmiso",
    "guardrails",
    "platform",
    "mmio",
    "apic",
];

pub fn run(opts: Options) -> Result<(), String> {
    setup::ensure_target()?;
    if opts.bochs {
        // Bochs has no virtio-net: the image launches the guest from its command line.
        setup::ensure_packages(setup::Need::All)?;
        let cmdline = match opts.guest.as_str() {
            "none" => opts.cmdline.clone(),
            guest => format!("guest={guest} {}", opts.cmdline),
        };
        let built = build::image(opts.profile, &cmdline)?;
        let mut bochs = Bochs::new(&built.iso);
        bochs.cpus = opts.cpus;
        bochs.memory_mib = opts.memory_mib;
        eprintln!("xtask: booting {} in Bochs ({}); Ctrl-C ends it", built.iso.display(), bochs.cpu_model);
        let mut console = bochs.spawn("run-bochs").map_err(|e| e.to_string())?;
        console.follow(|line| println!("{line}"));
        return Ok(());
    }
    setup::ensure_packages(setup::Need::Qemu)?;
    let accel = match opts.accel.as_str() {
        "auto" => match Accel::kvm_status() {
            Ok(()) => Accel::Kvm,
            Err(why) => {
                eprintln!("xtask: not using KVM: {why}; emulating with TCG (SVM), which is slower");
                Accel::Tcg
            }
        },
        "kvm" => {
            if let Err(why) = Accel::kvm_status() {
                eprintln!("xtask: warning: {why}; booting under KVM anyway, as asked");
            }
            Accel::Kvm
        }
        "tcg" => Accel::Tcg,
        other => return Err(format!("unknown accelerator {other:?}: use kvm, tcg or auto")),
    };
    let elf = build::elf(opts.profile)?;
    let port = if std::net::TcpListener::bind(("127.0.0.1", opts.api_port)).is_ok() {
        opts.api_port
    } else {
        let other = free_port().map_err(|e| e.to_string())?;
        eprintln!("xtask: 127.0.0.1:{} is taken; the API is forwarded to port {other}", opts.api_port);
        other
    };
    let via_api = API_GUESTS.contains(&opts.guest.as_str());
    let mut cmdline = format!("ip=10.0.2.15/24 gw=10.0.2.2 {}", opts.cmdline);
    if !via_api && opts.guest != "none" {
        // Built-in guests (hello16, triplefault, ...) live in the image: launch them there.
        cmdline = format!("guest={} {cmdline}", opts.guest);
    }
    let mut qemu = Qemu::kernel(&elf, &cmdline);
    qemu.accel = accel;
    qemu.cpus = opts.cpus;
    qemu.memory_mib = opts.memory_mib;
    qemu.api_port = Some(port);
    eprintln!(
        "xtask: booting {} in QEMU ({}, {} CPUs, {} MiB), API on 127.0.0.1:{port}; Ctrl-C ends it",
        elf.display(),
        accel.name(),
        opts.cpus,
        opts.memory_mib
    );
    let mut console = qemu.spawn().map_err(|e| e.to_string())?;
    console.set_echo(true);
    let ready = console.wait_for("taproot: ready", BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    if field(&ready, "virt") == Some("none") {
        return Err(format!(
            "the image found no VMX or SVM under QEMU ({}), so it cannot run guests; {}",
            accel.name(),
            match accel {
                Accel::Kvm => "enable nested virtualization on this host, or pass --accel tcg",
                Accel::Tcg => "QEMU's TCG should offer SVM with -cpu max: check the QEMU version",
            }
        ));
    }
    let listening = console.wait_for("taproot: api listening", BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    let token = field(&listening, "token").ok_or("the image printed no token")?.to_string();
    println!("xtask: the API: curl -H 'Authorization: Bearer {token}' http://127.0.0.1:{port}/v1/info");
    println!("xtask: or: TAPROOT_TOKEN={token} cargo xtask ctl --port {port} info");
    if via_api {
        let client = Client::new(port, &token);
        if let Err(e) = demo(&client, &opts.guest) {
            eprintln!("xtask: the demo guest did not run: {e}");
        }
    }
    console.set_echo(false);
    console.follow(|line| println!("{line}"));
    Ok(())
}

/// Creates VM `name`, loads the guest ELF, starts it and shows its console until it ends.
fn demo(client: &Client, name: &str) -> Result<(), String> {
    let image_path = paths::workspace_root().join("target/x86_64-unknown-none/release").join(name);
    let image = std::fs::read(&image_path).map_err(|e| format!("{}: {e}", image_path.display()))?;
    let expect = |r: std::io::Result<taproot_testbed::api::Response>, what: &str| -> Result<(), String> {
        match r {
            Ok(r) if r.status < 300 => Ok(()),
            Ok(r) => Err(format!("{what}: {} {}", r.status, r.text())),
            Err(e) => Err(format!("{what}: {e}")),
        }
    };
    println!("xtask: PUT /v1/vms/{name}, its image, and start it");
    expect(client.put(&format!("/v1/vms/{name}"), br#"{"vcpus": 1, "memory_mib": 64}"#), "create")?;
    expect(client.put(&format!("/v1/vms/{name}/image?format=pvh"), &image), "image")?;
    expect(client.post(&format!("/v1/vms/{name}/actions"), br#"{"action": "start"}"#), "start")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut offset = 0u64;
    let mut partial = String::new();
    while Instant::now() < deadline {
        let r = client
            .get(&format!("/v1/vms/{name}/console?offset={offset}&wait_ms=1000"))
            .map_err(|e| format!("console: {e}"))?;
        offset = r.header("x-console-next-offset").and_then(|v| v.parse().ok()).unwrap_or(offset);
        partial.push_str(&r.text());
        while let Some(at) = partial.find('\n') {
            println!("[vm {name}] {}", partial[..at].trim_end_matches('\r'));
            partial.drain(..=at);
        }
        if r.header("x-vm-state").is_some_and(|s| !matches!(s, "running" | "paused")) {
            let info = client.get(&format!("/v1/vms/{name}")).map_err(|e| e.to_string())?;
            println!("xtask: vm {name}: {}", info.text());
            return Ok(());
        }
    }
    Err("the guest was still running after 60 s".into())
}
