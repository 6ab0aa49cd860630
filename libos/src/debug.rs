//! Deliberate faults, for testing the exception path (`fault=pagefault`).

/// A canonical address no page table maps: PML4 slot 128 is never filled (the direct map
/// uses slot 0 and, for RAM above 512 GiB, the next few).
pub const UNMAPPED_ADDRESS: u64 = 0x0000_4000_DEAD_0000;

/// Reads [`UNMAPPED_ADDRESS`]; the page fault stops this CPU with a diagnosis.
pub fn touch_unmapped_memory() {
    // SAFETY: the read faults before it can observe anything; the #PF handler reports it
    // and halts this CPU, so execution never continues past this line.
    let value = unsafe { core::ptr::read_volatile(UNMAPPED_ADDRESS as *const u64) };
    core::hint::black_box(value);
}
