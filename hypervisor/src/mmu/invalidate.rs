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
use super::stats::Counters;
use super::{Mmu, Platform};
use crate::addr::{Gfn, GfnRange, PAGE_SIZE};
use crate::memslot::{AsId, Memslot, SlotTable};
use crate::pages::PageSource;
use crate::sync::{AtomicU64, Ordering};
use alloc::sync::Arc;
use alloc::vec::Vec;

impl<P: Platform> Mmu<P> {
    /// Begins a change to the memory behind `range` of `as_id` (rule 7): faults in the range
    /// retry from now on, and the range is zapped and flushed before this returns. The
    /// change is done through the returned [`Invalidation`], which ends the sequence when
    /// dropped.
    pub fn begin_invalidation(&self, as_id: AsId, range: GfnRange) -> Invalidation<'_, P> {
        let core = &*self.core;
        {
            let mut exclusive = core.lock.write();
            core.inval.begin(&mut exclusive, range);
        }
        Counters::add(&core.counters.range_invalidations, 1);
        core.zap_range(Some(as_id), range);
        Invalidation { mmu: self, as_id, range }
    }

    /// Discards the memory behind `range`: afterwards it reads as zeros, and chunks fully
    /// inside the range go back to the page source.
    pub fn discard_range(&self, as_id: AsId, range: GfnRange) {
        self.begin_invalidation(as_id, range).discard();
    }
}

/// A change to backing memory in progress (rule 7). Dropping it ends the sequence.
pub struct Invalidation<'a, P: Platform> {
    mmu: &'a Mmu<P>,
    as_id: AsId,
    range: GfnRange,
}

impl<P: Platform> Invalidation<'_, P> {
    pub fn range(&self) -> GfnRange {
        self.range
    }

    /// Drops the backing of the range: whole chunks go back to the page source, partly
    /// covered ones are zeroed.
    pub fn discard(&self) {
        let core = &*self.mmu.core;
        let shared = core.lock.read();
        let slots: Vec<Arc<Memslot>> = shared
            .iter()
            .filter(|s| s.as_id == self.as_id && s.base < self.range.end && self.range.start < s.end())
            .cloned()
            .collect();
        let zeros = [0u8; PAGE_SIZE as usize];
        for slot in slots {
            let start = slot.base.max(self.range.start);
            let end = slot.end().min(self.range.end);
            let mut gfn = start;
            while gfn < end {
                let (chunk, offset) = slot.locate(gfn);
                let chunk_pages = slot.backing.chunk.pages();
                let chunk_end = gfn.add(chunk_pages - offset / PAGE_SIZE);
                if offset == 0 && chunk_end <= end {
                    core.discard_backing(&slot, chunk);
                    gfn = chunk_end;
                } else {
                    if let Some(frame) = slot.backing.frame(chunk) {
                        core.pages.write_frame(frame, slot.backing.chunk, offset, &zeros);
                    }
                    gfn = gfn.add(1);
                }
            }
        }
    }
}

impl<P: Platform> Drop for Invalidation<'_, P> {
    fn drop(&mut self) {
        self.mmu.core.inval.end();
    }
}

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
