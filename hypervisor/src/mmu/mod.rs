//! The TDP MMU: the EPT/NPT tables of one VM, generic over the entry format and over where
//! table pages come from, following the rules in ARCHITECTURE.md ("The TDP MMU: what it
//! must guarantee").
//!
//! A backend uses it like this:
//! - [`Mmu::new`] per VM with its [`Platform`] (format, page source, flush hook, clock);
//! - [`Mmu::add_slot`] and friends from the control plane; [`Mmu::write_guest`] to load
//!   images;
//! - per vCPU, [`Mmu::create_vcpu`]; before each VM entry [`VcpuMmu::take_reload_request`]
//!   and, if set or on a mode change, [`VcpuMmu::load`] (which returns the EPTP/nCR3);
//!   at each VM exit [`VcpuMmu::report_quiescent`]; on EPT violations / nested page faults
//!   [`VcpuMmu::handle_fault`].
//!
//! Locking: one [`lock::MmuLock`] per VM, which also holds the slot table. Faults, zaps
//! and guest-memory copies take it shared; slot-table changes, marking roots invalid and
//! freeing table pages take it exclusively, briefly. Slot updates are serialised among
//! themselves by a separate update lock (KVM's `slots_lock`), held across their synchronous
//! zap.
//!
//! Where things are: the entry formats (`format`, `ept`, `npt`, `testfmt`) and the one
//! page-table walker (`iter`, every walk goes through its cursor); what walks: faults
//! (`fault`), zaps (`zap`), dirty logging (`dirty`), read-only lookups (`lookup`); roots
//! and vCPUs (`root`), flushes and the grace period (`flush`), range invalidations
//! (`invalidate`), the hypervisor's own guest-memory copies (`guest_memory`), the lock
//! (`lock`) and counters (`stats`). Below the MMU, and imported by it, never the other
//! way: the memory slots (`crate::memslot`), the page source (`crate::pages`) and the
//! concurrency primitives (`crate::sync`).

mod dirty;
pub mod ept;
mod fault;
pub mod flush;
pub mod format;
mod guest_memory;
pub mod host;
mod invalidate;
mod iter;
pub mod lock;
mod lookup;
pub mod npt;
pub mod root;
pub mod stats;
pub mod testfmt;
mod zap;

pub use fault::{Access, Fault};
pub use flush::{FlushScope, TlbFlush, ZapBatch};
pub use format::TdpFormat;
pub use guest_memory::GuestMemoryError;
pub use invalidate::Invalidation;
pub use lookup::{Leaf, WalkStep, translate_unlocked};
pub use root::{Role, Root, VcpuMmu};
pub use stats::{Clock, NoClock, Stats};

use crate::addr::{Gfn, GfnRange, Gpa, Hpa, PAGE_SIZE, PageSize};
use crate::memslot::{AsId, Memslot, SlotError, SlotFlags, SlotId, SlotSpec, SlotTable};
use crate::pages::PageSource;
use crate::sync::{Mutex, Ordering};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::AtomicBool as PlainAtomicBool;
use core::sync::atomic::AtomicU64 as PlainAtomicU64;
use flush::Grace;
use invalidate::Invalidations;
use lock::MmuLock;
use stats::Counters;

/// What a VM's MMU is built from: chosen once per backend.
pub trait Platform: Sized + Send + Sync + 'static {
    type Format: TdpFormat;
    type Pages: PageSource;
    type Flush: TlbFlush;
    type Clock: Clock;
}

#[derive(Clone, Copy, Debug)]
pub struct MmuConfig {
    /// Guest-physical address width: slots must end at or below `1 << phys_bits`.
    pub phys_bits: u8,
    /// The largest leaf to use (rule 10), if slots allow it.
    pub max_page_size: PageSize,
    /// How many entries a zap removes between two flushes (a bounded batch, rule 9).
    pub zap_batch: usize,
    /// Whether a zap releases and retakes the shared lock between batches, letting a
    /// queued writer in (and with it the faults queued behind that writer). The default
    /// follows `mmu-bench`'s `mmu.fault_p99_during_zap_{yield,noyield}_us`; see
    /// [`MmuConfig::DEFAULT_ZAP_YIELD`].
    pub zap_yield: bool,
}

