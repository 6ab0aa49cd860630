//! Zapping: removing translations under the shared lock, in bounded batches (rule 9), each
//! batch flushed before the next begins and before the zap returns (rule 8).
//!
//! How an entry is removed while faults run in parallel (KVM's "frozen SPTE"):
//! 1. compare-and-exchange the entry from its snapshot to FROZEN. Faults that meet FROZEN
//!    retry; no walker overwrites it, so the zapper owns the entry from here on.
//! 2. If it pointed to a table, that table is now unreachable from the root; sweep it,
//!    exchanging each of its entries for FROZEN (so a walker that stepped into it just
//!    before the unlink cannot install anything there any more: its compare-and-exchange
//!    fails), and the tables below it likewise, and record the table pages in the batch.
//! 3. When the batch is full or the zap is done: flush, and only then write the frozen
//!    entries non-present (`flush::flush`) and queue the tables for the grace period.
//!
//! Which tables are unlinked: a table whose whole span lies in the zapped range, either at
//! once (leaf tables, at most 512 entries) or after its children are done (post-order), so
//! no single step exceeds one leaf table of work. Between batches the walk restarts from the
//! root at the first gfn not yet done (with yielding, tables seen before may be gone).
//!
//! Why nothing is installed behind the zap's back: root zaps run on invalid roots, where no
//! fault installs; range zaps run inside a rule-7 invalidation or after a flag change whose
//! earlier faults have all finished. The sweep does not rely on it: it exchanges entries,
//! so whatever is there is taken.

use super::flush::{self, FlushScope, ZapBatch};
use super::format::Spte;
use super::iter::{TdpIter, reach, span};
use super::lock::MmuShared;
use super::root::Root;
use super::stats::Clock;
use super::stats::Counters;
use super::{Core, Platform};
use crate::addr::{Gfn, GfnRange, Hpa};
use crate::memslot::AsId;
use crate::memslot::SlotTable;
use crate::sync::spin_wait;
use alloc::sync::Arc;
use alloc::vec::Vec;

impl<P: Platform> Core<P> {
    pub(crate) fn zap_whole_root(&self, root: &Root<P>) {
        let range = GfnRange::new(Gfn::new(0), Gfn::new(reach(root.role().levels)));
        self.timed_zap(root, range, FlushScope::Root(root.table()));
    }

    /// Zaps `range` in every root that may map slots of `as_id` (all if `None`; the
    /// alternate space's roots also map normal slots): the valid ones
    /// and the invalid ones whose own zap has not finished.
    pub(crate) fn zap_range(&self, as_id: Option<AsId>, range: GfnRange) {
        let roots: Vec<Arc<Root<P>>> = self
            .roots
            .lock()
            .iter()
            .filter(|r| as_id.is_none_or(|a| r.role().as_id.sees(a)))
            .cloned()
            .collect();
        for root in &roots {
            self.timed_zap(root, range, FlushScope::Vm);
        }
    }

    fn timed_zap(&self, root: &Root<P>, range: GfnRange, scope: FlushScope) {
        let start = self.clock.now_ns();
        self.zap_root_range(root, range, scope);
        Counters::add(&self.counters.zaps, 1);
        Counters::add(&self.counters.zap_ns, self.clock.now_ns().saturating_sub(start));
    }

    fn zap_root_range(&self, root: &Root<P>, range: GfnRange, scope: FlushScope) {
        let mut from = range.start;
        let mut shared = self.lock.read();
        loop {
            let mut batch = ZapBatch::new();
            let resume = self.zap_batch(&shared, root, range, from, &mut batch);
            Counters::add(&self.counters.sptes_zapped, batch.leaves);
            let flushed = flush::flush(&*self.hook, &*self.pages, &self.counters, batch, scope);
            self.grace.retire(flushed, &self.counters);
            let Some(next) = resume else { break };
            from = next;
            if self.config.zap_yield {
                // Let a queued writer (and the readers queued behind it) in.
                drop(shared);
                spin_wait();
                shared = self.lock.read();
            }
        }
    }

    /// Zaps the part of `range` at or after `from` in `root`, until the batch's budget of
    /// work is spent. Returns where to resume if it ran out.
    ///
    /// Each entry is taken by compare-and-exchange from the cursor's snapshot to FROZEN;
    /// if another thread changed it first, the failure refreshes the snapshot and the entry
    /// is decided again.
    fn zap_batch(
        &self,
        shared: &MmuShared<'_, SlotTable>,
        root: &Root<P>,
        range: GfnRange,
        from: Gfn,
        batch: &mut ZapBatch,
    ) -> Option<Gfn> {
        let mut budget = self.config.zap_batch;
        let mut iter = TdpIter::<P::Format, _>::root(
            shared,
            &*self.pages,
            root.table(),
            root.role().levels,
            from,
            range.end,
        )?;
        // Whether the cursor came back up to the current entry from the table below it, so
        // that table's part of the range is done (post-order).
        let mut returned = false;
        loop {
            let old = iter.old();
            let level = iter.level();
            let start = iter.gfn();
            if !returned && budget == 0 {
                return Some(start.max(from));
            }
            let covered = range.start <= start && start.add(span(level)) <= range.end;
            let descend = if !old.is_present() {
                // Non-present, or frozen by another zapper that owns it.
                false
            } else if old.is_leaf(level) {
                // A huge leaf only partly in the range goes whole: zapping more than asked
                // is always correct, the rest faults back in.
                if iter.cmpxchg(Spte::FROZEN).is_err() {
                    continue;
                }
                let (table, index) = iter.position();
                batch.froze(table, index);
                batch.leaves += 1;
                budget = budget.saturating_sub(1);
                false
            } else if covered && (level == 2 || returned) {
                let child = old.table_address();
                if iter.cmpxchg(Spte::FROZEN).is_err() {
                    continue;
                }
                let (table, index) = iter.position();
                batch.froze(table, index);
                let work = self.sweep(shared, child, level - 1, start, batch);
                budget = budget.saturating_sub(work);
                false
            } else {
                !returned
            };
            if descend {
                iter.step_down();
            } else if iter.step_side_to_present() {
                returned = false;
            } else if iter.step_up() {
                returned = true;
            } else {
                return None;
            }
        }
    }

    /// Takes every entry of an unlinked table at `level` (spanning from `base`) and of the
    /// tables below it, recording the pages in `batch`, each after the tables below it.
    /// Returns the work done (entries taken plus tables).
    fn sweep(
        &self,
        shared: &MmuShared<'_, SlotTable>,
        table: Hpa,
        level: u8,
        base: Gfn,
        batch: &mut ZapBatch,
    ) -> usize {
        // What the entry above it spans.
        let end = base.add(span(level + 1));
        let mut iter = TdpIter::<P::Format, _>::new(shared, &*self.pages, table, level, base, end)
            .expect("a table spans its entries");
        let mut work = 1;
        loop {
            // Up to the next table pointer, or to the end of this table.
            let leaves = iter.swap_run(Spte::FROZEN);
            batch.leaves += leaves;
            work += leaves as usize;
            if iter.step_down() {
                // The pointer and the table below, swept next.
                work += 2;
                continue;
            }
            // Past this run; a table whose last entry it took is done.
            while !iter.step_side() {
                batch.unlinked(iter.position().0);
                if !iter.step_up() {
                    return work;
                }
            }
        }
    }
}
