//! Where table pages and backing frames come from. Below both the MMU and the memory slots.

use crate::addr::{Hpa, PageSize};
use crate::sync::AtomicU64;

/// Entries in one table page.
pub const ENTRIES: usize = 512;

/// A source of zeroed 4 KiB table pages and of backing frames (4 KiB, 2 MiB, 1 GiB), and the
/// way the MMU reaches their memory.
///
/// On bare metal this is the frame allocator plus the direct map (virtual == physical), so
/// an implementation is a few lines; a sketch:
///
/// ```ignore
/// struct DirectMap;
/// // SAFETY: the frame allocator hands out each frame once, zeroed and aligned; the
/// // direct map covers all of RAM at virt == phys; see each method.
/// unsafe impl PageSource for DirectMap {
///     fn alloc_table(&self) -> Option<Hpa> { frames::alloc_zeroed(PageSize::Size4K) }
///     fn table(&self, table: Hpa) -> &[AtomicU64; ENTRIES] {
///         // SAFETY: `table` came from `alloc_table` and is not yet freed (the trait's
///         // contract on the caller), so it is a live, aligned, 4 KiB page in the direct map.
///         unsafe { &*(table.raw() as *const [AtomicU64; ENTRIES]) }
///     }
///     fn read_frame(&self, frame: Hpa, size: PageSize, offset: u64, buf: &mut [u8]) {
///         // SAFETY: as above; a volatile copy, since the guest may write concurrently.
///         unsafe { volatile_copy(buf, (frame.raw() + offset) as *const u8) }
///     }
///     /* free_table, alloc_frame, free_frame, write_frame alike */
/// }
/// ```
///
/// Host tests use [`crate::mmu::host::HostPages`], a safe arena whose "physical" addresses are
/// indices and which never dereferences an address.
///
/// # Safety
/// The MMU writes the addresses handed out here into entries that the processor walks, so a
/// guest can reach exactly the memory they name, and it relies on the following for the
/// memory safety of the host. An implementation guarantees:
/// 1. `alloc_table` returns a 4 KiB-aligned page whose 512 entries are zero, owned by the
///    caller alone until it passes the address to `free_table`; no other table, frame or
///    host data overlaps it.
/// 2. `table(t)`, for such a page, returns that page's own memory (what the processor reads
///    at `t`). The MMU calls it only for pages it allocated and has not freed.
/// 3. `alloc_frame(size)` returns a `size`-aligned, zeroed frame owned by the caller alone
///    until `free_frame(frame, size)`, overlapping nothing else the host uses.
/// 4. `read_frame`/`write_frame` copy from/to `[frame + offset, frame + offset + len)` of
///    such a frame (the MMU keeps the range inside it) and are sound while the guest
///    accesses the same memory concurrently (bytes may change underneath, nothing worse).
/// 5. Every address fits bits 51:12 (the address field of every entry format).
#[expect(
    unsafe_code,
    reason = "declares the contract the bare-metal direct map upholds; no unsafe operation here"
)]
pub unsafe trait PageSource: Send + Sync + 'static {
    fn alloc_table(&self) -> Option<Hpa>;
    /// Gives back a page from `alloc_table`. The MMU calls it only after the page is
    /// unreachable: never published, or unlinked, flushed and past a grace period.
    fn free_table(&self, table: Hpa);
    fn table(&self, table: Hpa) -> &[AtomicU64; ENTRIES];
    fn alloc_frame(&self, size: PageSize) -> Option<Hpa>;
    /// Gives back a frame from `alloc_frame`, after no entry maps it and the TLBs are flushed.
    fn free_frame(&self, frame: Hpa, size: PageSize);
    fn read_frame(&self, frame: Hpa, size: PageSize, offset: u64, buf: &mut [u8]);
    fn write_frame(&self, frame: Hpa, size: PageSize, offset: u64, data: &[u8]);
}
