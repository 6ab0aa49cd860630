//! The TLB flush hook, the zap batch it releases, and the grace period after which
//! released table pages are freed.
//!
//! A table page leaves the MMU in three steps, each enforced by a type:
//! 1. A zap unlinks it and records it in a [`ZapBatch`] (with every entry it froze). A
//!    `ZapBatch` has no way to reach its pages: it can only be passed to [`flush`].
//! 2. [`flush`] calls the backend's [`TlbFlush::flush`], only then writes the frozen entries
//!    to non-present, and returns the pages as [`Flushed`]. So "free before flush" cannot be
//!    written: nothing else produces a `Flushed`.
//! 3. [`Grace::retire`] queues a `Flushed` under a new epoch. [`Grace::reclaim`] frees a
//!    page only while the caller holds the MMU lock exclusively (no software walker is
//!    inside: every walker, fault or zap or guest-memory copy, holds the shared side for as
//!    long as it may hold a pointer into a table) and after every registered vCPU has
//!    reported a quiescent state (a VM exit, or being offline) in a later epoch.
//!
//! Why that is a sufficient grace period. Software walkers: a walker finds a table only by
//! walking from a root while holding the shared lock, and an unlinked table is unreachable
//! from every root, so once the exclusive lock has been taken after the unlink no walker
//! can still hold it. Hardware walkers and TLBs: the flush hook returns only when no CPU
//! can use a translation or paging-structure cache entry from before the call; for backends
//! whose flush takes effect at the next VM entry (both here: INVEPT on VMX, TLB_CONTROL on
//! SVM) the vCPU epoch is what proves that entry happened: a vCPU reports quiescence only
//! outside guest mode, so after its report it can no longer be walking the old tables.
//!
//! Flushing by a new tag. On SVM without flush-by-ASID the hook's "flush at the next entry"
//! is "take a new ASID at the next entry" (`backend::tags`, as KVM's `svm_flush_tlb_asid`),
//! which is as good as a flush and ordered before the frames are freed:
//! 1. Unreachable. The old ASID's translations stay in the TLB of the CPU where the vCPU
//!    used it, but ASIDs tag guest and nested translations alike, that CPU hands the number
//!    to no other vCPU in its current generation, and the vCPU leaves it for good (it takes
//!    a fresh number when it sees a flush request, and whenever it enters on another CPU).
//!    Before the CPU reuses any number it starts a new generation with one flush of every
//!    ASID. So no VMRUN after the vCPU's next entry can use them.
//! 2. In time for the zap. The vCPU takes its new ASID in the step where it consumes the
//!    request, before VMRUN; `flush` returns only once the vCPU has consumed the request or
//!    left guest mode (`backend::vcpu_set`). Only the entry already under way when the
//!    request was made can still use the old ASID, and it ends at that exit.
//! 3. In time for the frames. [`Grace::reclaim`] frees a table page only after every vCPU
//!    reported quiescence in a later epoch, and a vCPU reports only outside guest mode: by
//!    then the entry of point 2 is over, and every later entry uses a new ASID.
//!
//! VMX keeps INVEPT for these flushes: VPIDs do not tag guest-physical translations, so a
//! new VPID would not reach them. The host model in `backend::tags` checks points 1 and 2
//! (no entry finds another vCPU's or pre-request translations under its tag) over random
//! migrations, requests and rollovers; the request-and-kick handshake itself is unchanged.

use super::lock::MmuExclusive;
use super::stats::Counters;
use crate::addr::Hpa;
use crate::memslot::SlotTable;
use crate::pages::{ENTRIES, PageSource};
use crate::sync::{AtomicU64, Mutex, Ordering};
use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// Which cached translations a flush must remove, at least: flushing more is always
/// correct, and today both backends flush everything cached for the VM whatever the scope
/// (each vCPU flushes the root it enters with next, and every other root before it enters
/// with that one, `backend::tlb`: on VMX INVEPT single-context of that EPTP where the CPU
/// offers it, else all-context; on SVM a TLB_CONTROL flush of the vCPU's ASID, or without
/// flush-by-ASID a new ASID: see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushScope {
    /// Everything cached for this VM.
    Vm,
    /// What was cached through one root, identified by its top table. Used when a root is
    /// freed or zapped as a whole; a backend may narrow it to that root (INVEPT
    /// single-context with its EPTP), none does yet.
    Root(Hpa),
}

/// Implemented by the backends (INVEPT/INVVPID, ASID flush, IPIs).
pub trait TlbFlush: Send + Sync + 'static {
    /// Returns only when no CPU can use a translation or paging-structure cache entry of
    /// `scope` created before the call: flush locally and on every CPU that may run this
    /// VM's vCPUs (IPI and wait), or request a flush at their next VM entry and kick them
    /// out of guest mode, waiting for each to leave it.
    ///
    /// Called with the MMU lock held on the shared side: a CPU waiting for the MMU lock must
    /// still answer the flush IPI (take the lock with interrupts enabled).
    fn flush(&self, scope: FlushScope);

    /// Asks every vCPU of the VM to leave guest mode soon (an IPI to each CPU running one),
    /// so it sees its reload request. Need not wait.
    fn kick_all(&self);
}

