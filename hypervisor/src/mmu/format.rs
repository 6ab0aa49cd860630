//! The entry format of a TDP table, as a trait the MMU core is generic over. EPT
//! ([`super::ept::Ept`]) and NPT ([`super::npt::Npt`]) are the hardware formats; the test
//! format ([`super::testfmt::TestFormat`]) puts its bits where neither does, so host tests
//! catch code that assumes one layout.
//!
//! The trait is sealed: an entry format decides which host memory a guest can reach, so
//! only the formats in this crate, each checked at compile time, may plug in.

use crate::addr::{Hpa, PageSize};
use core::fmt;
use core::marker::PhantomData;

mod sealed {
    pub trait Sealed {}
}
pub(crate) use sealed::Sealed;

/// Bits 51:12: the address field of a table entry and of a 4 KiB leaf in every format here.
pub const ADDRESS_MASK: u64 = ((1 << 52) - 1) & !0xfff;

/// The address bits of a leaf of `size` (bits 51:12, 51:21 or 51:30).
pub const fn leaf_address_mask(size: PageSize) -> u64 {
    ADDRESS_MASK & !(size.bytes() - 1)
}

pub trait TdpFormat: Sealed + Send + Sync + 'static {
    const NAME: &'static str;
    /// Written (by compare-and-exchange) over an entry while it is being replaced: not
    /// present to the hardware, and recognised by every software walker, none of which will
    /// overwrite it. Only the thread that froze an entry writes it again.
    const FROZEN: u64;
    /// The largest leaf this format maps.
    const MAX_LEAF: PageSize;

    fn is_present(spte: u64) -> bool;
    /// Whether a present entry at `level` maps memory (rather than pointing to a table).
    fn is_leaf(spte: u64, level: u8) -> bool;
    fn is_writable(spte: u64) -> bool;
    /// A non-leaf entry pointing to `table`, with every permission (leaves restrict).
    fn table(table: Hpa) -> u64;
    /// A leaf mapping `frame` (aligned to `size`): readable, executable, write-back memory,
    /// writable if `writable`.
    fn leaf(frame: Hpa, size: PageSize, writable: bool) -> u64;
    fn with_writable(spte: u64, writable: bool) -> u64;
    /// The table a present non-leaf entry points to.
    fn table_address(spte: u64) -> Hpa {
        Hpa::new(spte & ADDRESS_MASK)
    }
    /// The frame a present leaf of `size` maps.
    fn leaf_address(spte: u64, size: PageSize) -> Hpa {
        Hpa::new(spte & leaf_address_mask(size))
    }
    /// What the backend loads into the VMCS/VMCB for a root table: the EPTP or nCR3.
    fn root_pointer(root: Hpa, levels: u8) -> u64;

    fn is_frozen(spte: u64) -> bool {
        spte == Self::FROZEN
    }
}

/// One table entry as the MMU core sees it: the raw bits, read through their format. The
/// core asks an entry what it is (present, leaf, frozen, ...) instead of testing bits, so
/// nothing outside the format modules knows where a bit lives.
pub struct Spte<F: TdpFormat> {
    raw: u64,
    format: PhantomData<fn() -> F>,
}

impl<F: TdpFormat> Spte<F> {
    /// The non-present entry a zeroed table holds.
    pub const NONE: Self = Self::from_raw(0);
    /// The frozen marker (see [`TdpFormat::FROZEN`]).
    pub const FROZEN: Self = Self::from_raw(F::FROZEN);

    pub const fn from_raw(raw: u64) -> Self {
        Self { raw, format: PhantomData }
    }

    pub const fn raw(self) -> u64 {
        self.raw
    }

    /// A non-leaf entry pointing to `table`.
    pub fn table(table: Hpa) -> Self {
        Self::from_raw(F::table(table))
    }

    /// A leaf mapping `frame` (aligned to `size`), writable if `writable`.
    pub fn leaf(frame: Hpa, size: PageSize, writable: bool) -> Self {
        Self::from_raw(F::leaf(frame, size, writable))
    }

    /// Present to the hardware. Never true of a frozen entry.
    pub fn is_present(self) -> bool {
        F::is_present(self.raw)
    }

    pub fn is_frozen(self) -> bool {
        F::is_frozen(self.raw)
    }

    /// Present and, at `level`, mapping memory.
    pub fn is_leaf(self, level: u8) -> bool {
        self.is_present() && F::is_leaf(self.raw, level)
    }

    /// Present and pointing to a table (below `level`).
    pub fn is_table(self, level: u8) -> bool {
        self.is_present() && !F::is_leaf(self.raw, level)
    }

    pub fn is_writable(self) -> bool {
        F::is_writable(self.raw)
    }

    /// The table a present non-leaf entry points to.
    pub fn table_address(self) -> Hpa {
        F::table_address(self.raw)
    }

    /// The frame a present leaf of `size` maps.
    pub fn leaf_address(self, size: PageSize) -> Hpa {
        F::leaf_address(self.raw, size)
    }

    /// This entry with the write permission set or cleared.
    pub fn with_writable(self, writable: bool) -> Self {
        Self::from_raw(F::with_writable(self.raw, writable))
    }
}

impl<F: TdpFormat> Clone for Spte<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: TdpFormat> Copy for Spte<F> {}

impl<F: TdpFormat> PartialEq for Spte<F> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl<F: TdpFormat> Eq for Spte<F> {}

impl<F: TdpFormat> fmt::Debug for Spte<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Spte<{}>({:#x})", F::NAME, self.raw)
    }
}
