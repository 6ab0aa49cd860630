//! The register state a vCPU starts with, arch-neutral: the SVM backend writes it into
//! the VMCB save area, the VMX backend into the VMCS guest-state area.

use super::{Entry, EntryMode};

/// A segment register with its hidden part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentState {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    /// Descriptor attributes in the VMCB layout (AMD APM Vol. 2, §15.5.1 "Segment State
    /// in the VMCB"): bits 0-7 are descriptor bits 40-47 (type, S, DPL, P), bits 8-11 are
    /// descriptor bits 52-55 (AVL, L, D/B, G). See [`SegmentState::vmx_access_rights`].
    pub attrib: u16,
}

impl SegmentState {
    /// The same attributes in the VMX access-rights layout (Intel SDM Vol. 3C, §25.4.1,
    /// Table 25-2): bits 0-7 as above, bits 12-15 = descriptor bits 52-55, bit 16 =
    /// unusable (set when the segment is not present).
    #[must_use]
    pub const fn vmx_access_rights(&self) -> u32 {
        let low = (self.attrib & 0xFF) as u32;
        let high = ((self.attrib as u32 >> 8) & 0xF) << 12;
        let unusable = if self.attrib & attrib::P == 0 { 1 << 16 } else { 0 };
        low | high | unusable
    }
}

/// Base and limit of the GDTR or IDTR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableState {
    pub base: u64,
    pub limit: u16,
}

/// Everything a vCPU's registers hold at its first instruction (and again after a reset
/// through the `RESET_VCPU` hypercall). Registers not listed are zero; the FPU/SSE state
/// is the INIT state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitialState {
    pub rip: u64,
    pub rflags: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cs: SegmentState,
    pub ds: SegmentState,
    pub es: SegmentState,
    pub fs: SegmentState,
    pub gs: SegmentState,
    pub ss: SegmentState,
    pub tr: SegmentState,
    pub ldtr: SegmentState,
    pub gdtr: TableState,
    pub idtr: TableState,
}

/// Descriptor attribute bits in the VMCB layout (Intel SDM Vol. 3A §3.4.5, Figure 3-8,
/// shifted down by 40; bits 52-55 shifted down by 44).
mod attrib {
    /// Type: code, execute/read, accessed.
    pub const CODE_XR_ACCESSED: u16 = 0xB;
    /// Type: data, read/write, accessed.
    pub const DATA_RW_ACCESSED: u16 = 0x3;
    /// System type: 32-bit TSS (busy) (SDM Vol. 3A §3.5, Table 3-2).
    pub const TSS32_BUSY: u16 = 0xB;
    /// System type: LDT.
    pub const LDT: u16 = 0x2;
    /// S: code or data segment (not system).
    pub const S: u16 = 1 << 4;
    /// P: present.
    pub const P: u16 = 1 << 7;
    /// D/B: 32-bit default operand size.
    pub const DB: u16 = 1 << 10;
    /// G: limit in 4 KiB units.
    pub const G: u16 = 1 << 11;
}

/// CR0.PE (SDM Vol. 3A §2.5).
const CR0_PE: u64 = 1 << 0;
/// CR0.ET: reads as 1 on every CPU since the 486.
const CR0_ET: u64 = 1 << 4;
/// RFLAGS bit 1 is reserved and always 1.
const RFLAGS_FIXED: u64 = 1 << 1;

/// Selectors given to the flat 32-bit segments (the guest has no GDT yet; PVH and
/// multiboot leave the selector values unspecified).
const SELECTOR_CODE32: u16 = 0x08;
const SELECTOR_DATA32: u16 = 0x10;

impl Entry {
    /// The state of vCPU `vcpu_index` of `vcpu_count` at entry: the boot protocol's
    /// registers plus Taproot's multi-vCPU convention (`esi` = index, `edi` = count; see
    /// `taproot_guest_abi::boot`).
    #[must_use]
    pub fn initial_state(&self, vcpu_index: u32, vcpu_count: u32) -> InitialState {
        let (rip, cr0, cs, data, tr) = match self.mode {
            EntryMode::RealMode16 { cs, ip } => {
                let real = |selector: u16, kind: u16| SegmentState {
                    selector,
                    base: u64::from(selector) << 4,
                    limit: 0xFFFF,
                    attrib: kind | attrib::S | attrib::P,
                };
                let tr = SegmentState {
                    selector: 0,
                    base: 0,
                    limit: 0xFFFF,
                    attrib: attrib::TSS32_BUSY | attrib::P,
                };
                // Hardware leaves CR0.CD and NW set after reset and firmware clears them;
                // there is no firmware here, so the guest starts with caches on.
                (
                    u64::from(ip),
                    CR0_ET,
                    real(cs, attrib::CODE_XR_ACCESSED),
                    real(0, attrib::DATA_RW_ACCESSED),
                    tr,
                )
            }
            EntryMode::Protected32 { eip } => {
                let flat = |selector: u16, kind: u16| SegmentState {
                    selector,
                    base: 0,
                    limit: 0xFFFF_FFFF,
                    attrib: kind | attrib::S | attrib::P | attrib::DB | attrib::G,
                };
                // PVH: "TR: must be a 32-bit TSS (active) with a base of '0' and a limit
                // of '0x67'"; multiboot leaves TR undefined, so the same does.
                let tr = SegmentState {
                    selector: 0,
                    base: 0,
                    limit: 0x67,
                    attrib: attrib::TSS32_BUSY | attrib::P,
                };
                (
                    u64::from(eip),
                    CR0_PE | CR0_ET,
                    flat(SELECTOR_CODE32, attrib::CODE_XR_ACCESSED),
                    flat(SELECTOR_DATA32, attrib::DATA_RW_ACCESSED),
                    tr,
                )
            }
        };
        let ldtr = SegmentState { selector: 0, base: 0, limit: 0xFFFF, attrib: attrib::LDT | attrib::P };
        InitialState {
            rip,
            rflags: RFLAGS_FIXED,
            rax: u64::from(self.eax),
            rbx: u64::from(self.ebx),
            rcx: 0,
            rdx: 0,
            rsi: u64::from(vcpu_index),
            rdi: u64::from(vcpu_count),
            rsp: 0,
            rbp: 0,
            cr0,
            cr3: 0,
            cr4: 0,
            efer: 0,
            cs,
            ds: data,
            es: data,
            fs: data,
            gs: data,
            ss: data,
            tr,
            ldtr,
            // Real mode: the interrupt vector table at 0. Protected mode: none yet (PVH and
            // multiboot leave GDTR and IDTR to the guest).
            gdtr: TableState { base: 0, limit: 0xFFFF },
            idtr: TableState { base: 0, limit: 0xFFFF },
        }
    }
}
