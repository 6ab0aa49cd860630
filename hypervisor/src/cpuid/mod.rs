//! CPUID policy: what a child guest sees. One table, [`FEATURES`] (in `table.rs`), lists
//! every feature bit a guest may see with its rule (the host's bit, hidden, or fixed) and
//! the reason; a feature bit not in the table is hidden. [`Policy`] applies it: built once
//! per VM from what the host offers ([`Policy::new`]), it answers each CPUID exit with
//! [`Policy::guest_view`] of the host's registers for the same leaf and subleaf.
//!
//! Leaves, beyond the feature bits:
//! - leaf 0 / 8000_0000h: the highest leaf, clamped to [`MAX_BASIC_LEAF`] /
//!   [`MAX_EXTENDED_LEAF`]; every leaf above the clamp, and every leaf this module does
//!   not name, reads as zeroes (thermal, PMU (0Ah), trace, SGX, RDT, SVM (8000_000Ah),
//!   ...);
//! - leaf 1: the initial APIC ID (EBX[31:24]) is the vCPU index; leaves 0Bh and 1Fh: the
//!   x2APIC ID (EDX) is the vCPU index; leaf 8000_001Eh on AMD: the extended APIC ID
//!   (EAX) is the vCPU index;
//! - leaf 7: subleaf 0 only (EAX, the highest subleaf, is 0);
//! - leaf 0Dh: zeroes unless [`XSAVE_VIRTUALIZED`]; then the components of
//!   [`offered_xcr0`] the host has (x87, SSE, AVX), which are exactly what the backends
//!   switch and what XSETBV accepts (`backend::xstate::Offer::from_cpuid` is given the same
//!   mask, and a host test there checks the two agree), an area size that holds them, the
//!   XSAVE extensions the table passes (XSAVEOPT, XSAVEC, XGETBV1; not XSAVES) and the AVX
//!   component's layout;
//! - data leaves passed as the host has them: cache descriptors and parameters (2, 4),
//!   the TSC and processor frequencies (15h, 16h: the guest TSC runs at the host's rate),
//!   the brand string and cache/TLB leaves (8000_0002h-8000_0006h), address sizes
//!   (8000_0008h EAX);
//! - leaves 4000_0000h-4FFF_FFFFh: Taproot's signature and features (see
//!   `taproot_guest_abi::cpuid`) and the timing leaf 4000_0010h (TSC and local APIC bus
//!   frequency in kHz, the VMware convention Linux and others read), zeroes beyond them.
//!   An outer hypervisor's leaves (KVM's, when Taproot itself runs nested) never show
//!   through.

mod table;
#[cfg(test)]
mod tests;

pub use table::{
    EXT1_EDX_LEAF1_COPIES, FEATURES, Feature, Reg, Rule, SPECULATION_FEATURES, XSAVE_VIRTUALIZED, feature,
    may_offer,
};

use taproot_guest_abi::cpuid as abi;

/// Whose virtualization extension the host has (and so which hypercall instruction the
/// guest must use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// SVM; hypercalls through VMMCALL.
    Amd,
    /// VMX; hypercalls through VMCALL.
    Intel,
}

/// The highest basic leaf a guest sees (when the host has it): 1Fh, the V2 topology leaf.
pub const MAX_BASIC_LEAF: u32 = 0x1F;
/// The highest extended leaf a guest sees (when the host has it): 8000_001Eh, AMD's
/// extended APIC ID.
pub const MAX_EXTENDED_LEAF: u32 = 0x8000_001E;

/// The registers that hold feature bits: only what [`FEATURES`] passes or fixes survives
/// in them.
pub const FEATURE_REGS: [(u32, u32, Reg); 10] = [
    (0x1, 0, Reg::Ecx),
    (0x1, 0, Reg::Edx),
    (0x7, 0, Reg::Ebx),
    (0x7, 0, Reg::Ecx),
    (0x7, 0, Reg::Edx),
    (0xD, 1, Reg::Eax),
    (0x8000_0001, 0, Reg::Ecx),
    (0x8000_0001, 0, Reg::Edx),
    (0x8000_0007, 0, Reg::Edx),
    (0x8000_0008, 0, Reg::Ebx),
];

