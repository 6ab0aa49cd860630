use alloc::vec::Vec;

use super::*;

const ALL_ONES: [u32; 4] = [u32::MAX; 4];
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;

fn facts(vendor: Vendor, gib_pages: bool) -> HostFacts {
    HostFacts { vendor, gib_pages, tsc_hz: 2_000_000_000, lapic_bus_hz: 1_000_000_000 }
}

/// A host that has every feature: all ones everywhere, with leaf 0 and 8000_0000h
/// reporting more leaves than the policy lets through.
fn everything(leaf: u32, _subleaf: u32) -> [u32; 4] {
    match leaf {
        0 => [0x30, 1, 2, 3],
        0x8000_0000 => [0x8000_0030, 1, 2, 3],
        _ => ALL_ONES,
    }
}

fn policy(vendor: Vendor, gib_pages: bool) -> Policy {
    Policy::new(facts(vendor, gib_pages), everything)
}

fn view(policy: &Policy, leaf: u32, subleaf: u32) -> [u32; 4] {
    policy.guest_view(leaf, subleaf, everything(leaf, subleaf), 0)
}

#[test]
fn the_table_is_well_formed() {
    for (i, f) in FEATURES.iter().enumerate() {
        assert!(f.bit < 32 && !f.name.is_empty() && !f.reason.is_empty(), "{f:?}");
        assert!(
            FEATURE_REGS.contains(&(f.leaf, f.subleaf, f.reg)),
            "{} is not in a feature register",
            f.name
        );
        for g in &FEATURES[i + 1..] {
            assert_ne!(f.name, g.name);
            assert_ne!((f.leaf, f.subleaf, f.reg, f.bit), (g.leaf, g.subleaf, g.reg, g.bit), "{}", g.name);
            assert!(
                (f.leaf, f.subleaf, f.reg.index(), f.bit) < (g.leaf, g.subleaf, g.reg.index(), g.bit),
                "{} comes before {}",
                g.name,
                f.name
            );
        }
    }
}

#[test]
fn every_hidden_feature_is_clear_and_every_fixed_one_set_for_a_host_that_has_everything() {
    for vendor in [Vendor::Amd, Vendor::Intel] {
        for gib_pages in [false, true] {
            let p = policy(vendor, gib_pages);
            for f in FEATURES {
                let seen = view(&p, f.leaf, f.subleaf)[f.reg.index()] & (1 << f.bit) != 0;
                let expected = match f.rule {
                    Rule::Pass | Rule::Fixed(true) => true,
                    Rule::PassIfGibPages => gib_pages,
                    Rule::Hide | Rule::Fixed(false) => false,
                };
                // Leaf 0Dh exists only with XSAVE offered.
                let expected = expected && (f.leaf != 0xD || XSAVE_VIRTUALIZED);
                assert_eq!(seen, expected, "{} ({vendor:?}, 1 GiB pages {gib_pages})", f.name);
            }
        }
    }
}

#[test]
fn bits_the_table_does_not_name_are_clear() {
    let p = policy(Vendor::Amd, true);
    for (leaf, subleaf, reg) in FEATURE_REGS {
        let mut named: u32 = FEATURES
            .iter()
            .filter(|f| (f.leaf, f.subleaf, f.reg) == (leaf, subleaf, reg))
            .map(|f| 1 << f.bit)
            .fold(0, |a, b| a | b);
        if (leaf, reg) == (0x8000_0001, Reg::Edx) {
            named |= EXT1_EDX_LEAF1_COPIES;
        }
        let seen = view(&p, leaf, subleaf)[reg.index()];
        assert_eq!(seen & !named, 0, "leaf {leaf:#x}.{subleaf} {reg:?}");
    }
}

