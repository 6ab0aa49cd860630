//! CPUID policy: what a child guest sees, as a pure function of the host's answer. The
//! exit handler (common to SVM and VMX) runs the host's CPUID for the guest's leaf and
//! subleaf and returns [`guest_view`] of it.
//!
//! Bit positions: Intel SDM Vol. 2A, CPUID, Table 3-8 (leaf 1), Table 3-8 leaf 0Bh; AMD
//! APM Vol. 3, Appendix E (CPUID Fn8000_0001 ECX, Fn8000_000A, Fn8000_001E).

use taproot_guest_abi::cpuid as abi;

/// Whose virtualization extension the host has (and so which hypercall instruction the
/// guest must use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// SVM; hypercalls through VMMCALL.
    Amd,
    /// VMX; hypercalls through VMCALL.
    Intel,
}

/// CPUID.01h:ECX bit 5: VMX.
const LEAF1_ECX_VMX: u32 = 1 << 5;
/// CPUID.01h:ECX bit 21: x2APIC.
const LEAF1_ECX_X2APIC: u32 = 1 << 21;
/// CPUID.01h:ECX bit 31: running under a hypervisor (reserved as 0 on real hardware).
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.01h:EBX bits 31-24: initial local APIC ID.
const LEAF1_EBX_APIC_ID_SHIFT: u32 = 24;
/// CPUID.80000001h:ECX bit 2: SVM.
const EXT1_ECX_SVM: u32 = 1 << 2;

const LEAF_FEATURES: u32 = 0x1;
/// Architectural performance monitoring.
const LEAF_PMU: u32 = 0xA;
/// Extended topology enumeration (and its V2 at 1Fh): EDX = x2APIC ID.
const LEAF_TOPOLOGY: u32 = 0xB;
const LEAF_TOPOLOGY_V2: u32 = 0x1F;
/// The whole range reserved for hypervisors.
const HYPERVISOR_RANGE: core::ops::RangeInclusive<u32> = 0x4000_0000..=0x4FFF_FFFF;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
/// SVM revision and features.
const LEAF_SVM: u32 = 0x8000_000A;
/// AMD: EAX = extended APIC ID.
const LEAF_AMD_APIC_ID: u32 = 0x8000_001E;

