//! Faults (rule 6): handled in parallel on the shared side of the MMU lock, entries
//! installed by compare-and-exchange.

use super::format::Spte;
use super::iter::{TdpIter, reach, span};
use super::lock::MmuShared;
use super::root::Root;
use super::root::VcpuShared;
use super::stats::{Counters, FaultCounters};
use super::{Core, MmuError, Platform, TdpFormat};
use crate::addr::{Gfn, Gpa, Hpa, PAGE_SIZE, PageSize};
use crate::memslot::SlotTable;
use crate::pages::PageSource;

/// What the guest tried to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    Read,
    Write,
    Execute,
}

/// The outcome of a fault.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    /// A translation for the access is in place (installed now, or already by another vCPU).
    Installed,
    /// Nothing was installed: re-enter the guest (after checking the reload request), and
    /// the access faults again if it still needs to.
    Retry,
    /// Nothing was installed: the gfn is in no slot the root's address space sees (its own
    /// slots, and for the alternate space the normal slots it overlays), or beyond what the
    /// root maps. An MMIO access, for the device model.
    NotInSlot,
    /// A guest write to a read-only slot.
    WriteToReadOnly,
}

/// The fault's target: which 4 KiB host page backs the gfn, the largest leaf allowed, and
/// whether the leaf may be writable.
struct Target {
    gfn: Gfn,
    page: Hpa,
    size: PageSize,
    writable: bool,
    write: bool,
    sequence: u64,
}

impl<P: Platform> Core<P> {
    /// Handles a fault of `vcpu`.
    pub(crate) fn fault(
        &self,
        root: &Root<P>,
        gpa: Gpa,
        access: Access,
        vcpu: &VcpuShared,
    ) -> Result<Fault, MmuError> {
        let counts = &vcpu.faults;
        Counters::add(&counts.faults, 1);
        let outcome = self.fault_inner(root, gpa, access, vcpu);
        if outcome == Ok(Fault::Retry) {
            Counters::add(&counts.faults_retried, 1);
        }
        outcome
    }

    fn fault_inner(
        &self,
        root: &Root<P>,
        gpa: Gpa,
        access: Access,
        vcpu: &VcpuShared,
    ) -> Result<Fault, MmuError> {
        let counts = &vcpu.faults;
        let gfn = gpa.gfn();
        if gfn.raw() >= reach(root.role().levels) {
            return Ok(Fault::NotInSlot);
        }
        // Rule 7: snapshot the sequence before looking at the backing; a gfn being
        // invalidated retries without touching the lock.
        let sequence = self.inval.snapshot();
        if self.inval.blocks(gfn) {
            return Ok(Fault::Retry);
        }
        // Through the vCPU's own reader slot: no cache line shared with other vCPUs'
        // faults is written to take the lock (see `lock.rs`).
        let shared = self.lock.read_in(vcpu.reader_slot);
        // Invalidation marks roots invalid under the exclusive lock, so this holds until we
        // release the shared side: we never install into a root that is (being) zapped.
        if !root.is_valid() {
            return Ok(Fault::Retry);
        }
        // The slot is borrowed from the table (which the shared guard derefs to) for the
        // whole fault, not cloned out of it: its `Arc` is shared by every vCPU, and two
        // reference-count updates per fault were two more cache-line transfers between the
        // CPUs that fault.
        let Some(slot) = shared.find(root.role().as_id, gfn) else {
            return Ok(Fault::NotInSlot);
        };
        let write = access == Access::Write;
        if write && slot.flags.read_only {
            return Ok(Fault::WriteToReadOnly);
        }
        let mut size = slot.mapping_size(self.config.max_page_size.min(<P::Format as TdpFormat>::MAX_LEAF));
        // Through the overlay (an alternate root mapping a normal slot), a huge leaf must
        // not cover gfns that the root's own space gives to one of its slots.
        if slot.as_id != root.role().as_id {
            while let Some(smaller) = size.smaller() {
                let start = Gfn::new(gfn.raw() / size.pages() * size.pages());
                if !shared.has_own_slot_in(root.role().as_id, start, start.add(size.pages())) {
                    break;
                }
                size = smaller;
            }
        }
        let (chunk, offset) = slot.locate(gfn);
        let frame = self.backing_frame(slot, chunk).ok_or(MmuError::OutOfMemory)?;
        let target = Target {
            gfn,
            page: frame.add(offset),
            size,
            writable: !slot.flags.read_only && (!slot.flags.dirty_log || write),
            write,
            sequence,
        };
        let outcome = self.install(&shared, root, &target, counts)?;
        if outcome == Fault::Installed && write {
            // After the writable entry is in place, so a dirty-log pass that clears the bit
            // and write-protects either sees this entry or leaves the bit for next time.
            slot.mark_dirty(gfn);
        }
        Ok(outcome)
    }

