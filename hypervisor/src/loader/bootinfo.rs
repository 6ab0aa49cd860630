//! The boot information a guest receives: the guest memory map, and its encodings as the
//! PVH `hvm_start_info` and the multiboot1 information structure.

use alloc::vec::Vec;
use taproot_guest_abi::boot::{self, hvm_start_info as si, multiboot_info as mb};

use crate::addr::Gpa;

use super::{BOOT_INFO_GPA, BOOT_INFO_MAX_LEN, BootInfoPlan, LoadError};

/// What a range of guest-physical addresses is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    Ram,
    Reserved,
}

impl MemoryKind {
    /// The ACPI address range type, which every memory map uses (PVH, multiboot, e820).
    pub(super) const fn acpi_type(self) -> u32 {
        match self {
            Self::Ram => boot::MEMORY_TYPE_RAM,
            Self::Reserved => boot::MEMORY_TYPE_RESERVED,
        }
    }
}

/// A range of guest-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRange {
    pub base: Gpa,
    pub len: u64,
    pub kind: MemoryKind,
}

/// Start of the legacy VGA/ROM hole, reported reserved as on a PC.
const LEGACY_HOLE_START: u64 = 0xA_0000;
/// End of the legacy hole: 1 MiB.
const LEGACY_HOLE_END: u64 = 0x10_0000;

/// The memory map every guest gets for `mem_size` bytes of memory: RAM below 640 KiB, the
/// legacy hole reserved (it holds the VM's ACPI tables at 0xE0000, see `vm::platform`),
/// RAM from 1 MiB to the end. Ranges beyond `mem_size` are left out.
#[must_use]
pub fn guest_memory_map(mem_size: u64) -> Vec<MemoryRange> {
    let mut map = Vec::with_capacity(3);
    let mut push = |base: u64, end: u64, kind| {
        let end = end.min(mem_size);
        if end > base {
            map.push(MemoryRange { base: Gpa::new(base), len: end - base, kind });
        }
    };
    push(0, LEGACY_HOLE_START, MemoryKind::Ram);
    push(LEGACY_HOLE_START, LEGACY_HOLE_END, MemoryKind::Reserved);
    push(LEGACY_HOLE_END, u64::MAX, MemoryKind::Ram);
    map
}

/// `map` with `range` reported reserved: the RAM ranges it overlaps are split around it.
/// `range` must lie in RAM (the loader reserves its own tables there).
#[must_use]
pub fn reserve(map: Vec<MemoryRange>, range: core::ops::Range<u64>) -> Vec<MemoryRange> {
    let mut out = Vec::with_capacity(map.len() + 2);
    for r in map {
        let (start, end) = (r.base.raw(), r.base.raw() + r.len);
        if r.kind != MemoryKind::Ram || range.end <= start || end <= range.start {
            out.push(r);
            continue;
        }
        let mut push = |base: u64, end: u64, kind| {
            if end > base {
                out.push(MemoryRange { base: Gpa::new(base), len: end - base, kind });
            }
        };
        push(start, range.start.max(start), MemoryKind::Ram);
        push(range.start.max(start), range.end.min(end), MemoryKind::Reserved);
        push(range.end.min(end), end, MemoryKind::Ram);
    }
    out
}

/// A little-endian byte buffer whose offsets are relative to [`BOOT_INFO_GPA`].
struct InfoWriter {
    bytes: Vec<u8>,
}

impl InfoWriter {
    fn with_zeroes(len: usize) -> Self {
        Self { bytes: alloc::vec![0; len] }
    }

