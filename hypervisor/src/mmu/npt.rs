//! AMD nested page table entries. AMD APM Vol. 2 §15.25 "Nested Paging": nested tables use
//! the long-mode page-table format of §5.3.3 "4-Kbyte Page Translation" through §5.4
//! "Page-Translation-Table Entry Fields", and every nested access is a user access, so U/S
//! must be set at every level (§15.25.5). nCR3 holds the top table's address (§15.25.4).

use super::format::{ADDRESS_MASK, Sealed, TdpFormat};
use crate::addr::{Hpa, PageSize};

/// Bit 0: present.
pub const PRESENT: u64 = 1 << 0;
/// Bit 1: read/write.
pub const WRITABLE: u64 = 1 << 1;
/// Bit 2: user/supervisor; must be 1 in nested tables.
pub const USER: u64 = 1 << 2;
/// Bits 3, 4: page-level write-through and cache disable (0, 0 = write-back).
pub const PWT: u64 = 1 << 3;
pub const PCD: u64 = 1 << 4;
/// Bit 5: accessed. Set up front so the walker need not write it.
pub const ACCESSED: u64 = 1 << 5;
/// Bit 6 of a leaf: dirty.
pub const DIRTY: u64 = 1 << 6;
/// Bit 7 of a PDPE/PDE: page size (1 GiB / 2 MiB leaf); PAT in a 4 KiB PTE.
pub const PAGE_SIZE: u64 = 1 << 7;
/// Bit 8: global (ignored in nested tables).
pub const GLOBAL: u64 = 1 << 8;
/// Bits 59..=62: protection key, bit 63: no-execute.
pub const PROTECTION_KEY: u64 = 0xf << 59;
pub const NO_EXECUTE: u64 = 1 << 63;
pub const HARDWARE_BITS: u64 = PRESENT
    | WRITABLE
    | USER
    | PWT
    | PCD
    | ACCESSED
    | DIRTY
    | PAGE_SIZE
    | GLOBAL
    | ADDRESS_MASK
    | PROTECTION_KEY
    | NO_EXECUTE;
/// Bits 9..=11 and 52..=58: available to software.
pub const SOFTWARE_BITS: u64 = (0x7 << 9) | (0x7f << 52);
pub const FROZEN: u64 = 1 << 52;
pub const PRESENT_MASK: u64 = PRESENT;

const _: () = assert!(SOFTWARE_BITS & HARDWARE_BITS == 0);
const _: () = assert!(FROZEN & !SOFTWARE_BITS == 0);
const _: () = assert!(FROZEN & PRESENT_MASK == 0);

pub struct Npt;

impl Sealed for Npt {}

impl TdpFormat for Npt {
    const NAME: &'static str = "npt";
    const FROZEN: u64 = FROZEN;
    const MAX_LEAF: PageSize = PageSize::Size1G;

    fn is_present(spte: u64) -> bool {
        spte & PRESENT_MASK != 0
    }

    fn is_leaf(spte: u64, level: u8) -> bool {
        level == 1 || spte & PAGE_SIZE != 0
    }

    fn is_writable(spte: u64) -> bool {
        spte & WRITABLE != 0
    }

    fn table(table: Hpa) -> u64 {
        debug_assert!(table.raw() & !ADDRESS_MASK == 0);
        table.raw() | PRESENT | WRITABLE | USER | ACCESSED
    }

    fn leaf(frame: Hpa, size: PageSize, writable: bool) -> u64 {
        debug_assert!(frame.is_aligned(size));
        let large = if size == PageSize::Size4K { 0 } else { PAGE_SIZE };
        let write = if writable { WRITABLE | DIRTY } else { 0 };
        frame.raw() | PRESENT | USER | ACCESSED | write | large
    }

    fn with_writable(spte: u64, writable: bool) -> u64 {
        if writable { spte | WRITABLE | DIRTY } else { spte & !WRITABLE }
    }

    fn root_pointer(root: Hpa, _levels: u8) -> u64 {
        root.raw()
    }
}
