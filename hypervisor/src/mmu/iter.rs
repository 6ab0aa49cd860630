//! Table geometry and the one page-table walker, [`TdpIter`], in the manner of KVM's
//! `tdp_iter`: every walk (lookups, faults, zaps, the sweep of unlinked tables, listing the
//! leaves) moves this cursor over the tables.
//!
//! The cursor stands on one entry: the table it is in, the tables it came down through
//! (the path), the level, the gfn the entry begins at, and a snapshot of the entry
//! (`old`). Decisions are taken on the snapshot; a change is a
//! compare-and-exchange against it ([`TdpIter::cmpxchg`]), so a change another thread made
//! in between makes ours fail instead of overwriting it, and the failure refreshes the
//! snapshot with what is there now, for the caller to decide again.
//!
//! It moves down (into the table the snapshot points to, never into one it merely read
//! before), sideways (the next entry of the same table within the walk's range), up (back
//! to the entry it came down through, read afresh) or past the current entry's whole
//! subtree. Entering a table reads that table's entry fresh: no step acts on a stale view of
//! a level below. Two sideways moves cover a run of entries in one loop, for the zap: past
//! absent entries to the next present one ([`TdpIter::step_side_to_present`]), and
//! exchanging each entry of an unlinked table up to the next table pointer
//! ([`TdpIter::swap_run`]); each entry is still read once, by the load or the exchange.
//!
//! Why the tables it stands in stay allocated: a cursor borrows the shared side of the MMU
//! lock for its whole life, and table pages are freed only under the exclusive side after
//! they were unlinked (see `flush.rs`). A table may be unlinked while the cursor stands in
//! it; its entries then read FROZEN (the sweep takes them all), so nothing is installed
//! there any more.

use super::format::{Spte, TdpFormat};
use super::lock::MmuShared;
use crate::addr::{Gfn, Hpa};
use crate::memslot::SlotTable;
use crate::pages::PageSource;
use crate::sync::{AtomicU64, Ordering};
use core::marker::PhantomData;

/// Entries in one table page.
const ENTRIES: u64 = crate::pages::ENTRIES as u64;

/// The most paging levels a root has (5-level EPT/NPT).
pub(crate) const MAX_LEVELS: usize = 5;

/// 4 KiB pages spanned by one entry at `level` (1: 1, 2: 512, 3: 512^2, ...).
pub(crate) const fn span(level: u8) -> u64 {
    1 << (9 * (level as u32 - 1))
}

/// The index of `gfn`'s entry in a table at `level`.
pub(crate) const fn index(gfn: Gfn, level: u8) -> usize {
    ((gfn.raw() >> (9 * (level as u32 - 1))) & (ENTRIES - 1)) as usize
}

/// The number of guest frames a root with `levels` levels can map.
pub(crate) const fn reach(levels: u8) -> u64 {
    1 << (9 * levels as u32)
}

/// A cursor over the entries of a table tree (a root, or a table unlinked from one) that
/// lie in a range of gfns. See the module documentation.
///
/// Cost: every fault walks with this cursor, so a step must compile to what a hand-written
/// walk does. What a step reads is scalar fields (the current table, level, target,
/// snapshot), and the tables above are a stack shifted by one on each step down or up,
/// never indexed by the level. With no variable index into it, the compiler keeps the whole
/// cursor in registers once the steps (`#[inline]`) are inlined into the walk, and drops
/// the stack from a walk that never steps up (a fault). A field indexed by the level puts
/// the whole cursor in memory: with the tables of every level in arrays indexed by it, and
/// the steps not inlined, a 4 KiB fault took 1.6 times the instructions of the
/// hand-written walk this cursor replaced, and 1.75 times the time (mmu-bench).
pub(crate) struct TdpIter<'a, F: TdpFormat, P: PageSource> {
    pages: &'a P,
    /// The table the current entry is in.
    table: Hpa,
    /// The same table, resolved once through the page source when the cursor enters it
    /// (every entry access would otherwise map the address again).
    entries: &'a [AtomicU64; crate::pages::ENTRIES],
    /// The tables the cursor came down through, the nearest first: `above[i]` is at level
    /// `level + 1 + i`, for levels up to `top`. Indexed by constants only (see "Cost").
    above: [Hpa; MAX_LEVELS - 1],
    top: u8,
    level: u8,
    /// Where the walk is heading: the gfn it was started at or last stepped sideways to.
    /// The current entry is the one at `level` that covers it.
    target: Gfn,
    /// The end of the walk's range (exclusive), at most the end of what `top` spans.
    end: Gfn,
    old: Spte<F>,
    format: PhantomData<fn() -> F>,
}