impl MmuConfig {
    /// Chosen by `mmu-bench` (fault p99 on a fresh root while a 1 GiB, 4 KiB-leaf root is
    /// zapped and a writer takes the exclusive lock every 200 us; medians of 5 rounds of
    /// each, alternating, because single runs on the 2-core host disagreed with each
    /// other). Fault p99 does not tell them apart: 0.33 against 0.38 us (no yield / yield)
    /// in one run, 0.48 against 0.42 us in the next. The zap does: 40 against 45 ms, 26
    /// against 49 ms, 20 against 36 ms. Faults already run in parallel with the zap (it
    /// holds the shared side); yielding only lets a queued writer in earlier, and the lock
    /// round trip on every batch makes the zap, which its caller waits for (rule 4), slower.
    /// So: no yield.
    pub const DEFAULT_ZAP_YIELD: bool = false;
}

impl Default for MmuConfig {
    fn default() -> Self {
        Self {
            phys_bits: 48,
            max_page_size: PageSize::Size1G,
            zap_batch: 4096,
            zap_yield: Self::DEFAULT_ZAP_YIELD,
        }
    }
}

/// The MMU refused to do something for a reason other than a bad slot request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MmuError {
    OutOfMemory,
    /// The VM is destroyed.
    Destroyed,
    /// A role asked for other than 4 or 5 levels.
    UnsupportedLevels,
}

/// A VM's MMU. Dropping it destroys the VM's translations and backing (see
/// [`Mmu::destroy`]).
pub struct Mmu<P: Platform> {
    core: Arc<Core<P>>,
}

pub(crate) struct Core<P: Platform> {
    config: MmuConfig,
    /// The MMU lock, and the slot table it protects: read under either side, written
    /// under the exclusive side.
    lock: MmuLock<SlotTable>,
    pages: Arc<P::Pages>,
    hook: Arc<P::Flush>,
    clock: P::Clock,
    counters: Counters,
    /// The MMU's own reference to every valid root (rule 2), and to invalid roots until
    /// their zap is done. Changed under the shared lock (loads) or exclusive lock.
    roots: Mutex<Vec<Arc<Root<P>>>>,
    vcpus: Mutex<Vec<Arc<root::VcpuShared>>>,
    grace: Grace,
    inval: Invalidations,
    /// Serialises slot updates and destroy, each of which zaps what it invalidated before
    /// releasing it.
    update: Mutex<()>,
    next_root_id: PlainAtomicU64,
    /// Hands out the MMU lock's reader slots to vCPUs, round robin.
    next_reader_slot: PlainAtomicU64,
    destroyed: PlainAtomicBool,
}

impl<P: Platform> Mmu<P> {
    pub fn new(config: MmuConfig, pages: Arc<P::Pages>, hook: Arc<P::Flush>, clock: P::Clock) -> Self {
        assert!(config.zap_batch > 0, "a zap batch must remove at least one entry");
        assert!(config.phys_bits <= crate::addr::MAX_PHYS_BITS);
        Self {
            core: Arc::new(Core {
                config,
                lock: MmuLock::new(SlotTable::default()),
                pages,
                hook,
                clock,
                counters: Counters::default(),
                roots: Mutex::new(Vec::new()),
                vcpus: Mutex::new(Vec::new()),
                grace: Grace::new(),
                inval: Invalidations::new(),
                update: Mutex::new(()),
                next_root_id: PlainAtomicU64::new(0),
                next_reader_slot: PlainAtomicU64::new(0),
                destroyed: PlainAtomicBool::new(false),
            }),
        }
    }

    pub fn config(&self) -> &MmuConfig {
        &self.core.config
    }

    pub fn stats(&self) -> Stats {
        // The vCPU list's lock keeps a departing vCPU from moving its fault counts into
        // the totals between the two reads.
        let vcpus = self.core.vcpus.lock();
        let mut stats = self.core.counters.snapshot();
        for vcpu in vcpus.iter() {
            vcpu.faults.add_to(&mut stats);
        }
        stats
    }

    pub fn pages(&self) -> &Arc<P::Pages> {
        &self.core.pages
    }

    /// Registers a vCPU. It starts with no root loaded and is considered quiescent now.
    pub fn create_vcpu(&self) -> VcpuMmu<P> {
        VcpuMmu::new(self.core.clone())
    }