#[test]
fn what_the_issue_hides_is_hidden_and_the_basic_isa_passes() {
    let hidden = [
        "vmx",
        "svm",
        "hle",
        "rtm",
        "monitor",
        "mwaitx",
        "rdtscp",
        "rdpid",
        "invpcid",
        "pcid",
        "waitpkg",
        "xsaves",
        "pku",
        "la57",
        "pdcm",
        "perfctr_core",
    ];
    for name in hidden.into_iter().chain(SPECULATION_FEATURES) {
        assert!(feature(name).is_some(), "{name} has an entry, with its reason");
        assert!(!may_offer(name), "{name}");
    }
    let xsave_family =
        ["xsave", "avx", "avx2", "fma", "f16c", "xop", "fma4", "xsaveopt", "xsavec", "xgetbv1"];
    for name in xsave_family {
        assert_eq!(may_offer(name), XSAVE_VIRTUALIZED, "{name} follows the XSAVE switch");
    }
    for name in ["osxsave", "avx512f"] {
        assert!(!may_offer(name), "{name}: the exit handler's (OSXSAVE) or not switched (AVX-512)");
    }
    let passed = [
        "fpu",
        "tsc",
        "cx8",
        "cmov",
        "pat",
        "pse",
        "pae",
        "pge",
        "mmx",
        "fxsr",
        "sse",
        "sse2",
        "sse3",
        "ssse3",
        "sse4_1",
        "sse4_2",
        "popcnt",
        "aes",
        "pclmulqdq",
        "nx",
        "lm",
        "syscall",
        "hypervisor",
    ];
    for name in passed {
        assert!(may_offer(name), "{name}");
    }
    assert_eq!(feature("pdpe1gb").map(|f| f.rule), Some(Rule::PassIfGibPages));
}

#[test]
fn leaf_1_sets_hypervisor_and_gives_the_vcpu_index() {
    let p = policy(Vendor::Intel, false);
    let host = [0x000A_0F10, 0x0A02_0800, (1 << 5) | (1 << 21) | 1, 0x178B_FBFF];
    let [eax, ebx, ecx, _] = p.guest_view(1, 0, host, 3);
    assert_eq!(eax, host[0]);
    assert_eq!(ebx, 0x0302_0800, "APIC ID 3, the rest of EBX kept");
    assert_eq!(
        ecx,
        LEAF1_ECX_HYPERVISOR | (1 << 21) | (1 << 24) | 1,
        "VMX hidden, x2APIC and TSC-deadline emulated"
    );
    assert_ne!(
        p.guest_view(1, 0, [0; 4], 0)[2] & LEAF1_ECX_HYPERVISOR,
        0,
        "set even if the host has it clear"
    );
}

#[test]
fn the_highest_leaves_are_clamped_and_leaves_above_them_are_zero() {
    let p = policy(Vendor::Amd, false);
    assert_eq!(view(&p, 0, 0), [MAX_BASIC_LEAF, 1, 2, 3]);
    assert_eq!(view(&p, 0x8000_0000, 0), [MAX_EXTENDED_LEAF, 1, 2, 3]);
    for leaf in [MAX_BASIC_LEAF + 1, 0x30, 0x8000_001F, 0x8000_0021, 0xC000_0000, 0x5000_0000] {
        assert_eq!(view(&p, leaf, 0), [0; 4], "leaf {leaf:#x}");
    }
    // A host with fewer leaves keeps its own maximum, and its missing leaves are zero.
    let small = |leaf: u32, _: u32| match leaf {
        0 => [0xD, 0, 0, 0],
        0x8000_0000 => [0x8000_0008, 0, 0, 0],
        _ => ALL_ONES,
    };
    let p = Policy::new(facts(Vendor::Intel, false), small);
    assert_eq!(p.guest_view(0, 0, small(0, 0), 0)[0], 0xD);
    assert_eq!(p.guest_view(0x8000_0000, 0, small(0x8000_0000, 0), 0)[0], 0x8000_0008);
    assert_eq!(p.guest_view(0x15, 0, ALL_ONES, 0), [0; 4], "beyond the host's leaves");
    assert_eq!(p.guest_view(0x8000_001E, 0, ALL_ONES, 0), [0; 4]);
}

