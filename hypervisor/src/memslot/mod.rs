//! Memory slots: the guest-physical ranges a VM has memory in, in two address spaces, and
//! the host memory behind them.
//!
//! A slot's backing is owned by the VM and allocated chunk by chunk on first touch (by a
//! fault or by the hypervisor's own access). A chunk is the largest page size the slot's
//! base and size are aligned to (capped by the MMU's configuration), so an aligned slot can
//! be mapped with 2 MiB or 1 GiB leaves (rule 10). Zaps drop translations, never backing;
//! moving a slot keeps its backing; deleting it frees the backing.
//!
//! This module sits below the MMU: it knows the page source and the sync shims, not the
//! MMU. [`Backing`] reports what it allocated or freed, and the MMU does the counting.

use crate::addr::{Gfn, Gpa, Hpa, PAGE_SIZE, PageSize};
use crate::pages::PageSource;
use crate::sync::{AtomicU64, Ordering};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

/// An address space: the normal one, or the alternate one (SMRAM-like) a vCPU switches to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum AsId {
    Normal = 0,
    Alternate = 1,
}

impl AsId {
    pub const ALL: [AsId; 2] = [AsId::Normal, AsId::Alternate];

    /// Whether a root of address space `self` may map slots of `slots`: its own, and the
    /// normal space's for the alternate space, which overlays it (see `SlotTable`).
    pub const fn sees(self, slots: AsId) -> bool {
        matches!((self, slots), (AsId::Normal, AsId::Normal) | (AsId::Alternate, _))
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A slot's name, chosen by the caller, unique within a VM (across both address spaces).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SlotId(pub u32);

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SlotFlags {
    /// Guest writes fault (the MMU answers them with `Fault::WriteToReadOnly`).
    pub read_only: bool,
    /// Guest writes are recorded in a bitmap (read and cleared by the MMU's `dirty_log`).
    pub dirty_log: bool,
}

/// What a caller asks for when adding a slot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SlotSpec {
    pub id: SlotId,
    pub as_id: AsId,
    pub base: Gpa,
    pub size: u64,
    pub flags: SlotFlags,
}

/// Why a slot request was refused. A refused request changes nothing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SlotError {
    ZeroSize,
    /// Base or size is not a multiple of 4 KiB.
    Misaligned,
    /// The slot would reach beyond the guest-physical address width.
    BeyondAddressWidth,
    Overlap {
        with: SlotId,
    },
    UnknownSlot,
    DuplicateId,
    OutOfMemory,
    /// `dirty_log` on a slot without dirty logging.
    DirtyLogDisabled,
    /// The VM is being destroyed.
    Destroyed,
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotError::ZeroSize => f.write_str("slot size is zero"),
            SlotError::Misaligned => f.write_str("slot base and size must be multiples of 4 KiB"),
            SlotError::BeyondAddressWidth => {
                f.write_str("slot reaches beyond the guest-physical address width")
            }
            SlotError::Overlap { with } => write!(f, "slot overlaps slot {}", with.0),
            SlotError::UnknownSlot => f.write_str("no such slot"),
            SlotError::DuplicateId => f.write_str("a slot with this id exists"),
            SlotError::OutOfMemory => f.write_str("out of memory"),
            SlotError::DirtyLogDisabled => f.write_str("dirty logging is off for this slot"),
            SlotError::Destroyed => f.write_str("the VM is being destroyed"),
        }
    }
}

/// The host memory behind a slot: one frame per chunk, allocated on first touch.
pub(crate) struct Backing {
    pub(crate) chunk: PageSize,
    /// Per chunk: the frame's address with [`BACKED`] set, or 0 before first touch.
    frames: Box<[AtomicU64]>,
}

const BACKED: u64 = 1;

impl Backing {
    fn new(chunk: PageSize, pages: u64) -> Result<Self, SlotError> {
        let chunks = usize::try_from(pages / chunk.pages()).map_err(|_| SlotError::OutOfMemory)?;
        let mut frames = Vec::new();
        frames.try_reserve_exact(chunks).map_err(|_| SlotError::OutOfMemory)?;
        frames.extend((0..chunks).map(|_| AtomicU64::new(0)));
        Ok(Self { chunk, frames: frames.into_boxed_slice() })
    }

    /// The frame of chunk `index` if it has been touched.
    pub(crate) fn frame(&self, index: usize) -> Option<Hpa> {
        let raw = self.frames[index].load(Ordering::Acquire);
        (raw & BACKED != 0).then_some(Hpa::new(raw & !BACKED))
    }

