//! Dirty logging: a slot with `dirty_log` is mapped with 4 KiB leaves that become writable
//! only through a write fault, which marks the page in the slot's bitmap. Reading the log takes the
//! bitmap (clearing it), then write-protects the pages it reported and flushes, so the next
//! write to each faults and is logged again.
//!
//! Why no write is lost: a fault marks the page only after its writable entry is in place
//! (see `fault.rs`), so a pass that takes the bit and then write-protects either finds that
//! entry, or the bit was set after the take and is reported next time.

use super::iter::TdpIter;
use super::lock::MmuShared;
use super::root::Root;
use super::stats::Counters;
use super::{Core, FlushScope, Platform, TlbFlush};
use crate::addr::Gfn;
use crate::memslot::{SlotError, SlotId, SlotTable};
use alloc::sync::Arc;
use alloc::vec::Vec;

impl<P: Platform> Core<P> {
    /// See [`super::Mmu::dirty_log`].
    pub(crate) fn dirty_log(&self, id: SlotId) -> Result<Vec<u64>, SlotError> {
        let shared = self.lock.read();
        let slot = shared.by_id(id).cloned().ok_or(SlotError::UnknownSlot)?;
        let dirty = slot.dirty.clone().ok_or(SlotError::DirtyLogDisabled)?;
        let bits = dirty.take();
        let roots: Vec<Arc<Root<P>>> =
            self.roots.lock().iter().filter(|r| r.role().as_id.sees(slot.as_id)).cloned().collect();
        let mut protected = false;
        for (w, word) in bits.iter().enumerate() {
            let mut rest = *word;
            while rest != 0 {
                let bit = rest.trailing_zeros() as u64;
                rest &= rest - 1;
                let gfn = slot.base.add(w as u64 * 64 + bit);
                for root in &roots {
                    protected |= self.write_protect(&shared, root, gfn);
                }
            }
        }
        if protected {
            self.hook.flush(FlushScope::Vm);
            Counters::add(&self.counters.tlb_flushes, 1);
        }
        Ok(bits)
    }

    /// Clears the writable bit of the leaf mapping `gfn` in `root`. Returns whether it did.
    /// A lost race starts the walk over from the root.
    fn write_protect(&self, shared: &MmuShared<'_, SlotTable>, root: &Root<P>, gfn: Gfn) -> bool {
        let Some(mut iter) =
            TdpIter::<P::Format, _>::lookup(shared, &*self.pages, root.table(), root.role().levels, gfn)
        else {
            return false;
        };
        loop {
            let old = iter.old();
            if !old.is_present() || !old.is_writable() {
                return false;
            }
            debug_assert!(old.is_leaf(iter.level()));
            if iter.cmpxchg(old.with_writable(false)).is_ok() {
                return true;
            }
            iter.restart();
            iter.descend();
        }
    }
}
