//! Ending the machine: QEMU's `isa-debug-exit` device when present, else ACPI S5.

use crate::arch::x86_64::halt_forever;
use crate::drivers::serial;
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
