//! The MSR policy: what a guest's RDMSR and WRMSR of an intercepted MSR do, the same in
//! both backends. Every MSR not named here raises #GP(0), as on a CPU without it.
//!
//! Not here but in the local APIC (`devices::irqchip`, which the exit path asks first,
//! `Irqchip::is_lapic_msr`): IA32_APIC_BASE, IA32_TSC_DEADLINE and the x2APIC range
//! 0x800-0x8FF.
//!
//! Answered here (per vCPU, [`VcpuMsrs`]):
//! - IA32_MTRRCAP: 0 (no variable ranges, no fixed ranges, no write-combining), read-only.
//! - IA32_MTRR_DEF_TYPE: write-back default with MTRRs enabled (E, type 6); writable with
//!   a valid type (UC, WT, WP, WB: WC is not offered) and E; FE and reserved bits #GP.
//!   Nothing reads it back into the nested tables: guest memory is write-back anyway.
//! - IA32_MISC_ENABLE: fast strings on, BTS and PEBS unavailable; the fast-strings bit is
//!   writable, a write that changes any other bit raises #GP.
//! - IA32_SPEC_CTRL, IA32_PRED_CMD, IA32_ARCH_CAPABILITIES: #GP, because the CPUID policy
//!   hides their feature bits (a host test keeps the two in step).
//! - MSR_K8_INT_PENDING_MSG (AMD, 0xC001_0055): reads 0 (no C1E, no SMI on a pending
//!   interrupt), writes #GP. Linux reads it on the family 0Fh/10h CPUs with erratum 400
//!   (QEMU TCG's model), and KVM answers 0 too.
//! - MSR_PLATFORM_INFO: #GP; the CPUID policy publishes the TSC frequency instead (leaves
//!   15h/16h where the host has them, 4000_0010h).
//!
//! Not here, because they never exit: IA32_PAT (both backends pass it through and switch
//! it, VMCS guest PAT / VMCB G_PAT, reset 0x0007_0406_0007_0406; the CPU itself raises
//! #GP for a reserved memory type), EFER (SVM keeps SVME to itself in the backend),
//! SYSENTER, STAR/LSTAR/CSTAR/SFMASK and the FS/GS bases.
//!
//! MSR numbers and bits: Intel SDM Vol. 4, Table 2-2 (architectural MSRs); MTRRs: SDM Vol.
//! 3A §12.11.

pub use crate::devices::lapic::Gp;

pub const IA32_SPEC_CTRL: u32 = 0x48;
pub const IA32_PRED_CMD: u32 = 0x49;
pub const IA32_MTRRCAP: u32 = 0xFE;
pub const MSR_PLATFORM_INFO: u32 = 0xCE;
pub const IA32_ARCH_CAPABILITIES: u32 = 0x10A;
pub const IA32_MISC_ENABLE: u32 = 0x1A0;
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2FF;
/// AMD BKDG for family 10h, MSRC001_0055 (Interrupt Pending and CMP-Halt).
pub const MSR_K8_INT_PENDING_MSG: u32 = 0xC001_0055;

/// IA32_MTRR_DEF_TYPE: the default memory type (7:0), fixed ranges enabled FE (10), MTRRs
/// enabled E (11).
const MTRR_DEF_TYPE_TYPE: u64 = 0xFF;
const MTRR_DEF_TYPE_E: u64 = 1 << 11;
/// Memory type encodings (SDM Vol. 3A §12.11.1, Table 12-8).
const MEMORY_TYPE_UC: u64 = 0;
const MEMORY_TYPE_WT: u64 = 4;
const MEMORY_TYPE_WP: u64 = 5;
const MEMORY_TYPE_WB: u64 = 6;
/// IA32_MTRR_DEF_TYPE after reset as Taproot gives it: MTRRs on, write-back default.
pub const MTRR_DEF_TYPE_RESET: u64 = MTRR_DEF_TYPE_E | MEMORY_TYPE_WB;

/// IA32_MISC_ENABLE: fast-strings enable (0), BTS unavailable (11), PEBS unavailable (12).
const MISC_ENABLE_FAST_STRINGS: u64 = 1 << 0;
const MISC_ENABLE_BTS_UNAVAILABLE: u64 = 1 << 11;
const MISC_ENABLE_PEBS_UNAVAILABLE: u64 = 1 << 12;
pub const MISC_ENABLE_RESET: u64 =
    MISC_ENABLE_FAST_STRINGS | MISC_ENABLE_BTS_UNAVAILABLE | MISC_ENABLE_PEBS_UNAVAILABLE;

/// The MSR state of one vCPU that lives in the VM layer (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuMsrs {
    mtrr_def_type: u64,
    misc_enable: u64,
}

impl VcpuMsrs {
    /// The state of a vCPU at power-on.
    #[must_use]
    pub fn new() -> Self {
        Self { mtrr_def_type: MTRR_DEF_TYPE_RESET, misc_enable: MISC_ENABLE_RESET }
    }

