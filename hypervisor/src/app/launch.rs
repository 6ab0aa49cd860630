//! Launching an embedded guest from the image's command line, until the control plane
//! exists: `guest=<name> vcpus=<n> mem=<MiB> [timeout_ms=<ms>]
//! [format=elf|pvh|multiboot|bzimage] [initrd=<name>] [guest.<key>=<value> ...]`. The
//! embedded ELF guests carry both a PVH note and a multiboot1 header: `format=elf` (the
//! default) picks PVH, `format=multiboot` the other; `bzboot` is a bzImage
//! (`format=bzimage`). `initrd=<name>` gives the VM the embedded guest `<name>`'s bytes
//! as its initrd.
//! The guest's console lines are printed as `[vm <id>] ...`; at the end the image prints
//! `taproot: vm <id> exited status=<n> state=<state> stats=<one-line JSON>`, then each
//! CPU's tag numbering as `taproot: cpu tags generation/flushes <cpu>:<g>/<f> ...`.

use super::sched;
use crate::guests::GUESTS;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use hypervisor::addr::Gpa;
use hypervisor::backend::choice::{self, WithBackend};
use hypervisor::backend::{Backend, BackendError};
use hypervisor::loader::ImageFormat;
use hypervisor::memslot::{AsId, SlotFlags, SlotId, SlotSpec};
use hypervisor::vm::{VcpuRunner, Vm, VmConfig, VmState};
use libos::cmdline;

const DEFAULT_VCPUS: u32 = 1;
/// The extra slot of `delete_slot_ms`: 2 MiB at 4 GiB, beyond any guest's RAM.
const EXTRA_SLOT: SlotId = SlotId(1);
const EXTRA_SLOT_GPA: u64 = 1 << 32;
const EXTRA_SLOT_SIZE: u64 = 2 << 20;
const DEFAULT_MEMORY_MIB: u64 = 64;

/// What a launch ended with: the guest's status (or -1 when it did not exit by itself).
pub fn launch(line: &str, name: &str, id: u32) -> Result<i32, String> {
    let vcpus = parse_or(line, "vcpus", DEFAULT_VCPUS)?;
    let memory_mib = parse_or(line, "mem", DEFAULT_MEMORY_MIB)?;
    let delete_slot_ms = parse_ms(line, "delete_slot_ms")?;
    let nmi_ms = parse_ms(line, "nmi_ms")?;
    let timeout_ms = parse_ms(line, "timeout_ms")?;
    let format_name = cmdline::value(line, "format").unwrap_or("elf");
    let elf_format = ImageFormat::by_name(format_name)
        .ok_or_else(|| format!("format={format_name} is not one of elf, pvh, multiboot, bzimage"))?;
    let (image, format) = match GUESTS.iter().find(|(n, _)| *n == name) {
        Some((_, bytes)) => (*bytes, elf_format),
        None => match super::builtin::find(name) {
            Some(code) => {
                (code, ImageFormat::Flat { load_gpa: Gpa::new(super::builtin::LOAD_GPA), entry_gpa: None })
            }
            None => return Err(unknown_guest(name)),
        },
    };
    let aps_wait_for_sipi = match cmdline::value(line, "aps").unwrap_or("entry") {
        "entry" => false,
        "sipi" => true,
        other => return Err(format!("aps={other} is not one of entry, sipi")),
    };
    let initrd = match cmdline::value(line, "initrd") {
        None => None,
        Some(initrd) => {
            Some(GUESTS.iter().find(|(n, _)| *n == initrd).ok_or_else(|| unknown_guest(initrd))?.1)
        }
    };
    let guest_cmdline: Vec<String> = cmdline::words(line)
        .filter_map(|(k, v)| k.strip_prefix("guest.").map(|k| format!("{k}={v}")))
        .collect();
    let launch = Launch {
        id,
        config: VmConfig { vcpus, memory_mib, console_bytes: hypervisor::devices::CONSOLE_RING_BYTES },
        image,
        format,
        initrd,
        guest_cmdline: guest_cmdline.join(" "),
        timeout_ms,
        delete_slot_ms,
        nmi_ms,
        aps_wait_for_sipi,
    };
    choice::choose().dispatch(&launch)
}

/// The optional `key=MS` of the command line, in milliseconds.
fn parse_ms(line: &str, key: &str) -> Result<Option<u64>, String> {
    cmdline::value(line, key)
        .map(|v| v.parse())
        .transpose()
        .map_err(|_| format!("{key} must be a number of milliseconds"))
}

fn unknown_guest(name: &str) -> String {
    let mut names: Vec<&str> = GUESTS.iter().map(|(n, _)| *n).collect();
    names.extend(super::builtin::BUILTIN_GUESTS.iter().map(|(n, _, _)| *n));
    format!("no guest named {name:?}; the image has: {}", names.join(", "))
}

fn parse_or<T: core::str::FromStr>(line: &str, key: &str, default: T) -> Result<T, String> {
    match cmdline::value(line, key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{key}={v} is not a number")),
    }
}