#[test]
fn pmu_svm_monitor_and_unnamed_leaves_are_zero() {
    let p = policy(Vendor::Amd, true);
    for leaf in [0x3, 0x5, 0x6, 0x9, 0xA, 0x12, 0x14, 0x8000_000A, 0x8000_001F] {
        assert_eq!(view(&p, leaf, 0), [0; 4], "leaf {leaf:#x}");
    }
    assert_eq!(view(&p, 7, 1), [0; 4], "leaf 7 has subleaf 0 only");
    assert_eq!(view(&p, 7, 0)[0], 0);
}

#[test]
fn leaf_0d_shows_the_offered_components_and_their_layout() {
    // A host with x87, SSE, AVX, MPX, AVX-512 and PKRU (Skylake-SP's leaf 0Dh).
    let skylake = |leaf: u32, subleaf: u32| match (leaf, subleaf) {
        (0, _) => [0xD, 0, 0, 0],
        (1, _) => [0, 0, 1 << 26, 0],
        (0xD, 0) => [0x2FF, 0xA88, 0xA88, 0],
        (0xD, 1) => [0xF, 0xA88, 0x100, 0],
        (0xD, 2) => [256, 576, 0, 0],
        (0xD, _) => [64, 960, 0, 0],
        _ => [0; 4],
    };
    let p = Policy::new(facts(Vendor::Intel, false), skylake);
    let seen = |subleaf| p.guest_view(0xD, subleaf, skylake(0xD, subleaf), 0);
    if !XSAVE_VIRTUALIZED {
        assert_eq!(seen(0), [0; 4]);
        return;
    }
    assert_eq!(offered_xcr0(), 0b111);
    assert_eq!(seen(0), [0b111, 832, 832, 0], "x87, SSE, AVX: 576 + 256 bytes");
    assert_eq!(seen(1), [0b111, 832, 0, 0], "no XSAVES, no XSS; compacted size as standard");
    assert_eq!(seen(2), [256, 576, 0, 0], "AVX's layout");
    for subleaf in [3, 5, 9, 63] {
        assert_eq!(seen(subleaf), [0; 4], "subleaf {subleaf}: not offered");
    }
    // Without AVX (or without SSE, which AVX needs) the legacy area only.
    let sse = |leaf: u32, subleaf: u32| {
        if (leaf, subleaf) == (0xD, 0) { [0b11, 576, 576, 0] } else { skylake(leaf, subleaf) }
    };
    let p = Policy::new(facts(Vendor::Intel, false), sse);
    assert_eq!(p.guest_view(0xD, 0, sse(0xD, 0), 0), [0b11, 576, 576, 0]);
    assert_eq!(p.guest_view(0xD, 2, sse(0xD, 2), 0), [0; 4]);
    let no_sse = |leaf: u32, subleaf: u32| {
        if (leaf, subleaf) == (0xD, 0) { [0b101, 832, 832, 0] } else { skylake(leaf, subleaf) }
    };
    let p = Policy::new(facts(Vendor::Intel, false), no_sse);
    assert_eq!(p.guest_view(0xD, 0, no_sse(0xD, 0), 0)[..2], [0b1, 576]);
    // A host without XSAVE: leaf 0Dh is zeroes.
    let none = |leaf: u32, subleaf: u32| if leaf == 1 { [0; 4] } else { skylake(leaf, subleaf) };
    let p = Policy::new(facts(Vendor::Intel, false), none);
    assert_eq!(p.guest_view(0xD, 0, none(0xD, 0), 0), [0; 4]);
}

