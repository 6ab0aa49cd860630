//! What the loader told us, copied out of its structures before any memory is reused:
//! usable RAM, the command line and where the ACPI RSDP is. Fixed-size storage, because
//! it is filled before the heap exists.

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

impl PhysRange {
    pub const fn new(start: u64, end: u64) -> Self {
        Self { start, end }
    }

    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Which loader entered the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Pvh,
    Multiboot2,
}

impl Protocol {
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Pvh => "pvh",
            Protocol::Multiboot2 => "multiboot2",
        }
    }
}

/// Enough for any firmware map seen in practice (QEMU gives ~5, OVMF ~100 before merging).
pub const MAX_RAM_RANGES: usize = 128;
pub const MAX_CMDLINE: usize = 1024;

/// The loader's facts, in our own types.
pub struct BootInfo {
    pub protocol: Protocol,
    ram: [PhysRange; MAX_RAM_RANGES],
    ram_count: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// Physical address of the ACPI RSDP, if the loader gave one.
    pub rsdp: Option<u64>,
}

impl BootInfo {
    pub const fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            ram: [PhysRange::new(0, 0); MAX_RAM_RANGES],
            ram_count: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            rsdp: None,
        }
    }

    /// Records a usable RAM range, merging it with an adjacent or overlapping one. Ranges
    /// past the table's capacity are dropped (and reported by the caller's log).
    pub fn add_ram(&mut self, range: PhysRange) -> bool {
        if range.is_empty() {
            return true;
        }
        if self.ram_count == MAX_RAM_RANGES {
            return false;
        }
        self.ram[self.ram_count] = range;
        self.ram_count += 1;
        self.ram[..self.ram_count].sort_unstable_by_key(|r| r.start);
        // Merge in place.
        let mut out = 0;
        for i in 1..self.ram_count {
            let next = self.ram[i];
            if next.start <= self.ram[out].end {
                self.ram[out].end = self.ram[out].end.max(next.end);
            } else {
                out += 1;
                self.ram[out] = next;
            }
        }
        self.ram_count = out + 1;
        true
    }

    pub fn ram(&self) -> &[PhysRange] {
        &self.ram[..self.ram_count]
    }

    /// Total usable RAM in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.ram().iter().map(PhysRange::len).sum()
    }

    /// Stores the command line, cut at the first NUL and at [`MAX_CMDLINE`] bytes.
    pub fn set_cmdline(&mut self, bytes: &[u8]) {
        let bytes = bytes.split(|b| *b == 0).next().unwrap_or(&[]);
        let len = bytes.len().min(MAX_CMDLINE);
        self.cmdline[..len].copy_from_slice(&bytes[..len]);
        self.cmdline_len = len;
    }

    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// Usable RAM with `holes` (the image, low memory, the heap) cut out, each piece
    /// shrunk to whole `align`-sized pages. Calls `f` for every piece left.
    pub fn ram_without(&self, holes: &[PhysRange], align: u64, mut f: impl FnMut(PhysRange)) {
        for &range in self.ram() {
            subtract(range, holes, &mut |piece| {
                let start = piece.start.next_multiple_of(align);
                let end = piece.end / align * align;
                if start < end {
                    f(PhysRange::new(start, end));
                }
            });
        }
    }
}

/// Emits the parts of `range` not covered by any of `holes`.
fn subtract(range: PhysRange, holes: &[PhysRange], f: &mut dyn FnMut(PhysRange)) {
    match holes.split_first() {
        None => {
            if !range.is_empty() {
                f(range)
            }
        }
        Some((hole, rest)) => {
            if hole.end <= range.start || hole.start >= range.end {
                subtract(range, rest, f);
            } else {
                subtract(PhysRange::new(range.start, hole.start.max(range.start)), rest, f);
                subtract(PhysRange::new(hole.end.min(range.end), range.end), rest, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn ram_ranges_merge_when_adjacent_or_overlapping() {
        let mut info = BootInfo::new(Protocol::Pvh);
        info.add_ram(PhysRange::new(0x10_0000, 0x20_0000));
        info.add_ram(PhysRange::new(0, 0x9_f000));
        info.add_ram(PhysRange::new(0x20_0000, 0x40_0000));
        info.add_ram(PhysRange::new(0x30_0000, 0x50_0000));
        assert_eq!(info.ram(), &[PhysRange::new(0, 0x9_f000), PhysRange::new(0x10_0000, 0x50_0000)]);
        assert_eq!(info.ram_bytes(), 0x9_f000 + 0x40_0000);
    }

    #[test]
    fn holes_are_cut_out_and_pieces_page_aligned() {
        let mut info = BootInfo::new(Protocol::Multiboot2);
        info.add_ram(PhysRange::new(0, 0x9_fc00));
        info.add_ram(PhysRange::new(0x10_0000, 0x800_0000));
        let holes = [
            PhysRange::new(0, 0x10_0000),
            PhysRange::new(0x10_0000, 0x18_0800),
            PhysRange::new(0x400_0000, 0x500_0000),
        ];
        let mut pieces = Vec::new();
        info.ram_without(&holes, 4096, |r| pieces.push(r));
        assert_eq!(pieces, [PhysRange::new(0x18_1000, 0x400_0000), PhysRange::new(0x500_0000, 0x800_0000)]);
    }

    #[test]
    fn cmdline_stops_at_nul_and_capacity() {
        let mut info = BootInfo::new(Protocol::Pvh);
        info.set_cmdline(b"exit=1 fault=pagefault\0garbage");
        assert_eq!(info.cmdline(), "exit=1 fault=pagefault");
        let long = [b'a'; MAX_CMDLINE + 10];
        info.set_cmdline(&long);
        assert_eq!(info.cmdline().len(), MAX_CMDLINE);
        info.set_cmdline(&[0xff, 0xfe]);
        assert_eq!(info.cmdline(), "");
    }

    #[test]
    fn table_overflow_is_reported() {
        let mut info = BootInfo::new(Protocol::Pvh);
        for i in 0..MAX_RAM_RANGES as u64 {
            assert!(info.add_ram(PhysRange::new(i * 0x2000, i * 0x2000 + 0x1000)));
        }
        assert!(!info.add_ram(PhysRange::new(u64::MAX - 0x1000, u64::MAX)));
        assert_eq!(info.ram().len(), MAX_RAM_RANGES);
    }
}
