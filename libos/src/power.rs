//! Ending the machine: QEMU's `isa-debug-exit` device when present, else ACPI S5; and
//! the command line's request (`exit=1`) that a fatal error end the machine rather than
//! only halt the CPU that took it, so a test harness need not wait for its timeout.

use crate::arch::x86_64::halt_forever;
use crate::drivers::serial;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Once;
use x86_64::instructions::port::Port;

/// QEMU `-device isa-debug-exit,iobase=0xf4,iosize=0x04`: a write of `v` ends QEMU with
/// exit status `(v << 1) | 1`. On machines without it the write goes nowhere.
const ISA_DEBUG_EXIT_PORT: u16 = 0xF4;
/// PM1 control register fields (ACPI 6.5 §4.8.3.2.1): SLP_TYPx at bits 10-12, SLP_EN bit 13.
const SLP_TYP_SHIFT: u16 = 10;
const SLP_EN: u16 = 1 << 13;

struct S5 {
    pm1a_control_port: u16,
    sleep_type: u16,
}

static S5_STATE: Once<Option<S5>> = Once::new();
/// Set by boot as soon as it has read the command line, before it starts the other CPUs;
/// never changed after.
static EXIT_REQUESTED: AtomicBool = AtomicBool::new(false);

pub(crate) fn init(pm1a_control_port: Option<u16>, sleep_type: Option<u16>) {
    S5_STATE.call_once(|| {
        pm1a_control_port.map(|port| S5 { pm1a_control_port: port, sleep_type: sleep_type.unwrap_or(0) })
    });
}

/// Powers the machine off, reporting `status` where the platform can carry it (QEMU's
/// exit device). Never returns; if nothing ends the machine, this CPU halts.
pub fn exit(status: i32) -> ! {
    serial::drain();
    // SAFETY: writing the debug-exit port has no effect but ending QEMU where the device
    // exists; on other machines port 0xF4 is unassigned.
    unsafe { Port::<u32>::new(ISA_DEBUG_EXIT_PORT).write(status as u32) };
    if let Some(Some(s5)) = S5_STATE.get() {
        // SAFETY: the FADT names this port as PM1a_CNT; writing SLP_EN with the \_S5
        // sleep type is the architected way to enter soft-off.
        unsafe { Port::<u16>::new(s5.pm1a_control_port).write((s5.sleep_type << SLP_TYP_SHIFT) | SLP_EN) };
    }
    serial::write_bytes_unlocked(b"taproot: power-off did not take effect; halting\n");
    halt_forever()
}

pub(crate) fn set_exit_requested(requested: bool) {
    EXIT_REQUESTED.store(requested, Ordering::Relaxed);
}

/// Whether the command line asks the machine to power off when it is done (`exit=1`).
pub fn is_exit_requested() -> bool {
    EXIT_REQUESTED.load(Ordering::Relaxed)
}

/// The end of a fatal error (panic, exception) on this CPU: ends the machine with `status`
/// if the command line asked for it ([`is_exit_requested`]), else halts this CPU for good.
pub(crate) fn halt_or_exit(status: i32) -> ! {
    if is_exit_requested() {
        exit(status);
    }
    halt_forever()
}