/// CPUID.01h:EBX bits 31-24: initial local APIC ID.
const LEAF1_EBX_APIC_ID_SHIFT: u32 = 24;
/// XCR0 components a guest may enable when XSAVE is offered: x87, SSE, AVX (SDM Vol. 1
/// §13.1).
const XCR0_OFFERED: u32 = 0b111;
/// XSAVE area of the legacy region and header (x87, SSE): SDM Vol. 1 §13.4.
const XSAVE_LEGACY_BYTES: u32 = 576;
/// CPUID.01h:ECX bit 26: XSAVE.
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
const XCR0_SSE: u32 = 1 << 1;
const XCR0_AVX: u32 = 1 << 2;
/// CPUID.(0Dh,1):EAX bits 1 and 3: XSAVEC and XSAVES, the compacted-format instructions,
/// with which subleaf 1 EBX gives the compacted area size.
const XSAVE_COMPACTED: u32 = (1 << 1) | (1 << 3);

/// What the policy knows of the host and the backend, fixed for a VM's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFacts {
    pub vendor: Vendor,
    /// The backend's nested tables take 1 GiB pages (`Caps::max_page_size`).
    pub gib_pages: bool,
    /// The host TSC frequency, which is the guest's.
    pub tsc_hz: u64,
    /// The frequency the guest's local APIC timer counts at.
    pub lapic_bus_hz: u64,
}

/// The XCR0 components a guest may enable and the backends switch: x87, SSE and AVX with
/// [`XSAVE_VIRTUALIZED`], x87 and SSE without it. The one source of both: leaf 0Dh shows
/// these components of the host's (`Policy`), and `backend::fpu` gives this mask to
/// `backend::xstate::Offer::from_cpuid`, which sets the host XCR0 the world switch uses and
/// bounds what XSETBV accepts.
#[must_use]
pub const fn offered_xcr0() -> u64 {
    if XSAVE_VIRTUALIZED { XCR0_OFFERED as u64 } else { 0b11 }
}

/// The CPUID a VM's guests see (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    facts: HostFacts,
    max_basic: u32,
    max_extended: u32,
    /// Per [`FEATURE_REGS`] entry: the host bits that pass, the bits that are set.
    masks: [(u32, u32); FEATURE_REGS.len()],
    /// The XCR0 components the guest may enable and leaf 0Dh shows: [`offered_xcr0`] of
    /// what the host supports (x87 always; AVX only with SSE, as the backends' offer); 0
    /// on a host without XSAVE, whose leaf 0Dh the guest sees as zeroes.
    xcr0: u32,
    /// XSAVE area bytes for those components (leaf 0Dh EBX/ECX).
    xsave_bytes: u32,
}

impl Policy {
    /// The policy for a host whose CPUID is `host_cpuid(leaf, subleaf)`.
    pub fn new(facts: HostFacts, host_cpuid: impl Fn(u32, u32) -> [u32; 4]) -> Self {
        let max_basic = host_cpuid(0, 0)[0].min(MAX_BASIC_LEAF);
        let host_max_extended = host_cpuid(0x8000_0000, 0)[0];
        let max_extended = if host_max_extended >= 0x8000_0000 {
            host_max_extended.min(MAX_EXTENDED_LEAF)
        } else {
            0x8000_0000
        };
        let mut masks = [(0, 0); FEATURE_REGS.len()];
        for (mask, &(leaf, subleaf, reg)) in masks.iter_mut().zip(&FEATURE_REGS) {
            *mask = table_mask(leaf, subleaf, reg, facts.gib_pages);
        }
        let ext1_edx = FEATURE_REGS.iter().position(|&r| r == (0x8000_0001, 0, Reg::Edx)).unwrap_or(0);
        let (pass, set) = table_mask(1, 0, Reg::Edx, facts.gib_pages);
        masks[ext1_edx].0 |= pass & EXT1_EDX_LEAF1_COPIES;
        // A bit set whatever the host has (the emulated APIC) appears in the copies only
        // where the vendor has them (AMD; on Intel those bits of 8000_0001h are reserved).
        if facts.vendor == Vendor::Amd {
            masks[ext1_edx].1 |= set & EXT1_EDX_LEAF1_COPIES;
        }
        let host_xsave = host_cpuid(1, 0)[2] & LEAF1_ECX_XSAVE != 0 && max_basic >= 0xD;
        let xcr0 = if host_xsave { offered_components(host_cpuid(0xD, 0)[0]) } else { 0 };
        let xsave_bytes = if xcr0 & XCR0_AVX != 0 {
            let [size, offset, _, _] = host_cpuid(0xD, 2);
            offset.saturating_add(size)
        } else {
            XSAVE_LEGACY_BYTES
        };
        Self { facts, max_basic, max_extended, masks, xcr0, xsave_bytes }
    }

