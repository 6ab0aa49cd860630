//! Roots (rules 1-5): a top-level table plus a role, shared by every vCPU of that role,
//! kept alive by the MMU while valid, cached per vCPU, invalidated only by changes that can
//! make translations wrong, and zapped exactly once by the request that invalidated it.
//!
//! Why a root has two kinds of reference. The MMU's own reference (its entry in
//! `Core::roots`) is what makes a root persist while no vCPU uses it: a vCPU that unloads
//! (INIT, a mode change, CR0.WP/CR4 toggles, an address-space switch, being destroyed) drops
//! only its own `Arc`, and the next load finds the same root by role. The vCPUs' references
//! keep an *invalid* root alive while a vCPU may still run on it; it is never handed out
//! again, and its top table is retired (flush, then grace period) when the last one goes.
//!
//! Why an invalid root is always empty when its last reference goes: only invalidation
//! removes the MMU's reference, and the invalidator zaps the root before removing it; after
//! invalidation no fault installs into the root (a fault checks validity under the shared
//! lock, and invalidation happens under the exclusive lock).

use super::flush::TlbFlush;
use super::flush::{self, FlushScope, OFFLINE, ZapBatch};
use super::lock::MmuExclusive;
use super::stats::{Counters, FaultCounters};
use super::{Access, Core, Fault, MmuError, Platform, TdpFormat};
use crate::addr::{Gpa, Hpa};
use crate::memslot::AsId;
use crate::memslot::SlotTable;
use crate::pages::PageSource;
use crate::sync::{AtomicBool, AtomicU64, Ordering};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::AtomicU32;

/// What a root translates for: vCPUs with equal roles share a root (rule 1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Role {
    pub as_id: AsId,
    /// Paging levels of the TDP tables: 4, or 5 for guests with MAXPHYADDR > 48.
    pub levels: u8,
    /// Whether the vCPU runs a nested guest (its L2 translations live in their own root).
    pub nested: bool,
}

impl Role {
    pub const fn new(as_id: AsId) -> Self {
        Self { as_id, levels: 4, nested: false }
    }
}

pub struct Root<P: Platform> {
    core: Arc<Core<P>>,
    role: Role,
    table: Hpa,
    id: u64,
    invalid: AtomicBool,
    zap_scheduled: AtomicBool,
    zaps: AtomicU32,
}

impl<P: Platform> Root<P> {
    pub fn role(&self) -> Role {
        self.role
    }

    /// The top-level table.
    pub fn table(&self) -> Hpa {
        self.table
    }

    /// What to load into the VMCS (EPTP) or VMCB (nCR3).
    pub fn pointer(&self) -> u64 {
        <P::Format as TdpFormat>::root_pointer(self.table, self.role.levels)
    }

    /// A number unique among the VM's roots, for logs and tests.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn is_valid(&self) -> bool {
        !self.invalid.load(Ordering::SeqCst)
    }

    /// How many times this root was zapped as a whole (at most once, by rule 4).
    pub fn zap_count(&self) -> u32 {
        self.zaps.load(Ordering::Relaxed)
    }

    pub(crate) fn take_zap_scheduled(&self) -> bool {
        self.zap_scheduled.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn count_zap(&self) {
        self.zaps.fetch_add(1, Ordering::Relaxed);
    }
}

impl<P: Platform> Drop for Root<P> {
    fn drop(&mut self) {
        let core = &*self.core;
        #[cfg(all(debug_assertions, not(loom)))]
        for entry in core.pages.table(self.table) {
            let spte = super::format::Spte::<P::Format>::from_raw(entry.load(Ordering::Acquire));
            debug_assert!(!spte.is_present(), "a root's last reference went while it still maps memory");
        }
        let mut batch = ZapBatch::new();
        batch.unlinked(self.table);
        let flushed =
            flush::flush(&*core.hook, &*core.pages, &core.counters, batch, FlushScope::Root(self.table));
        core.grace.retire(flushed, &core.counters);
        Counters::add(&core.counters.roots_freed, 1);
    }
}

