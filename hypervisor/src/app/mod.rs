//! The image's main: checks every CPU's idle loop answers, prints the boot banner, and
//! acts on the test options of the command line.

mod builtin;
mod launch;
mod manager;
mod sched;
mod server;

use crate::sys;
use alloc::format;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicUsize, Ordering};
use libos::cmdline;

libos::entry!(main);

/// How long the APs get to answer their first work item.
const AP_ANSWER_TIMEOUT_NS: u64 = 2_000_000_000;
/// Exit status (with `exit=1`) when a guest named on the command line cannot be launched.
const LAUNCH_FAILED_STATUS: i32 = 125;
/// Several periods of the 100 Hz host timer.
const TIMER_SETTLE_US: u64 = 50_000;

fn main() -> ! {
    let info = libos::boot_info();
    let line = info.cmdline();

    let cpus = 1 + aps_answering();
    log_timer_ticks();
    let virt = libos::smp::virt_caps(0).unwrap_or_default();
    for cpu in 1..libos::smp::cpu_count() {
        if libos::smp::virt_caps(cpu) != Some(virt) {
            log::warn!("cpu {cpu} reports different virtualization features than cpu 0");
        }
    }
    let backend = hypervisor::backend::choice::choose();
    log::info!("boot: banner at tsc={}", libos::time::tsc());
    sys::console_write(
        format!(
            "taproot: ready cpus={} mem={} virt={} features={}\n",
            cpus,
            info.ram_bytes() >> 20,
            backend.name(),
            backend.caps().features
        )
        .as_bytes(),
    );

    if let Some(names) = cmdline::value(line, "guest") {
        // Several guests run one after the other (`guest=a,b`): a hostile one must leave
        // the hypervisor able to run the next. The exit status is the last guest's.
        let mut status = 0;
        for (index, name) in names.split(',').enumerate() {
            status = match launch::launch(line, name, index as u32 + 1) {
                Ok(status) => status,
                Err(e) => {
                    sys::console_write(format!("taproot: cannot launch guest {name:?}: {e}\n").as_bytes());
                    LAUNCH_FAILED_STATUS
                }
            };
        }
        if cmdline::flag(line, "exit") {
            sys::exit(status);
        }
    }
    match cmdline::value(line, "fault") {
        Some("pagefault") => libos::debug::touch_unmapped_memory(),
        Some("nmi-console") => {
            libos::debug::nmi_while_console_held();
            sys::console_write(b"taproot: nmi-console done\n");
        }
        _ => {}
    }
    if cmdline::flag(line, "exit") {
        sys::exit(0);
    }
    server::serve(line)
}

/// Logs every CPU's local APIC timer interrupts so far, after letting a few ticks pass: a
/// CPU whose timer does not fire shows 0 (the boot tests check it does not).
fn log_timer_ticks() {
    sys::sleep_us(TIMER_SETTLE_US);
    let mut line = alloc::string::String::from("timer: ticks");
    for cpu in 0..libos::smp::cpu_count() {
        line.push_str(&format!(" cpu{cpu}={}", libos::smp::timer_ticks(cpu)));
    }
    log::info!("{line}");
}

/// Gives every AP a work item and counts those that run it: a CPU counts as up only when
/// its idle loop works.
fn aps_answering() -> usize {
    let answered = Arc::new(AtomicUsize::new(0));
    let mut asked = 0;
    for cpu in 1..libos::smp::cpu_count() {
        let answered = answered.clone();
        match libos::smp::run_on(cpu, move || {
            answered.fetch_add(1, Ordering::AcqRel);
        }) {
            Ok(()) => asked += 1,
            Err(e) => log::warn!("{e}"),
        }
    }
    let deadline = sys::now_ns() + AP_ANSWER_TIMEOUT_NS;
    while answered.load(Ordering::Acquire) < asked && sys::now_ns() < deadline {
        sys::sleep_us(100);
    }
    answered.load(Ordering::Acquire)
}