impl<'a, F: TdpFormat, P: PageSource> TdpIter<'a, F, P> {
    /// A cursor on the entry of `table` (at `level`, and spanning `start`) that covers
    /// `start`, for a walk over `[start, end)` clipped to what `table` spans. `None` if that
    /// is empty. The shared guard proves every table reachable from `table` stays allocated
    /// while the cursor lives.
    #[inline]
    pub(crate) fn new(
        _shared: &'a MmuShared<'_, SlotTable>,
        pages: &'a P,
        table: Hpa,
        level: u8,
        start: Gfn,
        end: Gfn,
    ) -> Option<Self> {
        assert!((1..=MAX_LEVELS as u8).contains(&level), "tables have 1 to {MAX_LEVELS} levels");
        let spanned = span(level) * ENTRIES;
        // `spanned` is a power of two: a mask, not a division, on every fault's path.
        let table_end = (start.raw() & !(spanned - 1)) + spanned;
        let end = Gfn::new(end.raw().min(table_end));
        if start >= end {
            return None;
        }
        let mut iter = Self {
            pages,
            table,
            entries: pages.table(table),
            above: [table; MAX_LEVELS - 1],
            top: level,
            level,
            target: start,
            end,
            old: Spte::NONE,
            format: PhantomData,
        };
        iter.refresh();
        Some(iter)
    }

    /// A cursor for `root` (with `levels` levels) over `[start, end)`, clipped to what the
    /// root maps. `None` if that is empty.
    #[inline]
    pub(crate) fn root(
        shared: &'a MmuShared<'_, SlotTable>,
        pages: &'a P,
        root: Hpa,
        levels: u8,
        start: Gfn,
        end: Gfn,
    ) -> Option<Self> {
        let end = Gfn::new(end.raw().min(reach(levels)));
        if start >= end {
            return None;
        }
        Self::new(shared, pages, root, levels, start, end)
    }

    /// A cursor on `gfn`'s entry in `root`'s top table, already stepped down as far as
    /// present tables go: it stands on the first entry towards `gfn` that is not a present
    /// table pointer (a leaf, a non-present or a frozen entry). `None` if `gfn` is beyond
    /// what `root` maps.
    pub(crate) fn lookup(
        shared: &'a MmuShared<'_, SlotTable>,
        pages: &'a P,
        root: Hpa,
        levels: u8,
        gfn: Gfn,
    ) -> Option<Self> {
        let mut iter = Self::root(shared, pages, root, levels, gfn, gfn.add(1))?;
        iter.descend();
        Some(iter)
    }

    pub(crate) fn level(&self) -> u8 {
        self.level
    }

    /// The first gfn the current entry maps.
    pub(crate) fn gfn(&self) -> Gfn {
        Gfn::new(self.target.raw() & !(span(self.level) - 1))
    }

    /// The snapshot of the current entry.
    pub(crate) fn old(&self) -> Spte<F> {
        self.old
    }

    /// The table the current entry is in, and its index there.
    pub(crate) fn position(&self) -> (Hpa, usize) {
        (self.table, index(self.target, self.level))
    }

