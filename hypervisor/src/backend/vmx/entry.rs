//! The VMCS guest state of an [`EntryMode`]: segments, CR0/CR4/CR3, EFER, GDTR, RIP and
//! the "IA-32e mode guest" entry control, as `setup::write_guest_state` writes them.
//!
//! The 64-bit entry against VM entry's guest-state checks (SDM Vol. 3C §27.3.1, which
//! KVM's `nested_vmx_check_guest_state` and real CPUs enforce):
//! - IA-32e mode guest = 1 needs CR0.PG = 1 and CR4.PAE = 1 (§27.3.1.1); with "load
//!   IA32_EFER", EFER.LMA must equal IA-32e mode guest and, CR0.PG being 1, EFER.LME too;
//! - CS.L = 1 needs CS.D = 0 (§27.3.1.2); SS.DPL = CS.RPL = 0; data segments usable,
//!   accessed, read/write;
//! - TR: type 11 (a busy 64-bit TSS in IA-32e mode), S = 0, present; LDTR unusable;
//! - RIP canonical; RFLAGS bit 1 set, IF clear (interrupts off, as the protocol asks).
//!
//! CR0.NE and CR4.VMXE are forced by `cr` in every mode (the guest sees its own values).

#![deny(unsafe_code)]

use super::consts::{CR0_ET, CR0_PE, CR0_PG, access_rights};
use crate::backend::{EntryMode, LONG64_CS, LONG64_DS};

/// CR4.PAE (SDM Vol. 3A §2.5).
const CR4_PAE: u64 = 1 << 5;
/// IA32_EFER.LME, IA32_EFER.LMA (SDM Vol. 3A §2.2.1).
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// 64-bit code: type 11 (execute/read, accessed), S, P, L=1, D=0, G=1 (SDM Vol. 3C
/// §24.4.1, Table 24-2).
const LONG64_CODE_AR: u32 = 0xA09B;

/// One segment register's selector, limit and access rights (base 0: flat).
#[derive(Clone, Copy)]
pub(super) struct Seg {
    pub selector: u64,
    pub base: u64,
    pub limit: u64,
    pub access_rights: u32,
}

/// What `write_guest_state` writes for a mode.
pub(super) struct EntryCpu {
    pub cs: Seg,
    pub data: Seg,
    pub gdt_base: u64,
    pub gdt_limit: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub ia32e_mode: bool,
    pub rip: u64,
}

pub(super) fn entry_cpu(mode: EntryMode) -> EntryCpu {
    let flat = |selector: u16, access_rights| Seg {
        selector: u64::from(selector),
        base: 0,
        limit: 0xFFFF_FFFF,
        access_rights,
    };
    let base = EntryCpu {
        cs: flat(0x08, access_rights::FLAT32_CODE),
        data: flat(0x10, access_rights::FLAT32_DATA),
        gdt_base: 0,
        gdt_limit: 0xFFFF,
        cr0: CR0_ET | CR0_PE,
        cr3: 0,
        cr4: 0,
        efer: 0,
        ia32e_mode: false,
        rip: 0,
    };
    match mode {
        EntryMode::Real16 { cs, ip } => EntryCpu {
            cs: Seg {
                selector: u64::from(cs),
                base: u64::from(cs) << 4,
                limit: 0xFFFF,
                access_rights: access_rights::REAL_CODE,
            },
            data: Seg { selector: 0, base: 0, limit: 0xFFFF, access_rights: access_rights::REAL_DATA },
            cr0: CR0_ET,
            rip: u64::from(ip),
            ..base
        },
        EntryMode::Protected32 { eip } => EntryCpu { rip: u64::from(eip), ..base },
        EntryMode::Long64 { rip, cr3, gdt_base, gdt_limit } => EntryCpu {
            cs: flat(LONG64_CS, LONG64_CODE_AR),
            data: flat(LONG64_DS, access_rights::FLAT32_DATA),
            gdt_base,
            gdt_limit: u64::from(gdt_limit),
            cr0: CR0_ET | CR0_PE | CR0_PG,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            ia32e_mode: true,
            rip,
        },
    }
}