impl<P: Platform> Core<P> {
    /// Finds the valid root for `role`, or creates it.
    fn find_or_create_root(core: &Arc<Core<P>>, role: Role) -> Result<Arc<Root<P>>, MmuError> {
        let find = |roots: &Vec<Arc<Root<P>>>| roots.iter().find(|r| r.role == role && r.is_valid()).cloned();
        {
            // Under the shared lock validity cannot change (invalidation is exclusive).
            let _shared = core.lock.read();
            if core.destroyed.load(Ordering::Relaxed) {
                return Err(MmuError::Destroyed);
            }
            if let Some(root) = find(&core.roots.lock()) {
                Counters::add(&core.counters.roots_reused, 1);
                return Ok(root);
            }
        }
        let table = core.pages.alloc_table().ok_or(MmuError::OutOfMemory)?;
        Counters::add(&core.counters.table_pages, 1);
        // Inserting under the shared lock means no invalidation is running: the new root is
        // valid when any later invalidation looks at the list.
        let _shared = core.lock.read();
        let mut roots = core.roots.lock();
        let existing =
            if core.destroyed.load(Ordering::Relaxed) { Err(MmuError::Destroyed) } else { Ok(find(&roots)) };
        if !matches!(existing, Ok(None)) {
            // Another vCPU created it meanwhile (or the VM is going): our table was never
            // published, so it can go back at once.
            core.pages.free_table(table);
            Counters::sub(&core.counters.table_pages, 1);
            let root = existing?.expect("checked above");
            Counters::add(&core.counters.roots_reused, 1);
            return Ok(root);
        }
        let root = Arc::new(Root {
            core: core.clone(),
            role,
            table,
            id: core.next_root_id.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
            invalid: AtomicBool::new(false),
            zap_scheduled: AtomicBool::new(false),
            zaps: AtomicU32::new(0),
        });
        roots.push(root.clone());
        Counters::add(&core.counters.roots_allocated, 1);
        Ok(root)
    }

    /// Rule 4, first half: marks every valid root invalid and scheduled to zap, and asks
    /// every vCPU to reload. Returns the roots the caller must now zap.
    pub(crate) fn invalidate_roots(&self, exclusive: &mut MmuExclusive<'_, SlotTable>) -> Vec<Arc<Root<P>>> {
        let mut scheduled = Vec::new();
        for root in self.roots.lock().iter() {
            if root.is_valid() {
                root.invalid.store(true, Ordering::SeqCst);
                root.zap_scheduled.store(true, Ordering::SeqCst);
                scheduled.push(root.clone());
            }
        }
        Counters::add(&self.counters.roots_invalidated, scheduled.len() as u64);
        if !scheduled.is_empty() {
            self.request_reload(exclusive);
        }
        scheduled
    }

    /// Every vCPU finds its flag set before its next VM entry; the kick makes those in guest
    /// mode exit to look. A vCPU clears its flag before it picks a root, so a flag set after
    /// that pick is seen at the next check (see [`VcpuMmu::take_reload_request`]).
    fn request_reload(&self, _exclusive: &mut MmuExclusive<'_, SlotTable>) {
        for vcpu in self.vcpus.lock().iter() {
            vcpu.reload.store(true, Ordering::SeqCst);
        }
        self.hook.kick_all();
        Counters::add(&self.counters.kicks, 1);
    }

    /// Rule 4, second half: zaps each scheduled root exactly once, here, under the shared
    /// lock (rule 9), then drops the MMU's reference to it.
    pub(crate) fn zap_invalidated(&self, scheduled: Vec<Arc<Root<P>>>) {
        for root in &scheduled {
            // Slot updates are serialised, so the caller that scheduled a root is the one
            // that zaps it; the flag makes "exactly once" hold even if that changes.
            if root.take_zap_scheduled() {
                self.zap_whole_root(root);
                root.count_zap();
            }
        }
        self.roots.lock().retain(|r| !scheduled.iter().any(|s| Arc::ptr_eq(r, s)));
        // Dropping `scheduled` may drop a root's last reference (no vCPU holds it): that
        // retires its top table through a flush, outside every lock.
    }
}

/// How many roots besides the current one a vCPU keeps (rule 3).
pub const PREVIOUS_ROOTS: usize = 3;

/// What the MMU and other CPUs need of a vCPU.
pub(crate) struct VcpuShared {
    reload: AtomicBool,
    quiescent: AtomicU64,
    pub(crate) faults: FaultCounters,
    /// The MMU lock's reader slot this vCPU's faults use.
    pub(crate) reader_slot: usize,
}

impl VcpuShared {
    pub(crate) fn quiescent(&self) -> u64 {
        self.quiescent.load(Ordering::SeqCst)
    }
}

/// A vCPU's view of the MMU: its current root, a cache of recent ones, its reload request and
/// its quiescence reports. Owned by the vCPU's thread.
pub struct VcpuMmu<P: Platform> {
    core: Arc<Core<P>>,
    shared: Arc<VcpuShared>,
    current: Option<Arc<Root<P>>>,
    previous: [Option<Arc<Root<P>>>; PREVIOUS_ROOTS],
}

impl<P: Platform> VcpuMmu<P> {
    pub(crate) fn new(core: Arc<Core<P>>) -> Self {
        // A new vCPU cannot have seen any table retired before now.
        let shared = Arc::new(VcpuShared {
            reload: AtomicBool::new(false),
            quiescent: AtomicU64::new(core.grace.epoch()),
            faults: FaultCounters::default(),
            reader_slot: core.next_reader_slot.fetch_add(1, Ordering::Relaxed) as usize,
        });
        core.vcpus.lock().push(shared.clone());
        Self { core, shared, current: None, previous: [const { None }; PREVIOUS_ROOTS] }
    }