    #[inline]
    fn entry(&self) -> &'a AtomicU64 {
        &self.entries[index(self.target, self.level)]
    }

    /// Makes `table` the one the cursor is in (at the level it now stands on).
    #[inline]
    fn enter(&mut self, table: Hpa) {
        self.table = table;
        self.entries = self.pages.table(table);
    }

    /// Reads the current entry again.
    #[inline]
    pub(crate) fn refresh(&mut self) {
        self.old = Spte::from_raw(self.entry().load(Ordering::Acquire));
    }

    /// Replaces the current entry with `new` if it still holds the snapshot. On success the
    /// snapshot becomes `new`; on failure it becomes what the entry holds now (returned), so
    /// the caller decides again on fresh data. Release: whoever reads `new` also sees what
    /// was written before (a zeroed child table).
    #[inline]
    pub(crate) fn cmpxchg(&mut self, new: Spte<F>) -> Result<(), Spte<F>> {
        match self.entry().compare_exchange(self.old.raw(), new.raw(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                self.old = new;
                Ok(())
            }
            Err(now) => {
                self.old = Spte::from_raw(now);
                Err(self.old)
            }
        }
    }

    /// Exchanges `new` for the current entry and for each entry after it in the same table
    /// and the walk's range, up to the first that held a present table pointer or the last
    /// one. The cursor stands on the last entry exchanged, with what it held as the snapshot
    /// (so [`TdpIter::step_down`] follows the table it pointed to). Returns how many of the
    /// entries exchanged held present leaves. For tables no walker can install into any
    /// more (the sweep of an unlinked table). It does what an exchange and a sideways step per
    /// entry would, but the run is one loop over the table's entries, with no reload
    /// of an entry the exchange reads anyway and no per-entry cursor bookkeeping.
    #[inline]
    pub(crate) fn swap_run(&mut self, new: Spte<F>) -> u64 {
        let level = self.level;
        let first = index(self.target, level);
        let last = self.last_index();
        let mut leaves = 0;
        let mut at = last;
        let mut old = Spte::NONE;
        for (i, entry) in self.entries[first..=last].iter().enumerate() {
            old = Spte::from_raw(entry.swap(new.raw(), Ordering::AcqRel));
            if old.is_present() {
                if level > 1 && old.is_table(level) {
                    at = first + i;
                    break;
                }
                leaves += 1;
            }
        }
        self.old = old;
        if at != first {
            self.move_side(at - first);
        }
        leaves
    }

    /// Steps sideways to the next entry of the same table, within the walk's range, that is
    /// present, passing the entries in between (each read once). False (and no move) if there
    /// is none. For walks that act on present entries only (the zap), in one loop over the
    /// table's entries rather than a [`TdpIter::step_side`] per entry.
    #[inline]
    pub(crate) fn step_side_to_present(&mut self) -> bool {
        let first = index(self.target, self.level);
        let last = self.last_index();
        for (i, entry) in self.entries[first + 1..=last].iter().enumerate() {
            let old = Spte::from_raw(entry.load(Ordering::Acquire));
            if old.is_present() {
                self.old = old;
                self.move_side(i + 1);
                return true;
            }
        }
        false
    }

    /// The index of the last entry of the current table within the walk's range.
    #[inline]
    fn last_index(&self) -> usize {
        // `end` lies after the current entry's start.
        let after = (self.end.raw() - 1 - self.gfn().raw()) >> (9 * (u32::from(self.level) - 1));
        (index(self.target, self.level) as u64 + after).min(ENTRIES - 1) as usize
    }

    /// Moves the target `entries` entries sideways, onto the start of that entry, leaving
    /// the snapshot to the caller.
    #[inline]
    fn move_side(&mut self, entries: usize) {
        self.target = Gfn::new(self.gfn().raw() + entries as u64 * span(self.level));
    }

    /// Steps into the table the snapshot points to, onto the entry that covers the target.
    /// False (and no move) if the snapshot is not a present table pointer.
    #[inline]
    pub(crate) fn step_down(&mut self) -> bool {
        if self.level == 1 || !self.old.is_table(self.level) {
            return false;
        }
        let [a, b, c, _] = self.above;
        self.above = [self.table, a, b, c];
        self.level -= 1;
        self.enter(self.old.table_address());
        self.refresh();
        true
    }

    /// Steps down as far as present tables go.
    pub(crate) fn descend(&mut self) {
        while self.step_down() {}
    }

    /// Steps to the next entry of the same table, if it lies in the walk's range.
    pub(crate) fn step_side(&mut self) -> bool {
        let next = self.gfn().raw() + span(self.level);
        if index(self.target, self.level) as u64 == ENTRIES - 1 || next >= self.end.raw() {
            return false;
        }
        self.target = Gfn::new(next);
        self.refresh();
        true
    }

    /// Steps back to the entry the cursor came down through, read afresh. False at the top.
    pub(crate) fn step_up(&mut self) -> bool {
        if self.level == self.top {
            return false;
        }
        self.level += 1;
        let [a, b, c, d] = self.above;
        self.above = [b, c, d, d];
        self.enter(a);
        self.refresh();
        true
    }

    /// Moves past the current entry and everything below it: sideways, or up and then
    /// sideways. False when the walk is done.
    pub(crate) fn skip_subtree(&mut self) -> bool {
        loop {
            if self.step_side() {
                return true;
            }
            if !self.step_up() {
                return false;
            }
        }
    }

    /// The next entry in pre-order: into the table the snapshot points to, else past the
    /// current entry. False when the walk is done.
    pub(crate) fn next(&mut self) -> bool {
        self.step_down() || self.skip_subtree()
    }

    /// Starts over from the top table, towards the same target.
    pub(crate) fn restart(&mut self) {
        if self.level != self.top {
            self.enter(self.above[usize::from(self.top - self.level) - 1]);
            self.level = self.top;
        }
        self.refresh();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::addr::PageSize;
    use crate::mmu::host::{HostPages, HostPagesConfig};
    use crate::mmu::lock::MmuLock;
    use crate::mmu::testfmt::TestFormat;
    use alloc::vec::Vec;

    type Iter<'a> = TdpIter<'a, TestFormat, HostPages>;
    type E = Spte<TestFormat>;

    /// A 4-level tree with leaves at every leaf level, and a frozen entry.
    struct Tree {
        lock: MmuLock<SlotTable>,
        pages: HostPages,
        root: Hpa,
        /// (gfn, level) of each leaf, in gfn order.
        leaves: Vec<(u64, u8)>,
    }

    fn link(pages: &HostPages, table: Hpa, index: usize, entry: E) {
        pages.table(table)[index].store(entry.raw(), Ordering::Release);
    }

    fn tree() -> Tree {
        let pages = HostPages::new(HostPagesConfig { tables: 16, frames_4k: 0, frames_2m: 0, frames_1g: 0 });
        let root = pages.alloc_table().unwrap();
        let l3 = pages.alloc_table().unwrap();
        let l2 = pages.alloc_table().unwrap();
        let l1 = pages.alloc_table().unwrap();
        let frame = Hpa::new(0x4000_0000);
        // Root entry 0 -> l3; l3 entry 1 -> l2; l2 entry 3 -> l1; l1 entries 5 and 7: 4 KiB.
        link(&pages, root, 0, E::table(l3));
        link(&pages, l3, 1, E::table(l2));
        link(&pages, l2, 3, E::table(l1));
        link(&pages, l1, 5, E::leaf(frame, PageSize::Size4K, true));
        link(&pages, l1, 7, E::leaf(frame, PageSize::Size4K, false));
        // l2 entry 4: a 2 MiB leaf; l2 entry 6: frozen; l3 entry 2: a 1 GiB leaf.
        link(&pages, l2, 4, E::leaf(frame, PageSize::Size2M, true));
        link(&pages, l2, 6, E::FROZEN);
        link(&pages, l3, 2, E::leaf(frame, PageSize::Size1G, true));
        let g1 = span(3);
        let g2 = span(2);
        let leaves = alloc::vec![(g1 + 3 * g2 + 5, 1), (g1 + 3 * g2 + 7, 1), (g1 + 4 * g2, 2), (2 * g1, 3)];
        Tree { lock: MmuLock::new(SlotTable::default()), pages, root, leaves }
    }

    /// The leaves the walk visits, after checking that it visits present entries (tables
    /// and leaves) in gfn order.
    fn present_leaves(iter: &mut Iter<'_>) -> Vec<(u64, u8)> {
        let mut present = Vec::new();
        loop {
            if iter.old().is_present() {
                present.push((iter.gfn().raw(), iter.level(), iter.old().is_leaf(iter.level())));
            }
            if !iter.next() {
                break;
            }
        }
        assert!(present.windows(2).all(|w| w[0].0 <= w[1].0), "out of gfn order: {present:x?}");
        present.into_iter().filter(|e| e.2).map(|(gfn, level, _)| (gfn, level)).collect()
    }

    #[test]
    fn visits_every_present_leaf_in_a_range_in_gfn_order() {
        let t = tree();
        let shared = t.lock.read();
        let mut all = Iter::root(&shared, &t.pages, t.root, 4, Gfn::new(0), Gfn::new(reach(4))).unwrap();
        assert_eq!(present_leaves(&mut all), t.leaves);
        // Every present entry once: 3 tables and 4 leaves; the frozen entry is not present.
        let mut all = Iter::root(&shared, &t.pages, t.root, 4, Gfn::new(0), Gfn::new(reach(4))).unwrap();
        let mut count = 0;
        loop {
            count += usize::from(all.old().is_present());
            if !all.next() {
                break;
            }
        }
        assert_eq!(count, 7);
        // A range that starts inside the first 4 KiB leaf's table and ends inside the 2 MiB
        // leaf: the leaves that intersect it, and nothing past its end.
        let (first, _) = t.leaves[1];
        let (huge, _) = t.leaves[2];
        let mut part = Iter::root(&shared, &t.pages, t.root, 4, Gfn::new(first), Gfn::new(huge + 1)).unwrap();
        assert_eq!(present_leaves(&mut part), t.leaves[1..3].to_vec());
        assert!(Iter::root(&shared, &t.pages, t.root, 4, Gfn::new(5), Gfn::new(5)).is_none());
    }

    #[test]
    fn skip_subtree_moves_past_the_table_below() {
        let t = tree();
        let shared = t.lock.read();
        let start = Gfn::new(span(3));
        let mut iter = Iter::root(&shared, &t.pages, t.root, 4, start, Gfn::new(reach(4))).unwrap();
        assert!(iter.step_down() && iter.old().is_table(iter.level()));
        assert_eq!((iter.level(), iter.gfn()), (3, start));
        // Past l2 (and the 4 KiB and 2 MiB leaves under it), straight to the 1 GiB leaf.
        assert!(iter.skip_subtree());
        assert_eq!((iter.gfn().raw(), iter.level()), t.leaves[3]);
        assert!(iter.old().is_leaf(3));
    }

    #[test]
    fn swap_run_takes_entries_up_to_a_table_pointer_or_the_end() {
        let t = tree();
        let shared = t.lock.read();
        let taken = |pages: &HostPages, table: Hpa| {
            pages.table(table).iter().filter(|e| E::from_raw(e.load(Ordering::Acquire)).is_frozen()).count()
        };
        let start = Gfn::new(span(3));
        let mut iter = Iter::root(&shared, &t.pages, t.root, 4, start, Gfn::new(2 * span(3))).unwrap();
        assert!(iter.step_down() && iter.step_down());
        let l2 = iter.position().0;
        // Entries 0 to 3 of l2: no leaf, and the cursor stops on the pointer to l1 (entry 3).
        assert_eq!(iter.swap_run(E::FROZEN), 0);
        assert_eq!((iter.level(), iter.position().1, iter.gfn()), (2, 3, start.add(3 * span(2))));
        assert!(iter.old().is_table(2));
        assert_eq!(taken(&t.pages, l2), 4 + 1);
        // All of l1: its two leaves, and the cursor on its last entry.
        assert!(iter.step_down());
        let l1 = iter.position().0;
        assert_eq!(iter.swap_run(E::FROZEN), 2);
        assert_eq!(iter.position(), (l1, 511));
        assert_eq!(taken(&t.pages, l1), 512);
        assert!(!iter.step_side());
        // The rest of l2: the 2 MiB leaf (the frozen entry is no leaf), to its last entry.
        assert!(iter.step_up() && iter.step_side());
        assert_eq!(iter.swap_run(E::FROZEN), 1);
        assert_eq!((iter.position(), iter.old()), ((l2, 511), E::NONE));
        assert_eq!(taken(&t.pages, l2), 512);
        // A range that ends inside l1 stops the run there.
        let t = tree();
        let shared = t.lock.read();
        let (gfn, _) = t.leaves[0];
        let mut iter =
            Iter::root(&shared, &t.pages, t.root, 4, Gfn::new(gfn - 1), Gfn::new(gfn + 1)).unwrap();
        iter.descend();
        assert_eq!(iter.swap_run(E::FROZEN), 1);
        assert_eq!((iter.gfn().raw(), iter.position().1), (gfn, 5));
        assert_eq!(taken(&t.pages, iter.position().0), 2);
    }

    #[test]
    fn step_side_to_present_passes_absent_entries_within_the_range() {
        let t = tree();
        let shared = t.lock.read();
        let l1_start = span(3) + 3 * span(2);
        let (first, _) = t.leaves[0];
        let (second, _) = t.leaves[1];
        // From entry 0 of l1: the two leaves, then nothing (and no move).
        let mut iter =
            Iter::root(&shared, &t.pages, t.root, 4, Gfn::new(l1_start), Gfn::new(reach(4))).unwrap();
        iter.descend();
        assert_eq!((iter.level(), iter.old()), (1, E::NONE));
        assert!(iter.step_side_to_present());
        assert_eq!((iter.gfn().raw(), iter.old().is_leaf(1)), (first, true));
        assert!(iter.step_side_to_present());
        assert_eq!(iter.gfn().raw(), second);
        assert!(!iter.step_side_to_present());
        assert_eq!((iter.gfn().raw(), iter.position().1), (second, 7));
        // In l2, from the pointer to l1: the 2 MiB leaf; the frozen entry is not present.
        assert!(iter.step_up() && iter.step_side_to_present());
        assert_eq!((iter.gfn().raw(), iter.level()), t.leaves[2]);
        assert!(!iter.step_side_to_present());
        // A range that ends before the second leaf stops at the first.
        let mut iter =
            Iter::root(&shared, &t.pages, t.root, 4, Gfn::new(l1_start), Gfn::new(second)).unwrap();
        iter.descend();
        assert!(iter.step_side_to_present() && iter.gfn().raw() == first);
        assert!(!iter.step_side_to_present());
    }

    #[test]
    fn lookup_stops_at_leaves_and_frozen_entries() {
        let t = tree();
        let shared = t.lock.read();
        let (gfn, level) = t.leaves[0];
        let iter = Iter::lookup(&shared, &t.pages, t.root, 4, Gfn::new(gfn)).unwrap();
        assert_eq!((iter.level(), iter.old().is_leaf(level)), (level, true));
        let frozen = Gfn::new(span(3) + 6 * span(2) + 9);
        let iter = Iter::lookup(&shared, &t.pages, t.root, 4, frozen).unwrap();
        assert!(iter.old().is_frozen() && !iter.old().is_present() && iter.level() == 2);
        assert!(Iter::lookup(&shared, &t.pages, t.root, 4, Gfn::new(reach(4))).is_none());
    }

    #[test]
    fn a_failed_cmpxchg_refreshes_the_snapshot() {
        let t = tree();
        let shared = t.lock.read();
        let (gfn, _) = t.leaves[0];
        let mut iter = Iter::lookup(&shared, &t.pages, t.root, 4, Gfn::new(gfn)).unwrap();
        let stale = iter.old();
        // Another thread write-protects the leaf behind the cursor's back.
        let (table, index) = iter.position();
        let now = stale.with_writable(false);
        link(&t.pages, table, index, now);
        assert_eq!(iter.cmpxchg(E::FROZEN), Err(now));
        assert_eq!(iter.old(), now);
        assert_eq!(E::from_raw(t.pages.table(table)[index].load(Ordering::Acquire)), now);
        // Against the fresh snapshot it succeeds, and the snapshot follows.
        assert_eq!(iter.cmpxchg(E::FROZEN), Ok(()));
        assert!(iter.old().is_frozen());
        // Stepping up reads the parent afresh.
        assert!(iter.step_up() && iter.old().is_table(2));
    }

    #[test]
    fn steps_up_and_restarts_through_the_tables_it_came_down_through() {
        let t = tree();
        let shared = t.lock.read();
        let (gfn, _) = t.leaves[0];
        let mut iter = Iter::root(&shared, &t.pages, t.root, 4, Gfn::new(gfn), Gfn::new(gfn + 1)).unwrap();
        // Down to the leaf, noting the table and entry at each level.
        let mut path = alloc::vec![(iter.level(), iter.position(), iter.old())];
        while iter.step_down() {
            path.push((iter.level(), iter.position(), iter.old()));
        }
        assert_eq!(path.iter().map(|p| p.0).collect::<Vec<_>>(), [4, 3, 2, 1]);
        assert_eq!(path[0].1.0, t.root);
        // Each table is the one its parent's entry points to.
        assert!(path.windows(2).all(|w| w[0].2.table_address() == w[1].1.0));
        // Up again, level by level, onto the same entries.
        for &(level, position, old) in path.iter().rev().skip(1) {
            assert!(iter.step_up());
            assert_eq!((iter.level(), iter.position(), iter.old()), (level, position, old));
        }
        assert!(!iter.step_up());
        // Down and back to the top in one move, twice (the second from the top itself).
        iter.descend();
        assert_eq!(iter.level(), 1);
        iter.restart();
        assert_eq!((iter.level(), iter.position(), iter.old()), path[0]);
        iter.restart();
        assert_eq!((iter.level(), iter.position(), iter.old()), path[0]);
        iter.descend();
        assert_eq!((iter.level(), iter.position()), (path[3].0, path[3].1));
    }
}