/// What the guest sees for CPUID `leaf`/`subleaf` on vCPU `vcpu_index`, given the host's
/// `[eax, ebx, ecx, edx]` for the same leaf and subleaf.
///
/// - leaf 1: the hypervisor bit set; VMX hidden; x2APIC hidden (no APIC emulation yet);
///   the initial APIC ID (EBX[31:24]) is the vCPU index;
/// - leaves 0Bh and 1Fh: the x2APIC ID (EDX) is the vCPU index;
/// - leaf 0Ah (performance monitoring) zeroed: PMU MSRs are not passed through, and an
///   unknown MSR raises #GP, so the guest must not think it has counters;
/// - leaf 8000_0001h: SVM hidden; leaf 8000_000Ah (SVM features) zeroed;
/// - leaf 8000_001Eh on AMD: the extended APIC ID (EAX) is the vCPU index;
/// - leaves 4000_0000h-4FFF_FFFFh: Taproot's signature and features (see
///   `taproot_guest_abi::cpuid`), zeroes beyond them. An outer hypervisor's leaves (KVM's,
///   when Taproot itself runs nested) never show through.
///
/// Every other leaf is the host's.
#[must_use]
pub fn guest_view(leaf: u32, subleaf: u32, host: [u32; 4], vendor: Vendor, vcpu_index: u32) -> [u32; 4] {
    let _ = subleaf; // the leaves rewritten here rewrite every subleaf alike
    let [eax, ebx, ecx, edx] = host;
    match leaf {
        LEAF_FEATURES => {
            let ebx = (ebx & 0x00FF_FFFF) | ((vcpu_index & 0xFF) << LEAF1_EBX_APIC_ID_SHIFT);
            let ecx = (ecx & !(LEAF1_ECX_VMX | LEAF1_ECX_X2APIC)) | LEAF1_ECX_HYPERVISOR;
            [eax, ebx, ecx, edx]
        }
        LEAF_PMU => [0; 4],
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => [eax, ebx, ecx, vcpu_index],
        abi::SIGNATURE_LEAF => {
            let [b, c, d] = abi::signature_regs();
            [abi::MAX_LEAF, b, c, d]
        }
        abi::FEATURES_LEAF => {
            let features = match vendor {
                Vendor::Amd => abi::FEATURE_HYPERCALL_VMMCALL,
                Vendor::Intel => 0,
            };
            [features, abi::ABI_VERSION, 0, 0]
        }
        l if HYPERVISOR_RANGE.contains(&l) => [0; 4],
        LEAF_EXT_FEATURES => [eax, ebx, ecx & !EXT1_ECX_SVM, edx],
        LEAF_SVM => [0; 4],
        LEAF_AMD_APIC_ID if vendor == Vendor::Amd => [vcpu_index, ebx, ecx, edx],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_ONES: [u32; 4] = [u32::MAX; 4];

    #[test]
    fn leaf_1_sets_hypervisor_hides_vmx_and_x2apic_and_gives_the_vcpu_index() {
        let host = [0x000A_0F10, 0x0A02_0800, LEAF1_ECX_VMX | LEAF1_ECX_X2APIC | 1, 0x178B_FBFF];
        let [eax, ebx, ecx, edx] = guest_view(1, 0, host, Vendor::Intel, 3);
        assert_eq!((eax, edx), (host[0], host[3]));
        assert_eq!(ebx, 0x0302_0800, "APIC ID 3, the rest of EBX kept");
        assert_eq!(ecx, LEAF1_ECX_HYPERVISOR | 1);
        let [_, ebx, ecx, _] = guest_view(1, 0, ALL_ONES, Vendor::Amd, 0);
        assert_eq!(ebx >> 24, 0);
        assert_eq!(ecx & (LEAF1_ECX_VMX | LEAF1_ECX_X2APIC), 0);
    }

    #[test]
    fn svm_is_hidden_and_its_leaf_zeroed() {
        let [_, _, ecx, edx] = guest_view(0x8000_0001, 0, ALL_ONES, Vendor::Amd, 0);
        assert_eq!((ecx, edx), (!EXT1_ECX_SVM, u32::MAX));
        assert_eq!(guest_view(0x8000_000A, 0, ALL_ONES, Vendor::Amd, 0), [0; 4]);
        assert_eq!(guest_view(0xA, 0, ALL_ONES, Vendor::Intel, 0), [0; 4]);
    }

    #[test]
    fn hypervisor_leaves_name_taproot_and_the_hypercall_instruction() {
        let kvm = [0x4000_0001, 0x4B4D_564B, 0x564B_4D56, 0x4D];
        let [max, b, c, d] = guest_view(0x4000_0000, 0, kvm, Vendor::Amd, 0);
        assert_eq!(max, abi::FEATURES_LEAF);
        assert!(abi::is_taproot(b, c, d));
        assert_eq!(guest_view(0x4000_0001, 0, ALL_ONES, Vendor::Amd, 0), [1, abi::ABI_VERSION, 0, 0]);
        assert_eq!(guest_view(0x4000_0001, 0, ALL_ONES, Vendor::Intel, 0), [0, abi::ABI_VERSION, 0, 0]);
        for leaf in [0x4000_0002, 0x4000_0100, 0x4FFF_FFFF] {
            assert_eq!(guest_view(leaf, 0, ALL_ONES, Vendor::Intel, 0), [0; 4], "leaf {leaf:#x}");
        }
    }

    #[test]
    fn topology_leaves_report_the_vcpu_index_as_apic_id() {
        let host = [1, 2, 0x100, 7];
        assert_eq!(guest_view(0xB, 1, host, Vendor::Intel, 5), [1, 2, 0x100, 5]);
        assert_eq!(guest_view(0x1F, 0, host, Vendor::Intel, 5), [1, 2, 0x100, 5]);
        assert_eq!(guest_view(0x8000_001E, 0, host, Vendor::Amd, 5), [5, 2, 0x100, 7]);
        assert_eq!(guest_view(0x8000_001E, 0, host, Vendor::Intel, 5), host);
    }

    #[test]
    fn other_leaves_are_the_hosts() {
        for leaf in [0, 2, 4, 7, 0xD, 0x8000_0000, 0x8000_0008] {
            assert_eq!(guest_view(leaf, 1, [leaf, 2, 3, 4], Vendor::Amd, 1), [leaf, 2, 3, 4]);
        }
    }
}
