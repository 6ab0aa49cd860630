//! Taproot's library OS.
//!
//! All hardware-facing `unsafe` code of the image lives here (and in the hypervisor's two
//! backends). Above it the application sees a small safe API: [`boot_info`], [`cmdline`],
//! [`smp`], [`time`], [`virt`], [`power`], and the Hermit ABI functions exported by
//! [`abi`], which the application reaches through the `hermit-abi` crate.
//!
//! The hardware modules only build for the bare-metal target; the pure logic (memory-map
//! arithmetic, command-line parsing, the banner) also builds on the host and is unit-tested
//! there.
//!
//! # Layers
//!
//! A module imports (`use crate::..`, `super::..`) only from layers below its own, and
//! within its layer only along the arrows written here, so there are no import cycles.
//!
//! 1. Pure data, also built on the host: [`apic_mode`], [`bootinfo`], [`cmdline`], [`virt`],
//!    [`timer_plan`].
//! 2. One register set or device each: `arch::x86_64::{vectors, tsc, gdt, cpu, percpu,
//!    halt_forever}`, `pic -> vectors`, `pit -> tsc`, `stack_guard -> percpu`,
//!    `drivers::{serial, pci}`, [`mm`], [`debug`]. `vectors` names every interrupt vector;
//!    `percpu` owns [`smp::current_cpu`].
//! 3. Services: [`time`], [`power`] (power-off, and the `exit=1` request that fatal errors
//!    honour), `logger -> time`, `arch::x86_64::{apic -> (time, apic_mode), paging, trampoline, acpi}`,
//!    `arch::x86_64::host_timer -> (apic, percpu, time, timer_plan)`,
//!    `drivers::virtio_net`.
//! 4. `arch::x86_64::interrupts`: the IDT and the dispatcher.
//! 5. What the application calls: [`smp`] (bring-up, kicks, work queues), [`net`],
//!    `abi -> smp`.
//! 6. `arch::x86_64::boot`, which brings up everything below in order and calls the
//!    application; `start -> boot`, its entry stubs.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod apic_mode;
pub mod bootinfo;
pub mod cmdline;
pub mod timer_plan;
pub mod virt;
pub mod wall_clock;

#[cfg(target_os = "none")]
pub mod abi;
#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
pub mod debug;
#[cfg(target_os = "none")]
pub mod drivers;
#[cfg(target_os = "none")]
mod logger;
#[cfg(target_os = "none")]
pub mod mm;
#[cfg(target_os = "none")]
pub mod net;
#[cfg(target_os = "none")]
pub mod power;
#[cfg(target_os = "none")]
pub mod smp;
#[cfg(target_os = "none")]
pub mod time;

#[cfg(target_os = "none")]
pub use arch::x86_64::boot::boot_info;

/// Names the application's entry point: `libos::entry!(main)` where `fn main() -> !` runs
/// on the boot CPU once every CPU is up, the heap works and the timers are calibrated.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[allow(unsafe_code, reason = "the one symbol libos's boot path calls")]
        #[unsafe(no_mangle)]
        extern "Rust" fn __libos_application_main() -> ! {
            let main: fn() -> ! = $main;
            main()
        }
    };
}
