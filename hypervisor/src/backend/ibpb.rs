//! The indirect branch prediction barrier (IBPB) between VMs on one CPU (host-tested
//! decision; the barrier itself only on bare metal).
//!
//! What one guest trains into the branch predictors (indirect branch targets) must not
//! steer another guest's speculation (Spectre v2 across guests). Where the CPU offers IBPB
//! (Intel CPUID.(EAX=7,ECX=0):EDX[26]; AMD CPUID.80000008H:EBX[12]), writing bit 0 of
//! IA32_PRED_CMD (MSR 0x49) stops branch targets predicted before the write from steering
//! those after it (Intel "Speculative Execution Side Channel Mitigations", AMD "Software
//! Techniques for Managing Speculation").
//!
//! Protocol: every VM gets a [`VmIdentity`] when it is created, unique for the image's
//! lifetime (never reused, unlike an address: a new VM where an old one was must still
//! count as another VM). Each CPU records the VM whose vCPU it last entered
//! ([`LastVm`]). Just before each VM entry, with interrupts off so that the record and
//! the entry happen on one CPU, the backend calls [`before_entry`]: it issues the barrier
//! when the CPU last ran a different VM. vCPUs of one VM share the predictors without a
//! barrier (one owner); the first VM a CPU runs gets none (only the host ran there, which
//! is not a tenant). On CPUs without IBPB nothing is recorded and nothing is issued.

use core::sync::atomic::{AtomicU64, Ordering};

/// A VM's identity for the barrier decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmIdentity(u64);

/// No VM yet (a CPU's record before its first entry).
const NO_VM: u64 = 0;
static NEXT_IDENTITY: AtomicU64 = AtomicU64::new(NO_VM + 1);

impl VmIdentity {
    /// A new identity, different from every other one handed out.
    #[allow(clippy::new_without_default, reason = "each call makes a different identity")]
    pub fn new() -> Self {
        Self(NEXT_IDENTITY.fetch_add(1, Ordering::Relaxed))
    }
}

/// Per CPU, the VM whose vCPU it last entered. Each CPU reads and writes only its own
/// entry, with interrupts off: relaxed atomics suffice.
pub struct LastVm<const CPUS: usize> {
    cpus: [AtomicU64; CPUS],
}

impl<const CPUS: usize> LastVm<CPUS> {
    pub const fn new() -> Self {
        Self { cpus: [const { AtomicU64::new(NO_VM) }; CPUS] }
    }

    /// Records that `cpu` enters a vCPU of `vm` next; whether a barrier must come first
    /// (the CPU last ran another VM).
    pub fn switch_to(&self, cpu: usize, vm: VmIdentity) -> bool {
        let last = self.cpus[cpu].swap(vm.0, Ordering::Relaxed);
        last != NO_VM && last != vm.0
    }
}

impl<const CPUS: usize> Default for LastVm<CPUS> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(target_os = "none")]
pub use hardware::{before_entry, enable_on_this_cpu};

#[cfg(target_os = "none")]
#[allow(unsafe_code, reason = "WRMSR of IA32_PRED_CMD")]
mod hardware {
    use super::{LastVm, VmIdentity};
    use crate::backend::host::cpuid;
    use core::sync::atomic::{AtomicBool, Ordering};
    use libos::smp::MAX_CPUS;
    use spin::Once;
    use x86_64::registers::model_specific::Msr;

    /// IA32_PRED_CMD and its IBPB bit (Intel SDM Vol. 4 Table 2-2; AMD APM Vol. 2 §3.2.9).
    const IA32_PRED_CMD: u32 = 0x49;
    const PRED_CMD_IBPB: u64 = 1 << 0;
    /// Intel: CPUID.(EAX=7,ECX=0):EDX[26], IBRS and IBPB.
    const CPUID_7_EDX_IBRS_IBPB: u32 = 1 << 26;
    /// AMD: CPUID.80000008H:EBX[12], IBPB.
    const CPUID_8000_0008_EBX_IBPB: u32 = 1 << 12;
    const EXTENDED_LEAF_BASE: u32 = 0x8000_0000;
    const EXTENDED_LEAF_IBPB: u32 = 0x8000_0008;
    /// Barriers timed once at start-up for the report.
    const TIMED_BARRIERS: u64 = 64;

