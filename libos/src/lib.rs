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
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod bootinfo;
pub mod cmdline;
pub mod virt;

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
