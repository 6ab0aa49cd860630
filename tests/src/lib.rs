//! The testbeds of `../shared/ARCHITECTURE.md`, driven from the host: build a GRUB ISO,
//! boot an image in QEMU (TCG or KVM) or Bochs, read its serial console, wait for lines,
//! and stop the emulator (only the one we started) when done.
//!
//! `xtask` uses this for `build`, `run` and `bench`; the end-to-end tests in `tests/` use
//! it to boot the images that `cargo xtask test` built.

pub mod abuse;
pub mod api;
pub mod bochs;
pub mod console;
pub mod iso;
pub mod linux;
pub mod paths;
pub mod qemu;
pub mod tools;

pub use console::{Console, ConsoleError};

/// FNV-1a, 64-bit: the checksum guests print of what they were given (guest-images'
/// `logic::fnv1a64`), computed here of the file a test gave them.
#[must_use]
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01B3))
}
