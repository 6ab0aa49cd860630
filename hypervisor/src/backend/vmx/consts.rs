//! VMX encodings the `x86` crate does not define, each once with its SDM section (Intel
//! SDM Vol. 3C, chapters 25 to 29, and Vol. 3D appendices), and the VM-instruction errors.

/// Basic exit reasons (SDM Vol. 3D Appendix C "VMX Basic Exit Reasons").
pub mod exit_reason {
    pub const EXCEPTION_OR_NMI: u16 = 0;
    pub const EXTERNAL_INTERRUPT: u16 = 1;
    pub const TRIPLE_FAULT: u16 = 2;
    pub const CPUID: u16 = 10;
    pub const INTERRUPT_WINDOW: u16 = 7;
    pub const NMI_WINDOW: u16 = 8;
    pub const HLT: u16 = 12;
    pub const VMCALL: u16 = 18;
    pub const CR_ACCESS: u16 = 28;
    pub const IO_INSTRUCTION: u16 = 30;
    pub const RDMSR: u16 = 31;
    pub const WRMSR: u16 = 32;
    pub const INVALID_GUEST_STATE: u16 = 33;
    pub const MSR_LOADING: u16 = 34;
    pub const MACHINE_CHECK: u16 = 41;
    pub const EPT_VIOLATION: u16 = 48;
    pub const EPT_MISCONFIG: u16 = 49;
    pub const PREEMPTION_TIMER: u16 = 52;
    pub const XSETBV: u16 = 55;
    /// Bit 31 of the exit reason: VM-entry failure (SDM §27.8).
    pub const ENTRY_FAILURE: u32 = 1 << 31;
}

/// I/O exit qualification (SDM Vol. 3C Table 28-5).
pub mod io_qual {
    pub const SIZE_MASK: u64 = 0b111;
    pub const IN: u64 = 1 << 3;
    pub const STRING: u64 = 1 << 4;
    /// INS/OUTS with a REP prefix.
    pub const REP: u64 = 1 << 5;
    pub const PORT_SHIFT: u64 = 16;
}

/// VM-exit instruction information for INS/OUTS (SDM Vol. 3C §28.2.5, Table 28-8):
/// address size in bits 9:7 (0: 16-bit, 1: 32-bit, 2: 64-bit), the segment register of
/// OUTS in bits 17:15 (ES, CS, SS, DS, FS, GS; undefined for INS). Reported only where
/// IA32_VMX_BASIC[54] is set (SDM Vol. 3D §A.1).
pub mod io_instr_info {
    pub const ADDRESS_SIZE_SHIFT: u64 = 7;
    pub const SEGMENT_SHIFT: u64 = 15;
    pub const FIELD_MASK: u64 = 0b111;
}
/// IA32_VMX_BASIC bit 54: INS/OUTS exits report the VM-exit instruction information.
pub const VMX_BASIC_INS_OUTS_INFO: u64 = 1 << 54;

/// EPT violation exit qualification (SDM Vol. 3C Table 28-7).
pub mod ept_qual {
    pub const WRITE: u64 = 1 << 1;
    pub const FETCH: u64 = 1 << 2;
}

/// Control-register access exit qualification (SDM Vol. 3C Table 28-3).
pub mod cr_qual {
    pub const CR_MASK: u64 = 0xF;
    pub const TYPE_SHIFT: u64 = 4;
    pub const TYPE_MASK: u64 = 0x3;
    pub const TYPE_MOV_TO_CR: u64 = 0;
    pub const TYPE_MOV_FROM_CR: u64 = 1;
    pub const REG_SHIFT: u64 = 8;
    pub const REG_MASK: u64 = 0xF;
}

/// Segment access rights in the VMCS format (SDM Vol. 3C §25.4.1, Table 25-2): type, S,
/// DPL, P in bits 7:0, AVL/L/D/G in bits 15:12, bit 16 "unusable".
pub mod access_rights {
    pub const REAL_CODE: u32 = 0x009B;
    pub const REAL_DATA: u32 = 0x0093;
    pub const FLAT32_CODE: u32 = 0xC09B;
    pub const FLAT32_DATA: u32 = 0xC093;
    pub const BUSY_TSS32: u32 = 0x008B;
    pub const UNUSABLE: u32 = 1 << 16;
    /// DPL in bits 6:5, and CS.L (bit 13) and CS.D (bit 14).
    pub const DPL_SHIFT: u64 = 5;
    pub const L: u64 = 1 << 13;
    pub const D: u64 = 1 << 14;
}

