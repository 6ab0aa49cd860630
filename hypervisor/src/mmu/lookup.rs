//! Read-only views of a root's translations, for tests, debugging, bug reports and the
//! API: one translation, every leaf, and the entries a walk to one address reads. All walk
//! under the shared lock and change nothing.

use super::format::Spte;
use super::iter::TdpIter;
use super::root::Root;
use super::{Core, Mmu, Platform, TdpFormat};
use crate::addr::{Gfn, Gpa, Hpa, PAGE_SIZE, PageSize};
use crate::pages::PageSource;
use crate::sync::Ordering;
use alloc::vec::Vec;

/// One entry a walk read: its level (the root's top level first, 1 for a 4 KiB leaf's
/// table) and its raw bits, as an MMU bug report shows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct WalkStep {
    pub level: u8,
    pub entry: u64,
}

/// One leaf translation, as [`Mmu::leaves`] reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Leaf {
    pub gfn: Gfn,
    pub hpa: Hpa,
    pub size: PageSize,
    pub writable: bool,
}

/// What the table tree under `table` (`levels` deep, entries in format `F`) maps `gpa`
/// to: the frame of the leaf and its size, walking as the hardware does. It takes no MMU
/// lock, so only a caller that no table it can reach may be freed under can use it: a
/// vCPU between a VM exit and its next quiescence report (the grace period of
/// `mmu::flush` waits for that report), reading through its own root, like the hardware
/// walker a moment before.
pub fn translate_unlocked<F: TdpFormat, S: PageSource>(
    pages: &S,
    table: Hpa,
    levels: u8,
    gpa: Gpa,
) -> Option<(Hpa, PageSize)> {
    let gfn = gpa.gfn();
    let mut table = table;
    for level in (1..=levels).rev() {
        let spte =
            Spte::<F>::from_raw(pages.table(table)[super::iter::index(gfn, level)].load(Ordering::Acquire));
        if spte.is_leaf(level) {
            let size = PageSize::from_level(level)?;
            return Some((spte.leaf_address(size), size));
        }
        if !spte.is_table(level) {
            return None;
        }
        table = spte.table_address();
    }
    None
}

impl<P: Platform> Mmu<P> {
    /// Every present leaf of `root`, for tests and debugging.
    pub fn leaves(&self, root: &Root<P>) -> Vec<Leaf> {
        self.core.leaves(root)
    }

    /// What `root` translates `gpa` to: the host address and whether it is writable.
    pub fn translate(&self, root: &Root<P>, gpa: Gpa) -> Option<(Hpa, bool)> {
        self.core.translate(root, gpa)
    }
}

impl<P: Platform> Core<P> {
    /// The entries a hardware walk of `root` to `gpa` reads, top level first, down to the
    /// first that is not a table pointer (a leaf, non-present or frozen).
    pub(crate) fn walk(&self, root: &Root<P>, gpa: Gpa) -> Vec<WalkStep> {
        let _shared = self.lock.read();
        let gfn = gpa.gfn();
        let mut table = root.table();
        let mut steps = Vec::new();
        for level in (1..=root.role().levels).rev() {
            let entry = self.pages.table(table)[super::iter::index(gfn, level)].load(Ordering::Acquire);
            steps.push(WalkStep { level, entry });
            let spte = Spte::<P::Format>::from_raw(entry);
            if !spte.is_table(level) {
                break;
            }
            table = spte.table_address();
        }
        steps
    }

    fn translate(&self, root: &Root<P>, gpa: Gpa) -> Option<(Hpa, bool)> {
        let shared = self.lock.read();
        let gfn = gpa.gfn();
        let iter =
            TdpIter::<P::Format, _>::lookup(&shared, &*self.pages, root.table(), root.role().levels, gfn)?;
        let spte = iter.old();
        if !spte.is_present() {
            return None;
        }
        let size = PageSize::from_level(iter.level())?;
        let offset = (gfn.raw() & (size.pages() - 1)) * PAGE_SIZE + gpa.page_offset();
        Some((spte.leaf_address(size).add(offset), spte.is_writable()))
    }

    fn leaves(&self, root: &Root<P>) -> Vec<Leaf> {
        let shared = self.lock.read();
        let mut out = Vec::new();
        let levels = root.role().levels;
        let Some(mut iter) = TdpIter::<P::Format, _>::root(
            &shared,
            &*self.pages,
            root.table(),
            levels,
            Gfn::new(0),
            Gfn::new(super::iter::reach(levels)),
        ) else {
            return out;
        };
        loop {
            let spte = iter.old();
            if spte.is_leaf(iter.level()) {
                let size = PageSize::from_level(iter.level()).expect("leaves exist at levels 1 to 3");
                out.push(Leaf {
                    gfn: iter.gfn(),
                    hpa: spte.leaf_address(size),
                    size,
                    writable: spte.is_writable(),
                });
            }
            if !iter.next() {
                return out;
            }
        }
    }
}