/// Entries and table pages a zap took out of the tables, not yet safe to reuse.
#[must_use = "a ZapBatch must be passed to flush(), or its table pages leak"]
pub struct ZapBatch {
    /// Entries the zap froze: written non-present only after the flush.
    frozen: Vec<(Hpa, u16)>,
    /// Unlinked table pages: freed only after the flush and a grace period.
    tables: Vec<Hpa>,
    pub(crate) leaves: u64,
}

/// Table pages whose translations are flushed, waiting for a grace period. Only [`flush`]
/// makes one.
pub struct Flushed {
    tables: Vec<Hpa>,
}

impl ZapBatch {
    pub(crate) const fn new() -> Self {
        Self { frozen: Vec::new(), tables: Vec::new(), leaves: 0 }
    }

    #[inline]
    pub(crate) fn froze(&mut self, table: Hpa, index: usize) {
        self.frozen.push((table, index as u16));
    }

    pub(crate) fn unlinked(&mut self, table: Hpa) {
        self.tables.push(table);
    }

    pub fn is_empty(&self) -> bool {
        self.frozen.is_empty() && self.tables.is_empty()
    }
}

/// Runs the flush hook for `batch`, then unfreezes its entries (writes them non-present),
/// and hands back its table pages for the grace period.
pub(crate) fn flush<P: PageSource, H: TlbFlush>(
    hook: &H,
    pages: &P,
    counters: &Counters,
    batch: ZapBatch,
    scope: FlushScope,
) -> Flushed {
    if batch.is_empty() {
        return Flushed { tables: Vec::new() };
    }
    hook.flush(scope);
    Counters::add(&counters.tlb_flushes, 1);
    // Only the thread that froze an entry writes it again (walkers never overwrite FROZEN),
    // so a plain store is enough. It becomes non-present only now, after the flush, so no
    // new translation can be installed there while a CPU may still cache the old one.
    // Consecutive entries are mostly in one table: resolve it once for them.
    let mut current: Option<(Hpa, &[AtomicU64; ENTRIES])> = None;
    for (table, index) in batch.frozen {
        let entries = match current {
            Some((resolved, entries)) if resolved == table => entries,
            _ => current.insert((table, pages.table(table))).1,
        };
        entries[usize::from(index)].store(0, Ordering::Release);
    }
    Flushed { tables: batch.tables }
}

/// The epoch-based grace period for table pages.
pub(crate) struct Grace {
    epoch: AtomicU64,
    queue: Mutex<VecDeque<(u64, Vec<Hpa>)>>,
}

/// A vCPU's quiescence report meaning "not in guest mode and not walking": it never holds
/// up a grace period.
pub(crate) const OFFLINE: u64 = u64::MAX;

impl Grace {
    pub(crate) fn new() -> Self {
        Self { epoch: AtomicU64::new(1), queue: Mutex::new(VecDeque::new()) }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Queues flushed pages. They need every vCPU to report an epoch newer than the one at
    /// which they were queued; a vCPU that reports later reads the incremented epoch.
    pub(crate) fn retire(&self, flushed: Flushed, counters: &Counters) {
        if flushed.tables.is_empty() {
            return;
        }
        Counters::add(&counters.table_pages_retired, flushed.tables.len() as u64);
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.queue.lock().push_back((epoch, flushed.tables));
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.queue.lock().is_empty()
    }

    /// Frees the pages every vCPU has passed. `oldest_report` is the smallest epoch any
    /// registered vCPU has reported ([`OFFLINE`] if none is registered). The exclusive
    /// guard proves no software walker is inside.
    pub(crate) fn reclaim<P: PageSource>(
        &self,
        _exclusive: &mut MmuExclusive<'_, SlotTable>,
        oldest_report: u64,
        pages: &P,
        counters: &Counters,
    ) -> u64 {
        let mut ready = Vec::new();
        {
            let mut queue = self.queue.lock();
            while queue.front().is_some_and(|(epoch, _)| *epoch <= oldest_report) {
                if let Some((_, tables)) = queue.pop_front() {
                    ready.push(tables);
                }
            }
        }
        let mut freed = 0;
        for table in ready.into_iter().flatten() {
            pages.free_table(table);
            freed += 1;
        }
        Counters::sub(&counters.table_pages, freed);
        Counters::sub(&counters.table_pages_retired, freed);
        freed
    }

    /// Frees everything: only when nothing can walk any more (the MMU is being dropped and
    /// `&mut self` proves no other reference exists).
    pub(crate) fn reclaim_all<P: PageSource>(&mut self, pages: &P, counters: &Counters) {
        let queue = core::mem::take(&mut *self.queue.lock());
        for (_, tables) in queue {
            for table in tables {
                pages.free_table(table);
                Counters::sub(&counters.table_pages, 1);
                Counters::sub(&counters.table_pages_retired, 1);
            }
        }
    }
}
