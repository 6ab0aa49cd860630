//! The feature table: every CPUID feature bit a guest may see, with what it sees and why.
//! A bit of a feature register that is not in this table is clear for the guest: a new
//! CPU feature stays hidden until someone decides, here, that Taproot virtualizes it.
//!
//! Bit positions: Intel SDM Vol. 2A, CPUID (Tables 3-8 to 3-11, leaf 07h); AMD APM Vol. 3,
//! Appendix E (Fn8000_0001, Fn8000_0007, Fn8000_0008).

/// One of the four registers CPUID returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// What the guest sees of a feature bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The host's bit.
    Pass,
    /// The host's bit, where the backend's nested tables take 1 GiB pages
    /// (`backend::Caps::max_page_size`): the guest's 1 GiB pages then map 1:1.
    PassIfGibPages,
    /// Clear.
    Hide,
    /// This value, whatever the host has.
    Fixed(bool),
}

/// One feature bit of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u8,
    /// The name the SDM/APM (and Linux's /proc/cpuinfo, lower-cased) use.
    pub name: &'static str,
    pub rule: Rule,
    pub reason: &'static str,
}

/// THE XSAVE SWITCH. XSAVE, AVX and everything that needs YMM state (AVX2, FMA, F16C, XOP,
/// FMA4), the XSAVE extensions XSAVEOPT, XSAVEC and XGETBV1, and leaf 0Dh are offered only
/// when this is true. It is: both backends emulate XSETBV (reserved or unoffered XCR0
/// values -> #GP, `backend::xstate::check_xsetbv`) and switch the guest's XCR0 and x87/SSE/
/// AVX state on every entry and exit (`backend::fpu`, issue 9 "Guest state that must not
/// leak"); the components switched are `cpuid::offered_xcr0`, the ones leaf 0Dh shows.
/// Turning it off hides all of that again and the backends then switch x87 and SSE only.
pub const XSAVE_VIRTUALIZED: bool = true;

const fn xsave() -> Rule {
    if XSAVE_VIRTUALIZED { Rule::Pass } else { Rule::Hide }
}

const XSAVE_REASON: &str = "YMM state and XCR0 are switched per vCPU and XSETBV is emulated in both backends \
                            (XSAVE_VIRTUALIZED)";
const XSAVE_INSN: &str = "runs natively on the guest's own memory and XCR0, no state beyond the switched \
                          components (XSAVE_VIRTUALIZED)";
const ISA: &str = "plain instructions and CR4 bits the hardware runs for the guest, no exits or state";
const NO_PMU: &str = "no PMU is virtualized: counter MSRs raise #GP";
const LAPIC: &str = "the local APIC is emulated (devices::lapic behind devices::irqchip), whatever the host has: \
                     x2APIC MSRs, IA32_APIC_BASE and IA32_TSC_DEADLINE exit to it in both backends";
const NO_TSC_AUX: &str = "IA32_TSC_AUX is not switched per vCPU, so the guest would read the host's";
const NO_SPEC_CTRL: &str = "IA32_SPEC_CTRL/PRED_CMD are not switched per vCPU: the MSR policy raises #GP \
                            (vm::msr), so the bit must stay clear";
const NO_MCA: &str = "no machine-check MSRs (MCG_CAP, banks) are emulated";
const NESTED: &str = "no nested virtualization";
const NO_MSR: &str = "the MSR behind it is not emulated (#GP)";

const fn f(leaf: u32, reg: Reg, bit: u8, name: &'static str, rule: Rule, reason: &'static str) -> Feature {
    Feature { leaf, subleaf: 0, reg, bit, name, rule, reason }
}

use Reg::{Eax, Ebx, Ecx, Edx};
use Rule::{Fixed, Hide, Pass, PassIfGibPages};

/// Leaf 8000_0001h EDX bits that AMD defines as copies of leaf 1 EDX (FPU..PSE36, MMX,
/// FXSR): they follow the leaf 1 entries of this table (Intel keeps them 0).
pub const EXT1_EDX_LEAF1_COPIES: u32 = 0x0183_F3FF;