/// One guest to run, as the command line describes it.
struct Launch<'a> {
    id: u32,
    config: VmConfig,
    image: &'a [u8],
    format: ImageFormat,
    initrd: Option<&'a [u8]>,
    guest_cmdline: String,
    timeout_ms: Option<u64>,
    delete_slot_ms: Option<u64>,
    /// Send every CPU running the guest's vCPUs an NMI after this long (tests the host's
    /// NMI handling while a guest runs).
    nmi_ms: Option<u64>,
    aps_wait_for_sipi: bool,
}

impl WithBackend for &Launch<'_> {
    type Output = Result<i32, String>;

    fn with<B: Backend>(self, available: Result<(), BackendError>) -> Self::Output {
        available.map_err(|_| "this machine offers no hardware virtualization to Taproot")?;
        run::<B>(self)
    }
}

fn run<B: Backend>(launch: &Launch<'_>) -> Result<i32, String> {
    sched::start(B::enable_on_this_cpu)?;
    let vm = Vm::<B>::create(launch.id, launch.config, libos::time::now_ns, libos::time::unix_seconds_now())
        .map_err(|e| format!("{e}"))?;
    vm.set_console_sink(print_console_line);
    vm.set_aps_wait_for_sipi(launch.aps_wait_for_sipi);
    if let Some(ms) = launch.timeout_ms {
        vm.set_deadline(libos::time::now_ns().saturating_add(ms.saturating_mul(1_000_000)));
    }
    if let Some(initrd) = launch.initrd {
        vm.set_initrd(initrd.to_vec()).map_err(|e| format!("{e}"))?;
    }
    vm.load_image(launch.image, launch.format, &launch.guest_cmdline).map_err(|e| format!("{e}"))?;
    let mut vcpus = vm.start().map_err(|e| format!("{e}"))?;
    let delete_slot_ms = launch.delete_slot_ms;
    if delete_slot_ms.is_some() {
        // A slot the guest never uses, deleted while the guest runs (`delete_slot_ms`).
        let spec = SlotSpec {
            id: EXTRA_SLOT,
            as_id: AsId::Normal,
            base: Gpa::new(EXTRA_SLOT_GPA),
            size: EXTRA_SLOT_SIZE,
            flags: SlotFlags::default(),
        };
        vm.mmu.add_slot(spec).map_err(|e| format!("extra slot: {e:?}"))?;
    }
    // vCPU i runs on CPU i % cpus (this one, the boot CPU, included); CPUs with several
    // vCPUs share them by host-timer slices. With host work to do while the guest runs (a
    // slot to delete, NMIs to send), the vCPUs go to the other CPUs.
    let cpus = libos::smp::cpu_count();
    let host_work = delete_slot_ms.is_some() || launch.nmi_ms.is_some();
    let vcpu_cpus = if host_work { sched::vcpu_cpus() } else { 0..cpus };
    for (index, vcpu) in vcpus.drain(..).enumerate() {
        let cpu = vcpu_cpus.start + index % vcpu_cpus.len();
        sched::submit(cpu, Box::new(VcpuRunner::new(&vm, index as u32, vcpu)));
    }
    if let Some(ms) = launch.nmi_ms {
        crate::sys::sleep_us(ms * 1000);
        let targets = vcpu_cpus.clone().filter(|cpu| *cpu != libos::smp::current_cpu());
        targets.for_each(libos::smp::send_nmi);
        vm.log_event(format!("host sent an NMI to cpus {vcpu_cpus:?} while the guest ran"));
    }
    if let Some(ms) = delete_slot_ms {
        crate::sys::sleep_us(ms.saturating_mul(1000));
        let before = vm.mmu.stats();
        let result = vm.mmu.delete_slot(EXTRA_SLOT);
        let after = vm.mmu.stats();
        vm.log_event(format!(
            "host deleted slot {} while the guest ran ({result:?}): roots_invalidated {} -> {}, zaps {} -> {}, faults at delete {}",
            EXTRA_SLOT.0, before.roots_invalidated, after.roots_invalidated, before.zaps, after.zaps, after.faults
        ));
    }
    sched::run_local_until(|| vm.running_vcpus() == 0 && Arc::strong_count(&vm) == 1);
    vm.flush_console();
    let state = vm.state();
    let status = match &state {
        VmState::Exited { status } => *status as i32,
        _ => -1,
    };
    for event in vm.events().0 {
        crate::sys::console_write(
            format!("[vm {}] event at {} ns: {}\n", vm.id, event.time_ns, event.kind).as_bytes(),
        );
    }
    // Serializing a struct of numbers cannot fail.
    let stats = serde_json::to_string(&vm.stats()).unwrap_or_default();
    crate::sys::console_write(
        format!("taproot: vm {} exited status={status} state={} stats={stats}\n", vm.id, state.name())
            .as_bytes(),
    );
    let tags: Vec<String> =
        B::tag_stats().iter().map(|t| format!("{}:{}/{}", t.cpu, t.generation, t.flushes)).collect();
    crate::sys::console_write(
        format!("taproot: cpu tags generation/flushes {}\n", tags.join(" ")).as_bytes(),
    );
    let vm = Arc::try_unwrap(vm).map_err(|_| "VM still referenced after its vCPUs ended")?;
    vm.destroy();
    Ok(status)
}

fn print_console_line(id: u32, line: &str) {
    crate::sys::console_write(format!("[vm {id}] {line}\n").as_bytes());
}
