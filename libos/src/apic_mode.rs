//! Which mode the local APICs run in and how IA32_APIC_BASE gets there (pure; host-tested):
//! `arch::x86_64::apic` applies it and accesses the registers.
//!
//! x2APIC when the firmware handed the APIC over in that mode (EXTD set: leaving it needs a
//! disable, which loses the APIC's state) or the CPU offers it (CPUID.01H:ECX[21]); xAPIC
//! at the firmware's MMIO base otherwise. Entering x2APIC from a disabled APIC goes through
//! xAPIC first: disabled to x2APIC directly is an invalid transition (#GP) (Intel SDM Vol.
//! 3A §11.12.5, Figure 11-28).

/// IA32_APIC_BASE (SDM Vol. 3A §11.4.4, §11.12.1): bit 10 x2APIC enable (EXTD), bit 11
/// global enable, bits 12+ the xAPIC MMIO base.
pub const IA32_APIC_BASE: u32 = 0x1B;
pub const APIC_BASE_EXTD: u64 = 1 << 10;
pub const APIC_BASE_ENABLE: u64 = 1 << 11;
pub const APIC_BASE_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// CPUID.01H:ECX[21]: the CPU supports x2APIC mode (SDM §11.12.1).
pub const CPUID_1_ECX_X2APIC: u32 = 1 << 21;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// xAPIC: 32-bit MMIO registers in the page at `base`, 8-bit APIC IDs.
    XApic { base: u64 },
    /// x2APIC: MSRs 0x800 + offset / 16, 32-bit APIC IDs.
    X2Apic,
}

impl ApicMode {
    /// The machine's mode, from the boot CPU's IA32_APIC_BASE and CPUID.01H:ECX.
    pub fn choose(apic_base: u64, cpuid_1_ecx: u32) -> Self {
        if apic_base & APIC_BASE_EXTD != 0 || cpuid_1_ecx & CPUID_1_ECX_X2APIC != 0 {
            ApicMode::X2Apic
        } else {
            ApicMode::XApic { base: apic_base & APIC_BASE_MASK }
        }
    }

    /// `x2apic` or `xapic`, for the boot log.
    pub fn name(self) -> &'static str {
        match self {
            ApicMode::XApic { .. } => "xapic",
            ApicMode::X2Apic => "x2apic",
        }
    }

    /// The IA32_APIC_BASE values to write, in order, to bring a CPU whose register holds
    /// `current` into this mode, enabled (the base kept).
    pub fn enable_writes(self, current: u64) -> impl Iterator<Item = u64> {
        let enabled = current | APIC_BASE_ENABLE;
        let xapic = (current & APIC_BASE_ENABLE == 0).then_some(enabled);
        let x2apic =
            (self == ApicMode::X2Apic && current & APIC_BASE_EXTD == 0).then_some(enabled | APIC_BASE_EXTD);
        xapic.into_iter().chain(x2apic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const BASE: u64 = 0xFEE0_0000;
    const BSP: u64 = 1 << 8;

    #[test]
    fn a_cpu_that_offers_x2apic_gets_it() {
        assert_eq!(ApicMode::choose(BASE | APIC_BASE_ENABLE, CPUID_1_ECX_X2APIC), ApicMode::X2Apic);
    }

    #[test]
    fn without_x2apic_the_firmwares_mmio_base_is_used() {
        let mode = ApicMode::choose(BASE | BSP | APIC_BASE_ENABLE, 0);
        assert_eq!(mode, ApicMode::XApic { base: BASE });
    }

    #[test]
    fn an_apic_the_firmware_left_in_x2apic_mode_stays_there() {
        // Hypervisors may hide the CPUID bit yet hand over in x2APIC mode.
        assert_eq!(ApicMode::choose(BASE | APIC_BASE_ENABLE | APIC_BASE_EXTD, 0), ApicMode::X2Apic);
    }

    #[test]
    fn x2apic_is_entered_through_xapic_from_a_disabled_apic() {
        let writes: Vec<u64> = ApicMode::X2Apic.enable_writes(BASE).collect();
        assert_eq!(writes, [BASE | APIC_BASE_ENABLE, BASE | APIC_BASE_ENABLE | APIC_BASE_EXTD]);
    }

    #[test]
    fn an_enabled_apic_takes_one_write_and_one_already_in_mode_none() {
        let xapic_on = BASE | BSP | APIC_BASE_ENABLE;
        let writes: Vec<u64> = ApicMode::X2Apic.enable_writes(xapic_on).collect();
        assert_eq!(writes, [xapic_on | APIC_BASE_EXTD], "the BSP flag and base are kept");
        assert_eq!(ApicMode::X2Apic.enable_writes(xapic_on | APIC_BASE_EXTD).count(), 0);
        assert_eq!(ApicMode::XApic { base: BASE }.enable_writes(xapic_on).count(), 0);
        let writes: Vec<u64> = ApicMode::XApic { base: BASE }.enable_writes(BASE).collect();
        assert_eq!(writes, [BASE | APIC_BASE_ENABLE]);
    }
}
