//! Zapping: removing translations under the shared lock, in bounded batches (rule 9), each
//! batch flushed before the next begins and before the zap returns (rule 8).
//!
//! How an entry is removed while faults run in parallel (KVM's "frozen SPTE"):
//! 1. compare-and-exchange the entry from its snapshot to FROZEN. Faults that meet FROZEN
//!    retry; no walker overwrites it, so the zapper owns the entry from here on.
//! 2. If it pointed to a table, that table is now unreachable from the root; sweep it,
//!    exchanging each of its entries for FROZEN (so a walker that stepped into it just
//!    before the unlink cannot install anything there any more: its compare-and-exchange
//!    fails), recursively, and record the table pages in the batch.
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
use super::iter::{reach, span};
use super::lock::MmuShared;
use super::root::Root;
use super::stats::Clock;
use super::stats::Counters;
use super::{Core, Platform, TdpFormat};
use crate::addr::{Gfn, GfnRange, Hpa};
use crate::memslot::AsId;
use crate::memslot::SlotTable;
use crate::pages::PageSource;
use crate::sync::{AtomicU64, Ordering, spin_wait};
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
        let levels = root.role().levels;
        let mut from = range.start;
        let mut shared = self.lock.read();
        loop {
            let mut batch = ZapBatch::new();
            let mut budget = self.config.zap_batch;
            let resume = self.zap_table(
                &shared,
                root.table(),
                levels,
                Gfn::new(0),
                range,
                from,
                &mut budget,
                &mut batch,
            );
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

    /// Zaps the part of `range` at or after `from` below the entries of `table` (at `level`,
    /// spanning from `base`). Returns where to resume if the budget ran out.
    #[expect(clippy::too_many_arguments, reason = "the walk state of one recursion level")]
    #[expect(clippy::only_used_in_recursion, reason = "the guard proves the shared lock is held")]
    #[expect(clippy::needless_range_loop, reason = "the index also names the entry in the batch and its gfn")]
    fn zap_table(
        &self,
        shared: &MmuShared<'_, SlotTable>,
        table: Hpa,
        level: u8,
        base: Gfn,
        range: GfnRange,
        from: Gfn,
        budget: &mut usize,
        batch: &mut ZapBatch,
    ) -> Option<Gfn> {
        let entry_pages = span(level);
        let lo = range.start.max(from).max(base).raw();
        let hi = range.end.raw().min(base.raw() + 512 * entry_pages);
        if lo >= hi {
            return None;
        }
        let entries = self.pages.table(table);
        let first = ((lo - base.raw()) / entry_pages) as usize;
        let last = ((hi - 1 - base.raw()) / entry_pages) as usize;
        for index in first..=last {
            let start = base.raw() + index as u64 * entry_pages;
            let end = start + entry_pages;
            if *budget == 0 {
                return Some(Gfn::new(start.max(from.raw())));
            }
            let covered = range.start.raw() <= start && end <= range.end.raw();
            let entry = &entries[index];
            let mut descended = false;
            loop {
                let old = entry.load(Ordering::Acquire);
                // Non-present, or frozen by another zapper that owns it.
                if !<P::Format as TdpFormat>::is_present(old) {
                    break;
                }
                if <P::Format as TdpFormat>::is_leaf(old, level) {
                    // A huge leaf only partly in the range goes whole: zapping more than
                    // asked is always correct, the rest faults back in.
                    if !freeze::<P::Format>(entry, old) {
                        continue;
                    }
                    batch.froze(table, index);
                    batch.leaves += 1;
                    *budget = budget.saturating_sub(1);
                    break;
                }
                let child = <P::Format as TdpFormat>::table_address(old);
                if covered && (level == 2 || descended) {
                    if !freeze::<P::Format>(entry, old) {
                        continue;
                    }
                    batch.froze(table, index);
                    let work = self.sweep(child, level - 1, batch);
                    *budget = budget.saturating_sub(work);
                    break;
                }
                if descended {
                    break;
                }
                if let Some(resume) =
                    self.zap_table(shared, child, level - 1, Gfn::new(start), range, from, budget, batch)
                {
                    return Some(resume);
                }
                descended = true;
            }
        }
        None
    }

    /// Takes every entry of an unlinked table (and of the tables below it), recording the
    /// pages in `batch`. Returns the work done (entries taken plus tables).
    fn sweep(&self, table: Hpa, level: u8, batch: &mut ZapBatch) -> usize {
        let mut work = 1;
        for entry in self.pages.table(table) {
            let old = entry.swap(<P::Format as TdpFormat>::FROZEN, Ordering::AcqRel);
            if !<P::Format as TdpFormat>::is_present(old) {
                continue;
            }
            work += 1;
            if <P::Format as TdpFormat>::is_leaf(old, level) {
                batch.leaves += 1;
            } else {
                work += self.sweep(<P::Format as TdpFormat>::table_address(old), level - 1, batch);
            }
        }
        batch.unlinked(table);
        work
    }
}

/// Replaces the entry `old` with FROZEN, unless another thread changed it first (then the
/// caller re-reads and decides again).
fn freeze<F: TdpFormat>(entry: &AtomicU64, old: u64) -> bool {
    entry.compare_exchange(old, F::FROZEN, Ordering::AcqRel, Ordering::Acquire).is_ok()
}
