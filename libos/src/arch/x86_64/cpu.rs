//! CPU feature detection: what virtualization this CPU offers (Intel SDM Vol. 3D
//! Appendix A "VMX Capability Reporting Facility"; AMD APM Vol. 2 §15.4 and CPUID
//! Fn8000_000A), and a few features libos itself needs.

use crate::virt::{SvmCaps, VirtCaps, VmxCaps};
use raw_cpuid::CpuId;
use x86_64::registers::model_specific::Msr;

// VMX capability MSRs (Intel SDM Vol. 4, Table 2-2; Vol. 3D Appendix A).
const IA32_FEATURE_CONTROL: u32 = 0x3A;
const IA32_VMX_BASIC: u32 = 0x480;
const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48B;
const IA32_VMX_EPT_VPID_CAP: u32 = 0x48C;
const IA32_VMX_PINBASED_CTLS: u32 = 0x481;

// IA32_FEATURE_CONTROL bits (SDM Vol. 3C §24.7 "Enabling and Entering VMX Operation").
const FEATURE_CONTROL_LOCKED: u64 = 1 << 0;
const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;
// IA32_VMX_BASIC bit 55: TRUE capability MSRs exist (SDM Vol. 3D §A.1).
const VMX_BASIC_TRUE_CTLS: u64 = 1 << 55;
// Primary processor-based controls, bit 31: activate secondary controls (SDM §25.6.2).
const PROCBASED_ACTIVATE_SECONDARY: u64 = 1 << 31;
// Secondary processor-based controls (SDM Vol. 3C Table 25-7).
const PROCBASED2_EPT: u64 = 1 << 1;
const PROCBASED2_VPID: u64 = 1 << 5;
const PROCBASED2_UNRESTRICTED_GUEST: u64 = 1 << 7;
// Pin-based controls bit 6: VMX-preemption timer (SDM Table 25-5).
const PINBASED_PREEMPTION_TIMER: u64 = 1 << 6;
// IA32_VMX_EPT_VPID_CAP (SDM Vol. 3D §A.10).
const EPT_CAP_WALK_4: u64 = 1 << 6;
const EPT_CAP_WB: u64 = 1 << 14;
const EPT_CAP_2M: u64 = 1 << 16;
const EPT_CAP_1G: u64 = 1 << 17;
const EPT_CAP_INVEPT: u64 = 1 << 20;
const EPT_CAP_AD: u64 = 1 << 21;
const EPT_CAP_INVEPT_SINGLE: u64 = 1 << 25;
const EPT_CAP_INVEPT_ALL: u64 = 1 << 26;
const EPT_CAP_INVVPID: u64 = 1 << 32;
const EPT_CAP_INVVPID_SINGLE: u64 = 1 << 41;
const EPT_CAP_INVVPID_ALL: u64 = 1 << 42;

// AMD VM_CR MSR, bit 4 SVMDIS: SVM disabled by firmware (APM Vol. 2 §15.30.1).
const VM_CR: u32 = 0xC001_0114;
const VM_CR_SVMDIS: u64 = 1 << 4;

fn rdmsr(msr: u32) -> u64 {
    // SAFETY: only called for MSRs whose existence CPUID guarantees (the VMX capability
    // MSRs when CPUID.1:ECX.VMX = 1, VM_CR when CPUID.80000001h:ECX.SVM = 1).
    unsafe { Msr::new(msr).read() }
}

/// Allowed-1 settings of a VMX control MSR are its high 32 bits (SDM Vol. 3D §A.3).
fn allowed1(msr: u32) -> u64 {
    rdmsr(msr) >> 32
}

/// Detects the virtualization this CPU offers.
pub fn detect_virt() -> VirtCaps {
    let cpuid = CpuId::new();
    let vmx = cpuid.get_feature_info().is_some_and(|f| f.has_vmx());
    let svm = cpuid.get_extended_processor_and_feature_identifiers().is_some_and(|f| f.has_svm());
    if vmx {
        return VirtCaps::Vmx(detect_vmx());
    }
    if svm {
        let features = cpuid.get_svm_info();
        let caps = match features {
            Some(s) => SvmCaps {
                npt: s.has_nested_paging(),
                nrip_save: s.has_nrip(),
                decode_assists: s.has_decode_assists(),
                flush_by_asid: s.has_flush_by_asid(),
                vmcb_clean: s.has_vmcb_clean_bits(),
                vgif: s.has_gif(),
                tsc_scaling: s.has_tsc_rate_msr(),
                pause_filter: s.has_pause_filter(),
                asids: s.supported_asids(),
                disabled_by_firmware: rdmsr(VM_CR) & VM_CR_SVMDIS != 0,
            },
            None => SvmCaps::default(),
        };
        return VirtCaps::Svm(caps);
    }
    VirtCaps::None
}

