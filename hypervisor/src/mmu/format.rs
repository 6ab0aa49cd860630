//! The entry format of a TDP table, as a trait the MMU core is generic over. EPT
//! ([`super::ept::Ept`]) and NPT ([`super::npt::Npt`]) are the hardware formats; the test
//! format ([`super::testfmt::TestFormat`]) puts its bits where neither does, so host tests
//! catch code that assumes one layout.
//!
//! The trait is sealed: an entry format decides which host memory a guest can reach, so
//! only the formats in this crate, each checked at compile time, may plug in.

use crate::addr::{Hpa, PageSize};

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
