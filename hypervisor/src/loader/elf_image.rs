//! ELF images: loadable segments, the PVH entry note and the multiboot1 header.
//!
//! Parsing goes through the `elf` crate (zero-allocation, `no_std`, and every offset and
//! count it reads is bounds-checked into a `ParseError`; `xmas-elf` was the alternative,
//! but it indexes slices in places and so can panic on hostile input). What the crate does
//! not know, the Xen note and the multiboot header, is parsed here with checked
//! arithmetic on slices only.
//!
//! The image is read through an [`ImageSource`], never whole: the file header and the
//! multiboot search area from its first [`source::HEAD_LEN`] bytes, the program header
//! table and each `PT_NOTE` segment on their own (each at most [`TABLE_MAX_LEN`] bytes).
//! Section headers are never read.

use alloc::string::ToString;
use alloc::vec::Vec;

use elf::abi::{EI_NIDENT, EM_386, EM_X86_64, ET_EXEC, PT_LOAD, PT_NOTE};
use elf::endian::LittleEndian;
use elf::file::{Class, FileHeader};
use elf::segment::{ProgramHeader, SegmentTable};
use taproot_guest_abi::boot;

use super::bootinfo;
use super::initrd::{InitrdArea, InitrdFields};
use super::source::{self, ImageSource, TABLE_MAX_LEN};
use super::{
    BOOT_INFO_GPA, BOOT_INFO_MAX_LEN, BootProtocol, Entry, EntryMode, GuestConfig, LoadError, LoadPlan,
    MAX_SEGMENTS, Segment,
};
use crate::addr::Gpa;

/// PVH modules lie below 4 GiB, where the 32-bit entry reaches them.
const PVH_MODULE_LIMIT: u64 = 1 << 32;
/// Bytes of a multiboot1 header that the loader reads: magic, flags, checksum.
const MULTIBOOT_HEADER_LEN: usize = 12;
/// Multiboot 0.6.96 §3.1.2: flag bits 0-15 are requirements. Bit 0 (align modules; we
/// pass none) and bit 1 (memory information) we honour; bit 2 (video mode) and the
/// undefined ones we cannot.
const MULTIBOOT_SUPPORTED_REQUIRED_FLAGS: u32 = 0b11;
const MULTIBOOT_REQUIRED_FLAGS_MASK: u32 = 0xFFFF;
/// Multiboot 0.6.96 §3.1.3: bit 16, the address fields of the header are valid.
const MULTIBOOT_FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// ELF spec (System V gABI, "ELF Header"): the file header after `e_ident`, and one
/// program header, for each class.
const ELF32_EHDR_TAIL_LEN: usize = 52 - EI_NIDENT;
const ELF64_EHDR_TAIL_LEN: usize = 64 - EI_NIDENT;
const ELF32_PHDR_LEN: u16 = 32;
const ELF64_PHDR_LEN: u16 = 56;

/// The boot protocols an ELF can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ElfProtocol {
    Pvh,
    Multiboot1,
}

