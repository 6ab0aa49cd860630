//! The VMCB state save area of an [`EntryMode`]: segments, control registers, EFER,
//! GDTR and RIP, as `reset` writes them. VMRUN's consistency checks (APM Vol. 2 §15.5.1,
//! which KVM's `nested_vmcb_check_save` enforces) that concern them: EFER.SVME set;
//! with EFER.LME and CR0.PG both set, CR4.PAE and CR0.PE set too; CS.L and CS.D not both
//! set. TR is a busy TSS in every mode (type 11 is the busy 64-bit TSS in long mode).

use super::vmcb::{self, Segment};
use crate::backend::{EntryMode, LONG64_CS, LONG64_DS};

/// CR0.PE, CR0.ET, CR0.PG (APM Vol. 2 §3.1.1).
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
/// CR4.PAE (APM Vol. 2 §3.1.3).
const CR4_PAE: u64 = 1 << 5;
/// EFER.LME, EFER.LMA (APM Vol. 2 §3.1.7).
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// 64-bit code: P, S, execute/read, accessed; L=1, D=0, G=1 (APM Vol. 2 §4.8.1).
const LONG64_CODE: Segment = Segment { selector: LONG64_CS, attrib: 0xA9B, limit: 0xFFFF_FFFF, base: 0 };
/// Flat data: P, S, read/write, accessed; B=1, G=1.
const LONG64_DATA: Segment = Segment { selector: LONG64_DS, attrib: 0xC93, limit: 0xFFFF_FFFF, base: 0 };

/// What `reset` writes for a mode.
pub(super) struct EntryCpu {
    pub cs: Segment,
    pub data: Segment,
    pub gdtr: Segment,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub rip: u64,
}

pub(super) fn entry_cpu(mode: EntryMode) -> EntryCpu {
    let flat = EntryCpu {
        cs: Segment::FLAT32_CODE,
        data: Segment::FLAT32_DATA,
        gdtr: Segment::table(0xFFFF, 0),
        cr0: CR0_ET,
        cr3: 0,
        cr4: 0,
        efer: vmcb::EFER_SVME,
        rip: 0,
    };
    match mode {
        EntryMode::Real16 { cs, ip } => EntryCpu {
            cs: Segment::real_mode_code(cs),
            data: Segment::real_mode_data(0),
            rip: u64::from(ip),
            ..flat
        },
        EntryMode::Protected32 { eip } => EntryCpu { cr0: CR0_ET | CR0_PE, rip: u64::from(eip), ..flat },
        EntryMode::Long64 { rip, cr3, gdt_base, gdt_limit } => EntryCpu {
            cs: LONG64_CODE,
            data: LONG64_DATA,
            gdtr: Segment::table(u32::from(gdt_limit), gdt_base),
            cr0: CR0_ET | CR0_PE | CR0_PG,
            cr3,
            cr4: CR4_PAE,
            efer: vmcb::EFER_SVME | EFER_LME | EFER_LMA,
            rip,
        },
    }
}
