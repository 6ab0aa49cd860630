//! Taproot's child guests: a small runtime ([`rt`], bare metal only) and the logic the
//! guests share ([`logic`], host-tested).
//!
//! Each binary in `src/bin/` is one guest, a PVH ELF linked at 1 MiB (`link.ld`). The
//! runtime's 32-bit entry takes Taproot's boot convention (`esi` = vCPU index, `edi` =
//! vCPU count, `ebx` = PVH start info; see `taproot_guest_abi::boot`), enters long mode on
//! an identity map of the first 4 GiB with 2 MiB pages, gives each vCPU its own stack and
//! calls the guest's main through [`guest_main!`]. Run directly under QEMU (`-kernel`,
//! with `-device isa-debug-exit,iobase=0xf4`), where there is no Taproot signature, a
//! guest sees one vCPU and no hypercalls.
#![no_std]

pub mod logic;
#[cfg(target_os = "none")]
pub mod rt;

#[cfg(target_os = "none")]
#[doc(hidden)]
pub use pvh as __pvh;

/// Makes `$main: fn(&rt::Boot) -> u32` the guest's main: the PVH note pointing at the
/// runtime's entry, and the symbol the runtime calls on every vCPU. A vCPU that returns
/// ends the VM with the returned status; a vCPU with nothing left to do calls
/// [`rt::halt_forever`] instead.
#[cfg(target_os = "none")]
#[macro_export]
macro_rules! guest_main {
    ($main:path) => {
        $crate::__pvh::xen_elfnote_phys32_entry!($crate::rt::pvh_start32);

        #[unsafe(no_mangle)]
        extern "C" fn taproot_guest_main(boot: &$crate::rt::Boot) -> u32 {
            $main(boot)
        }
    };
}
