//! Taproot's hypervisor: the arch-neutral core (memory slots, the TDP MMU) that also builds
//! for the host with `std`, so it is tested natively with threads standing in for vCPUs.
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod addr;
pub mod api;
pub mod backend;
pub mod cpuid;
pub mod devices;
pub mod emulate;
pub mod firmware;
pub mod loader;
pub mod memslot;
pub mod mmu;
pub mod pages;
pub mod sync;
pub mod vm;