    fn put_u32(&mut self, offset: usize, value: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn put_u64(&mut self, offset: usize, value: u64) {
        self.bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }

    /// Appends `data`, aligned to `align`, and returns its gpa.
    fn append(&mut self, align: usize, data: &[u8]) -> Gpa {
        while !self.bytes.len().is_multiple_of(align) {
            self.bytes.push(0);
        }
        let gpa = Gpa::new(BOOT_INFO_GPA.raw() + self.bytes.len() as u64);
        self.bytes.extend_from_slice(data);
        gpa
    }

    /// Appends a NUL-terminated string and returns its gpa.
    fn append_cstr(&mut self, s: &str) -> Gpa {
        let gpa = self.append(1, s.as_bytes());
        self.bytes.push(0);
        gpa
    }

    fn finish(self, mem_size: u64) -> Result<BootInfoPlan, LoadError> {
        let len = self.bytes.len() as u64;
        if len > BOOT_INFO_MAX_LEN {
            return Err(LoadError::BootInfoTooLarge { len, max: BOOT_INFO_MAX_LEN });
        }
        let needed = BOOT_INFO_GPA.raw() + BOOT_INFO_MAX_LEN;
        if needed > mem_size {
            return Err(LoadError::MemoryTooSmallForBootInfo { mem_size, needed });
        }
        Ok(BootInfoPlan { gpa: BOOT_INFO_GPA, bytes: self.bytes })
    }
}

/// The PVH start info at [`BOOT_INFO_GPA`], followed by its memory map, command line and
/// one module entry (zeroed, `nr_modules` 0: an initrd fills it in, see `initrd`), whose
/// gpa is returned with it; `rsdp_paddr` is `rsdp` (0: none).
pub fn pvh_start_info(
    mem_size: u64,
    cmdline: &str,
    rsdp: Option<Gpa>,
) -> Result<(BootInfoPlan, Gpa), LoadError> {
    let mut w = InfoWriter::with_zeroes(si::SIZE);
    w.put_u32(si::MAGIC, boot::HVM_START_MAGIC);
    w.put_u32(si::VERSION, 1);
    w.put_u64(si::RSDP_PADDR, rsdp.map_or(0, Gpa::raw));
    let map = guest_memory_map(mem_size);
    let mut table = Vec::with_capacity(map.len() * si::MEMMAP_ENTRY_SIZE);
    for range in &map {
        table.extend_from_slice(&range.base.raw().to_le_bytes());
        table.extend_from_slice(&range.len.to_le_bytes());
        table.extend_from_slice(&range.kind.acpi_type().to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes());
    }
    let memmap_gpa = w.append(8, &table);
    let cmdline_gpa = w.append_cstr(cmdline);
    let modlist_gpa = w.append(8, &[0; si::MODLIST_ENTRY_SIZE]);
    w.put_u64(si::MEMMAP_PADDR, memmap_gpa.raw());
    w.put_u32(si::MEMMAP_ENTRIES, map.len() as u32);
    w.put_u64(si::CMDLINE_PADDR, cmdline_gpa.raw());
    Ok((w.finish(mem_size)?, modlist_gpa))
}

/// The multiboot1 information at [`BOOT_INFO_GPA`], followed by its memory map, command
/// line and boot loader name.
pub fn multiboot_info(mem_size: u64, cmdline: &str) -> Result<BootInfoPlan, LoadError> {
    let mut w = InfoWriter::with_zeroes(mb::SIZE);
    // mem_lower: KiB of RAM from 0 (at most 640); mem_upper: KiB of RAM from 1 MiB up to
    // the first hole, which for us is the end of memory.
    let mem_lower = mem_size.min(LEGACY_HOLE_START) / 1024;
    let mem_upper = (mem_size.saturating_sub(LEGACY_HOLE_END) / 1024).min(u64::from(u32::MAX));
    let map = guest_memory_map(mem_size);
    let mut table = Vec::new();
    for range in &map {
        table.extend_from_slice(&mb::MMAP_ENTRY_SIZE_FIELD.to_le_bytes());
        table.extend_from_slice(&range.base.raw().to_le_bytes());
        table.extend_from_slice(&range.len.to_le_bytes());
        table.extend_from_slice(&range.kind.acpi_type().to_le_bytes());
    }
    let mmap_gpa = w.append(8, &table);
    let cmdline_gpa = w.append_cstr(cmdline);
    let name_gpa = w.append_cstr("taproot");
    w.put_u32(mb::FLAGS, mb::FLAG_MEM | mb::FLAG_CMDLINE | mb::FLAG_MMAP | mb::FLAG_BOOT_LOADER_NAME);
    w.put_u32(mb::MEM_LOWER, mem_lower as u32);
    w.put_u32(mb::MEM_UPPER, mem_upper as u32);
    // Every gpa here is below BOOT_INFO_GPA + BOOT_INFO_MAX_LEN, far below 4 GiB.
    w.put_u32(mb::CMDLINE, cmdline_gpa.raw() as u32);
    w.put_u32(mb::MMAP_LENGTH, table.len() as u32);
    w.put_u32(mb::MMAP_ADDR, mmap_gpa.raw() as u32);
    w.put_u32(mb::BOOT_LOADER_NAME, name_gpa.raw() as u32);
    w.finish(mem_size)
}
