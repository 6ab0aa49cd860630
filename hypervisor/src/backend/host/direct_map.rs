//! The MMU's [`PageSource`] on bare metal: libos's frame allocator and its direct map
//! (virtual == physical for all RAM).
#![allow(unsafe_code, reason = "table pages and guest frames are reached through the direct map")]

use crate::addr::{Hpa, PageSize};
use crate::pages::{ENTRIES, PageSource};
use crate::sync::AtomicU64;
use libos::mm::frame;

/// Frames from libos, reached at their physical address.
pub struct DirectMap;

fn frames_of(size: PageSize) -> usize {
    (size.bytes() / frame::FRAME_SIZE) as usize
}

// SAFETY: (numbered as in the trait's contract) 1 and 3: `frame::alloc_zeroed` hands out
// each run of frames once, zeroed, aligned to its power-of-two size, from RAM that no
// other part of the image uses; 2 and 4: all RAM is identity mapped (libos's direct map),
// so the page at physical `t` is at virtual `t`; copies use volatile accesses because the
// guest may write the same memory concurrently; 5: RAM ends far below 2^52.
unsafe impl PageSource for DirectMap {
    fn alloc_table(&self) -> Option<Hpa> {
        frame::alloc_zeroed(1).map(Hpa::new)
    }

    fn free_table(&self, table: Hpa) {
        frame::free(table.raw(), 1);
    }

    fn table(&self, table: Hpa) -> &[AtomicU64; ENTRIES] {
        // SAFETY: per the trait's contract the MMU passes only live pages from
        // `alloc_table`: 4 KiB-aligned, identity mapped, and AtomicU64 has u64's layout.
        unsafe { &*(table.raw() as *const [AtomicU64; ENTRIES]) }
    }

    fn alloc_frame(&self, size: PageSize) -> Option<Hpa> {
        frame::alloc_zeroed(frames_of(size)).map(Hpa::new)
    }

    fn free_frame(&self, frame: Hpa, size: PageSize) {
        frame::free(frame.raw(), frames_of(size));
    }

    fn read_frame(&self, frame: Hpa, size: PageSize, offset: u64, buf: &mut [u8]) {
        debug_assert!(offset + buf.len() as u64 <= size.bytes());
        let src = (frame.raw() + offset) as *const u8;
        for (i, byte) in buf.iter_mut().enumerate() {
            // SAFETY: inside a live frame from `alloc_frame` (the MMU keeps the range
            // inside it), identity mapped; volatile, as the guest may write concurrently.
            *byte = unsafe { src.add(i).read_volatile() };
        }
    }

    fn write_frame(&self, frame: Hpa, size: PageSize, offset: u64, data: &[u8]) {
        debug_assert!(offset + data.len() as u64 <= size.bytes());
        let dst = (frame.raw() + offset) as *mut u8;
        for (i, byte) in data.iter().enumerate() {
            // SAFETY: as in `read_frame`.
            unsafe { dst.add(i).write_volatile(*byte) };
        }
    }
}