    /// The frame of chunk `index`, allocating it on first touch. Two racing first touches
    /// both allocate; the loser of the compare-and-exchange frees its frame (never seen by
    /// anyone) and uses the winner's. `None`: the page source is out of frames.
    pub(crate) fn frame_or_alloc<P: PageSource>(&self, index: usize, pages: &P) -> Option<Touched> {
        if let Some(frame) = self.frame(index) {
            return Some(Touched { frame, allocated: false });
        }
        let frame = pages.alloc_frame(self.chunk)?;
        match self.frames[index].compare_exchange(
            0,
            frame.raw() | BACKED,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Some(Touched { frame, allocated: true }),
            Err(winner) => {
                pages.free_frame(frame, self.chunk);
                Some(Touched { frame: Hpa::new(winner & !BACKED), allocated: false })
            }
        }
    }

    /// Drops chunk `index`'s frame, so the next touch gets a fresh zeroed one. Only inside
    /// a range invalidation, after the range is zapped and flushed (rule 7). Returns whether
    /// a frame was freed.
    pub(crate) fn discard<P: PageSource>(&self, index: usize, pages: &P) -> bool {
        let raw = self.frames[index].swap(0, Ordering::AcqRel);
        if raw & BACKED != 0 {
            pages.free_frame(Hpa::new(raw & !BACKED), self.chunk);
        }
        raw & BACKED != 0
    }

    /// Frees every frame. Only once no root can map them any more (the slot is deleted and
    /// every root that could map it zapped and flushed). Returns how many frames it freed.
    pub(crate) fn release<P: PageSource>(&self, pages: &P) -> u64 {
        (0..self.frames.len()).filter(|&index| self.discard(index, pages)).count() as u64
    }
}

/// A chunk's frame, and whether the call that returned it allocated it (so the caller
/// counts it once).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Touched {
    pub(crate) frame: Hpa,
    pub(crate) allocated: bool,
}

/// One bit per 4 KiB page of a slot with dirty logging.
pub(crate) struct DirtyBitmap {
    words: Box<[core::sync::atomic::AtomicU64]>,
}

impl DirtyBitmap {
    fn new(pages: u64) -> Result<Self, SlotError> {
        let words = usize::try_from(pages.div_ceil(64)).map_err(|_| SlotError::OutOfMemory)?;
        let mut v = Vec::new();
        v.try_reserve_exact(words).map_err(|_| SlotError::OutOfMemory)?;
        v.extend((0..words).map(|_| core::sync::atomic::AtomicU64::new(0)));
        Ok(Self { words: v.into_boxed_slice() })
    }

    pub(crate) fn mark(&self, page: u64) {
        self.words[(page / 64) as usize].fetch_or(1 << (page % 64), core::sync::atomic::Ordering::AcqRel);
    }

    /// Returns the bitmap and clears it, word by word atomically.
    pub(crate) fn take(&self) -> Vec<u64> {
        self.words.iter().map(|w| w.swap(0, core::sync::atomic::Ordering::AcqRel)).collect()
    }
}

/// A slot as the MMU sees it. Immutable: a move or a flag change installs a new `Memslot`
/// sharing the same backing.
pub struct Memslot {
    pub id: SlotId,
    pub as_id: AsId,
    pub base: Gfn,
    pub pages: u64,
    pub flags: SlotFlags,
    pub(crate) backing: Arc<Backing>,
    pub(crate) dirty: Option<Arc<DirtyBitmap>>,
}

impl Memslot {
    pub fn end(&self) -> Gfn {
        self.base.add(self.pages)
    }

    pub fn contains(&self, gfn: Gfn) -> bool {
        self.base <= gfn && gfn < self.end()
    }

    /// The size of the backing chunks (the largest leaf this slot can ever be mapped with).
    pub fn chunk_size(&self) -> PageSize {
        self.backing.chunk
    }

    /// The largest leaf that can map `gfn` (rule 10): within one backing chunk and aligned
    /// in both address spaces; 4 KiB while dirty logging, so writes are tracked per page.
    pub(crate) fn mapping_size(&self, max: PageSize) -> PageSize {
        if self.flags.dirty_log {
            return PageSize::Size4K;
        }
        let mut size = self.backing.chunk.min(max);
        while !self.base.is_aligned(size) {
            size = size.smaller().unwrap_or(PageSize::Size4K);
        }
        size
    }

    /// Chunk index and byte offset inside the chunk of `gfn`.
    pub(crate) fn locate(&self, gfn: Gfn) -> (usize, u64) {
        let page = gfn.raw() - self.base.raw();
        let chunk_pages = self.backing.chunk.pages();
        ((page / chunk_pages) as usize, (page % chunk_pages) * PAGE_SIZE)
    }

    /// The host page that backs `gfn`, if touched.
    pub fn backing_of(&self, gfn: Gfn) -> Option<Hpa> {
        let (chunk, offset) = self.locate(gfn);
        self.backing.frame(chunk).map(|frame| frame.add(offset))
    }

    pub(crate) fn mark_dirty(&self, gfn: Gfn) {
        if let Some(dirty) = &self.dirty {
            dirty.mark(gfn.raw() - self.base.raw());
        }
    }

