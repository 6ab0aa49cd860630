//! A vCPU's x87/SSE/AVX state as plain data: the XSAVE area it lives in between runs, its
//! size and reset image, and the rules for the XCR0 values a guest may set (Intel SDM
//! Vol. 1 chapter 13 "Managing State Using the XSAVE Feature Set"; AMD APM Vol. 2 §11.5).
//! Host-tested; the instructions that move the state in and out of the CPU are in
//! `backend::fpu` (bare metal).
//!
//! Protocol (eager, every entry and exit; `backend::fpu` does it): each CPU runs with the
//! host XCR0 set to [`Offer::mask`], the components Taproot switches. Before entry, XRSTOR
//! of the vCPU's area under that XCR0 (every offered component, whatever the guest has
//! enabled, so nothing of another vCPU survives), then XSETBV to the guest's XCR0; after
//! exit, the guest's XCR0 is read back, the host's set again, and XSAVE(OPT) writes every
//! offered component to the area. Without XSAVE, FXRSTOR/FXSAVE of the 512-byte legacy
//! area do the same for x87 and SSE. The host itself never uses the FPU (the image is
//! built soft-float), so no host state needs keeping.

use alloc::vec;
use alloc::vec::Vec;

/// XCR0 / XSTATE_BV component bits (SDM Vol. 1 §13.1).
pub const X87: u64 = 1 << 0;
pub const SSE: u64 = 1 << 1;
pub const AVX: u64 = 1 << 2;
pub const BNDREGS: u64 = 1 << 3;
pub const BNDCSR: u64 = 1 << 4;
pub const OPMASK: u64 = 1 << 5;
pub const ZMM_HI256: u64 = 1 << 6;
pub const HI16_ZMM: u64 = 1 << 7;
pub const AVX512: u64 = OPMASK | ZMM_HI256 | HI16_ZMM;
pub const TILECFG: u64 = 1 << 17;
pub const TILEDATA: u64 = 1 << 18;

/// The user-state components Taproot can switch with plain XSAVE/XRSTOR: x87, SSE, AVX and
/// AVX-512. Not offered: MPX (deprecated, with its own MSR), PKRU (needs CR4.PKE handling)
/// and AMX (needs XFD and large areas); supervisor components need XSAVES.
pub const SWITCHED: u64 = X87 | SSE | AVX | AVX512;

/// The legacy (FXSAVE) region and the XSAVE header that follows it.
pub const LEGACY_SIZE: usize = 512;
pub const HEADER_SIZE: usize = 64;
/// XSAVE areas (and the XRSTOR/XSAVE operands) are 64-byte aligned.
pub const ALIGN: usize = 64;

/// The reset image's x87 control word (FINIT's: all exceptions masked, 64-bit precision,
/// round to nearest) and MXCSR (all SIMD exceptions masked); SDM Vol. 1 §8.1.5, §10.2.3.
pub const RESET_FCW: u16 = 0x037F;
pub const RESET_MXCSR: u32 = 0x1F80;
const FCW_OFFSET: usize = 0;
const MXCSR_OFFSET: usize = 24;
const XSTATE_BV_OFFSET: usize = LEGACY_SIZE;

/// The CPU's CPUID leaf 0Dh as far as the area needs it: `subleaf(i)` is CPUID.(0Dh, i)
/// `[eax, ebx, ecx, edx]`.
pub trait XsaveCpuid {
    fn subleaf(&self, index: u32) -> [u32; 4];
}

/// Which save/restore instructions the host has, and what it offers guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// XSAVE/XRSTOR exist and CR4.OSXSAVE is on (else FXSAVE/FXRSTOR of x87 and SSE).
    pub xsave: bool,
    /// XSAVEOPT exists (CPUID.(0Dh,1):EAX[0]).
    pub xsaveopt: bool,
    /// The host XCR0 and the largest guest XCR0: the switched components the CPU supports
    /// and the guest's CPUID shows, closed under the XCR0 rules.
    pub mask: u64,
    /// Bytes of the area: the end of the last offered component (standard format).
    pub size: usize,
}

impl Offer {
    /// What a CPU without XSAVE offers: x87 and SSE through FXSAVE.
    pub const FXSAVE: Self = Self { xsave: false, xsaveopt: false, mask: X87 | SSE, size: LEGACY_SIZE };