    /// What the guest sees in the feature register `reg` of `leaf`/`subleaf` when the
    /// host has `host` there.
    fn features(&self, leaf: u32, subleaf: u32, reg: Reg, host: u32) -> u32 {
        match FEATURE_REGS.iter().position(|&r| r == (leaf, subleaf, reg)) {
            Some(i) => (host & self.masks[i].0) | self.masks[i].1,
            None => 0,
        }
    }

    /// Whether the guest sees feature `name` set whatever the host has (a feature the
    /// hypervisor emulates, such as x2apic): the devices it needs must then exist.
    #[must_use]
    pub fn always_offers(&self, name: &str) -> bool {
        let Some(f) = table::feature(name) else { return false };
        FEATURE_REGS
            .iter()
            .position(|&r| r == (f.leaf, f.subleaf, f.reg))
            .is_some_and(|i| self.masks[i].1 & (1 << f.bit) != 0)
    }

    /// Whether `leaf` exists for the guest.
    fn exists(&self, leaf: u32) -> bool {
        match leaf {
            0..=0x3FFF_FFFF => leaf <= self.max_basic,
            0x4000_0000..=0x4FFF_FFFF => true,
            0x8000_0000..=0x8FFF_FFFF => leaf <= self.max_extended,
            _ => false,
        }
    }

    /// What the guest sees for CPUID `leaf`/`subleaf` on vCPU `vcpu_index`, given the
    /// host's `[eax, ebx, ecx, edx]` for the same leaf and subleaf.
    #[must_use]
    pub fn guest_view(&self, leaf: u32, subleaf: u32, host: [u32; 4], vcpu_index: u32) -> [u32; 4] {
        if !self.exists(leaf) {
            return [0; 4];
        }
        // ECX is whatever the guest left there for a leaf without subleaves (Linux's
        // head_64.S runs CPUID 8000_0001h with a stale ECX to decide EFER.NXE).
        let subleaf = if takes_subleaf(leaf) { subleaf } else { 0 };
        let [eax, ebx, ecx, edx] = host;
        let feat = |reg: Reg| self.features(leaf, subleaf, reg, host[reg.index()]);
        match leaf {
            0x0 => [self.max_basic, ebx, ecx, edx],
            0x1 => {
                let ebx = (ebx & 0x00FF_FFFF) | ((vcpu_index & 0xFF) << LEAF1_EBX_APIC_ID_SHIFT);
                [eax, ebx, feat(Reg::Ecx), feat(Reg::Edx)]
            }
            // Cache descriptors and deterministic cache parameters.
            0x2 | 0x4 => host,
            0x7 if subleaf == 0 => [0, feat(Reg::Ebx), feat(Reg::Ecx), feat(Reg::Edx)],
            0xB | 0x1F => [eax, ebx, ecx, vcpu_index],
            0xD if XSAVE_VIRTUALIZED && self.xcr0 != 0 => self.xsave_leaf(subleaf, host),
            // TSC/crystal ratio and processor frequencies: the guest TSC is the host's.
            0x15 | 0x16 => host,
            abi::SIGNATURE_LEAF => {
                let [b, c, d] = abi::signature_regs();
                [abi::MAX_LEAF, b, c, d]
            }
            abi::FEATURES_LEAF => {
                let features = match self.facts.vendor {
                    Vendor::Amd => abi::FEATURE_HYPERCALL_VMMCALL,
                    Vendor::Intel => 0,
                };
                [features, abi::ABI_VERSION, 0, 0]
            }
            abi::TIMING_LEAF => [khz(self.facts.tsc_hz), khz(self.facts.lapic_bus_hz), 0, 0],
            0x8000_0000 => [self.max_extended, ebx, ecx, edx],
            0x8000_0001 => [eax, ebx, feat(Reg::Ecx), feat(Reg::Edx)],
            // Brand string, L1 and L2/L3 cache and TLB descriptors.
            0x8000_0002..=0x8000_0006 => host,
            0x8000_0007 => [0, 0, 0, feat(Reg::Edx)],
            // Address sizes and core count; EDX (INVLPGB, RDPRU) hidden.
            0x8000_0008 => [eax, feat(Reg::Ebx), ecx, 0],
            0x8000_001E if self.facts.vendor == Vendor::Amd => [vcpu_index, ebx, ecx, edx],
            _ => [0; 4],
        }
    }