#[test]
fn hypervisor_leaves_name_taproot_the_hypercall_instruction_and_the_tsc_frequency() {
    let p = policy(Vendor::Amd, false);
    let kvm = [0x4000_0001, 0x4B4D_564B, 0x564B_4D56, 0x4D];
    let [max, b, c, d] = p.guest_view(0x4000_0000, 0, kvm, 0);
    assert_eq!(max, abi::TIMING_LEAF);
    assert!(abi::is_taproot(b, c, d));
    assert_eq!(p.guest_view(0x4000_0001, 0, ALL_ONES, 0), [1, abi::ABI_VERSION, 0, 0]);
    let intel = policy(Vendor::Intel, false);
    assert_eq!(intel.guest_view(0x4000_0001, 0, ALL_ONES, 0), [0, abi::ABI_VERSION, 0, 0]);
    assert_eq!(p.guest_view(0x4000_0010, 0, ALL_ONES, 0), [2_000_000, 1_000_000, 0, 0], "kHz");
    for leaf in [0x4000_0002, 0x4000_000F, 0x4000_0011, 0x4000_0100, 0x4FFF_FFFF] {
        assert_eq!(p.guest_view(leaf, 0, ALL_ONES, 0), [0; 4], "leaf {leaf:#x}");
    }
}

#[test]
fn topology_leaves_report_the_vcpu_index_as_apic_id() {
    let host = [1, 2, 0x100, 7];
    let intel = policy(Vendor::Intel, false);
    assert_eq!(intel.guest_view(0xB, 1, host, 5), [1, 2, 0x100, 5]);
    assert_eq!(intel.guest_view(0x1F, 0, host, 5), [1, 2, 0x100, 5]);
    assert_eq!(intel.guest_view(0x8000_001E, 0, host, 5), [0; 4], "not Intel's");
    assert_eq!(policy(Vendor::Amd, false).guest_view(0x8000_001E, 0, host, 5), [5, 2, 0x100, 7]);
}

#[test]
fn data_leaves_are_the_hosts() {
    let p = policy(Vendor::Amd, false);
    for leaf in [2, 4, 0x15, 0x16, 0x8000_0002, 0x8000_0003, 0x8000_0004, 0x8000_0005, 0x8000_0006] {
        assert_eq!(p.guest_view(leaf, 1, [leaf, 2, 3, 4], 1), [leaf, 2, 3, 4], "leaf {leaf:#x}");
    }
    assert_eq!(p.guest_view(0x8000_0008, 0, [0x3030, u32::MAX, 0x7, u32::MAX], 0), [0x3030, 0, 0x7, 0]);
}

#[test]
fn one_gib_pages_follow_the_backend() {
    let bit = 1 << 26;
    assert_eq!(view(&policy(Vendor::Intel, false), 0x8000_0001, 0)[3] & bit, 0);
    assert_eq!(view(&policy(Vendor::Intel, true), 0x8000_0001, 0)[3] & bit, bit);
}