/// Plans an ELF image. `want` is the protocol the caller insists on; without one, a PVH
/// note wins over a multiboot header.
pub(super) fn plan(
    image: &dyn ImageSource,
    want: Option<ElfProtocol>,
    config: &GuestConfig<'_>,
) -> Result<LoadPlan, LoadError> {
    let head = source::head(image)?;
    let ehdr = parse(&head)?;
    let table = program_headers(image, &ehdr)?;
    let phdrs = SegmentTable::new(LittleEndian, ehdr.class, &table);

    let mut loads: Vec<(usize, ProgramHeader)> = Vec::new();
    let mut pvh_entry = None;
    for (index, phdr) in phdrs.iter().enumerate() {
        match phdr.p_type {
            PT_LOAD if phdr.p_memsz > 0 => {
                if loads.len() == MAX_SEGMENTS {
                    return Err(LoadError::TooManySegments { max: MAX_SEGMENTS });
                }
                loads.push((index, phdr));
            }
            PT_NOTE if pvh_entry.is_none() => pvh_entry = find_pvh_entry(image, index, &phdr)?,
            _ => {}
        }
    }

    let protocol = match want {
        Some(ElfProtocol::Pvh) if pvh_entry.is_none() => return Err(LoadError::NoPvhNote),
        Some(protocol) => protocol,
        None if pvh_entry.is_some() => ElfProtocol::Pvh,
        None => match find_multiboot_header(&head)? {
            Some(_) => ElfProtocol::Multiboot1,
            None => return Err(LoadError::NoBootProtocol),
        },
    };

    let segments = check_segments(image, &loads, config.mem_size)?;
    let (entry_gpa, boot_info, eax, modlist) = match protocol {
        ElfProtocol::Pvh => {
            // `want` is Pvh or None here, and both paths above saw a note.
            let entry = pvh_entry.ok_or(LoadError::NoPvhNote)?;
            let (info, modlist) = bootinfo::pvh_start_info(config.mem_size, config.cmdline, config.rsdp)?;
            (entry, info, 0, Some(modlist))
        }
        ElfProtocol::Multiboot1 => {
            check_multiboot_flags(find_multiboot_header(&head)?.ok_or(LoadError::NoMultibootHeader)?)?;
            let entry = entry_gpa_from_vaddr(ehdr.e_entry, &loads)?;
            let info = bootinfo::multiboot_info(config.mem_size, config.cmdline)?;
            (entry, info, boot::MULTIBOOT1_BOOT_MAGIC, None)
        }
    };
    let eip =
        u32::try_from(entry_gpa.raw()).map_err(|_| LoadError::EntryAbove4GiB { entry: entry_gpa.raw() })?;
    if !segments.iter().any(|s| s.gpa_range().contains(&entry_gpa)) {
        return Err(LoadError::EntryOutsideSegments { entry: entry_gpa.raw() });
    }
    Ok(LoadPlan {
        protocol: match protocol {
            ElfProtocol::Pvh => BootProtocol::Pvh,
            ElfProtocol::Multiboot1 => BootProtocol::Multiboot1,
        },
        // The boot information lies below 1 MiB.
        entry: Entry { mode: EntryMode::Protected32 { eip }, eax, ebx: BOOT_INFO_GPA.raw() as u32, rsi: 0 },
        boot_info: Some(boot_info),
        // PVH modules: above the image, below 4 GiB (a 32-bit entry reaches them).
        initrd_area: modlist.map(|modlist| InitrdArea {
            lowest: segments.last().map_or(Gpa::new(0), |s| s.gpa_range().end),
            limit: Gpa::new(config.mem_size.min(PVH_MODULE_LIMIT)),
            fields: InitrdFields::Pvh { modlist },
        }),
        segments,
    })
}

/// The file header, from the image's first bytes.
fn parse(head: &[u8]) -> Result<FileHeader<LittleEndian>, LoadError> {
    if head.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(LoadError::NotElf);
    }
    let elf_error = |e: elf::ParseError| match e {
        elf::ParseError::UnsupportedElfEndianness(_) => LoadError::NotLittleEndian,
        e => LoadError::Elf(e.to_string()),
    };
    let ident = elf::file::parse_ident::<LittleEndian>(head.get(..EI_NIDENT).ok_or(too_short())?)
        .map_err(elf_error)?;
    let tail_len = match ident.1 {
        Class::ELF32 => ELF32_EHDR_TAIL_LEN,
        Class::ELF64 => ELF64_EHDR_TAIL_LEN,
    };
    let tail = head.get(EI_NIDENT..EI_NIDENT + tail_len).ok_or(too_short())?;
    let ehdr = FileHeader::parse_tail(ident, tail).map_err(elf_error)?;
    let (class_bits, expected) = match ehdr.class {
        Class::ELF32 => (32, EM_386),
        Class::ELF64 => (64, EM_X86_64),
    };
    if ehdr.e_machine != expected {
        return Err(LoadError::WrongMachine { class_bits, machine: ehdr.e_machine });
    }
    if ehdr.e_type != ET_EXEC {
        return Err(LoadError::NotExecutable { e_type: ehdr.e_type });
    }
    Ok(ehdr)
}

fn too_short() -> LoadError {
    LoadError::Elf("the file header lies beyond the end of the file".into())
}

