//! The global heap: `talc` over one contiguous range of RAM.

use crate::bootinfo::{BootInfo, PhysRange};
use core::sync::atomic::{AtomicU64, Ordering};
use talc::source::Manual;

#[global_allocator]
static HEAP: talc::TalcLock<spin::Mutex<()>, Manual> = talc::TalcLock::new(Manual);

/// The heap's size, once claimed.
static HEAP_BYTES: AtomicU64 = AtomicU64::new(0);

const MIN_HEAP: u64 = 16 << 20;
const MAX_HEAP: u64 = 256 << 20;

/// Claims an eighth of RAM (16 to 256 MiB) as the heap and returns the range used. The
/// frame allocator gets the rest, so guest memory never competes with kernel objects.
pub fn init(info: &BootInfo, holes: &[PhysRange]) -> PhysRange {
    let want = (info.ram_bytes() / 8).clamp(MIN_HEAP, MAX_HEAP);
    let mut best = PhysRange::default();
    info.ram_without(holes, 4096, |piece| {
        if piece.len() > best.len() {
            best = piece;
        }
    });
    let range = PhysRange::new(best.start, best.start + want.min(best.len()));
    // SAFETY: `range` is usable RAM (from the loader's map) that overlaps neither the
    // image, nor low memory, nor anything else handed out: the frame allocator is built
    // after this with `range` as a hole. It is identity mapped by the boot page tables.
    let claimed = unsafe { HEAP.lock().claim(crate::mm::phys_to_virt(range.start), range.len() as usize) };
    if claimed.is_none() {
        panic!("heap: could not claim {:#x}..{:#x}", range.start, range.end);
    }
    HEAP_BYTES.store(range.len(), Ordering::Relaxed);
    range
}

/// The heap's size in bytes (an eighth of RAM, 16 to 256 MiB).
pub fn total_bytes() -> u64 {
    HEAP_BYTES.load(Ordering::Relaxed)
}

/// Heap bytes free now (in holes of any size: a large allocation may still fail when they
/// are fragmented). The control plane refuses work whose heap cost would leave less than
/// its reserve.
pub fn free_bytes() -> u64 {
    HEAP.lock().counters().available_bytes as u64
}