/// CPUID of an Intel Xeon (Sapphire Rapids) guest of KVM, as its kernel saw it: (leaf,
/// subleaf, host registers).
const XEON_UNDER_KVM: &[(u32, u32, [u32; 4])] = &[
    (0x00000000, 0, [0x00000024, 0x756e6547, 0x6c65746e, 0x49656e69]),
    (0x00000001, 0, [0x000a0671, 0x00020800, 0xfffa3203, 0x1f8bfbff]),
    (0x00000002, 0, [0x00feff01, 0x000000f0, 0x00000000, 0x00000000]),
    (0x00000004, 0, [0x04000121, 0x02c0003f, 0x0000003f, 0x00000000]),
    (0x00000006, 0, [0x00000004, 0x00000000, 0x00000000, 0x00000000]),
    (0x00000007, 0, [0x00000002, 0xf1bf2ffb, 0x1a415f46, 0x23c14010]),
    (0x00000007, 1, [0x00001c30, 0x00000000, 0x00000000, 0x00084000]),
    (0x0000000a, 0, [0x00000000, 0x00000000, 0x00000000, 0x00000000]),
    (0x0000000b, 0, [0x00000000, 0x00000001, 0x00000100, 0x00000000]),
    (0x0000000b, 1, [0x00000005, 0x00000002, 0x00000201, 0x00000000]),
    (0x0000000d, 0, [0x000600e7, 0x00002b00, 0x00002b00, 0x00000000]),
    (0x0000000d, 1, [0x0000001f, 0x000029c0, 0x00000000, 0x00000000]),
    (0x0000000d, 2, [0x00000100, 0x00000240, 0x00000000, 0x00000000]),
    (0x00000015, 0, [0x00000000, 0x00000000, 0x00000000, 0x00000000]),
    (0x00000016, 0, [0x00000000, 0x00000000, 0x00000000, 0x00000000]),
    (0x0000001f, 0, [0x00000000, 0x00000001, 0x00000100, 0x00000000]),
    (0x40000000, 0, [0x40000001, 0x4b4d564b, 0x564b4d56, 0x0000004d]),
    (0x40000001, 0, [0x01007efb, 0x00000000, 0x00000000, 0x00000000]),
    (0x40000010, 0, [0x00000000, 0x00070001, 0x00000000, 0x00000000]),
    (0x80000000, 0, [0x80000008, 0x00000000, 0x00000000, 0x00000000]),
    (0x80000001, 0, [0x00000000, 0x00000000, 0x00000121, 0x2c100800]),
    (0x80000002, 0, [0x65746e49, 0x2952286c, 0x6f655820, 0x2952286e]),
    (0x80000007, 0, [0x00000000, 0x00000000, 0x00000000, 0x00000100]),
    (0x80000008, 0, [0x00303930, 0x00000000, 0x00000000, 0x00000000]),
    (0x8000000a, 0, [0x00000000, 0x00070001, 0x00000000, 0x00000000]),
];

/// What vCPU 1 of a VMX VM with 1 GiB EPT pages, a 2.1 GHz TSC and a 1 GHz LAPIC bus sees
/// on that host, in the same order.
const XEON_GUEST_VIEW: &[[u32; 4]] = &[
    [0x0000001f, 0x756e6547, 0x6c65746e, 0x49656e69], // clamped to 1Fh, GenuineIntel
    // APIC ID 1; no MCE, MCA; hypervisor. With XSAVE_VIRTUALIZED ECX also keeps the
    // host's FMA (12), XSAVE (26), AVX (28) and F16C (29): 0xc2d82203 became 0xf6d83203;
    // with the emulated LAPIC, x2APIC (21) and TSC-deadline (24) are set (0xf7f83203) and
    // EDX has APIC (9): 0x1f8bb97f became 0x1f8bbb7f.
    // OSXSAVE (27) stays clear here: the exit handler sets it from the guest's CR4.
    [0x000a0671, 0x01020800, 0xf7f83203, 0x1f8bbb7f],
    [0x00feff01, 0x000000f0, 0x00000000, 0x00000000],
    [0x04000121, 0x02c0003f, 0x0000003f, 0x00000000],
    [0x00000000, 0x00000000, 0x00000000, 0x00000000], // thermal
    // No TSX, INVPCID, AVX-512, PKU, ...; AVX2 (EBX bit 5) now passes: 0x219c0389 became
    // 0x219c03a9.
    [0x00000000, 0x219c03a9, 0x00000000, 0x00000000],
    [0x00000000, 0x00000000, 0x00000000, 0x00000000],
    [0x00000000, 0x00000000, 0x00000000, 0x00000000], // PMU
    [0x00000000, 0x00000001, 0x00000100, 0x00000001],
    [0x00000005, 0x00000002, 0x00000201, 0x00000001],
    // Leaf 0Dh, zeroes before XSAVE_VIRTUALIZED. Subleaf 0: of the host's 0x600e7 (x87,
    // SSE, AVX, AVX-512, AMX) only x87|SSE|AVX (7); the area 576 + 256 = 832 (0x340) bytes
    // in EBX and ECX, not the host's 0x2b00; EDX 0.
    [0x00000007, 0x00000340, 0x00000340, 0x00000000],
    // Subleaf 1: of the host's 0x1f, XSAVEOPT, XSAVEC, XGETBV1 (7), not XSAVES or XFD;
    // EBX the compacted size of x87|SSE|AVX, 0x340 (not the host's 0x29c0 with AVX-512/AMX).
    [0x00000007, 0x00000340, 0x00000000, 0x00000000],
    // Subleaf 2: AVX's size 0x100 at offset 0x240, the host's.
    [0x00000100, 0x00000240, 0x00000000, 0x00000000],
    [0x00000000, 0x00000000, 0x00000000, 0x00000000], // the host's (KVM gives zeroes)
    [0x00000000, 0x00000000, 0x00000000, 0x00000000],
    [0x00000000, 0x00000001, 0x00000100, 0x00000001],
    [0x40000010, 0x72706154, 0x54746f6f, 0x74727061], // TaprootTaprt, not KVM
    [0x00000000, 0x00000001, 0x00000000, 0x00000000], // VMCALL, ABI 1
    [0x00200b20, 0x000f4240, 0x00000000, 0x00000000], // 2 100 000 kHz, 1 000 000 kHz
    [0x80000008, 0x00000000, 0x00000000, 0x00000000],
    [0x00000000, 0x00000000, 0x00000121, 0x24100800], // 1 GiB pages, no RDTSCP
    [0x65746e49, 0x2952286c, 0x6f655820, 0x2952286e],
    [0x00000000, 0x00000000, 0x00000000, 0x00000100], // invariant TSC
    [0x00303930, 0x00000000, 0x00000000, 0x00000000],
    [0x00000000, 0x00000000, 0x00000000, 0x00000000], // SVM
];

