//! CR0 and CR4 as the guest sees them. VMX fixes some bits of both to one while a guest
//! runs (NE, VMXE: SDM Vol. 3C §24.8); the guest/host masks make exactly those bits
//! host-owned, the read shadows show the guest its own values for them, and a MOV to CR0
//! or CR4 that would change one of them exits here, where the guest's value is kept in the
//! shadow and the fixed bits are added back. Every other bit, CR0.WP and CR4.PGE among
//! them, is the guest's own (no exits).
//!
//! CR8 (the TPR) exits both ways (CR8-load and CR8-store exiting), so a guest's `mov cr8`
//! never reaches the physical local APIC, whose TPR stays the host's 0: the guest's value
//! lives here, four bits wide.

#![deny(unsafe_code)]

use super::consts::*;
use super::cpu::VmxHost;
use super::vmcs::Current;
use crate::backend::{BackendError, GuestRegs};
use x86::vmx::vmcs::{control, guest, ro};

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

/// Emulates a control-register access exit if it is a MOV to CR0 or CR4 (the only ones
/// the masks make exit) or a MOV to or from CR8. Returns `true` if it did; the caller then
/// skips the instruction.
pub fn emulate(v: &Current, host: &VmxHost, shadows: &mut CrShadows, regs: &mut GuestRegs) -> bool {
    let qual = v.read(ro::EXIT_QUALIFICATION);
    let cr = qual & cr_qual::CR_MASK;
    let kind = (qual >> cr_qual::TYPE_SHIFT) & cr_qual::TYPE_MASK;
    let reg = (qual >> cr_qual::REG_SHIFT) & cr_qual::REG_MASK;
    match (cr, kind) {
        (8, cr_qual::TYPE_MOV_TO_CR) => {
            shadows.cr8 = read_reg(v, regs, reg) & 0xF;
            return true;
        }
        (8, cr_qual::TYPE_MOV_FROM_CR) => return write_reg(v, regs, reg, shadows.cr8),
        (0 | 4, cr_qual::TYPE_MOV_TO_CR) => {}
        _ => return false,
    }
    let value = read_reg(v, regs, reg);
    let result = if cr == 0 { set_cr0(v, host, shadows, value) } else { set_cr4(v, host, shadows, value) };
    result.is_ok()
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
