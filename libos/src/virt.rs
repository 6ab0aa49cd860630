//! What hardware virtualization a CPU offers, in arch-neutral types (detected by
//! `arch::x86_64::cpu`), and the feature list printed in the boot banner.

use core::fmt;

/// Intel VMX capabilities that Taproot's VMX backend cares about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxCaps {
    /// EPT with 4-level walks and write-back tables.
    pub ept: bool,
    pub ept_2m: bool,
    pub ept_1g: bool,
    pub ept_ad: bool,
    pub invept: bool,
    pub invept_single: bool,
    pub invept_all: bool,
    pub vpid: bool,
    pub invvpid: bool,
    /// INVVPID single-context and all-context (IA32_VMX_EPT_VPID_CAP bits 41 and 42).
    pub invvpid_single: bool,
    pub invvpid_all: bool,
    pub unrestricted_guest: bool,
    pub preemption_timer: bool,
    pub true_controls: bool,
    /// IA32_FEATURE_CONTROL is locked with VMX off: only the firmware can change that.
    pub disabled_by_firmware: bool,
}

/// AMD SVM capabilities (CPUID Fn8000_000A).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvmCaps {
    pub npt: bool,
    pub nrip_save: bool,
    pub decode_assists: bool,
    pub flush_by_asid: bool,
    pub vmcb_clean: bool,
    pub vgif: bool,
    pub tsc_scaling: bool,
    pub pause_filter: bool,
    pub asids: u32,
    /// VM_CR.SVMDIS is set: the firmware turned SVM off.
    pub disabled_by_firmware: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VirtCaps {
    Vmx(VmxCaps),
    Svm(SvmCaps),
    #[default]
    None,
}

impl VirtCaps {
    /// The banner's `virt=` word.
    pub const fn kind(&self) -> &'static str {
        match self {
            VirtCaps::Vmx(_) => "vmx",
            VirtCaps::Svm(_) => "svm",
            VirtCaps::None => "none",
        }
    }

    /// The banner's `features=` list, comma-separated, no spaces.
    pub fn features(&self) -> Features<'_> {
        Features(self)
    }
}

pub struct Features<'a>(&'a VirtCaps);

impl fmt::Display for Features<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut put = |f: &mut fmt::Formatter<'_>, on: bool, name: fmt::Arguments| {
            if !on {
                return Ok(());
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_fmt(name)
        };
        match self.0 {
            VirtCaps::Vmx(v) => {
                put(f, v.ept, format_args!("ept"))?;
                put(f, v.ept_2m, format_args!("ept-2m"))?;
                put(f, v.ept_1g, format_args!("ept-1g"))?;
                put(f, v.ept_ad, format_args!("ept-ad"))?;
                put(f, v.invept_single, format_args!("invept-single"))?;
                put(f, v.invept_all, format_args!("invept-all"))?;
                put(f, v.vpid, format_args!("vpid"))?;
                put(f, v.invvpid, format_args!("invvpid"))?;
                put(f, v.unrestricted_guest, format_args!("unrestricted-guest"))?;
                put(f, v.preemption_timer, format_args!("preemption-timer"))?;
                put(f, v.true_controls, format_args!("true-controls"))?;
                put(f, v.disabled_by_firmware, format_args!("disabled-by-firmware"))?;
            }
            VirtCaps::Svm(s) => {
                put(f, s.npt, format_args!("npt"))?;
                put(f, s.nrip_save, format_args!("nrip-save"))?;
                put(f, s.decode_assists, format_args!("decode-assists"))?;
                put(f, s.flush_by_asid, format_args!("flush-by-asid"))?;
                put(f, s.vmcb_clean, format_args!("vmcb-clean"))?;
                put(f, s.vgif, format_args!("vgif"))?;
                put(f, s.tsc_scaling, format_args!("tsc-scaling"))?;
                put(f, s.pause_filter, format_args!("pause-filter"))?;
                put(f, true, format_args!("asids={}", s.asids))?;
                put(f, s.disabled_by_firmware, format_args!("disabled-by-firmware"))?;
            }
            VirtCaps::None => {}
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn vmx_features_are_listed_in_a_fixed_order() {
        let caps = VirtCaps::Vmx(VmxCaps {
            ept: true,
            ept_2m: true,
            vpid: true,
            unrestricted_guest: true,
            ..Default::default()
        });
        assert_eq!(caps.kind(), "vmx");
        assert_eq!(caps.features().to_string(), "ept,ept-2m,vpid,unrestricted-guest");
    }

    #[test]
    fn svm_features_always_name_the_asid_count() {
        let caps = VirtCaps::Svm(SvmCaps { npt: true, vgif: true, asids: 16, ..Default::default() });
        assert_eq!(caps.features().to_string(), "npt,vgif,asids=16");
    }

    #[test]
    fn no_virtualization_prints_a_dash() {
        assert_eq!(VirtCaps::None.kind(), "none");
        assert_eq!(VirtCaps::None.features().to_string(), "-");
    }
}
