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