    /// The walk, with a [`TdpIter`] (see `iter.rs`):
    /// 1. Start at the root table, at the root's level.
    /// 2. The cursor holds a snapshot of the entry for the gfn at this level (`old`).
    ///    Decisions are taken on the snapshot, and every change is a compare-and-exchange
    ///    against it, so a change made by another thread in between makes ours fail instead
    ///    of overwriting it (and refreshes the snapshot).
    /// 3. FROZEN: a zap owns the entry until its flush is done. Retry.
    /// 4. Above the target level: a present table, step down (the child's entry is read
    ///    fresh: we never act on a stale view of the level below); a present leaf
    ///    covering the gfn, check it (step 6); non-present, allocate a zeroed table and
    ///    install it; on success step down into it, on failure free it (nobody can have
    ///    seen it) and go back to step 2 for the same entry.
    /// 5. At the target level: a present table means smaller leaves exist here; lower the
    ///    target and step down. Non-present: check the invalidation sequence again (rule 7)
    ///    and install the leaf; on failure go back to step 2.
    /// 6. A present leaf mapping the right page with enough permission: another vCPU got
    ///    there first, done. Lacking a write permission the slot now grants: make it
    ///    writable (same check, same compare-and-exchange). Mapping another page: only
    ///    possible transiently while a zap is on its way, so retry.
    fn install(
        &self,
        shared: &MmuShared<'_, SlotTable>,
        root: &Root<P>,
        t: &Target,
        counts: &FaultCounters,
    ) -> Result<Fault, MmuError> {
        let pages = &*self.pages;
        let Some(mut iter) =
            TdpIter::root(shared, pages, root.table(), root.role().levels, t.gfn, t.gfn.add(1))
        else {
            return Ok(Fault::NotInSlot);
        };
        let mut leaf_level = t.size.level();
        loop {
            let old = iter.old();
            let level = iter.level();
            if old.is_frozen() {
                Counters::add(&counts.faults_raced, 1);
                return Ok(Fault::Retry);
            }
            if old.is_leaf(level) {
                return Ok(self.existing_leaf(&mut iter, t, counts));
            }
            if old.is_table(level) {
                if level == leaf_level {
                    leaf_level -= 1;
                }
                iter.step_down();
                continue;
            }
            if level == leaf_level {
                if self.inval.must_retry(t.sequence, t.gfn) {
                    return Ok(Fault::Retry);
                }
                let size = PageSize::from_level(level).expect("leaf levels are 1 to 3");
                let frame = Hpa::new(t.page.raw() - (t.gfn.raw() & (span(level) - 1)) * PAGE_SIZE);
                if iter.cmpxchg(Spte::leaf(frame, size, t.writable)).is_err() {
                    Counters::add(&counts.faults_raced, 1);
                    continue;
                }
                Counters::add(&counts.sptes_installed, 1);
                return Ok(Fault::Installed);
            }
            let child = pages.alloc_table().ok_or(MmuError::OutOfMemory)?;
            // Release: whoever reads the new entry also sees the zeroed child.
            if iter.cmpxchg(Spte::table(child)).is_ok() {
                Counters::add(&self.counters.table_pages, 1);
                iter.step_down();
            } else {
                pages.free_table(child);
                Counters::add(&counts.faults_raced, 1);
            }
        }
    }

    fn existing_leaf(
        &self,
        iter: &mut TdpIter<'_, P::Format, P::Pages>,
        t: &Target,
        counts: &FaultCounters,
    ) -> Fault {
        let old = iter.old();
        let level = iter.level();
        let size = PageSize::from_level(level).expect("leaf levels are 1 to 3");
        let mapped = old.leaf_address(size).add((t.gfn.raw() & (span(level) - 1)) * PAGE_SIZE);
        if mapped != t.page {
            Counters::add(&counts.faults_raced, 1);
            return Fault::Retry;
        }
        if !t.write || old.is_writable() {
            return Fault::Installed;
        }
        if !t.writable || self.inval.must_retry(t.sequence, t.gfn) {
            return Fault::Retry;
        }
        if iter.cmpxchg(old.with_writable(true)).is_err() {
            Counters::add(&counts.faults_raced, 1);
            return Fault::Retry;
        }
        Counters::add(&counts.sptes_installed, 1);
        Fault::Installed
    }
}