    /// Makes `role`'s root current and returns its pointer (EPTP / nCR3). Reuses the
    /// current root, then a cached one, then the MMU's; allocates only if no valid root of
    /// that role exists.
    pub fn load(&mut self, role: Role) -> Result<u64, MmuError> {
        if !matches!(role.levels, 4 | 5) {
            return Err(MmuError::UnsupportedLevels);
        }
        if let Some(root) = &self.current
            && root.role == role
            && root.is_valid()
        {
            return Ok(root.pointer());
        }
        let cached =
            self.previous.iter().position(|r| r.as_ref().is_some_and(|r| r.role == role && r.is_valid()));
        let root = match cached {
            Some(i) => {
                Counters::add(&self.core.counters.roots_reused, 1);
                self.previous[i].take()
            }
            None => None,
        };
        let root = match root {
            Some(root) => root,
            None => Core::find_or_create_root(&self.core, role)?,
        };
        let pointer = root.pointer();
        if let Some(old) = self.current.replace(root) {
            self.remember(old);
        }
        for slot in &mut self.previous {
            if slot.as_ref().is_some_and(|r| !r.is_valid()) {
                *slot = None;
            }
        }
        Ok(pointer)
    }

    /// Puts `root` first in the cache, evicting the oldest entry if the cache is full.
    fn remember(&mut self, root: Arc<Root<P>>) {
        if !root.is_valid() {
            return;
        }
        let end = self.previous.iter().position(Option::is_none).unwrap_or(PREVIOUS_ROOTS - 1);
        self.previous[..=end].rotate_right(1);
        self.previous[0] = Some(root);
    }

    /// Drops every root reference this vCPU holds (INIT, reset, destroy). The roots stay
    /// alive through the MMU's references.
    pub fn unload(&mut self) {
        self.current = None;
        self.previous = [const { None }; PREVIOUS_ROOTS];
    }

    pub fn root(&self) -> Option<&Arc<Root<P>>> {
        self.current.as_ref()
    }

    pub fn root_pointer(&self) -> Option<u64> {
        self.current.as_ref().map(|r| r.pointer())
    }

    /// The entries the walk of the current root to `gpa` reads (none without a root): what
    /// a report of an entry the hardware refused (EPT misconfiguration, NPF with the
    /// reserved-bit flag) shows.
    pub fn walk(&self, gpa: Gpa) -> Vec<super::lookup::WalkStep> {
        self.current.as_ref().map_or_else(Vec::new, |root| self.core.walk(root, gpa))
    }

    /// Checks and clears the reload request. Call before every VM entry, and after it
    /// returned `true` call [`VcpuMmu::load`] with the current role before entering. The
    /// order (clear, then pick a root, then enter) is what makes a concurrent invalidation
    /// safe: it marks the root invalid before setting the flag, so either `load` sees the
    /// root invalid, or the flag is set again and the kick brings the vCPU back here.
    pub fn take_reload_request(&self) -> bool {
        self.shared.reload.swap(false, Ordering::SeqCst)
    }

    pub fn is_reload_requested(&self) -> bool {
        self.shared.reload.load(Ordering::SeqCst)
    }

    /// Reports a quiescent state: this vCPU is outside guest mode and inside no MMU walk.
    /// Call at every VM exit, before handling it (and before the first entry after
    /// [`VcpuMmu::report_offline`]).
    pub fn report_quiescent(&self) {
        self.shared.quiescent.store(self.core.grace.epoch(), Ordering::SeqCst);
    }

    /// Reports that this vCPU will not enter the guest until it next calls
    /// [`VcpuMmu::report_quiescent`] (halted, paused, stopped): it holds up no grace period.
    pub fn report_offline(&self) {
        self.shared.quiescent.store(OFFLINE, Ordering::SeqCst);
    }

    /// Handles an EPT violation / nested page fault at `gpa` on the current root.
    pub fn handle_fault(&self, gpa: Gpa, access: Access) -> Result<Fault, MmuError> {
        match &self.current {
            Some(root) => self.core.fault(root, gpa, access, &self.shared),
            None => Ok(Fault::Retry),
        }
    }
}

impl<P: Platform> Drop for VcpuMmu<P> {
    fn drop(&mut self) {
        self.unload();
        // Under the list's lock, so a snapshot counts these faults exactly once: on the
        // list or in the totals.
        let mut vcpus = self.core.vcpus.lock();
        vcpus.retain(|v| !Arc::ptr_eq(v, &self.shared));
        self.shared.faults.retire_into(&self.core.counters);
    }
}
