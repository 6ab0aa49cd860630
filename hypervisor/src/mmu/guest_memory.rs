//! The hypervisor's own accesses to guest memory: copies through the slots into the
//! backing (allocated on first touch, so untouched memory reads as zeros), under the shared
//! MMU lock like a fault. They never go through the tables: a copy sees the memory a slot
//! owns, whatever a root maps.

use super::{Core, Mmu, Platform};
use crate::addr::{Gpa, Hpa, PAGE_SIZE, PageSize};
use crate::memslot::{AsId, Memslot};
use crate::pages::PageSource;
use core::ops::Range;

/// Why a hypervisor-side guest memory access failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestMemoryError {
    NotInSlot { gpa: Gpa },
    OutOfMemory,
}

impl<P: Platform> Mmu<P> {
    /// Copies guest memory at `gpa` into `buf`, through the slots (allocating untouched
    /// backing, which reads as zeros).
    pub fn read_guest(&self, as_id: AsId, gpa: Gpa, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        for_each_page(gpa, buf.len(), |at, part| {
            self.core.with_backing(as_id, at, |pages, frame, size, offset, _| {
                pages.read_frame(frame, size, offset, &mut buf[part]);
            })
        })
    }

    /// Copies `data` into guest memory at `gpa`, through the slots. The hypervisor may write
    /// read-only slots (to load ROM images); dirty logging records the pages.
    pub fn write_guest(&self, as_id: AsId, gpa: Gpa, data: &[u8]) -> Result<(), GuestMemoryError> {
        for_each_page(gpa, data.len(), |at, part| {
            self.core.with_backing(as_id, at, |pages, frame, size, offset, slot| {
                pages.write_frame(frame, size, offset, &data[part]);
                slot.mark_dirty(at.gfn());
            })
        })
    }

    /// Makes `[gpa, gpa + len)` read as zeros (an image's zero-filled tail, `p_memsz`
    /// beyond `p_filesz`). Untouched backing already reads as zeros (it is allocated
    /// zeroed on first touch), so a chunk never touched is skipped whole and allocates
    /// nothing; only touched chunks are written, a page at a time. The cost follows the
    /// memory the guest has touched, not `len`.
    pub fn zero_guest(&self, as_id: AsId, gpa: Gpa, len: u64) -> Result<(), GuestMemoryError> {
        const ZEROES: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
        let end = gpa.raw().checked_add(len).ok_or(GuestMemoryError::NotInSlot { gpa })?;
        let mut at = gpa;
        while at.raw() < end {
            let slots = self.core.lock.read();
            let slot = slots.find(as_id, at.gfn()).ok_or(GuestMemoryError::NotInSlot { gpa: at })?;
            let (chunk, offset) = slot.locate(at.gfn());
            let offset = offset + at.page_offset();
            let next = match slot.backing.frame(chunk) {
                None => {
                    let chunk_end = at.raw() - offset + slot.backing.chunk.bytes();
                    chunk_end.min(slot.end().gpa().raw())
                }
                Some(frame) => {
                    let n = (PAGE_SIZE - at.page_offset()).min(end - at.raw());
                    self.core.pages.write_frame(frame, slot.backing.chunk, offset, &ZEROES[..n as usize]);
                    slot.mark_dirty(at.gfn());
                    at.raw() + n
                }
            };
            at = Gpa::new(next.min(end));
        }
        Ok(())
    }
}

/// Splits `[gpa, gpa + len)` at 4 KiB page boundaries: calls `f` with each piece's start and
/// its range within the caller's buffer, in order, stopping at the first error.
fn for_each_page<E>(
    gpa: Gpa,
    len: usize,
    mut f: impl FnMut(Gpa, Range<usize>) -> Result<(), E>,
) -> Result<(), E> {
    let mut done = 0;
    while done < len {
        let at = Gpa::new(gpa.raw() + done as u64);
        let part = (len - done).min((PAGE_SIZE - at.page_offset()) as usize);
        f(at, done..done + part)?;
        done += part;
    }
    Ok(())
}

impl<P: Platform> Core<P> {
    /// Runs `f` on the backing of `gpa` (the page source, the chunk's frame and size, the
    /// offset of `gpa` in it, the slot) under the shared lock.
    fn with_backing<R>(
        &self,
        as_id: AsId,
        gpa: Gpa,
        f: impl FnOnce(&P::Pages, Hpa, PageSize, u64, &Memslot) -> R,
    ) -> Result<R, GuestMemoryError> {
        let slots = self.lock.read();
        let slot = slots.find(as_id, gpa.gfn()).ok_or(GuestMemoryError::NotInSlot { gpa })?;
        let (chunk, offset) = slot.locate(gpa.gfn());
        let frame = self.backing_frame(slot, chunk).ok_or(GuestMemoryError::OutOfMemory)?;
        Ok(f(&self.pages, frame, slot.backing.chunk, offset + gpa.page_offset(), slot))
    }
}
