//! CR0 and CR4 as the guest sees them. VMX fixes some bits of both to one while a guest
//! runs (NE, VMXE: SDM Vol. 3C §24.8); the guest/host masks make those bits host-owned,
//! the read shadows show the guest its own values for them, and a MOV to CR0 or CR4 that
//! would change one of them exits here, where the guest's value is kept in the shadow and
//! the fixed bits are added back. CR0.PG is host-owned too ([`CR0_HOST_OWNED`]), as in
//! KVM: every paging switch exits here, so long mode comes and goes (EFER.LMA and the
//! "IA-32e mode guest" entry control, which VM entry checks against each other: SDM Vol.
//! 3C §27.3.1.1) and PAE paging gets its PDPTEs in the VMCS (`pdpte`) only by the host's
//! hand, never by the CPU changing LMA behind an entry control that no longer matches.
//! Every other bit, CR0.WP and CR4.PGE among them, is the guest's own (no exits: the CPU
//! checks those MOVs itself). A MOV that exits does everything the CPU would have done,
//! checks included (`backend::control_regs`): a bad value is the guest's #GP, never a VM
//! entry that fails.
//!
//! CR8 (the TPR) exits both ways (CR8-load and CR8-store exiting), so a guest's `mov cr8`
//! never reaches the physical local APIC, whose TPR stays the host's 0: the guest's value
//! lives here, four bits wide.

#![deny(unsafe_code)]

use super::consts::*;
use super::cpu::VmxHost;
use super::pdpte::{self, Pdptes};
use super::vmcs::Current;
use crate::addr::Gpa;
use crate::backend::control_regs::{self, ControlRegs};
use crate::backend::{BackendError, GuestRegs};
use x86::vmx::vmcs::control::EntryControls;
use x86::vmx::vmcs::{control, guest, ro};

/// The CR0 bits the host owns (the guest/host mask): NE, which VMX fixes, and PG.
pub const CR0_HOST_OWNED: u64 = CR0_NE | CR0_PG;
/// The CR4 bits the host owns: VMXE, which VMX fixes.
pub const CR4_HOST_OWNED: u64 = CR4_VMXE;

/// The guest-visible values of CR0 and CR4 (the read shadows).
#[derive(Clone, Copy, Debug, Default)]
pub struct CrShadows {
    pub cr0: u64,
    pub cr4: u64,
    /// The guest's task priority (CR8[3:0]).
    pub cr8: u64,
}

/// Gives the guest `value` as its CR0: the shadow shows it, the real CR0 adds the bits VMX
/// fixes (with unrestricted guest, PE and PG may be 0: SDM §26.3.1.1).
pub fn set_cr0(v: &Current, host: &VmxHost, shadows: &mut CrShadows, value: u64) -> Result<(), BackendError> {
    shadows.cr0 = value;
    let fixed0 = host.cr0_fixed0 & !(CR0_PE | CR0_PG);
    v.write(guest::CR0, value | fixed0)?;
    v.write(control::CR0_READ_SHADOW, value)
}

/// As [`set_cr0`], for CR4.
pub fn set_cr4(v: &Current, host: &VmxHost, shadows: &mut CrShadows, value: u64) -> Result<(), BackendError> {
    shadows.cr4 = value;
    v.write(guest::CR4, value | host.cr4_fixed0)?;
    v.write(control::CR4_READ_SHADOW, value)
}

/// What a control-register access exit came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrExit {
    /// Carried out: skip the instruction.
    Emulated,
    /// The write faults as on a CPU (`backend::control_regs`): inject #GP(0), change
    /// nothing, leave RIP on the instruction.
    Fault,
    /// The PDPTEs the write needs are in a page the EPT does not map yet: handle it as a
    /// nested page fault there; the guest then executes the MOV again.
    NeedsPage(Gpa),
    /// Not an access this module handles.
    NotHandled,
}

/// Emulates a control-register access exit if it is a MOV to CR0 or CR4 (the only ones
/// the masks make exit) or a MOV to or from CR8. A MOV to CR0/CR4 goes through the
/// architectural checks of `backend::control_regs`, activates or leaves long mode (EFER.LMA
/// and the "IA-32e mode guest" entry control, which VM entry checks against each other:
/// SDM Vol. 3C §27.3.1.1) and loads the PDPTEs under PAE paging, read through `eptp`.
pub fn emulate(
    v: &Current,
    host: &VmxHost,
    shadows: &mut CrShadows,
    regs: &mut GuestRegs,
    eptp: u64,
) -> CrExit {
    let qual = v.read(ro::EXIT_QUALIFICATION);
    let cr = qual & cr_qual::CR_MASK;
    let kind = (qual >> cr_qual::TYPE_SHIFT) & cr_qual::TYPE_MASK;
    let reg = (qual >> cr_qual::REG_SHIFT) & cr_qual::REG_MASK;
    match (cr, kind) {
        (8, cr_qual::TYPE_MOV_TO_CR) => {
            shadows.cr8 = read_reg(v, regs, reg) & 0xF;
            return CrExit::Emulated;
        }
        (8, cr_qual::TYPE_MOV_FROM_CR) => {
            return if write_reg(v, regs, reg, shadows.cr8) { CrExit::Emulated } else { CrExit::NotHandled };
        }
        (0 | 4, cr_qual::TYPE_MOV_TO_CR) => {}
        _ => return CrExit::NotHandled,
    }
    let value = read_reg(v, regs, reg);
    let now = control_regs(v, shadows);
    let accepted = if cr == 0 {
        control_regs::mov_to_cr0(&now, value)
    } else {
        control_regs::mov_to_cr4(&now, value, guest_cr4_bits(host))
    };
    let Ok(accepted) = accepted else { return CrExit::Fault };
    let pdptes = if accepted.load_pdptes {
        match pdpte::read(eptp, accepted.regs.cr3, host_phys_bits()) {
            Pdptes::Loaded(pdptes) => Some(pdptes),
            Pdptes::Invalid => return CrExit::Fault,
            Pdptes::NotMapped(gpa) => return CrExit::NeedsPage(gpa),
        }
    } else {
        None
    };
    match commit(v, host, shadows, &now, &accepted.regs, pdptes) {
        Ok(()) => CrExit::Emulated,
        Err(_) => CrExit::NotHandled,
    }
}

