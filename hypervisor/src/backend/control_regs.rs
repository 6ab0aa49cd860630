//! What a guest's write to CR0, CR4 or EFER does when a backend carries it out instead of
//! the CPU: the architectural checks (each failure is the #GP the CPU would raise), the
//! mode change it causes (long mode activated or left: EFER.LMA), and whether the
//! PDPTEs must be loaded (PAE paging outside long mode). Intel SDM Vol. 3A §2.5 ("Control
//! Registers"), §2.2.1 (EFER), §4.4.1 (PDPTEs), §9.8.5 (initializing IA-32e mode); AMD
//! APM Vol. 2 §3.1; KVM's `kvm_set_cr0`, `kvm_set_cr4`, `kvm_valid_efer` and
//! `load_pdptrs`.
//!
//! Why it matters: the value a backend writes into the VMCS/VMCB is checked again by VM
//! entry (SDM Vol. 3C §27.3.1, APM Vol. 2 §15.5.1), and real CPUs and KVM's nested checks
//! refuse what the emulators forgive. A guest's bad value must come back as its own #GP,
//! never as a failed entry. Host-tested here, since both emulators skip entry checks.

/// CR0 bits (SDM Vol. 3A §2.5).
pub const CR0_PE: u64 = 1 << 0;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_NW: u64 = 1 << 29;
pub const CR0_CD: u64 = 1 << 30;
pub const CR0_PG: u64 = 1 << 31;
/// CR0 bits 63:32 are reserved.
pub const CR0_RESERVED: u64 = 0xFFFF_FFFF_0000_0000;
/// CR4 bits (SDM Vol. 3A §2.5).
pub const CR4_PSE: u64 = 1 << 4;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_PGE: u64 = 1 << 7;
pub const CR4_LA57: u64 = 1 << 12;
pub const CR4_VMXE: u64 = 1 << 13;
pub const CR4_SMXE: u64 = 1 << 14;
pub const CR4_PCIDE: u64 = 1 << 17;
pub const CR4_SMEP: u64 = 1 << 20;
/// EFER bits (SDM Vol. 3A §2.2.1, APM Vol. 2 §3.1.7).
pub const EFER_SCE: u64 = 1 << 0;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;
/// The EFER bits a guest may set: syscall, long mode, no-execute (LMA is read-only: a
/// write keeps the current value). SVME is not among them: no guest is offered SVM.
pub const EFER_GUEST_BITS: u64 = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;
/// CR0 and CR4 bits whose change under PAE paging reloads the PDPTEs (KVM's
/// `X86_CR0_PDPTR_BITS`, `X86_CR4_PDPTR_BITS`; SDM Vol. 3A §4.4.1).
const CR0_PDPTR_BITS: u64 = CR0_CD | CR0_NW | CR0_PG;
const CR4_PDPTR_BITS: u64 = CR4_PGE | CR4_PSE | CR4_PAE | CR4_SMEP;

/// The guest's paging-related state as the write finds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlRegs {
    /// CR0 and CR4 as the guest sees them (the read shadows on VMX).
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// CS.L: the guest runs 64-bit code.
    pub cs_long: bool,
}

/// The write faults: inject #GP(0) and leave every register as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gp;

/// A write that succeeds: the registers after it, and whether the PDPTEs must be loaded
/// from `regs.cr3` (PAE paging outside long mode, SDM Vol. 3A §4.4.1) before the guest
/// runs; a PDPTE with reserved bits set then turns the write into a #GP ([`pdpte_valid`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub regs: ControlRegs,
    pub load_pdptes: bool,
}

impl ControlRegs {
    pub const fn is_long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0
    }

    /// PAE paging: CR0.PG and CR4.PAE without long mode.
    pub const fn is_pae_paging(&self) -> bool {
        self.cr0 & CR0_PG != 0 && self.cr4 & CR4_PAE != 0 && !self.is_long_mode()
    }
}

/// MOV to CR0 of `value`.
pub fn mov_to_cr0(regs: &ControlRegs, value: u64) -> Result<Accepted, Gp> {
    let old = regs.cr0;
    if value & CR0_RESERVED != 0
        || (value & CR0_NW != 0 && value & CR0_CD == 0)
        || (value & CR0_PG != 0 && value & CR0_PE == 0)
    {
        return Err(Gp);
    }
    let mut next = ControlRegs { cr0: value, ..*regs };
    let enables_paging = old & CR0_PG == 0 && value & CR0_PG != 0;
    let disables_paging = old & CR0_PG != 0 && value & CR0_PG == 0;
    if enables_paging && regs.efer & EFER_LME != 0 {
        // IA-32e mode activation (SDM Vol. 3A §9.8.5): needs PAE, and not from 64-bit code.
        if regs.cr4 & CR4_PAE == 0 || regs.cs_long {
            return Err(Gp);
        }
        next.efer |= EFER_LMA;
    }
    if disables_paging {
        // Paging goes off only from compatibility mode, and never with PCIDs on.
        if (regs.is_long_mode() && regs.cs_long) || regs.cr4 & CR4_PCIDE != 0 {
            return Err(Gp);
        }
        next.efer &= !EFER_LMA;
    }
    let load_pdptes = next.is_pae_paging() && (old ^ value) & CR0_PDPTR_BITS != 0;
    Ok(Accepted { regs: next, load_pdptes })
}

/// MOV to CR4 of `value`; `allowed` holds the bits this guest may set (what the CPU
/// accepts in VMX operation, less the features no guest is offered: VMXE, SMXE).
pub fn mov_to_cr4(regs: &ControlRegs, value: u64, allowed: u64) -> Result<Accepted, Gp> {
    let old = regs.cr4;
    if value & !allowed != 0 {
        return Err(Gp);
    }
    if regs.is_long_mode() && (value & CR4_PAE == 0 || (old ^ value) & CR4_LA57 != 0) {
        return Err(Gp);
    }
    if old & CR4_PCIDE == 0 && value & CR4_PCIDE != 0 && (!regs.is_long_mode() || regs.cr3 & 0xFFF != 0) {
        return Err(Gp);
    }
    let next = ControlRegs { cr4: value, ..*regs };
    let load_pdptes = next.is_pae_paging() && (old ^ value) & CR4_PDPTR_BITS != 0;
    Ok(Accepted { regs: next, load_pdptes })
}

/// WRMSR to EFER of `value`: the new EFER (LMA kept as it is: read-only).
pub fn wrmsr_efer(regs: &ControlRegs, value: u64) -> Result<u64, Gp> {
    if value & !EFER_GUEST_BITS != 0 {
        return Err(Gp);
    }
    if regs.cr0 & CR0_PG != 0 && (regs.efer ^ value) & EFER_LME != 0 {
        return Err(Gp);
    }
    Ok((value & !EFER_LMA) | (regs.efer & EFER_LMA))
}

/// Whether a PDPTE may be loaded (SDM Vol. 3A §4.4.1): not present, or present with its
/// reserved bits (2:1, 8:5, and MAXPHYADDR and up) clear.
pub const fn pdpte_valid(pdpte: u64, phys_bits: u8) -> bool {
    const PRESENT: u64 = 1 << 0;
    let reserved = 0x6 | 0x1E0 | !((1u64 << phys_bits) - 1);
    pdpte & PRESENT == 0 || pdpte & reserved == 0
}

/// Where the four PDPTEs live: the 32-byte-aligned table CR3 points to (PAE paging).
pub const fn pdpt_address(cr3: u64) -> u64 {
    cr3 & 0xFFFF_FFE0
}

#[cfg(test)]
mod tests;