/// IA32_FEATURE_CONTROL (SDM Vol. 3C §24.7).
pub const FEATURE_CONTROL_LOCKED: u64 = 1 << 0;
pub const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;
/// IA32_VMX_BASIC bit 55: the TRUE control MSRs exist (SDM Vol. 3D §A.1).
pub const VMX_BASIC_TRUE_CTLS: u64 = 1 << 55;
/// Control-register bits, defined once for both backends.
pub use crate::backend::control_regs::{CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR4_VMXE};
/// INVEPT / INVVPID types (SDM Vol. 3C §30.3).
pub const INVEPT_SINGLE_CONTEXT: u64 = 1;
pub const INVEPT_ALL_CONTEXT: u64 = 2;
pub const INVVPID_SINGLE_CONTEXT: u64 = 1;
pub const INVVPID_ALL_CONTEXT: u64 = 2;
/// The power-on PAT (SDM Vol. 3A §13.12.4).
/// Exceptions intercepted only to be reflected into the guest: #DB (vector 1) and #AC
/// (vector 17), which a guest can otherwise raise in a loop that never lets the CPU take an
/// interrupt (CVE-2015-8104, CVE-2015-5307).
pub const DB_VECTOR: u8 = 1;
pub const AC_VECTOR: u8 = 17;
pub const REFLECTED_EXCEPTIONS: u64 = (1 << DB_VECTOR) | (1 << AC_VECTOR);
/// Interruption-information fields (SDM Vol. 3C §25.8.3, §25.9.2): valid bit, type in bits
/// 10:8 (NMI 2, hardware exception 3, privileged software exception 5, software
/// exception 6), error code valid bit 11, vector in bits 7:0.
pub mod intr_info {
    pub const VALID: u64 = 1 << 31;
    pub const TYPE_SHIFT: u64 = 8;
    pub const TYPE_MASK: u64 = 0x7;
    pub const TYPE_NMI: u64 = crate::backend::nmi::TYPE_NMI as u64;
    pub const TYPE_PRIV_SOFTWARE: u64 = 5;
    pub const TYPE_SOFTWARE: u64 = 6;
    pub const ERROR_CODE: u64 = 1 << 11;
    pub const VECTOR_MASK: u64 = 0xFF;
    /// Guest interruptibility state (SDM Vol. 3C §25.4.2, Table 25-3): blocking by STI
    /// (bit 0), by MOV SS (bit 1), by NMI (bit 3).
    pub const INTERRUPTIBILITY_BLOCKING_BY_STI: u64 = 1 << 0;
    pub const INTERRUPTIBILITY_BLOCKING_BY_MOV_SS: u64 = 1 << 1;
    pub const INTERRUPTIBILITY_BLOCKING_BY_NMI: u64 = 1 << 3;
}
/// RFLAGS.IF (SDM Vol. 1 §3.4.3.3).
pub const RFLAGS_IF: u64 = 1 << 9;
/// IA32_KERNEL_GS_BASE, which SWAPGS exchanges with GS.base without an exit.
pub const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;
pub const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;

/// VM-instruction error numbers (SDM Vol. 3C §31.4), as text.
pub fn instruction_error(number: u64) -> &'static str {
    match number {
        1 => "VMCALL executed in VMX root operation",
        2 => "VMCLEAR with invalid physical address",
        3 => "VMCLEAR with VMXON pointer",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        6 => "VMRESUME after VMXOFF",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        10 => "VMPTRLD with VMXON pointer",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        16 => "VM entry with invalid executive-VMCS pointer",
        17 => "VM entry with non-launched executive VMCS",
        18 => "VM entry with executive-VMCS pointer not VMXON pointer",
        19 => "VMCALL with non-clear VMCS",
        20 => "VMCALL with invalid VM-exit control fields",
        22 => "VMCALL with incorrect MSEG revision identifier",
        23 => "VMXOFF under dual-monitor treatment of SMIs and SMM",
        24 => "VMCALL with invalid SMM-monitor features",
        25 => "VM entry with invalid VM-execution control fields in executive VMCS",
        26 => "VM entry with events blocked by MOV SS",
        28 => "invalid operand to INVEPT/INVVPID",
        _ => "unknown VM-instruction error",
    }
}
