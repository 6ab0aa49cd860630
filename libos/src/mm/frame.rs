//! Physical frames for page tables, stacks, VMCS/VMCB pages and guest memory: a buddy
//! allocator (`buddy_system_allocator`), so runs of 2^k frames come back 2^k-aligned,
//! which is what 2 MiB and 1 GiB guest mappings need.

use crate::bootinfo::{BootInfo, PhysRange};
use buddy_system_allocator::FrameAllocator;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

pub const FRAME_SIZE: u64 = 4096;

static FRAMES: Mutex<FrameAllocator<33>> = Mutex::new(FrameAllocator::new());
static FREE_FRAMES: AtomicU64 = AtomicU64::new(0);
static TOTAL_FRAMES: AtomicU64 = AtomicU64::new(0);

pub(super) fn init(info: &BootInfo, holes: &[PhysRange]) {
    let mut frames = FRAMES.lock();
    info.ram_without(holes, FRAME_SIZE, |piece| {
        let (first, end) = (piece.start / FRAME_SIZE, piece.end / FRAME_SIZE);
        frames.add_frame(first as usize, end as usize);
        FREE_FRAMES.fetch_add(end - first, Ordering::Relaxed);
        TOTAL_FRAMES.fetch_add(end - first, Ordering::Relaxed);
    });
}

/// Allocates `count` frames (rounded up to a power of two), aligned to their total size.
/// Returns the physical address of the first frame; the contents are undefined.
pub fn alloc(count: usize) -> Option<u64> {
    let count = count.max(1).next_power_of_two();
    let first = FRAMES.lock().alloc(count)?;
    FREE_FRAMES.fetch_sub(count as u64, Ordering::Relaxed);
    Some(first as u64 * FRAME_SIZE)
}

/// Like [`alloc`], with the frames zeroed.
pub fn alloc_zeroed(count: usize) -> Option<u64> {
    let phys = alloc(count)?;
    let bytes = count.max(1).next_power_of_two() * FRAME_SIZE as usize;
    // SAFETY: the frames were just taken from the allocator, so nothing else refers to
    // them, and all RAM is identity mapped.
    unsafe { core::ptr::write_bytes(crate::mm::phys_to_virt(phys), 0, bytes) };
    Some(phys)
}

/// Returns frames obtained from [`alloc`] with the same `count`.
pub fn free(phys: u64, count: usize) {
    let count = count.max(1).next_power_of_two();
    FRAMES.lock().dealloc((phys / FRAME_SIZE) as usize, count);
    FREE_FRAMES.fetch_add(count as u64, Ordering::Relaxed);
}

pub fn free_bytes() -> u64 {
    FREE_FRAMES.load(Ordering::Relaxed) * FRAME_SIZE
}

pub fn total_bytes() -> u64 {
    TOTAL_FRAMES.load(Ordering::Relaxed) * FRAME_SIZE
}