    /// Leaf 0Dh with XSAVE offered: the offered components (EDX, the upper half of XCR0,
    /// is 0), an area size that holds them all (also for EBX, whatever the guest's XCR0:
    /// larger than needed is safe), the extensions the table passes, and the AVX
    /// component's layout when AVX is offered. Subleaf 1 EBX, the compacted area size for
    /// XCR0 | IA32_XSS, is the same size when XSAVEC shows (no XSS components are offered,
    /// and AVX follows the header directly in both formats); ECX/EDX (XSS bits) are 0.
    fn xsave_leaf(&self, subleaf: u32, host: [u32; 4]) -> [u32; 4] {
        match subleaf {
            0 => [self.xcr0, self.xsave_bytes, self.xsave_bytes, 0],
            1 => {
                let eax = self.features(0xD, 1, Reg::Eax, host[0]);
                let ebx = if eax & XSAVE_COMPACTED != 0 { self.xsave_bytes } else { 0 };
                [eax, ebx, 0, 0]
            }
            2 if self.xcr0 & XCR0_AVX != 0 => host,
            _ => [0; 4],
        }
    }
}

/// The components of [`offered_xcr0`] in the host's supported XCR0 bits `host_xcr0`
/// (CPUID.(0Dh,0):EAX), closed under the XCR0 rules the backends apply: x87 always, AVX
/// only with SSE.
fn offered_components(host_xcr0: u32) -> u32 {
    let mask = (host_xcr0 & offered_xcr0() as u32) | 1;
    if mask & XCR0_SSE == 0 { mask & !XCR0_AVX } else { mask }
}

/// Whether ECX selects a subleaf of `leaf` (SDM Vol. 2A, CPUID: leaves 04h, 07h, 0Bh, 0Dh,
/// 0Fh, 10h, 12h, 14h, 17h, 18h, 1Dh, 1Eh, 1Fh, 20h, 23h, 24h; APM Vol. 3, CPUID:
/// 8000_001Dh, 8000_0020h, 8000_0026h). For every other leaf the CPU ignores ECX.
const fn takes_subleaf(leaf: u32) -> bool {
    matches!(
        leaf,
        0x4 | 0x7
            | 0xB
            | 0xD
            | 0xF
            | 0x10
            | 0x12
            | 0x14
            | 0x17
            | 0x18
            | 0x1D
            | 0x1E
            | 0x1F
            | 0x20
            | 0x23
            | 0x24
            | 0x8000_001D
            | 0x8000_0020
            | 0x8000_0026
    )
}

/// `hz` in kHz, saturated to 32 bits.
fn khz(hz: u64) -> u32 {
    u32::try_from(hz / 1000).unwrap_or(u32::MAX)
}

/// The bits of `leaf`/`subleaf`/`reg` that [`FEATURES`] passes from the host, and the ones
/// it sets.
fn table_mask(leaf: u32, subleaf: u32, reg: Reg, gib_pages: bool) -> (u32, u32) {
    let mut pass = 0;
    let mut set = 0;
    for f in FEATURES.iter().filter(|f| (f.leaf, f.subleaf, f.reg) == (leaf, subleaf, reg)) {
        let bit = 1u32 << f.bit;
        match f.rule {
            Rule::Pass => pass |= bit,
            Rule::PassIfGibPages if gib_pages => pass |= bit,
            Rule::Fixed(true) => set |= bit,
            Rule::PassIfGibPages | Rule::Hide | Rule::Fixed(false) => {}
        }
    }
    (pass, set)
}