    /// Adds a slot. Rule 4: this invalidates nothing. A gfn outside every slot has no
    /// translation in any root (a fault there returns `NotInSlot` and installs nothing), so
    /// a new slot cannot make an existing translation wrong; its gfns fault in on use. The
    /// one exception is the overlay: an alternate slot hides normal memory that alternate
    /// roots may map, so that range (only) is zapped in those roots before this returns.
    pub fn add_slot(&self, spec: SlotSpec) -> Result<(), SlotError> {
        let core = &*self.core;
        let _update = core.update.lock();
        {
            let slots = core.lock.read();
            slots.check(spec.as_id, spec.base, spec.size, core.config.phys_bits, None)?;
            if slots.by_id(spec.id).is_some() {
                return Err(SlotError::DuplicateId);
            }
        }
        let slot = Arc::new(SlotTable::build(
            &spec,
            core.config.max_page_size.min(<P::Format as TdpFormat>::MAX_LEAF),
        )?);
        let mut exclusive = core.lock.write();
        if core.destroyed.load(Ordering::Relaxed) {
            return Err(SlotError::Destroyed);
        }
        exclusive.insert(slot);
        core.try_reclaim_locked(&mut exclusive);
        drop(exclusive);
        if spec.as_id == AsId::Alternate {
            let start = spec.base.gfn();
            core.zap_range(Some(AsId::Alternate), GfnRange::new(start, start.add(spec.size / PAGE_SIZE)));
        }
        Ok(())
    }

    /// Deletes a slot: invalidates every root, zaps each once, and frees the slot's backing,
    /// all before returning (rule 4). On return no entry in any root maps the slot's frames
    /// and every TLB has been flushed of them.
    pub fn delete_slot(&self, id: SlotId) -> Result<(), SlotError> {
        let core = &*self.core;
        let _update = core.update.lock();
        let (removed, scheduled) = {
            let mut exclusive = core.lock.write();
            let removed = exclusive.remove(id).ok_or(SlotError::UnknownSlot)?;
            (removed, core.invalidate_roots(&mut exclusive))
        };
        core.zap_invalidated(scheduled);
        // Every root that could map the slot has been zapped and flushed, and no fault can
        // find the slot any more: its frames are unreachable.
        core.release_backing(&removed);
        core.try_reclaim();
        Ok(())
    }

    /// Moves a slot to `base` in the same address space, keeping its contents.
    pub fn move_slot(&self, id: SlotId, base: Gpa) -> Result<(), SlotError> {
        let core = &*self.core;
        let _update = core.update.lock();
        let (old, moved) = {
            let slots = core.lock.read();
            let old = slots.by_id(id).ok_or(SlotError::UnknownSlot)?.clone();
            slots.check(old.as_id, base, old.pages * PAGE_SIZE, core.config.phys_bits, Some(id))?;
            let moved = old.with(base.gfn(), old.flags)?;
            (old, moved)
        };
        if old.base == moved.base {
            return Ok(());
        }
        let scheduled = {
            let mut exclusive = core.lock.write();
            exclusive.remove(id);
            exclusive.insert(Arc::new(moved));
            core.invalidate_roots(&mut exclusive)
        };
        core.zap_invalidated(scheduled);
        core.try_reclaim();
        Ok(())
    }

    /// Changes a slot's flags. Making it read-only reduces permissions and invalidates every
    /// root (rule 4). Turning dirty logging on zaps the slot's range (no root is
    /// invalidated): translations come back as 4 KiB leaves, writable only after a write
    /// fault has marked the page dirty. Other changes only widen what faults may install.
    pub fn set_slot_flags(&self, id: SlotId, flags: SlotFlags) -> Result<(), SlotError> {
        let core = &*self.core;
        let _update = core.update.lock();
        let (old, new) = {
            let slots = core.lock.read();
            let old = slots.by_id(id).ok_or(SlotError::UnknownSlot)?.clone();
            let new = Arc::new(old.with(old.base, flags)?);
            (old, new)
        };
        if old.flags == flags {
            return Ok(());
        }
        let reduces = flags.read_only && !old.flags.read_only;
        let logs = flags.dirty_log && !old.flags.dirty_log;
        let range = GfnRange::new(new.base, new.end());
        let scheduled = {
            let mut exclusive = core.lock.write();
            exclusive.remove(id);
            exclusive.insert(new.clone());
            if reduces { core.invalidate_roots(&mut exclusive) } else { Vec::new() }
        };
        if reduces {
            core.zap_invalidated(scheduled);
        } else if logs {
            // Faults that saw the old flags finished before the exclusive section above;
            // everything they installed is in the range we now zap, and faults from here on
            // see the new flags.
            core.zap_range(Some(new.as_id), range);
        }
        core.try_reclaim();
        Ok(())
    }

    /// Returns the slot's dirty bitmap (bit i = page i of the slot) and clears it, then
    /// write-protects the pages it reported and flushes, so the next write to each faults and
    /// is logged again. Writes that race with this call are reported now or next time.
    pub fn dirty_log(&self, id: SlotId) -> Result<Vec<u64>, SlotError> {
        self.core.dirty_log(id)
    }