fn detect_vmx() -> VmxCaps {
    let control = rdmsr(IA32_FEATURE_CONTROL);
    let basic = rdmsr(IA32_VMX_BASIC);
    let primary = allowed1(IA32_VMX_PROCBASED_CTLS);
    let secondary =
        if primary & PROCBASED_ACTIVATE_SECONDARY != 0 { allowed1(IA32_VMX_PROCBASED_CTLS2) } else { 0 };
    let ept = secondary & PROCBASED2_EPT != 0;
    let vpid = secondary & PROCBASED2_VPID != 0;
    let cap = if ept || vpid { rdmsr(IA32_VMX_EPT_VPID_CAP) } else { 0 };
    VmxCaps {
        ept: ept && cap & EPT_CAP_WALK_4 != 0 && cap & EPT_CAP_WB != 0,
        ept_2m: ept && cap & EPT_CAP_2M != 0,
        ept_1g: ept && cap & EPT_CAP_1G != 0,
        ept_ad: ept && cap & EPT_CAP_AD != 0,
        invept: ept && cap & EPT_CAP_INVEPT != 0,
        invept_single: ept && cap & EPT_CAP_INVEPT_SINGLE != 0,
        invept_all: ept && cap & EPT_CAP_INVEPT_ALL != 0,
        vpid,
        invvpid: vpid && cap & EPT_CAP_INVVPID != 0,
        invvpid_single: vpid && cap & EPT_CAP_INVVPID != 0 && cap & EPT_CAP_INVVPID_SINGLE != 0,
        invvpid_all: vpid && cap & EPT_CAP_INVVPID != 0 && cap & EPT_CAP_INVVPID_ALL != 0,
        unrestricted_guest: secondary & PROCBASED2_UNRESTRICTED_GUEST != 0,
        preemption_timer: allowed1(IA32_VMX_PINBASED_CTLS) & PINBASED_PREEMPTION_TIMER != 0,
        true_controls: basic & VMX_BASIC_TRUE_CTLS != 0,
        disabled_by_firmware: control & FEATURE_CONTROL_LOCKED != 0
            && control & FEATURE_CONTROL_VMX_OUTSIDE_SMX == 0,
    }
}

/// Whether 1 GiB pages exist (CPUID.80000001h:EDX.Page1GB).
pub fn has_1g_pages() -> bool {
    CpuId::new().get_extended_processor_and_feature_identifiers().is_some_and(|f| f.has_1gib_pages())
}

/// Whether RDRAND exists (CPUID.1:ECX.RDRAND).
pub fn has_rdrand() -> bool {
    CpuId::new().get_feature_info().is_some_and(|f| f.has_rdrand())
}

/// One RDRAND value, retried a few times as Intel recommends (SDM Vol. 1 §7.3.17.1).
pub fn rdrand() -> Option<u64> {
    if !has_rdrand() {
        return None;
    }
    for _ in 0..10 {
        let mut value = 0u64;
        // SAFETY: CPUID says RDRAND exists; the intrinsic only writes `value`.
        if unsafe { core::arch::x86_64::_rdrand64_step(&mut value) } == 1 {
            return Some(value);
        }
    }
    None
}

/// Whether XSAVE exists (CPUID.1:ECX.XSAVE); [`init_fpu`] then turns CR4.OSXSAVE on.
pub fn has_xsave() -> bool {
    CpuId::new().get_feature_info().is_some_and(|f| f.has_xsave())
}

/// Readies the calling CPU's FPU for the hypervisor to switch guests' x87/SSE/AVX state
/// with FXSAVE/XSAVE: CR0.MP set, CR0.EM and CR0.TS clear (no #NM, no #UD); CR4.OSFXSR and
/// CR4.OSXMMEXCPT (FXSAVE covers the XMM registers, SIMD exceptions are #XM), and
/// CR4.OSXSAVE where XSAVE exists (XCR0 stays x87 until the hypervisor sets its own).
/// libos and the image never use the FPU themselves: the target is soft-float.
pub fn init_fpu() {
    use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
    let xsave = has_xsave();
    // SAFETY: the bits changed only select how x87/SSE instructions and the save/restore
    // instructions behave, which no code of this CPU uses yet; OSXSAVE only with XSAVE.
    unsafe {
        Cr0::update(|f| {
            f.insert(Cr0Flags::MONITOR_COPROCESSOR);
            f.remove(Cr0Flags::EMULATE_COPROCESSOR | Cr0Flags::TASK_SWITCHED);
        });
        Cr4::update(|f| {
            f.insert(Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE);
            if xsave {
                f.insert(Cr4Flags::OSXSAVE);
            }
        });
    }
}