/// The table. Entries are ordered by leaf, register and bit.
pub static FEATURES: &[Feature] = &[
    // Leaf 1 ECX.
    f(1, Ecx, 0, "sse3", Pass, ISA),
    f(1, Ecx, 1, "pclmulqdq", Pass, ISA),
    f(1, Ecx, 2, "dtes64", Hide, "no debug store"),
    f(1, Ecx, 3, "monitor", Hide, "MONITOR/MWAIT would idle the host CPU in the guest; HLT is what exits"),
    f(1, Ecx, 4, "ds_cpl", Hide, "no debug store"),
    f(1, Ecx, 5, "vmx", Hide, NESTED),
    f(1, Ecx, 6, "smx", Hide, "no safer mode (GETSEC)"),
    f(1, Ecx, 7, "est", Hide, "no P-state MSRs"),
    f(1, Ecx, 8, "tm2", Hide, "no thermal MSRs"),
    f(1, Ecx, 9, "ssse3", Pass, ISA),
    f(1, Ecx, 11, "sdbg", Hide, NO_MSR),
    f(1, Ecx, 12, "fma", xsave(), XSAVE_REASON),
    f(1, Ecx, 13, "cx16", Pass, ISA),
    f(1, Ecx, 14, "xtpr", Hide, NO_MSR),
    f(1, Ecx, 15, "pdcm", Hide, NO_PMU),
    f(1, Ecx, 17, "pcid", Hide, "CR4.PCIDE needs the TLB tagging controls on and tested in both backends"),
    f(1, Ecx, 18, "dca", Hide, "no direct cache access"),
    f(1, Ecx, 19, "sse4_1", Pass, ISA),
    f(1, Ecx, 20, "sse4_2", Pass, ISA),
    f(1, Ecx, 21, "x2apic", Fixed(true), LAPIC),
    f(1, Ecx, 22, "movbe", Pass, ISA),
    f(1, Ecx, 23, "popcnt", Pass, ISA),
    f(1, Ecx, 24, "tsc_deadline_timer", Fixed(true), LAPIC),
    f(1, Ecx, 25, "aes", Pass, ISA),
    f(1, Ecx, 26, "xsave", xsave(), XSAVE_REASON),
    f(
        1,
        Ecx,
        27,
        "osxsave",
        Hide,
        "mirrors the guest's CR4.OSXSAVE, not the host's: the CPUID exit handler sets it from the \
         guest's CR4 (backend::xstate::leaf1_ecx_osxsave)",
    ),
    f(1, Ecx, 28, "avx", xsave(), XSAVE_REASON),
    f(1, Ecx, 29, "f16c", xsave(), XSAVE_REASON),
    f(1, Ecx, 30, "rdrand", Pass, ISA),
    f(1, Ecx, 31, "hypervisor", Fixed(true), "the guest runs under a hypervisor (leaves 4000_0000h..)"),
    // Leaf 1 EDX.
    f(1, Edx, 0, "fpu", Pass, ISA),
    f(1, Edx, 1, "vme", Pass, ISA),
    f(1, Edx, 2, "de", Pass, ISA),
    f(1, Edx, 3, "pse", Pass, ISA),
    f(1, Edx, 4, "tsc", Pass, "RDTSC runs natively; the guest TSC is the host's plus the VM's offset"),
    f(1, Edx, 5, "msr", Pass, "RDMSR/WRMSR exist; vm::msr answers the MSRs a guest reads at boot"),
    f(1, Edx, 6, "pae", Pass, ISA),
    f(1, Edx, 7, "mce", Hide, NO_MCA),
    f(1, Edx, 8, "cx8", Pass, ISA),
    f(1, Edx, 9, "apic", Fixed(true), LAPIC),
    f(1, Edx, 11, "sep", Pass, "SYSENTER MSRs are switched by both backends"),
    f(1, Edx, 12, "mtrr", Pass, "vm::msr: MTRRcap with no ranges, MTRRdefType write-back"),
    f(1, Edx, 13, "pge", Pass, ISA),
    f(1, Edx, 14, "mca", Hide, NO_MCA),
    f(1, Edx, 15, "cmov", Pass, ISA),
    f(1, Edx, 16, "pat", Pass, "IA32_PAT is switched by both backends (guest PAT / G_PAT)"),
    f(1, Edx, 17, "pse36", Pass, ISA),
    f(1, Edx, 18, "pn", Hide, "no serial number"),
    f(1, Edx, 19, "clflush", Pass, ISA),
    f(1, Edx, 21, "dts", Hide, "no debug store"),
    f(1, Edx, 22, "acpi", Hide, "no thermal MSRs"),
    f(1, Edx, 23, "mmx", Pass, ISA),
    f(1, Edx, 24, "fxsr", Pass, ISA),
    f(1, Edx, 25, "sse", Pass, ISA),
    f(1, Edx, 26, "sse2", Pass, ISA),
    f(1, Edx, 27, "ss", Pass, "a cache property of the host, true for the guest too"),
    f(1, Edx, 28, "ht", Pass, "EBX[23:16] (logical processors) is the host's"),
    f(1, Edx, 29, "tm", Hide, "no thermal MSRs"),
    f(1, Edx, 31, "pbe", Hide, "no thermal MSRs"),
    // Leaf 7 subleaf 0 EBX.
    f(7, Ebx, 0, "fsgsbase", Pass, "FS/GS bases are switched by both backends"),
    f(7, Ebx, 1, "tsc_adjust", Hide, NO_MSR),
    f(7, Ebx, 2, "sgx", Hide, "no enclaves"),
    f(7, Ebx, 3, "bmi1", Pass, ISA),
    f(7, Ebx, 4, "hle", Hide, "TSX: not offered (TAA; aborts would differ between hosts)"),
    f(7, Ebx, 5, "avx2", xsave(), XSAVE_REASON),
    f(7, Ebx, 7, "smep", Pass, ISA),
    f(7, Ebx, 8, "bmi2", Pass, ISA),
    f(7, Ebx, 9, "erms", Pass, ISA),
    f(7, Ebx, 10, "invpcid", Hide, "INVPCID needs its VMX enable control on and tested (and PCID)"),
    f(7, Ebx, 11, "rtm", Hide, "TSX: not offered (TAA; aborts would differ between hosts)"),
    f(7, Ebx, 12, "cqm", Hide, NO_MSR),
    f(7, Ebx, 14, "mpx", Hide, "MPX state is not switched"),
    f(7, Ebx, 15, "rdt_a", Hide, NO_MSR),
    f(7, Ebx, 16, "avx512f", Hide, "AVX-512 state is not in cpuid::offered_xcr0, so not shown or enabled"),
    f(7, Ebx, 18, "rdseed", Pass, ISA),
    f(7, Ebx, 19, "adx", Pass, ISA),
    f(7, Ebx, 20, "smap", Pass, ISA),
    f(7, Ebx, 23, "clflushopt", Pass, ISA),
    f(7, Ebx, 24, "clwb", Pass, ISA),
    f(7, Ebx, 25, "intel_pt", Hide, "processor trace state is not switched"),
    f(7, Ebx, 29, "sha_ni", Pass, ISA),
    // Leaf 7 subleaf 0 ECX.
    f(7, Ecx, 3, "pku", Hide, "PKRU is XSAVE state, not switched"),
    f(7, Ecx, 4, "ospke", Hide, "PKRU is XSAVE state, not switched"),
    f(7, Ecx, 5, "waitpkg", Hide, "UMWAIT/TPAUSE need their VMX enable control on and tested"),
    f(7, Ecx, 16, "la57", Hide, "5-level guest paging is not tested in either backend"),
    f(7, Ecx, 22, "rdpid", Hide, NO_TSC_AUX),
    // Leaf 7 subleaf 0 EDX.
    f(7, Edx, 26, "spec_ctrl", Hide, NO_SPEC_CTRL),
    f(7, Edx, 27, "intel_stibp", Hide, NO_SPEC_CTRL),
    f(7, Edx, 29, "arch_capabilities", Hide, "IA32_ARCH_CAPABILITIES is not emulated (#GP)"),
    f(7, Edx, 31, "spec_ctrl_ssbd", Hide, NO_SPEC_CTRL),
    // Leaf 0Dh subleaf 1 EAX (XSAVE extensions).
    Feature { subleaf: 1, ..f(0xD, Eax, 0, "xsaveopt", xsave(), XSAVE_INSN) },
    Feature {
        subleaf: 1,
        ..f(
            0xD,
            Eax,
            1,
            "xsavec",
            xsave(),
            "compacted XSAVE of the guest's XCR0 components only (no IA32_XSS); subleaf 1 EBX gives \
             its size (XSAVE_VIRTUALIZED)",
        )
    },
    Feature {
        subleaf: 1,
        ..f(
            0xD,
            Eax,
            2,
            "xgetbv1",
            xsave(),
            "XGETBV ECX=1 reads the guest's XCR0 AND its own XINUSE, which XRSTOR of its area sets \
             (XSAVE_VIRTUALIZED)",
        )
    },
    Feature {
        subleaf: 1,
        ..f(0xD, Eax, 3, "xsaves", Hide, "IA32_XSS and supervisor state are not switched")
    },
    // Leaf 8000_0001h ECX.
    f(0x8000_0001, Ecx, 0, "lahf_lm", Pass, ISA),
    f(0x8000_0001, Ecx, 2, "svm", Hide, NESTED),
    f(
        0x8000_0001,
        Ecx,
        3,
        "extapic",
        Hide,
        "the emulated local APIC has no AMD extended APIC register space",
    ),
    f(0x8000_0001, Ecx, 4, "cr8_legacy", Hide, "TPR access through LOCK MOV CR0 is not offered"),
    f(0x8000_0001, Ecx, 5, "abm", Pass, ISA),
    f(0x8000_0001, Ecx, 6, "sse4a", Pass, ISA),
    f(0x8000_0001, Ecx, 7, "misalignsse", Pass, ISA),
    f(0x8000_0001, Ecx, 8, "3dnowprefetch", Pass, ISA),
    f(0x8000_0001, Ecx, 9, "osvw", Hide, NO_MSR),
    f(0x8000_0001, Ecx, 10, "ibs", Hide, NO_PMU),
    f(0x8000_0001, Ecx, 11, "xop", xsave(), XSAVE_REASON),
    f(0x8000_0001, Ecx, 12, "skinit", Hide, NESTED),
    f(0x8000_0001, Ecx, 13, "wdt", Hide, NO_MSR),
    f(0x8000_0001, Ecx, 16, "fma4", xsave(), XSAVE_REASON),
    f(0x8000_0001, Ecx, 21, "tbm", Pass, ISA),
    f(0x8000_0001, Ecx, 22, "topoext", Hide, "leaves 8000_001Dh/1Eh describe the host's topology"),
    f(0x8000_0001, Ecx, 23, "perfctr_core", Hide, NO_PMU),
    f(0x8000_0001, Ecx, 24, "perfctr_nb", Hide, NO_PMU),
    f(0x8000_0001, Ecx, 28, "perfctr_llc", Hide, NO_PMU),
    f(0x8000_0001, Ecx, 29, "mwaitx", Hide, "MONITORX/MWAITX would idle the host CPU in the guest"),
    // Leaf 8000_0001h EDX (besides the copies of leaf 1, EXT1_EDX_LEAF1_COPIES).
    f(0x8000_0001, Edx, 11, "syscall", Pass, "STAR/LSTAR/CSTAR/SFMASK are switched by both backends"),
    f(0x8000_0001, Edx, 20, "nx", Pass, ISA),
    f(0x8000_0001, Edx, 22, "mmxext", Pass, ISA),
    f(0x8000_0001, Edx, 25, "fxsr_opt", Pass, ISA),
    f(0x8000_0001, Edx, 26, "pdpe1gb", PassIfGibPages, "the backend's Caps decide (NPT/EPT 1 GiB leaves)"),
    f(0x8000_0001, Edx, 27, "rdtscp", Hide, NO_TSC_AUX),
    f(0x8000_0001, Edx, 29, "lm", Pass, ISA),
    f(0x8000_0001, Edx, 30, "3dnowext", Pass, ISA),
    f(0x8000_0001, Edx, 31, "3dnow", Pass, ISA),
    // Leaf 8000_0007h EDX.
    f(0x8000_0007, Edx, 8, "constant_tsc", Pass, "the guest TSC is the host's plus a per-VM offset"),
    // Leaf 8000_0008h EBX.
    f(0x8000_0008, Ebx, 12, "ibpb", Hide, NO_SPEC_CTRL),
    f(0x8000_0008, Ebx, 14, "ibrs", Hide, NO_SPEC_CTRL),
    f(0x8000_0008, Ebx, 15, "stibp", Hide, NO_SPEC_CTRL),
    f(0x8000_0008, Ebx, 24, "ssbd", Hide, NO_SPEC_CTRL),
    f(0x8000_0008, Ebx, 25, "virt_ssbd", Hide, NO_SPEC_CTRL),
];

/// The features of the speculation-control MSRs (IA32_SPEC_CTRL, IA32_PRED_CMD,
/// IA32_ARCH_CAPABILITIES, AMD's VIRT_SPEC_CTRL), which the MSR policy answers with #GP:
/// every one must stay hidden (host tests here and in `vm::msr` say so).
pub const SPECULATION_FEATURES: [&str; 9] = [
    "spec_ctrl",
    "intel_stibp",
    "spec_ctrl_ssbd",
    "arch_capabilities",
    "ibpb",
    "ibrs",
    "stibp",
    "ssbd",
    "virt_ssbd",
];

/// The entry named `name`, if the table has one.
#[must_use]
pub fn feature(name: &str) -> Option<&'static Feature> {
    FEATURES.iter().find(|f| f.name == name)
}

/// Whether a guest can ever see `name` (a Pass or Fixed(true) rule).
#[must_use]
pub fn may_offer(name: &str) -> bool {
    feature(name).is_some_and(|f| !matches!(f.rule, Rule::Hide | Rule::Fixed(false)))
}
