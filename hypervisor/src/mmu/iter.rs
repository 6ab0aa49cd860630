//! Table geometry and the read-only walk shared by lookups.

use super::format::TdpFormat;
use super::lock::MmuShared;
use crate::addr::{Gfn, Hpa};
use crate::memslot::SlotTable;
use crate::pages::PageSource;
use crate::sync::Ordering;

/// 4 KiB pages spanned by one entry at `level` (1: 1, 2: 512, 3: 512^2, ...).
pub(crate) const fn span(level: u8) -> u64 {
    1 << (9 * (level as u32 - 1))
}

/// The index of `gfn`'s entry in a table at `level`.
pub(crate) const fn index(gfn: Gfn, level: u8) -> usize {
    ((gfn.raw() >> (9 * (level as u32 - 1))) & 511) as usize
}

/// The number of guest frames a root with `levels` levels can map.
pub(crate) const fn reach(levels: u8) -> u64 {
    1 << (9 * levels as u32)
}

/// Where a walk stopped: the entry at `table[index]`, at `level`, read as `spte`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stop {
    pub table: Hpa,
    pub index: usize,
    pub level: u8,
    pub spte: u64,
}

/// Walks from `root` towards `gfn` and stops at the first entry that is not a present table
/// pointer: a leaf, a non-present entry or a frozen one. The caller holds the shared lock,
/// so every table it passes through stays allocated until it lets go (see `flush.rs`).
pub(crate) fn walk<F: TdpFormat, P: PageSource>(
    _shared: &MmuShared<'_, SlotTable>,
    pages: &P,
    root: Hpa,
    levels: u8,
    gfn: Gfn,
) -> Stop {
    let mut table = root;
    let mut level = levels;
    loop {
        let index = index(gfn, level);
        let spte = pages.table(table)[index].load(Ordering::Acquire);
        if !F::is_present(spte) || F::is_leaf(spte, level) {
            return Stop { table, index, level, spte };
        }
        table = F::table_address(spte);
        level -= 1;
    }
}