#[test]
fn a_known_host_gives_the_recorded_guest_view() {
    let host = |leaf: u32, subleaf: u32| {
        XEON_UNDER_KVM.iter().find(|e| (e.0, e.1) == (leaf, subleaf)).map_or([0; 4], |e| e.2)
    };
    let facts = HostFacts {
        vendor: Vendor::Intel,
        gib_pages: true,
        tsc_hz: 2_100_000_000,
        lapic_bus_hz: 1_000_000_000,
    };
    let p = Policy::new(facts, host);
    let seen: Vec<[u32; 4]> =
        XEON_UNDER_KVM.iter().map(|&(leaf, subleaf, regs)| p.guest_view(leaf, subleaf, regs, 1)).collect();
    assert_eq!(seen, XEON_GUEST_VIEW);
}

#[test]
fn the_emulated_local_apic_is_offered_whatever_the_host_has() {
    let p = Policy::new(facts(Vendor::Amd, false), |_, _| [0x1F, 0, 0, 0]);
    for name in ["apic", "x2apic", "tsc_deadline_timer"] {
        assert!(p.always_offers(name), "{name}");
    }
    let [_, _, ecx, edx] = p.guest_view(1, 0, [0; 4], 0);
    assert_ne!(ecx & (1 << 21), 0, "x2apic");
    assert_ne!(ecx & (1 << 24), 0, "tsc_deadline_timer");
    assert_ne!(edx & (1 << 9), 0, "apic");
    assert!(!p.always_offers("sse3"), "passed from the host, not always offered");
    assert!(!p.always_offers("no_such_feature"));
}

/// Leaves without subleaves ignore ECX, as the CPU does: Linux's `secondary_startup_64`
/// runs CPUID 8000_0001h with ECX = 0xC000_0080 (EFER) left over and sets EFER.NXE from
/// its EDX.
#[test]
fn ecx_is_ignored_for_leaves_without_subleaves() {
    let p = policy(Vendor::Amd, true);
    for leaf in [0x1, 0x8000_0001, 0x8000_0007, 0x8000_0008] {
        assert_eq!(view(&p, leaf, 0xC000_0080), view(&p, leaf, 0), "leaf {leaf:#x}");
    }
    assert_ne!(view(&p, 0x8000_0001, 0xC000_0080)[3] & (1 << 20), 0, "nx");
    assert_eq!(view(&p, 0x7, 1), [0; 4], "leaf 7 subleaf 1 is still its own");
}
