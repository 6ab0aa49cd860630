//! The instructions of the `xstate` protocol: each CPU's host XCR0, and a vCPU's x87/SSE/
//! AVX state and XCR0 moved into the CPU before entry ([`load_guest`]) and out after exit
//! ([`save_guest`]), eagerly on every run. Both backends call them with interrupts off
//! around their world switch, and emulate XSETBV with [`xsetbv`].
//!
//! Cost per entry/exit round trip, with XSAVE: XRSTOR, XGETBV, XSAVE(OPT), plus two XSETBV
//! when the guest's XCR0 is not the host's (a guest that enabled every offered component
//! needs none); without XSAVE, FXRSTOR and FXSAVE. Eager rather than lazy (CR0.TS and #NM
//! exits) because guests touch SSE in nearly every slice (memcpy), and because the lazy
//! scheme's correctness rests on tracking which vCPU owns the registers across CPUs.
#![allow(unsafe_code, reason = "XRSTOR, XSAVE, XSETBV")]

use super::xstate::{self, GuestXstate, Offer, XsaveCpuid, XsetbvFault};
use core::arch::asm;
use spin::Once;
use x86_64::registers::xcontrol::XCr0;

/// CPUID leaf 0Dh: processor extended state enumeration.
const LEAF_XSAVE: u32 = 0xD;

struct HostCpuid;

impl XsaveCpuid for HostCpuid {
    fn subleaf(&self, index: u32) -> [u32; 4] {
        super::host::cpuid(LEAF_XSAVE, index)
    }
}

static OFFER: Once<Offer> = Once::new();

/// What every CPU switches and guests may enable (the same on every CPU).
pub fn offer() -> &'static Offer {
    OFFER.call_once(|| {
        if !libos::arch::x86_64::cpu::has_xsave() {
            return Offer::FXSAVE;
        }
        Offer::from_cpuid(&HostCpuid, crate::cpuid::offered_xcr0())
    })
}

/// Sets the calling CPU's XCR0 to the offer (the host value the protocol keeps outside
/// guests). Called where the backend turns virtualization on, on every CPU.
pub fn enable_on_this_cpu() {
    let offer = offer();
    if offer.xsave {
        // SAFETY: libos set CR4.OSXSAVE on every CPU with XSAVE; the offer is a valid XCR0
        // of supported components (`xstate::Offer::from_cpuid`). Nothing in the image uses
        // the vector registers whose availability this changes.
        unsafe { XCr0::write_raw(offer.mask) };
    }
}

/// A fresh vCPU's state: the reset image, sized for the offer.
pub fn new_state() -> GuestXstate {
    GuestXstate::new(offer())
}

/// Loads the vCPU's state, then its XCR0. Call with interrupts off, just before the world
/// switch; [`save_guest`] must follow the exit before anything else runs on this CPU.
pub fn load_guest(state: &mut GuestXstate) {
    let offer = offer();
    let area = state.as_mut_ptr();
    let (lo, hi) = (offer.mask as u32, (offer.mask >> 32) as u32);
    if offer.xsave {
        // SAFETY: `area` is the vCPU's 64-byte aligned area of `offer.size` bytes, holding
        // the reset image or what XSAVE wrote there (a valid header); the CPU's XCR0 is the
        // offer (set at enable, restored by every `save_guest`). Only FPU/SIMD registers
        // change, which the host does not use.
        unsafe {
            asm!("xrstor64 [{}]", in(reg) area, in("eax") lo, in("edx") hi, options(nostack, readonly))
        };
        if state.xcr0 != offer.mask {
            // SAFETY: the guest's XCR0 is the reset value 1 or one `check_xsetbv` accepted,
            // so a valid subset of the offer. The host runs soft-float code until VMRUN/
            // VMRESUME, so no host instruction depends on the components it disables.
            unsafe { XCr0::write_raw(state.xcr0) };
        }
    } else {
        // SAFETY: as above, a 16-byte aligned 512-byte area holding a valid FXSAVE image
        // (MXCSR without reserved bits); CR4.OSFXSR is set, so XMM registers are restored.
        unsafe { asm!("fxrstor64 [{}]", in(reg) area, options(nostack, readonly)) };
    }
}

/// After the exit: the guest's XCR0 kept, the host's set again, the vCPU's state saved.
/// Interrupts are still off.
pub fn save_guest(state: &mut GuestXstate) {
    let offer = offer();
    let area = state.as_mut_ptr();
    let (lo, hi) = (offer.mask as u32, (offer.mask >> 32) as u32);
    if offer.xsave {
        // XSETBV always exits, so XCR0 is what `load_guest` set; reading it back also keeps
        // the guest's value where an emulator lets XSETBV through (QEMU TCG's SVM).
        state.xcr0 = XCr0::read_raw();
        if state.xcr0 != offer.mask {
            // SAFETY: as in `enable_on_this_cpu`.
            unsafe { XCr0::write_raw(offer.mask) };
        }
        if offer.xsaveopt {
            // SAFETY: the area is the vCPU's (as in `load_guest`), written whole for every
            // offered component; XCR0 is the offer again. XSAVEOPT's modified optimization
            // is sound here: the last XRSTOR this CPU ran outside a guest was from this
            // same area (`load_guest`), and a guest's own XRSTOR resets the tracking.
            unsafe { asm!("xsaveopt64 [{}]", in(reg) area, in("eax") lo, in("edx") hi, options(nostack)) };
        } else {
            // SAFETY: as above.
            unsafe { asm!("xsave64 [{}]", in(reg) area, in("eax") lo, in("edx") hi, options(nostack)) };
        }
    } else {
        // SAFETY: the vCPU's 16-byte aligned 512-byte area; CR4.OSFXSR is set.
        unsafe { asm!("fxsave64 [{}]", in(reg) area, options(nostack)) };
    }
}

/// Emulates XSETBV (ECX = `index`, EDX:EAX = `value`) by a guest at `cpl`: a valid value
/// becomes the vCPU's XCR0 at its next entry; `Err` means inject #GP(0).
pub fn xsetbv(state: &mut GuestXstate, cpl: u8, index: u32, value: u64) -> Result<(), XsetbvFault> {
    let offer = offer();
    if !offer.xsave {
        return Err(XsetbvFault::Invalid);
    }
    state.xcr0 = xstate::check_xsetbv(cpl, index, value, offer)?;
    Ok(())
}