    static LAST_VM: LastVm<MAX_CPUS> = LastVm::new();
    /// Whether the CPUs offer IBPB: set by the first [`enable_on_this_cpu`], which every backend
    /// calls while turning virtualization on, before any entry; read at every entry.
    static OFFERED: AtomicBool = AtomicBool::new(false);

    /// Whether this CPU offers IBPB (the first CPU's answer speaks for all).
    fn cpu_offers_ibpb() -> bool {
        let intel = cpuid(0, 0)[0] >= 7 && cpuid(7, 0)[3] & CPUID_7_EDX_IBRS_IBPB != 0;
        let amd = cpuid(EXTENDED_LEAF_BASE, 0)[0] >= EXTENDED_LEAF_IBPB
            && cpuid(EXTENDED_LEAF_IBPB, 0)[1] & CPUID_8000_0008_EBX_IBPB != 0;
        intel || amd
    }

    fn barrier() {
        // SAFETY: CPUID offers IBPB (`offered`), so IA32_PRED_CMD exists and bit 0 is the
        // barrier; the write has no other effect.
        unsafe { Msr::new(IA32_PRED_CMD).write(PRED_CMD_IBPB) };
    }

    /// Just before entering a vCPU of `vm` on `cpu` (interrupts off): the barrier, if
    /// this CPU last ran another VM and offers it.
    #[inline]
    pub fn before_entry(cpu: usize, vm: VmIdentity) {
        if OFFERED.load(Ordering::Relaxed) && LAST_VM.switch_to(cpu, vm) {
            barrier();
        }
    }

    /// Turning virtualization on (each CPU, before its first entry): the first call finds out whether the CPUs offer IBPB
    /// and logs it with what one costs in TSC ticks (the mean of a timed run; `cargo xtask
    /// bench` reads the line).
    pub fn enable_on_this_cpu() {
        static REPORTED: Once<()> = Once::new();
        REPORTED.call_once(|| {
            let offered = cpu_offers_ibpb();
            OFFERED.store(offered, Ordering::Relaxed);
            if !offered {
                log::info!(
                    "isolation: ibpb offered=no (CPUID.7.0:EDX[26] and CPUID.80000008H:EBX[12] clear): no barrier between VMs"
                );
                return;
            }
            let start = libos::time::tsc();
            for _ in 0..TIMED_BARRIERS {
                barrier();
            }
            let ticks = (libos::time::tsc() - start) / TIMED_BARRIERS;
            log::info!("isolation: ibpb offered=yes tsc_per_barrier={ticks}");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_vm_on_a_cpu_gets_no_barrier() {
        let last = LastVm::<2>::new();
        assert!(!last.switch_to(0, VmIdentity::new()));
    }

    #[test]
    fn vcpus_of_one_vm_share_a_cpu_without_barriers() {
        let last = LastVm::<2>::new();
        let vm = VmIdentity::new();
        assert!(!last.switch_to(1, vm));
        assert!(!last.switch_to(1, vm), "the same vCPU again");
        assert!(!last.switch_to(1, vm), "another vCPU of the same VM");
    }

    #[test]
    fn switching_between_vms_on_a_cpu_takes_a_barrier_each_time() {
        let last = LastVm::<2>::new();
        let (a, b) = (VmIdentity::new(), VmIdentity::new());
        assert!(!last.switch_to(0, a));
        assert!(last.switch_to(0, b));
        assert!(last.switch_to(0, a));
        assert!(!last.switch_to(0, a));
    }

    #[test]
    fn each_cpu_keeps_its_own_record() {
        let last = LastVm::<2>::new();
        let (a, b) = (VmIdentity::new(), VmIdentity::new());
        assert!(!last.switch_to(0, a));
        assert!(!last.switch_to(1, b), "cpu 1 never ran a");
        assert!(!last.switch_to(0, a), "cpu 0 still last ran a");
    }

    #[test]
    fn a_new_vm_is_never_the_old_one_even_if_it_takes_its_place() {
        let last = LastVm::<1>::new();
        assert!(!last.switch_to(0, VmIdentity::new()));
        assert!(last.switch_to(0, VmIdentity::new()), "identities are never reused");
    }
}