/// The program header table's bytes, read from the image (at most [`TABLE_MAX_LEN`]).
fn program_headers(image: &dyn ImageSource, ehdr: &FileHeader<LittleEndian>) -> Result<Vec<u8>, LoadError> {
    // As the `elf` crate reads it: no table at offset 0.
    if ehdr.e_phnum == 0 || ehdr.e_phoff == 0 {
        return Err(LoadError::NoProgramHeaders);
    }
    let entry_len = match ehdr.class {
        Class::ELF32 => ELF32_PHDR_LEN,
        Class::ELF64 => ELF64_PHDR_LEN,
    };
    if ehdr.e_phentsize != entry_len {
        return Err(LoadError::Elf(alloc::format!(
            "program headers are {} bytes each, not {entry_len}",
            ehdr.e_phentsize
        )));
    }
    let len = usize::from(ehdr.e_phnum) * usize::from(entry_len);
    if len > TABLE_MAX_LEN {
        return Err(LoadError::ElfTableTooLarge {
            what: "program header table",
            len: len as u64,
            max: TABLE_MAX_LEN,
        });
    }
    source::read_range(image, ehdr.e_phoff, len)?
        .ok_or_else(|| LoadError::Elf("the program headers lie beyond the end of the file".into()))
}

/// Checks every loadable segment against the file and guest memory and returns them in
/// gpa order. Segments are placed at their physical address (`p_paddr`), as QEMU's PVH
/// loader and GRUB's multiboot loader do.
fn check_segments(
    image: &dyn ImageSource,
    loads: &[(usize, ProgramHeader)],
    mem_size: u64,
) -> Result<Vec<Segment>, LoadError> {
    if loads.is_empty() {
        return Err(LoadError::NoLoadableSegment);
    }
    let file_len = image.len();
    let info = BOOT_INFO_GPA.raw()..BOOT_INFO_GPA.raw() + BOOT_INFO_MAX_LEN;
    let mut placed: Vec<(usize, Segment)> = Vec::with_capacity(loads.len());
    for &(index, ref phdr) in loads {
        let (gpa, offset, file_size, seg_mem) = (phdr.p_paddr, phdr.p_offset, phdr.p_filesz, phdr.p_memsz);
        if file_size > seg_mem {
            return Err(LoadError::SegmentFileSizeExceedsMemSize { index, file_size, mem_size: seg_mem });
        }
        let file_end = offset.checked_add(file_size).filter(|&end| end <= file_len);
        let Some(file_end) = file_end else {
            return Err(LoadError::SegmentBeyondFile { index, offset, file_size, file_len });
        };
        let end = gpa.checked_add(seg_mem).ok_or(LoadError::SegmentAddressOverflow {
            index,
            gpa,
            mem_size: seg_mem,
        })?;
        if end > mem_size {
            return Err(LoadError::SegmentBeyondMemory { index, end, mem_size });
        }
        if gpa < info.end && info.start < end {
            return Err(LoadError::SegmentOverlapsBootInfo { index, gpa, end });
        }
        // offset <= file_end <= file_len, which is a usize.
        let file_range = offset as usize..file_end as usize;
        placed.push((index, Segment { gpa: Gpa::new(gpa), file_range, mem_size: seg_mem }));
    }
    placed.sort_by_key(|(_, s)| s.gpa);
    for pair in placed.windows(2) {
        let ((first, a), (second, b)) = (&pair[0], &pair[1]);
        if b.gpa < a.gpa_range().end {
            let (first, second) = ((*first).min(*second), (*first).max(*second));
            return Err(LoadError::SegmentsOverlap { first, second });
        }
    }
    Ok(placed.into_iter().map(|(_, s)| s).collect())
}

/// Translates the ELF entry (a virtual address) into a gpa through the segment that
/// contains it, as GRUB does for multiboot ELFs linked at a virtual address other than
/// their load address.
fn entry_gpa_from_vaddr(entry: u64, loads: &[(usize, ProgramHeader)]) -> Result<Gpa, LoadError> {
    loads
        .iter()
        .find_map(|(_, p)| {
            let offset = entry.checked_sub(p.p_vaddr)?;
            (offset < p.p_memsz).then(|| p.p_paddr.checked_add(offset)).flatten()
        })
        .map(Gpa::new)
        .ok_or(LoadError::EntryOutsideSegments { entry })
}

fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let end = offset.checked_add(4)?;
    Some(u32::from_le_bytes(bytes.get(offset..end)?.try_into().ok()?))
}

/// Walks the notes of one `PT_NOTE` segment (ELF spec, "Note Section": namesz, descsz,
/// type, then name and desc, each padded to 4 bytes) and returns the PVH entry if the
/// segment has a `Xen` note of type `XEN_ELFNOTE_PHYS32_ENTRY`.
fn find_pvh_entry(
    image: &dyn ImageSource,
    index: usize,
    phdr: &ProgramHeader,
) -> Result<Option<Gpa>, LoadError> {
    let malformed = LoadError::MalformedNote { segment: index };
    if phdr.p_filesz > TABLE_MAX_LEN as u64 {
        return Err(LoadError::ElfTableTooLarge {
            what: "note segment",
            len: phdr.p_filesz,
            max: TABLE_MAX_LEN,
        });
    }
    let notes = source::read_range(image, phdr.p_offset, phdr.p_filesz as usize)?.ok_or(malformed.clone())?;
    let notes = notes.as_slice();
    let pad4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    let mut at = 0;
    while at < notes.len() {
        let (Some(namesz), Some(descsz), Some(kind)) =
            (read_u32(notes, at), read_u32(notes, at + 4), read_u32(notes, at + 8))
        else {
            return Err(malformed);
        };
        let name_at = at + 12;
        let desc_at = pad4(namesz as usize).and_then(|n| name_at.checked_add(n)).ok_or(malformed.clone())?;
        let next = pad4(descsz as usize).and_then(|d| desc_at.checked_add(d)).ok_or(malformed.clone())?;
        if next > notes.len() {
            return Err(malformed);
        }
        let name = &notes[name_at..name_at + namesz as usize];
        if name == b"Xen\0" && kind == boot::XEN_ELFNOTE_PHYS32_ENTRY {
            let desc = &notes[desc_at..desc_at + descsz as usize];
            // The entry is a 32-bit address; ELF64 kernels (and the `pvh` crate) often
            // store it as a 64-bit value.
            let entry = match *desc {
                [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
                [a, b, c, d, e, f, g, h] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
                _ => return Err(LoadError::BadPvhNoteSize { desc_size: descsz }),
            };
            return Ok(Some(Gpa::new(entry)));
        }
        at = next;
    }
    Ok(None)
}

/// The multiboot1 header's offset and flags, if the first 8 KiB hold one (4-byte aligned
/// magic). A magic with a bad checksum is an error, not "no header": it is almost
/// certainly a damaged image.
fn find_multiboot_header(image: &[u8]) -> Result<Option<(usize, u32)>, LoadError> {
    let search = &image[..image.len().min(boot::MULTIBOOT1_SEARCH_LEN)];
    let mut offset = 0;
    while offset + MULTIBOOT_HEADER_LEN <= search.len() {
        if read_u32(search, offset) == Some(boot::MULTIBOOT1_HEADER_MAGIC) {
            let flags = read_u32(search, offset + 4).unwrap_or(0);
            let checksum = read_u32(search, offset + 8).unwrap_or(0);
            if boot::MULTIBOOT1_HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
                return Err(LoadError::MultibootBadChecksum { offset });
            }
            return Ok(Some((offset, flags)));
        }
        offset += 4;
    }
    Ok(None)
}

fn check_multiboot_flags((_, flags): (usize, u32)) -> Result<(), LoadError> {
    if flags & MULTIBOOT_FLAG_AOUT_KLUDGE != 0 {
        return Err(LoadError::MultibootAoutKludge);
    }
    if flags & MULTIBOOT_REQUIRED_FLAGS_MASK & !MULTIBOOT_SUPPORTED_REQUIRED_FLAGS != 0 {
        return Err(LoadError::MultibootUnsupportedFlags { flags });
    }
    Ok(())
}
