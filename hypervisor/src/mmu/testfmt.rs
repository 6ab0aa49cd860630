//! A format for host tests and loom that deliberately shares no control bit position with
//! EPT or NPT (its present bit is 11, and its frozen marker has bit 0 set), so code that
//! tests a hardware bit instead of asking the format fails here.

use super::format::{ADDRESS_MASK, Sealed, TdpFormat};
use crate::addr::{Hpa, PageSize};

pub const PRESENT: u64 = 1 << 11;
pub const WRITABLE: u64 = 1 << 9;
pub const LEAF: u64 = 1 << 10;
pub const HARDWARE_BITS: u64 = PRESENT | WRITABLE | LEAF | ADDRESS_MASK;
pub const SOFTWARE_BITS: u64 = (1 << 62) | 1;
pub const FROZEN: u64 = (1 << 62) | 1;

const _: () = assert!(SOFTWARE_BITS & HARDWARE_BITS == 0);
const _: () = assert!(FROZEN & !SOFTWARE_BITS == 0);
const _: () = assert!(FROZEN & PRESENT == 0);

pub struct TestFormat;

impl Sealed for TestFormat {}

impl TdpFormat for TestFormat {
    const NAME: &'static str = "test";
    const FROZEN: u64 = FROZEN;
    const MAX_LEAF: PageSize = PageSize::Size1G;

    fn is_present(spte: u64) -> bool {
        spte & PRESENT != 0
    }

    fn is_leaf(spte: u64, level: u8) -> bool {
        level == 1 || spte & LEAF != 0
    }

    fn is_writable(spte: u64) -> bool {
        spte & WRITABLE != 0
    }

    fn table(table: Hpa) -> u64 {
        table.raw() | PRESENT | WRITABLE
    }

    fn leaf(frame: Hpa, size: PageSize, writable: bool) -> u64 {
        debug_assert!(frame.is_aligned(size));
        let leaf = if size == PageSize::Size4K { 0 } else { LEAF };
        frame.raw() | PRESENT | leaf | if writable { WRITABLE } else { 0 }
    }

    fn with_writable(spte: u64, writable: bool) -> u64 {
        if writable { spte | WRITABLE } else { spte & !WRITABLE }
    }

    fn root_pointer(root: Hpa, _levels: u8) -> u64 {
        root.raw()
    }
}