    /// RDMSR `msr`.
    pub fn read(&self, msr: u32) -> Result<u64, Gp> {
        match msr {
            IA32_MTRRCAP | MSR_K8_INT_PENDING_MSG => Ok(0),
            IA32_MTRR_DEF_TYPE => Ok(self.mtrr_def_type),
            IA32_MISC_ENABLE => Ok(self.misc_enable),
            _ => Err(Gp),
        }
    }

    /// WRMSR `msr` with `value` (EDX:EAX). On `Err` nothing changed.
    pub fn write(&mut self, msr: u32, value: u64) -> Result<(), Gp> {
        match msr {
            IA32_MTRR_DEF_TYPE if valid_mtrr_def_type(value) => {
                self.mtrr_def_type = value;
                Ok(())
            }
            IA32_MISC_ENABLE if (value ^ self.misc_enable) & !MISC_ENABLE_FAST_STRINGS == 0 => {
                self.misc_enable = value;
                Ok(())
            }
            _ => Err(Gp),
        }
    }
}

impl Default for VcpuMsrs {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `value` may be written to IA32_MTRR_DEF_TYPE: only the type and E, and a type
/// MTRRCAP allows.
fn valid_mtrr_def_type(value: u64) -> bool {
    value & !(MTRR_DEF_TYPE_TYPE | MTRR_DEF_TYPE_E) == 0
        && matches!(
            value & MTRR_DEF_TYPE_TYPE,
            MEMORY_TYPE_UC | MEMORY_TYPE_WT | MEMORY_TYPE_WP | MEMORY_TYPE_WB
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtrrs_have_no_ranges_and_a_write_back_default() {
        let mut m = VcpuMsrs::new();
        assert_eq!(m.read(IA32_MTRRCAP), Ok(0));
        assert_eq!(m.write(IA32_MTRRCAP, 0), Err(Gp), "read-only");
        assert_eq!(m.read(IA32_MTRR_DEF_TYPE), Ok(0x806));
        assert_eq!(m.write(IA32_MTRR_DEF_TYPE, 0), Ok(()), "MTRRs off, UC");
        assert_eq!(m.read(IA32_MTRR_DEF_TYPE), Ok(0));
        assert_eq!(m.write(IA32_MTRR_DEF_TYPE, 0x804), Ok(()));
        for bad in [0x801, 0x802, 0x807, 0xC06, 0x1806, 1 << 40] {
            assert_eq!(m.write(IA32_MTRR_DEF_TYPE, bad), Err(Gp), "{bad:#x}");
        }
        assert_eq!(m.read(IA32_MTRR_DEF_TYPE), Ok(0x804), "a refused write changes nothing");
        for range in [0x200, 0x201, 0x250, 0x258, 0x268] {
            assert_eq!(m.read(range), Err(Gp), "MTRR {range:#x} does not exist");
        }
    }

    #[test]
    fn misc_enable_has_fast_strings_and_only_that_bit_is_writable() {
        let mut m = VcpuMsrs::new();
        assert_eq!(m.read(IA32_MISC_ENABLE), Ok(0x1801));
        assert_eq!(m.write(IA32_MISC_ENABLE, 0x1800), Ok(()));
        assert_eq!(m.read(IA32_MISC_ENABLE), Ok(0x1800));
        assert_eq!(m.write(IA32_MISC_ENABLE, 0x1801 | 1 << 22), Err(Gp), "no CPUID limit");
        assert_eq!(m.write(IA32_MISC_ENABLE, 0x0001), Err(Gp));
    }

    #[test]
    fn speculation_msrs_raise_gp_and_the_cpuid_policy_hides_their_features() {
        let mut m = VcpuMsrs::new();
        for msr in [IA32_SPEC_CTRL, IA32_PRED_CMD, IA32_ARCH_CAPABILITIES] {
            assert_eq!(m.read(msr), Err(Gp), "{msr:#x}");
            assert_eq!(m.write(msr, 0), Err(Gp), "{msr:#x}");
            assert_eq!(m.write(msr, 1), Err(Gp), "{msr:#x}");
        }
        for name in crate::cpuid::SPECULATION_FEATURES {
            assert!(crate::cpuid::feature(name).is_some(), "{name} is in the CPUID table");
            assert!(!crate::cpuid::may_offer(name), "{name}: offered while its MSR raises #GP");
        }
    }

    #[test]
    fn the_amd_interrupt_pending_msr_reads_zero_and_refuses_writes() {
        let mut m = VcpuMsrs::new();
        assert_eq!(m.read(MSR_K8_INT_PENDING_MSG), Ok(0));
        assert_eq!(m.write(MSR_K8_INT_PENDING_MSG, 1 << 27), Err(Gp));
    }

    #[test]
    fn everything_else_raises_gp() {
        let mut m = VcpuMsrs::new();
        for msr in [MSR_PLATFORM_INFO, 0x3A, 0x8B, 0x17, 0x1D9, 0xC001_0015, 0x4000_0000, 0xDEAD_BEEF] {
            assert_eq!(m.read(msr), Err(Gp), "{msr:#x}");
            assert_eq!(m.write(msr, 0), Err(Gp), "{msr:#x}");
        }
    }
}
