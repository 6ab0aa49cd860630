//! A VM's counters in one typed value: what `GET /v1/vms/{id}/stats` answers and what the
//! launcher prints as `stats=<json>` when a VM ends. Serialized with serde; the key set is
//! the `Stats` schema of `docs/api/openapi.yaml` (an API test compares them).

use super::ExitStats;
use crate::mmu;
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
}