    /// The slots, in no particular order: id, address space, base, size in bytes, flags.
    pub fn slots(&self) -> Vec<(SlotId, AsId, Gpa, u64, SlotFlags)> {
        self.core
            .lock
            .read()
            .iter()
            .map(|s| (s.id, s.as_id, s.base.gpa(), s.pages * PAGE_SIZE, s.flags))
            .collect()
    }

    /// The host page backing `gfn` in `as_id`, if it is in a slot and has been touched.
    pub fn backing_of(&self, as_id: AsId, gfn: Gfn) -> Option<Hpa> {
        self.core.lock.read().find(as_id, gfn).and_then(|s| s.backing_of(gfn))
    }

    /// Frees table pages whose grace period has passed. Slot updates do this on their own;
    /// a backend may call it from an idle loop.
    pub fn reclaim(&self) {
        self.core.try_reclaim();
    }

    /// Every root the MMU references: the valid ones and invalid ones not yet zapped.
    pub fn roots(&self) -> Vec<Arc<Root<P>>> {
        self.core.roots.lock().clone()
    }

    /// Destroys the VM's memory: every root is invalidated and zapped, every slot deleted and
    /// its backing freed. vCPUs may still hold (now empty) roots; their top tables are freed
    /// when the last vCPU lets go, and the remaining table pages when nothing references the
    /// MMU any more.
    pub fn destroy(self) {
        drop(self);
    }
}

/// Destroy, in this order: (1) mark the MMU destroyed, take every slot and invalidate
/// every root (exclusive lock: no fault installs anything after it); (2) zap each root
/// (each zap flushes what it removed); (3) one more flush of the whole VM through the hook,
/// whatever the zaps found, so every CPU that ran the VM has dropped its translations (or,
/// for backends that flush at the next entry, can no longer reach them: `backend::tlb`)
/// before (4) the slots' frames go back to the page source, and (5) table pages after
/// their grace period. `mmu_rules` checks the order with a recording hook.
impl<P: Platform> Drop for Mmu<P> {
    fn drop(&mut self) {
        let core = &*self.core;
        let _update = core.update.lock();
        let (slots, scheduled) = {
            let mut exclusive = core.lock.write();
            core.destroyed.store(true, Ordering::Relaxed);
            let slots = exclusive.take_all();
            (slots, core.invalidate_roots(&mut exclusive))
        };
        core.zap_invalidated(scheduled);
        core.hook.flush(FlushScope::Vm);
        Counters::add(&core.counters.tlb_flushes, 1);
        for slot in slots {
            core.release_backing(&slot);
        }
        core.try_reclaim();
    }
}

impl<P: Platform> Core<P> {
    /// The frame of `slot`'s chunk `chunk`, allocated on first touch; counts what it
    /// allocated.
    pub(crate) fn backing_frame(&self, slot: &Memslot, chunk: usize) -> Option<Hpa> {
        let touched = slot.backing.frame_or_alloc(chunk, &*self.pages)?;
        if touched.allocated {
            Counters::add(&self.counters.backing_frames, 1);
        }
        Some(touched.frame)
    }

    /// Drops `slot`'s chunk `chunk` (see [`crate::memslot::Backing::discard`]) and counts
    /// what it freed.
    fn discard_backing(&self, slot: &Memslot, chunk: usize) {
        if slot.backing.discard(chunk, &*self.pages) {
            Counters::sub(&self.counters.backing_frames, 1);
        }
    }

    /// Frees all of `slot`'s backing (see [`crate::memslot::Backing::release`]) and counts it.
    fn release_backing(&self, slot: &Memslot) {
        let freed = slot.backing.release(&*self.pages);
        Counters::sub(&self.counters.backing_frames, freed);
    }

    /// The smallest quiescent epoch any registered vCPU has reported.
    fn oldest_report(&self) -> u64 {
        self.vcpus.lock().iter().map(|v| v.quiescent()).min().unwrap_or(flush::OFFLINE)
    }

    fn try_reclaim(&self) {
        if !self.grace.has_pending() {
            return;
        }
        let mut exclusive = self.lock.write();
        self.try_reclaim_locked(&mut exclusive);
    }

    fn try_reclaim_locked(&self, exclusive: &mut lock::MmuExclusive<'_, SlotTable>) {
        let oldest = self.oldest_report();
        self.grace.reclaim(exclusive, oldest, &*self.pages, &self.counters);
    }
}

impl<P: Platform> Drop for Core<P> {
    fn drop(&mut self) {
        // Nothing references the MMU any more: no vCPU, no root, no walker.
        self.grace.reclaim_all(&*self.pages, &self.counters);
    }
}