/// The guest's control registers now: the bits it owns from the VMCS (it changes them
/// without exits), the host-owned ones from the shadows.
fn control_regs(v: &Current, shadows: &CrShadows) -> ControlRegs {
    const CS_L: u64 = 1 << 13;
    ControlRegs {
        cr0: (v.read(guest::CR0) & !CR0_HOST_OWNED) | (shadows.cr0 & CR0_HOST_OWNED),
        cr3: v.read(guest::CR3),
        cr4: (v.read(guest::CR4) & !CR4_HOST_OWNED) | (shadows.cr4 & CR4_HOST_OWNED),
        efer: v.read(guest::IA32_EFER_FULL),
        cs_long: v.read(guest::CS_ACCESS_RIGHTS) & CS_L != 0,
    }
}

/// The CR4 bits a guest may set: those VMX operation allows (IA32_VMX_CR4_FIXED1, SDM Vol.
/// 3D §A.8), less VMXE and SMXE (no guest is offered VMX or SMX).
fn guest_cr4_bits(host: &VmxHost) -> u64 {
    host.cr4_fixed1 & !(control_regs::CR4_VMXE | control_regs::CR4_SMXE)
}

/// The host's physical-address width (CPUID 8000_0008h EAX[7:0]), which bounds PDPTE
/// addresses.
fn host_phys_bits() -> u8 {
    crate::backend::host::cpuid(0x8000_0008, 0)[0] as u8
}

/// Writes an accepted CR0/CR4 change into the VMCS: the registers and shadows, EFER and
/// the IA-32e mode entry control if long mode came or went, the PDPTEs if loaded.
fn commit(
    v: &Current,
    host: &VmxHost,
    shadows: &mut CrShadows,
    old: &ControlRegs,
    new: &ControlRegs,
    pdptes: Option<[u64; 4]>,
) -> Result<(), BackendError> {
    if new.cr0 != old.cr0 {
        set_cr0(v, host, shadows, new.cr0)?;
    }
    if new.cr4 != old.cr4 {
        set_cr4(v, host, shadows, new.cr4)?;
    }
    if new.efer != old.efer {
        v.write(guest::IA32_EFER_FULL, new.efer)?;
        let ia32e = EntryControls::IA32E_MODE_GUEST.bits() as u64;
        let controls = v.read(control::VMENTRY_CONTROLS) & !ia32e;
        v.write(control::VMENTRY_CONTROLS, controls | if new.is_long_mode() { ia32e } else { 0 })?;
    }
    if let Some(pdptes) = pdptes {
        for (field, pdpte) in [guest::PDPTE0_FULL, guest::PDPTE1_FULL, guest::PDPTE2_FULL, guest::PDPTE3_FULL]
            .into_iter()
            .zip(pdptes)
        {
            v.write(field, pdpte)?;
        }
    }
    Ok(())
}

/// The general-purpose register numbered `reg` in an exit qualification (SDM Table 28-3).
fn read_reg(v: &Current, regs: &GuestRegs, reg: u64) -> u64 {
    match reg {
        0 => regs.rax,
        1 => regs.rcx,
        2 => regs.rdx,
        3 => regs.rbx,
        4 => v.read(guest::RSP),
        5 => regs.rbp,
        6 => regs.rsi,
        7 => regs.rdi,
        8 => regs.r8,
        9 => regs.r9,
        10 => regs.r10,
        11 => regs.r11,
        12 => regs.r12,
        13 => regs.r13,
        14 => regs.r14,
        _ => regs.r15,
    }
}

/// Writes `value` to the register numbered `reg`; `false` if the VMCS refused RSP.
fn write_reg(v: &Current, regs: &mut GuestRegs, reg: u64, value: u64) -> bool {
    let slot = match reg {
        0 => &mut regs.rax,
        1 => &mut regs.rcx,
        2 => &mut regs.rdx,
        3 => &mut regs.rbx,
        4 => return v.write(guest::RSP, value).is_ok(),
        5 => &mut regs.rbp,
        6 => &mut regs.rsi,
        7 => &mut regs.rdi,
        8 => &mut regs.r8,
        9 => &mut regs.r9,
        10 => &mut regs.r10,
        11 => &mut regs.r11,
        12 => &mut regs.r12,
        13 => &mut regs.r13,
        14 => &mut regs.r14,
        _ => &mut regs.r15,
    };
    *slot = value;
    true
}
