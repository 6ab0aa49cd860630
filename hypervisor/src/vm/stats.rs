//! A VM's counters in one typed value: what `GET /v1/vms/{id}/stats` answers and what the
//! launcher prints as `stats=<json>` when a VM ends. Serialized with serde; the key set is
//! the `Stats` schema of `docs/api/openapi.yaml` (an API test compares them).

use super::ExitStats;
use crate::devices::irqchip::Injection;
use crate::devices::irqchip::IrqStats;
use crate::mmu;
use core::sync::atomic::{AtomicU64, Ordering};
use serde::Serialize;

/// One JSON object: `{"mmu": {...}, "exits": {...}, "tlb_flushes": N, ...}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VmStats {
    /// The MMU's counters.
    pub mmu: mmu::Stats,
    /// Exits by reason.
    pub exits: ExitStats,
    /// TLB flushes the backend issued for this VM.
    pub tlb_flushes: u64,
    /// Reads and writes of ports no device claims.
    pub unknown_port_reads: u64,
    pub unknown_port_writes: u64,
    /// From `start` to the guest's first console byte (0: no output yet).
    pub start_to_first_console_ns: u64,
    /// Interrupt delivery, halts and timers.
    pub interrupts: InterruptStats,
}

/// Interrupt delivery and halts of one VM, counted as they happen.
#[derive(Default)]
pub struct InterruptCounts {
    interrupts: AtomicU64,
    nmis: AtomicU64,
    halts: AtomicU64,
    wakeups: AtomicU64,
}

impl InterruptCounts {
    pub fn injected(&self, injection: Injection) {
        let counter = if injection == Injection::Nmi { &self.nmis } else { &self.interrupts };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn halt(&self) {
        self.halts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn wakeup(&self) {
        self.wakeups.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now, with what the caller reads elsewhere: the interrupt controllers'
    /// counts by source and the vCPUs halted now.
    #[must_use]
    pub fn snapshot(&self, sources: IrqStats, halted_vcpus: u64) -> InterruptStats {
        InterruptStats {
            injected: self.interrupts.load(Ordering::Relaxed),
            nmis_injected: self.nmis.load(Ordering::Relaxed),
            halts: self.halts.load(Ordering::Relaxed),
            wakeups: self.wakeups.load(Ordering::Relaxed),
            timer_expiries: sources.lapic_timer_expiries,
            halted_vcpus,
            sources,
        }
    }
}

/// The `interrupts` object of the API's `Stats` schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InterruptStats {
    /// External interrupts injected (each counted once, however often its delivery was
    /// interrupted and re-injected).
    pub injected: u64,
    pub nmis_injected: u64,
    /// HLTs executed, and halts that ended (an event woke the vCPU).
    pub halts: u64,
    pub wakeups: u64,
    /// Local APIC timer expiries (masked ones included).
    pub timer_expiries: u64,
    /// vCPUs halted now.
    pub halted_vcpus: u64,
    /// What the interrupt controllers delivered, by source (`devices::irqchip`).
    pub sources: IrqStats,
}
