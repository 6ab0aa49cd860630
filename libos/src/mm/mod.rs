//! Memory: the heap (`alloc`) and the physical frame allocator, both carved from the
//! loader's memory map, and the direct map through which all RAM is reachable.

pub mod frame;
pub mod heap;

use crate::bootinfo::{BootInfo, PhysRange};

/// Physical memory is identity mapped: a physical address is also the virtual address.
pub const fn phys_to_virt(phys: u64) -> *mut u8 {
    phys as *mut u8
}

/// Low memory is left alone: it holds the BIOS data area, the EBDA, the AP trampoline
/// (see `smp`) and possibly the loader's structures.
const LOW_MEMORY_END: u64 = 0x10_0000;

/// Carves the heap and the frame pool out of usable RAM.
pub fn init(info: &BootInfo, image: PhysRange) {
    let holes = [PhysRange::new(0, LOW_MEMORY_END), image];
    let heap = heap::init(info, &holes);
    let holes = [holes[0], holes[1], heap];
    frame::init(info, &holes);
    log::info!(
        "memory: {} MiB usable, heap {} MiB at {:#x}, {} MiB in frames",
        info.ram_bytes() >> 20,
        heap.len() >> 20,
        heap.start,
        frame::free_bytes() >> 20
    );
}
