//! The Taproot image: libos boots the machine and calls `app::main` on the boot CPU
//! once every CPU is up; `app/` holds what the image does with it (the guest launcher,
//! the vCPU scheduler, the VM registry behind the API, the API server).
//!
//! On the host this binary only explains itself: the image is built and booted with
//! `cargo xtask run`.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(target_os = "none")]
mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}
#[cfg(target_os = "none")]
mod app;
#[cfg(target_os = "none")]
mod sys;

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("taproot is a bare-metal image: build and boot it with `cargo xtask run`");
    std::process::exit(2);
}
