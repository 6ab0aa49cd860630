//! Guest and host addresses and frame numbers as distinct types, so that a guest-physical
//! address can never be handed where a host-physical one is expected (or the reverse) by
//! accident, plus the three page sizes a TDP leaf can map.

use core::fmt;

/// Bytes in the smallest page.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// The widest physical address x86-64 architecturally allows (MAXPHYADDR <= 52).
pub const MAX_PHYS_BITS: u8 = 52;

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            pub const fn raw(self) -> u64 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }
    };
}

address_type!(
    /// A guest-physical address.
    Gpa
);
address_type!(
    /// A guest frame number: a guest-physical address divided by 4 KiB.
    Gfn
);
address_type!(
    /// A host-physical address (what the EPT/NPT entries hold).
    Hpa
);

impl Gpa {
    pub const fn gfn(self) -> Gfn {
        Gfn(self.0 >> PAGE_SHIFT)
    }

    pub const fn page_offset(self) -> u64 {
        self.0 & (PAGE_SIZE - 1)
    }

    pub const fn is_aligned(self, size: PageSize) -> bool {
        self.0 & (size.bytes() - 1) == 0
    }
}

impl Gfn {
    pub const fn gpa(self) -> Gpa {
        Gpa(self.0 << PAGE_SHIFT)
    }

    /// The frame `pages` 4 KiB pages further on.
    pub const fn add(self, pages: u64) -> Gfn {
        Gfn(self.0 + pages)
    }

    pub const fn is_aligned(self, size: PageSize) -> bool {
        self.0 & (size.pages() - 1) == 0
    }

    pub const fn align_down(self, size: PageSize) -> Gfn {
        Gfn(self.0 & !(size.pages() - 1))
    }
}

impl Hpa {
    pub const fn add(self, bytes: u64) -> Hpa {
        Hpa(self.0 + bytes)
    }

    pub const fn is_aligned(self, size: PageSize) -> bool {
        self.0 & (size.bytes() - 1) == 0
    }
}

/// A half-open range of guest frames, `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GfnRange {
    pub start: Gfn,
    pub end: Gfn,
}

impl GfnRange {
    pub const fn new(start: Gfn, end: Gfn) -> Self {
        Self { start, end }
    }

    /// Every frame a 4-level or 5-level table can map.
    pub const ALL: GfnRange = GfnRange { start: Gfn(0), end: Gfn(1 << 40) };

    pub const fn contains(&self, gfn: Gfn) -> bool {
        self.start.0 <= gfn.0 && gfn.0 < self.end.0
    }

    pub const fn is_empty(&self) -> bool {
        self.start.0 >= self.end.0
    }

    pub const fn pages(&self) -> u64 {
        self.end.0.saturating_sub(self.start.0)
    }
}

/// The sizes a TDP leaf can map. Level numbers follow the manuals: level 1 is a page
/// table entry (4 KiB), level 2 a page-directory entry (2 MiB), level 3 a
/// page-directory-pointer entry (1 GiB).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum PageSize {
    Size4K,
    Size2M,
    Size1G,
}

impl PageSize {
    pub const ALL: [PageSize; 3] = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G];

    pub const fn bytes(self) -> u64 {
        self.pages() << PAGE_SHIFT
    }

    /// How many 4 KiB pages it spans.
    pub const fn pages(self) -> u64 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 512,
            PageSize::Size1G => 512 * 512,
        }
    }

    /// The table level whose entry maps a page of this size.
    pub const fn level(self) -> u8 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }

    pub const fn from_level(level: u8) -> Option<PageSize> {
        match level {
            1 => Some(PageSize::Size4K),
            2 => Some(PageSize::Size2M),
            3 => Some(PageSize::Size1G),
            _ => None,
        }
    }

    /// The next smaller size, if any.
    pub const fn smaller(self) -> Option<PageSize> {
        match self {
            PageSize::Size4K => None,
            PageSize::Size2M => Some(PageSize::Size4K),
            PageSize::Size1G => Some(PageSize::Size2M),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpa_and_gfn_round_trip() {
        let gpa = Gpa::new(0x1234_5678);
        assert_eq!(gpa.gfn(), Gfn::new(0x12345));
        assert_eq!(gpa.page_offset(), 0x678);
        assert_eq!(Gfn::new(0x12345).gpa(), Gpa::new(0x1234_5000));
    }

    #[test]
    fn page_sizes_match_levels() {
        for size in PageSize::ALL {
            assert_eq!(PageSize::from_level(size.level()), Some(size));
        }
        assert_eq!(PageSize::Size2M.bytes(), 2 << 20);
        assert_eq!(PageSize::Size1G.bytes(), 1 << 30);
        assert!(Gfn::new(512).is_aligned(PageSize::Size2M));
        assert!(!Gfn::new(513).is_aligned(PageSize::Size2M));
        assert_eq!(Gfn::new(513).align_down(PageSize::Size2M), Gfn::new(512));
    }
}
