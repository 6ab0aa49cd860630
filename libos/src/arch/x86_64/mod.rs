//! x86-64: boot, descriptor tables, interrupts, the local APIC, SMP bring-up, timers,
//! paging, CPU feature detection and the boot-time read of the CMOS clock.

pub mod acpi;
pub mod apic;
pub mod boot;
pub mod cpu;
pub mod gdt;
pub mod host_timer;
pub mod interrupts;
pub mod paging;
pub mod percpu;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod stack_guard;
mod start;
pub mod trampoline;
pub mod tsc;
pub mod vectors;

/// Stops this CPU for good: interrupts off, halted. NMIs and SMIs may still wake it; the
/// loop puts it back.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
