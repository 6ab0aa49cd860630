//! Intel EPT entries. Intel SDM Vol. 3C §29.3.2 "EPT Translation Mechanism" (tables
//! "Format of an EPT PML4 Entry" through "Format of an EPT Page-Table Entry") and §25.6.11
//! "Extended-Page-Table Pointer (EPTP)".

use super::format::{ADDRESS_MASK, Sealed, TdpFormat};
use crate::addr::{Hpa, PageSize};

/// Bit 0: read access.
pub const READ: u64 = 1 << 0;
/// Bit 1: write access.
pub const WRITE: u64 = 1 << 1;
/// Bit 2: execute access (supervisor-mode execute when mode-based execute control is on).
pub const EXECUTE: u64 = 1 << 2;
/// Bits 5:3 of a leaf: EPT memory type (6 = write-back).
pub const MEMORY_TYPE_WB: u64 = 6 << 3;
pub const MEMORY_TYPE_MASK: u64 = 7 << 3;
/// Bit 6 of a leaf: ignore the guest's PAT memory type.
pub const IGNORE_PAT: u64 = 1 << 6;
/// Bit 7 of a PDPTE/PDE: the entry maps a 1 GiB / 2 MiB page.
pub const LARGE_PAGE: u64 = 1 << 7;
/// Bit 8: accessed. The processor sets it only if EPTP bit 6 enables A/D flags, which
/// [`Ept::root_pointer`] never does: the MMU never reads it or the dirty bit (dirty
/// logging works by write protection), so A/D would only add processor writes to the
/// tables (and make every guest page-table walk count as a write). Should that change, a
/// compare-and-exchange that loses to the processor setting either bit re-reads the entry
/// and decides again.
pub const ACCESSED: u64 = 1 << 8;
/// Bit 9 of a leaf: dirty (same condition).
pub const DIRTY: u64 = 1 << 9;
/// Bit 10: user-mode execute (mode-based execute control). It also makes an entry present
/// when that control is on, so no software marker may use it.
pub const USER_EXECUTE: u64 = 1 << 10;
/// Bits 57, 58, 60, 61, 63: verify guest paging, paging-write access, supervisor shadow
/// stack, sub-page write permissions, suppress #VE. Used by features Taproot does not turn
/// on; kept clear of software bits all the same.
pub const FEATURE_BITS: u64 = (1 << 57) | (1 << 58) | (1 << 60) | (1 << 61) | (1 << 63);
/// Every bit the processor may interpret in some configuration.
pub const HARDWARE_BITS: u64 = READ
    | WRITE
    | EXECUTE
    | MEMORY_TYPE_MASK
    | IGNORE_PAT
    | LARGE_PAGE
    | ACCESSED
    | DIRTY
    | USER_EXECUTE
    | ADDRESS_MASK
    | FEATURE_BITS;
/// Bits 52..=56, 59 and 62: ignored by the processor, free for software.
pub const SOFTWARE_BITS: u64 = (0x1f << 52) | (1 << 59) | (1 << 62);
/// The frozen marker: a software bit alone.
pub const FROZEN: u64 = 1 << 59;
/// Any of these makes an entry present (bit 10 only with mode-based execute control).
pub const PRESENT_MASK: u64 = READ | WRITE | EXECUTE | USER_EXECUTE;

/// EPTP bits 2:0: paging-structure memory type, write-back (offered where
/// IA32_VMX_EPT_VPID_CAP bit 14 is set, which the VMX backend requires).
pub const EPTP_MEMORY_TYPE_WB: u64 = 6;
/// EPTP bits 5:3: page-walk length minus one (4 levels: bit 6 of the capability MSR; 5
/// levels: bit 7).
pub const EPTP_WALK_LENGTH_SHIFT: u32 = 3;
/// EPTP bit 6: enable accessed and dirty flags. Never set (see [`ACCESSED`]).
pub const EPTP_ACCESSED_DIRTY: u64 = 1 << 6;

const _: () = assert!(SOFTWARE_BITS & HARDWARE_BITS == 0);
const _: () = assert!(FROZEN & !SOFTWARE_BITS == 0);
const _: () = assert!(FROZEN & PRESENT_MASK == 0);
const _: () = assert!(MEMORY_TYPE_WB & !MEMORY_TYPE_MASK == 0);

pub struct Ept;

impl Sealed for Ept {}

impl TdpFormat for Ept {
    const NAME: &'static str = "ept";
    const FROZEN: u64 = FROZEN;
    const MAX_LEAF: PageSize = PageSize::Size1G;

    fn is_present(spte: u64) -> bool {
        spte & PRESENT_MASK != 0
    }

    fn is_leaf(spte: u64, level: u8) -> bool {
        level == 1 || spte & LARGE_PAGE != 0
    }

    fn is_writable(spte: u64) -> bool {
        spte & WRITE != 0
    }

    fn table(table: Hpa) -> u64 {
        debug_assert!(table.raw() & !ADDRESS_MASK == 0);
        table.raw() | READ | WRITE | EXECUTE
    }

    fn leaf(frame: Hpa, size: PageSize, writable: bool) -> u64 {
        debug_assert!(frame.is_aligned(size));
        let large = if size == PageSize::Size4K { 0 } else { LARGE_PAGE };
        let write = if writable { WRITE } else { 0 };
        frame.raw() | READ | EXECUTE | write | MEMORY_TYPE_WB | IGNORE_PAT | large
    }

    fn with_writable(spte: u64, writable: bool) -> u64 {
        if writable { spte | WRITE } else { spte & !WRITE }
    }

    /// The EPTP, encoded here only (SDM Vol. 3C §25.6.11): the root table, write-back
    /// paging structures, the walk length of the root's role, A/D flags off (bit 6 clear:
    /// the MMU does not use them), bits 11:7 reserved.
    fn root_pointer(root: Hpa, levels: u8) -> u64 {
        debug_assert!(matches!(levels, 4 | 5) && root.raw() & !ADDRESS_MASK == 0);
        root.raw() | EPTP_MEMORY_TYPE_WB | (u64::from(levels - 1) << EPTP_WALK_LENGTH_SHIFT)
    }
}

impl Ept {
    /// The root table and walk length an EPTP names: the inverse of
    /// [`TdpFormat::root_pointer`].
    pub const fn root_of(eptp: u64) -> (Hpa, u8) {
        (Hpa::new(eptp & ADDRESS_MASK), ((eptp >> EPTP_WALK_LENGTH_SHIFT) & 7) as u8 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eptp_is_write_back_with_the_roles_walk_length_and_no_accessed_dirty() {
        let root = Hpa::new(0x1234_5000);
        assert_eq!(Ept::root_pointer(root, 4), 0x1234_5000 | 6 | (3 << 3));
        assert_eq!(Ept::root_pointer(root, 5), 0x1234_5000 | 6 | (4 << 3));
        assert_eq!(Ept::root_pointer(root, 4) & EPTP_ACCESSED_DIRTY, 0);
        assert_eq!(Ept::root_pointer(root, 4) & 0xF80, 0, "bits 11:7 are reserved");
        assert_eq!(Ept::root_of(Ept::root_pointer(root, 4)), (root, 4));
        assert_eq!(Ept::root_of(Ept::root_pointer(root, 5)), (root, 5));
    }
}