    pub(crate) fn with(&self, base: Gfn, flags: SlotFlags) -> Result<Memslot, SlotError> {
        let dirty = match (&self.dirty, flags.dirty_log) {
            (_, false) => None,
            (Some(d), true) => Some(d.clone()),
            (None, true) => Some(Arc::new(DirtyBitmap::new(self.pages)?)),
        };
        Ok(Memslot {
            id: self.id,
            as_id: self.as_id,
            base,
            pages: self.pages,
            flags,
            backing: self.backing.clone(),
            dirty,
        })
    }
}

/// The slots of both address spaces, each sorted by base.
///
/// The alternate space is an overlay: a gfn that no alternate slot covers resolves to the
/// normal space's slot (as KVM's SMM address space sees SMRAM over normal RAM, which QEMU
/// builds by registering RAM in both). So a vCPU that switches address space keeps
/// fetching the same code, and a root of the alternate space may map normal slots. What
/// that costs elsewhere: changes to a normal slot's mappings must also reach alternate
/// roots ([`AsId::sees`]), and adding an alternate slot must zap the range it now hides.
#[derive(Default)]
pub(crate) struct SlotTable {
    spaces: [Vec<Arc<Memslot>>; 2],
}

impl SlotTable {
    pub(crate) fn find(&self, as_id: AsId, gfn: Gfn) -> Option<&Arc<Memslot>> {
        let own = |as_id: AsId| {
            let space = &self.spaces[as_id.index()];
            let i = space.partition_point(|s| s.base <= gfn);
            space[..i].last().filter(|s| s.contains(gfn))
        };
        match as_id {
            AsId::Normal => own(AsId::Normal),
            AsId::Alternate => own(AsId::Alternate).or_else(|| own(AsId::Normal)),
        }
    }

    /// Whether a slot of `as_id`'s own space (not the overlay) intersects `[start, end)`.
    pub(crate) fn has_own_slot_in(&self, as_id: AsId, start: Gfn, end: Gfn) -> bool {
        self.spaces[as_id.index()].iter().any(|s| s.base < end && start < s.end())
    }

    pub(crate) fn by_id(&self, id: SlotId) -> Option<&Arc<Memslot>> {
        self.spaces.iter().flatten().find(|s| s.id == id)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Memslot>> {
        self.spaces.iter().flatten()
    }

    /// Checks that `[base, base + pages)` in `as_id` is free, ignoring slot `except`.
    fn check_free(
        &self,
        as_id: AsId,
        base: Gfn,
        pages: u64,
        except: Option<SlotId>,
    ) -> Result<(), SlotError> {
        let end = base.add(pages);
        match self.spaces[as_id.index()]
            .iter()
            .find(|s| Some(s.id) != except && s.base < end && base < s.end())
        {
            Some(s) => Err(SlotError::Overlap { with: s.id }),
            None => Ok(()),
        }
    }

    /// Validates a request for `[base, base + size)`.
    pub(crate) fn check(
        &self,
        as_id: AsId,
        base: Gpa,
        size: u64,
        phys_bits: u8,
        except: Option<SlotId>,
    ) -> Result<(), SlotError> {
        if size == 0 {
            return Err(SlotError::ZeroSize);
        }
        if !base.is_aligned(PageSize::Size4K) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(SlotError::Misaligned);
        }
        match base.raw().checked_add(size) {
            Some(end) if end <= 1 << phys_bits => {}
            _ => return Err(SlotError::BeyondAddressWidth),
        }
        self.check_free(as_id, base.gfn(), size / PAGE_SIZE, except)
    }

    /// Builds the slot for a checked spec.
    pub(crate) fn build(spec: &SlotSpec, max: PageSize) -> Result<Memslot, SlotError> {
        let pages = spec.size / PAGE_SIZE;
        let mut chunk = max;
        while !(spec.base.is_aligned(chunk) && spec.size.is_multiple_of(chunk.bytes())) {
            chunk = chunk.smaller().unwrap_or(PageSize::Size4K);
        }
        let dirty = if spec.flags.dirty_log { Some(Arc::new(DirtyBitmap::new(pages)?)) } else { None };
        Ok(Memslot {
            id: spec.id,
            as_id: spec.as_id,
            base: spec.base.gfn(),
            pages,
            flags: spec.flags,
            backing: Arc::new(Backing::new(chunk, pages)?),
            dirty,
        })
    }

    pub(crate) fn insert(&mut self, slot: Arc<Memslot>) {
        let space = &mut self.spaces[slot.as_id.index()];
        let i = space.partition_point(|s| s.base < slot.base);
        space.insert(i, slot);
    }

    pub(crate) fn remove(&mut self, id: SlotId) -> Option<Arc<Memslot>> {
        for space in &mut self.spaces {
            if let Some(i) = space.iter().position(|s| s.id == id) {
                return Some(space.remove(i));
            }
        }
        None
    }

    pub(crate) fn take_all(&mut self) -> Vec<Arc<Memslot>> {
        self.spaces.iter_mut().flat_map(core::mem::take).collect()
    }
}
