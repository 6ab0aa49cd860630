//! The invalidation sequence for changes the hypervisor makes to the memory behind guest
//! pages (rule 7): discarding a range, replacing frames, ballooning.
//!
//! 1. Begin, under the exclusive lock: the in-progress count goes up and the invalidated
//!    range widens to cover the new one.
//! 2. Zap the range in every root and flush.
//! 3. Change the backing.
//! 4. End: the sequence number goes up, then the count goes down.
//!
//! A fault snapshots the sequence before it looks up the backing, retries at once without
//! taking the lock if its gfn lies in the range being invalidated, and checks again right
//! before each compare-and-exchange that installs or widens a translation. That last check
//! runs under the shared lock, and begin runs under the exclusive one, so a begin is either
//! visible to the check, or happens after the install, whose entry the zap of step 2 then
//! removes. A fault that looked up the old backing before a whole begin..end passed sees
//! the sequence changed.

use super::lock::MmuExclusive;
use crate::addr::{Gfn, GfnRange};
use crate::memslot::SlotTable;
use crate::sync::{AtomicU64, Ordering};

pub(crate) struct Invalidations {
    in_progress: AtomicU64,
    start: AtomicU64,
    end: AtomicU64,
    sequence: AtomicU64,
}

impl Invalidations {
    pub(crate) fn new() -> Self {
        Self {
            in_progress: AtomicU64::new(0),
            start: AtomicU64::new(0),
            end: AtomicU64::new(0),
            sequence: AtomicU64::new(0),
        }
    }

    pub(crate) fn snapshot(&self) -> u64 {
        self.sequence.load(Ordering::SeqCst)
    }

    /// Whether an invalidation in progress covers `gfn`. Read without the lock this may see
    /// a begin half-written; the check under the lock is the one that counts.
    pub(crate) fn blocks(&self, gfn: Gfn) -> bool {
        self.in_progress.load(Ordering::SeqCst) != 0
            && self.start.load(Ordering::SeqCst) <= gfn.raw()
            && gfn.raw() < self.end.load(Ordering::SeqCst)
    }

    /// The check before installing. The count is read before the sequence: `end` raises the
    /// sequence before it lowers the count, so a fault that sees the count already lowered
    /// also sees the new sequence.
    pub(crate) fn must_retry(&self, snapshot: u64, gfn: Gfn) -> bool {
        self.blocks(gfn) || self.sequence.load(Ordering::SeqCst) != snapshot
    }

    pub(crate) fn begin(&self, _exclusive: &mut MmuExclusive<'_, SlotTable>, range: GfnRange) {
        // Only the exclusive holder writes the range, and no fault is between its lockless
        // check and its install while we hold it. A concurrent `end` may lower the count to
        // zero after we read it: then we widen a stale range, which only retries more faults.
        if self.in_progress.load(Ordering::SeqCst) == 0 {
            self.start.store(range.start.raw(), Ordering::SeqCst);
            self.end.store(range.end.raw(), Ordering::SeqCst);
        } else {
            self.start.fetch_min(range.start.raw(), Ordering::SeqCst);
            self.end.fetch_max(range.end.raw(), Ordering::SeqCst);
        }
        self.in_progress.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn end(&self) {
        self.sequence.fetch_add(1, Ordering::SeqCst);
        self.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}