    /// The offer of a CPU with XSAVE: `shown` is what the guest's CPUID leaf 0Dh shows
    /// (EDX:EAX of subleaf 0).
    pub fn from_cpuid(cpuid: &impl XsaveCpuid, shown: u64) -> Self {
        let [eax, _, _, edx] = cpuid.subleaf(0);
        let supported = ((edx as u64) << 32) | eax as u64;
        let mask = closed(supported & shown & SWITCHED);
        let mut size = LEGACY_SIZE + HEADER_SIZE;
        for index in 2..64 {
            if mask & (1 << index) != 0 {
                let [len, offset, _, _] = cpuid.subleaf(index);
                size = size.max(offset as usize + len as usize);
            }
        }
        let xsaveopt = cpuid.subleaf(1)[0] & 1 != 0;
        Self { xsave: true, xsaveopt, mask, size: size.next_multiple_of(ALIGN) }
    }
}

/// The largest subset of `mask` that is a valid XCR0 (x87 always; AVX only with SSE;
/// AVX-512 whole and only with AVX).
fn closed(mask: u64) -> u64 {
    let mut mask = mask | X87;
    if mask & SSE == 0 {
        mask &= !AVX;
    }
    if mask & AVX == 0 || mask & AVX512 != AVX512 {
        mask &= !AVX512;
    }
    mask
}

/// CPUID.01h:ECX bit 27 (OSXSAVE) and CR4.OSXSAVE (bit 18).
const CPUID1_ECX_OSXSAVE: u32 = 1 << 27;
const CR4_OSXSAVE: u64 = 1 << 18;

/// CPUID leaf 1's ECX as the guest must see it: OSXSAVE mirrors the guest's own
/// CR4.OSXSAVE (SDM Vol. 2A, CPUID), not the host's, which is always set where XSAVE exists.
pub fn leaf1_ecx_osxsave(ecx: u32, guest_cr4: u64) -> u32 {
    let osxsave = if guest_cr4 & CR4_OSXSAVE != 0 { CPUID1_ECX_OSXSAVE } else { 0 };
    (ecx & !CPUID1_ECX_OSXSAVE) | osxsave
}

/// Why an XSETBV injects #GP(0) (SDM Vol. 2D XSETBV "Protected Mode Exceptions").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsetbvFault {
    /// Not at CPL 0.
    Privilege,
    /// ECX names an XCR other than XCR0.
    NotXcr0,
    /// The value is not a valid XCR0, or sets a component not offered.
    Invalid,
}

/// Whether a guest at `cpl` may write `value` to XCR `index` under `offer`; `Ok` is the new
/// XCR0. The rules: x87 set; AVX only with SSE; MPX's two bits together; AVX-512's three
/// bits together and only with AVX; AMX's two together; no bit outside the offer.
pub fn check_xsetbv(cpl: u8, index: u32, value: u64, offer: &Offer) -> Result<u64, XsetbvFault> {
    if cpl != 0 {
        return Err(XsetbvFault::Privilege);
    }
    if index != 0 {
        return Err(XsetbvFault::NotXcr0);
    }
    let both = |bits: u64| value & bits == 0 || value & bits == bits;
    let valid = value & X87 != 0
        && (value & AVX == 0 || value & SSE != 0)
        && both(BNDREGS | BNDCSR)
        && both(AVX512)
        && (value & AVX512 == 0 || value & AVX != 0)
        && both(TILECFG | TILEDATA)
        && value & !offer.mask == 0;
    if valid { Ok(value) } else { Err(XsetbvFault::Invalid) }
}

/// A vCPU's saved x87/SSE/AVX state and its XCR0.
pub struct GuestXstate {
    /// `size + ALIGN - 1` bytes: the area is the `size` bytes from the first 64-byte
    /// aligned one (the buffer is never resized, so it never moves).
    buffer: Vec<u8>,
    start: usize,
    size: usize,
    /// The guest's XCR0 (1 after reset: x87 only).
    pub xcr0: u64,
}

impl GuestXstate {
    /// An area of `offer.size` bytes in the reset state.
    pub fn new(offer: &Offer) -> Self {
        let buffer = vec![0u8; offer.size + ALIGN - 1];
        let start = buffer.as_ptr().align_offset(ALIGN);
        let mut state = Self { buffer, start, size: offer.size, xcr0: X87 };
        state.reset();
        state
    }

    /// The architectural reset state: FCW 0x37F, MXCSR 0x1F80, every register zero, the
    /// XSAVE header zero (XSTATE_BV 0: XRSTOR loads every component's initial state), and
    /// XCR0 = x87.
    pub fn reset(&mut self) {
        let bytes = self.bytes_mut();
        bytes.fill(0);
        bytes[FCW_OFFSET..FCW_OFFSET + 2].copy_from_slice(&RESET_FCW.to_le_bytes());
        bytes[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&RESET_MXCSR.to_le_bytes());
        self.xcr0 = X87;
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buffer[self.start..self.start + self.size]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buffer[self.start..self.start + self.size]
    }

    /// The area's address (64-byte aligned), for XSAVE/XRSTOR.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.bytes_mut().as_mut_ptr()
    }

    /// XSTATE_BV of the header (meaningful with XSAVE only).
    pub fn xstate_bv(&self) -> u64 {
        let b = &self.bytes()[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8];
        u64::from_le_bytes(b.try_into().expect("eight bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPUID leaf 0Dh of a CPU with x87, SSE, AVX, MPX, AVX-512 and PKRU (offsets and sizes
    /// as on Skylake-SP).
    struct Skylake;

    impl XsaveCpuid for Skylake {
        fn subleaf(&self, index: u32) -> [u32; 4] {
            match index {
                0 => [0x2FF, 0xA88, 0xA88, 0],
                1 => [0xF, 0, 0, 0],
                2 => [256, 576, 0, 0],
                3 => [64, 960, 0, 0],
                4 => [64, 1024, 0, 0],
                5 => [64, 1088, 0, 0],
                6 => [512, 1152, 0, 0],
                7 => [1024, 1664, 0, 0],
                9 => [8, 2688, 0, 0],
                _ => [0; 4],
            }
        }
    }

    fn offer(mask: u64) -> Offer {
        Offer { xsave: true, xsaveopt: false, mask, size: 4096 }
    }

    #[test]
    fn the_offer_is_the_switched_components_shown_and_supported_sized_to_the_last() {
        let all = Offer::from_cpuid(&Skylake, u64::MAX);
        assert_eq!(all.mask, X87 | SSE | AVX | AVX512, "no MPX, no PKRU");
        assert_eq!(all.size, 1664 + 1024, "ends with Hi16_ZMM");
        assert!(all.xsaveopt);
        let avx_only = Offer::from_cpuid(&Skylake, X87 | SSE | AVX | OPMASK);
        assert_eq!(avx_only.mask, X87 | SSE | AVX, "AVX-512 is offered whole or not at all");
        assert_eq!(avx_only.size, 832);
        let without_sse = Offer::from_cpuid(&Skylake, X87 | AVX);
        assert_eq!(without_sse.mask, X87, "no AVX without SSE");
        assert_eq!(without_sse.size, LEGACY_SIZE + HEADER_SIZE);
    }

    /// One source of truth: what the guest's CPUID leaf 0Dh shows (`cpuid::Policy`) is what
    /// the backends switch and what XSETBV accepts, both from `cpuid::offered_xcr0`.
    #[test]
    fn the_cpuid_leaf_shows_exactly_the_offer_and_xsetbv_accepts_exactly_it() {
        use crate::cpuid::{HostFacts, Policy, Vendor, offered_xcr0};
        let host = |leaf: u32, subleaf: u32| match leaf {
            0 => [0xD, 0, 0, 0],
            1 => [0, 0, 1 << 26, 0],
            0xD => Skylake.subleaf(subleaf),
            _ => [0; 4],
        };
        let facts = HostFacts { vendor: Vendor::Intel, gib_pages: false, tsc_hz: 1, lapic_bus_hz: 1 };
        let policy = Policy::new(facts, host);
        let offer = Offer::from_cpuid(&Skylake, offered_xcr0());
        let [eax, ebx, ecx, edx] = policy.guest_view(0xD, 0, host(0xD, 0), 0);
        if !crate::cpuid::XSAVE_VIRTUALIZED {
            assert_eq!([eax, ebx, ecx, edx], [0; 4]);
            assert_eq!(offer.mask, X87 | SSE);
            return;
        }
        let shown = (u64::from(edx) << 32) | u64::from(eax);
        assert_eq!(shown, offer.mask, "leaf 0Dh shows what is switched");
        assert_eq!(offer.mask, X87 | SSE | AVX);
        assert_eq!((ebx as usize, ecx as usize), (offer.size, offer.size), "the area sizes agree");
        let [len, offset, _, _] = policy.guest_view(0xD, 2, host(0xD, 2), 0);
        assert_eq!(offset as usize + len as usize, offer.size, "AVX ends the area");
        for bit in 0..64 {
            let value = X87 | SSE | 1 << bit;
            let accepted = check_xsetbv(0, 0, value, &offer).is_ok();
            assert_eq!(accepted, value & !shown == 0, "XCR0 bit {bit}");
        }
    }

    #[test]
    fn the_reset_image_has_finit_control_words_and_an_empty_header() {
        let mut state = GuestXstate::new(&Offer::from_cpuid(&Skylake, u64::MAX));
        state.bytes_mut().fill(0xAA);
        state.xcr0 = 7;
        state.reset();
        let bytes = state.bytes();
        assert_eq!(bytes.len(), 2688);
        assert_eq!(u16::from_le_bytes([bytes[0], bytes[1]]), 0x037F);
        assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 0x1F80);
        assert_eq!(state.xstate_bv(), 0);
        assert!(bytes[2..24].iter().chain(&bytes[28..]).all(|&b| b == 0));
        assert_eq!(state.xcr0, X87);
        assert_eq!(state.as_mut_ptr() as usize % ALIGN, 0);
        assert_eq!(GuestXstate::new(&Offer::FXSAVE).bytes().len(), LEGACY_SIZE);
    }

    #[test]
    fn cpuid_osxsave_follows_the_guests_cr4() {
        assert_eq!(leaf1_ecx_osxsave(u32::MAX, 0), !(1 << 27));
        assert_eq!(leaf1_ecx_osxsave(0, 1 << 18), 1 << 27);
        assert_eq!(leaf1_ecx_osxsave(1 << 26, !(1 << 18)), 1 << 26);
    }

    #[test]
    fn xsetbv_takes_valid_offered_values_of_xcr0_at_cpl_0() {
        let avx512 = offer(X87 | SSE | AVX | AVX512);
        for value in [X87, X87 | SSE, X87 | SSE | AVX, X87 | SSE | AVX | AVX512] {
            assert_eq!(check_xsetbv(0, 0, value, &avx512), Ok(value), "{value:#x}");
        }
    }

    #[test]
    fn xsetbv_refuses_invalid_values_other_xcrs_and_user_mode() {
        let avx512 = offer(X87 | SSE | AVX | AVX512);
        let invalid = Err(XsetbvFault::Invalid);
        assert_eq!(check_xsetbv(3, 0, X87, &avx512), Err(XsetbvFault::Privilege));
        assert_eq!(check_xsetbv(0, 1, X87, &avx512), Err(XsetbvFault::NotXcr0));
        assert_eq!(check_xsetbv(0, 0, 0, &avx512), invalid, "x87 must be set");
        assert_eq!(check_xsetbv(0, 0, SSE | AVX, &avx512), invalid, "x87 must be set");
        assert_eq!(check_xsetbv(0, 0, X87 | AVX, &avx512), invalid, "AVX needs SSE");
        assert_eq!(check_xsetbv(0, 0, X87 | SSE | AVX | OPMASK, &avx512), invalid, "AVX-512 whole");
        assert_eq!(check_xsetbv(0, 0, X87 | SSE | AVX512, &avx512), invalid, "AVX-512 needs AVX");
        let everything = offer(u64::MAX);
        assert_eq!(check_xsetbv(0, 0, X87 | BNDREGS, &everything), invalid, "MPX whole");
        assert_eq!(check_xsetbv(0, 0, X87 | SSE | AVX | TILECFG, &everything), invalid, "AMX whole");
        let sse = offer(X87 | SSE);
        assert_eq!(check_xsetbv(0, 0, X87 | SSE | AVX, &sse), invalid, "AVX not offered");
        assert_eq!(check_xsetbv(0, 0, X87 | 1 << 62, &avx512), invalid, "reserved bit");
    }
}
