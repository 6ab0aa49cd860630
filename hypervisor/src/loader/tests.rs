//! Host tests of the loader: hand-built ELFs, every truncation, random mutations, and the
//! real guest images when they have been built.

use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use super::*;

const MIB: u64 = 1024 * 1024;
const MEM_64M: u64 = 64 * MIB;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

pub(super) fn config(mem_size: u64) -> GuestConfig<'static> {
    GuestConfig { mem_size, cmdline: "mib=16 hello", rsdp: None }
}

/// One program header and the bytes it covers.
#[derive(Clone)]
struct Seg {
    p_type: u32,
    paddr: u64,
    vaddr: u64,
    data: Vec<u8>,
    memsz: u64,
}

impl Seg {
    fn load(paddr: u64, data: Vec<u8>, memsz: u64) -> Self {
        Self { p_type: PT_LOAD, paddr, vaddr: paddr, data, memsz }
    }

    fn note(data: Vec<u8>) -> Self {
        let memsz = data.len() as u64;
        Self { p_type: PT_NOTE, paddr: 0, vaddr: 0, data, memsz }
    }
}

/// A tiny ELF writer: header, program headers, then each segment's bytes (4-aligned).
#[derive(Clone)]
pub(super) struct ElfBuilder {
    is_64: bool,
    machine: u16,
    e_type: u16,
    entry: u64,
    segs: Vec<Seg>,
}

impl ElfBuilder {
    fn new(is_64: bool) -> Self {
        Self {
            is_64,
            machine: if is_64 { EM_X86_64 } else { EM_386 },
            e_type: ET_EXEC,
            entry: 0x10_0000,
            segs: Vec::new(),
        }
    }

    fn seg(mut self, seg: Seg) -> Self {
        self.segs.push(seg);
        self
    }

    pub(super) fn build(&self) -> Vec<u8> {
        let (ehsize, phentsize) = if self.is_64 { (64usize, 56usize) } else { (52, 32) };
        let mut offsets = Vec::new();
        let mut at = ehsize + phentsize * self.segs.len();
        for seg in &self.segs {
            at = at.next_multiple_of(4);
            offsets.push(at);
            at += seg.data.len();
        }
        let mut out = Vec::new();
        out.extend_from_slice(b"\x7fELF");
        out.push(if self.is_64 { 2 } else { 1 }); // EI_CLASS
        out.push(1); // EI_DATA: little-endian
        out.push(1); // EI_VERSION
        out.resize(16, 0);
        let word = |out: &mut Vec<u8>, v: u64, is_64: bool| {
            if is_64 {
                out.extend_from_slice(&v.to_le_bytes());
            } else {
                out.extend_from_slice(&(v as u32).to_le_bytes());
            }
        };
        out.extend_from_slice(&self.e_type.to_le_bytes());
        out.extend_from_slice(&self.machine.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes()); // e_version
        word(&mut out, self.entry, self.is_64);
        word(&mut out, ehsize as u64, self.is_64); // e_phoff
        word(&mut out, 0, self.is_64); // e_shoff
        out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        out.extend_from_slice(&(ehsize as u16).to_le_bytes());
        out.extend_from_slice(&(phentsize as u16).to_le_bytes());
        out.extend_from_slice(&(self.segs.len() as u16).to_le_bytes());
        out.extend_from_slice(&(if self.is_64 { 64u16 } else { 40 }).to_le_bytes()); // e_shentsize
        out.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
        out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
        assert_eq!(out.len(), ehsize);
        for (seg, &offset) in self.segs.iter().zip(&offsets) {
            let flags = 7u32;
            out.extend_from_slice(&seg.p_type.to_le_bytes());
            if self.is_64 {
                out.extend_from_slice(&flags.to_le_bytes());
            }
            word(&mut out, offset as u64, self.is_64);
            word(&mut out, seg.vaddr, self.is_64);
            word(&mut out, seg.paddr, self.is_64);
            word(&mut out, seg.data.len() as u64, self.is_64);
            word(&mut out, seg.memsz, self.is_64);
            if !self.is_64 {
                out.extend_from_slice(&flags.to_le_bytes());
            }
            word(&mut out, 4, self.is_64); // p_align
        }
        for (seg, &offset) in self.segs.iter().zip(&offsets) {
            out.resize(offset, 0);
            out.extend_from_slice(&seg.data);
        }
        out
    }
}

fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(name);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(desc);
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

fn pvh_note(entry: &[u8]) -> Vec<u8> {
    note(b"Xen\0", 18, entry)
}

fn multiboot_header(flags: u32) -> Vec<u8> {
    let magic = 0x1BAD_B002u32;
    let mut out = Vec::new();
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&magic.wrapping_add(flags).wrapping_neg().to_le_bytes());
    out
}

/// An ELF64 PVH kernel at 1 MiB: code + data, a .bss, and a 64-bit note (as the `pvh`
/// crate writes it) with an unrelated note before it.
pub(super) fn pvh64() -> ElfBuilder {
    let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5, 6, 7, 8]);
    notes.extend(pvh_note(&0x10_0010u64.to_le_bytes()));
    ElfBuilder::new(true)
        .seg(Seg::load(0x10_0000, vec![0x90; 0x300], 0x300))
        .seg(Seg::note(notes))
        .seg(Seg::load(0x10_1000, vec![0xAA; 0x80], 0x2000))
}

/// An ELF32 multiboot kernel linked at virtual 0xC010_0000, loaded at 1 MiB.
pub(super) fn multiboot32() -> ElfBuilder {
    let mut text = multiboot_header(0b11);
    text.resize(0x200, 0xF4);
    let mut b = ElfBuilder::new(false).seg(Seg {
        p_type: PT_LOAD,
        paddr: 0x10_0000,
        vaddr: 0xC010_0000,
        data: text,
        memsz: 0x1000,
    });
    b.entry = 0xC010_0020;
    b
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

fn cstr_at(info: &BootInfoPlan, gpa: u64) -> &str {
    let start = (gpa - info.gpa.raw()) as usize;
    let len = info.bytes[start..].iter().position(|&b| b == 0).expect("NUL-terminated");
    core::str::from_utf8(&info.bytes[start..start + len]).unwrap()
}

/// What every accepted plan must satisfy, whatever the input was.
fn assert_plan_is_sound(image: &[u8], plan: &LoadPlan, mem_size: u64) {
    let mut previous_end = 0;
    for seg in &plan.segments {
        assert!(seg.file_range.start <= seg.file_range.end && seg.file_range.end <= image.len());
        assert!(seg.file_range.len() as u64 <= seg.mem_size);
        let range = seg.gpa_range();
        let (start, end) = (range.start.raw(), range.end.raw());
        assert!(end <= mem_size && start >= previous_end, "{plan:?}");
        previous_end = end;
        if let Some(info) = &plan.boot_info {
            assert!(end <= info.gpa.raw() || start >= info.gpa.raw() + BOOT_INFO_MAX_LEN);
        }
    }
    let entry = plan.entry.mode.entry_gpa();
    assert!(plan.segments.iter().any(|s| s.gpa_range().contains(&entry)));
    if let Some(info) = &plan.boot_info {
        assert!(info.bytes.len() as u64 <= BOOT_INFO_MAX_LEN);
        assert!(info.gpa.raw() + BOOT_INFO_MAX_LEN <= mem_size);
    }
}

#[test]
fn pvh_elf64_plans_segments_entry_and_start_info() {
    let image = pvh64().build();
    let plan = plan(&image, ImageFormat::Elf, &config(MEM_64M)).unwrap();
    assert_plan_is_sound(&image, &plan, MEM_64M);
    assert_eq!(plan.protocol, BootProtocol::Pvh);
    assert_eq!(
        plan.entry,
        Entry { mode: EntryMode::Protected32 { eip: 0x10_0010 }, eax: 0, ebx: 0x1000, rsi: 0 }
    );
    assert_eq!(plan.segments.len(), 2);
    assert_eq!(plan.segments[0].gpa, Gpa::new(0x10_0000));
    assert!(plan.segments[0].file_bytes(&image).iter().all(|&b| b == 0x90));
    assert_eq!(
        (plan.segments[1].gpa, plan.segments[1].mem_size, plan.segments[1].zero_fill_len()),
        (Gpa::new(0x10_1000), 0x2000, 0x2000 - 0x80)
    );

    let info = plan.boot_info.as_ref().unwrap();
    assert_eq!(info.gpa, BOOT_INFO_GPA);
    let b = &info.bytes;
    assert_eq!(u32_at(b, 0), 0x336E_C578);
    assert_eq!(u32_at(b, 4), 1);
    let (memmap, entries) = (u64_at(b, 40), u32_at(b, 48));
    assert_eq!(entries, 3);
    let table = (memmap - info.gpa.raw()) as usize;
    let entry = |i: usize| {
        let at = table + i * 24;
        (u64_at(b, at), u64_at(b, at + 8), u32_at(b, at + 16))
    };
    assert_eq!(entry(0), (0, 0xA_0000, 1));
    assert_eq!(entry(1), (0xA_0000, 0x6_0000, 2));
    assert_eq!(entry(2), (MIB, MEM_64M - MIB, 1));
    assert_eq!(cstr_at(info, u64_at(b, 24)), "mib=16 hello");
    assert_eq!(u64_at(b, 32), 0, "no RSDP given: rsdp_paddr 0");
}

#[test]
fn pvh_start_info_carries_the_rsdp() {
    let cfg = GuestConfig { rsdp: Some(Gpa::new(0xE_0000)), ..config(MEM_64M) };
    let image = pvh64().build();
    let plan = plan(&image, ImageFormat::Elf, &cfg).unwrap();
    assert_eq!(u64_at(&plan.boot_info.unwrap().bytes, 32), 0xE_0000);
}

#[test]
fn pvh_elf32_with_a_4_byte_note_is_accepted() {
    let image = ElfBuilder::new(false)
        .seg(Seg::note(pvh_note(&0x20_0000u32.to_le_bytes())))
        .seg(Seg::load(0x20_0000, vec![1; 16], 16))
        .build();
    let plan = plan(&image, ImageFormat::Pvh, &config(4 * MIB)).unwrap();
    assert_eq!(plan.entry.mode, EntryMode::Protected32 { eip: 0x20_0000 });
}

#[test]
fn multiboot_elf32_gets_magic_memory_sizes_and_mmap() {
    let image = multiboot32().build();
    let plan = plan(&image, ImageFormat::Elf, &config(MEM_64M)).unwrap();
    assert_plan_is_sound(&image, &plan, MEM_64M);
    assert_eq!(plan.protocol, BootProtocol::Multiboot1);
    // The entry is a virtual address, translated through its segment.
    assert_eq!(
        plan.entry,
        Entry { mode: EntryMode::Protected32 { eip: 0x10_0020 }, eax: 0x2BAD_B002, ebx: 0x1000, rsi: 0 }
    );
    let info = plan.boot_info.as_ref().unwrap();
    let b = &info.bytes;
    assert_eq!(u32_at(b, 0), 1 | 4 | 0x40 | 0x200);
    assert_eq!(u32_at(b, 4), 640);
    assert_eq!(u32_at(b, 8), ((MEM_64M - MIB) / 1024) as u32);
    assert_eq!(cstr_at(info, u64::from(u32_at(b, 16))), "mib=16 hello");
    assert_eq!(cstr_at(info, u64::from(u32_at(b, 64))), "taproot");
    let (len, addr) = (u32_at(b, 44) as usize, u64::from(u32_at(b, 48)));
    assert_eq!(len, 3 * 24);
    let at = (addr - info.gpa.raw()) as usize;
    // Each entry: size (20, not counting itself), base, length, type.
    assert_eq!(
        (u32_at(b, at), u64_at(b, at + 4), u64_at(b, at + 12), u32_at(b, at + 20)),
        (20, 0, 0xA_0000, 1)
    );
    let last = at + 48;
    assert_eq!((u64_at(b, last + 4), u64_at(b, last + 12), u32_at(b, last + 20)), (MIB, MEM_64M - MIB, 1));
}

#[test]
fn pvh_note_wins_over_a_multiboot_header_unless_multiboot_is_asked_for() {
    let mut b = pvh64();
    b.segs[0].data[..12].copy_from_slice(&multiboot_header(0));
    let image = b.build();
    assert_eq!(plan(&image, ImageFormat::Elf, &config(MEM_64M)).unwrap().protocol, BootProtocol::Pvh);
    let mb = plan(&image, ImageFormat::Multiboot1, &config(MEM_64M)).unwrap();
    assert_eq!((mb.protocol, mb.entry.eax), (BootProtocol::Multiboot1, 0x2BAD_B002));
}

#[test]
fn flat_binary_enters_real_mode_at_cs_ip() {
    let image = [0xEBu8, 0xFE];
    let boot_sector = ImageFormat::Flat { load_gpa: Gpa::new(0x7C00), entry_gpa: None };
    let plan = plan(&image, boot_sector, &config(MIB)).unwrap();
    assert_eq!(plan.entry.mode, EntryMode::RealMode16 { cs: 0, ip: 0x7C00 });
    assert_eq!(plan.segments, vec![Segment { gpa: Gpa::new(0x7C00), file_range: 0..2, mem_size: 2 }]);
    assert_eq!(plan.boot_info, None);

    let image = [0u8; 0x100];
    let high = ImageFormat::Flat { load_gpa: Gpa::new(0x1_0000), entry_gpa: Some(Gpa::new(0x1_0010)) };
    let plan = super::plan(&image, high, &config(MIB)).unwrap();
    assert_eq!(plan.entry.mode, EntryMode::RealMode16 { cs: 0x1000, ip: 0x10 });
    assert_eq!(plan.entry.mode.entry_gpa(), Gpa::new(0x1_0010));
}

#[test]
fn flat_binary_errors_say_what_is_wrong() {
    let cfg = config(MIB);
    let flat = |load_gpa, entry_gpa: Option<u64>| ImageFormat::Flat {
        load_gpa: Gpa::new(load_gpa),
        entry_gpa: entry_gpa.map(Gpa::new),
    };
    assert_eq!(plan(&[], flat(0, None), &cfg), Err(LoadError::EmptyImage));
    let big = vec![0u8; 2 * MIB as usize];
    assert_eq!(
        plan(&big, flat(0, None), &cfg).unwrap_err().to_string(),
        "the image (2 MiB) is larger than the 1 MiB of guest memory"
    );
    assert_eq!(
        plan(&[0; 16], flat(0xF_FFF8, None), &cfg).unwrap_err().to_string(),
        "the image loaded at 0xffff8 ends at 0x100008, beyond the 1 MiB of guest memory"
    );
    assert_eq!(
        plan(&[0; 16], flat(u64::MAX - 4, None), &cfg),
        Err(LoadError::FlatAddressOverflow { load_gpa: u64::MAX - 4, len: 16 })
    );
    assert_eq!(
        plan(&[0; 16], flat(0x1000, Some(0x1010)), &cfg).unwrap_err().to_string(),
        "the entry point 0x1010 lies outside the image at 0x1000..0x1010"
    );
    let cfg = config(4 * MIB);
    assert_eq!(
        plan(&[0; 16], flat(0x20_0000, None), &cfg),
        Err(LoadError::EntryNotRealMode { entry: 0x20_0000 })
    );
}

#[test]
fn segment_beyond_memory_names_the_segment_and_the_memory_size() {
    let image = pvh64().seg(Seg::load(0x3FF_F000, vec![0; 4], 0x2000)).build();
    let err = plan(&image, ImageFormat::Elf, &config(MEM_64M)).unwrap_err();
    assert_eq!(err.to_string(), "segment 3 ends at 0x4001000, beyond the 64 MiB of guest memory");
}

#[test]
fn elf_errors_are_typed() {
    let cfg = config(MEM_64M);
    let check = |b: ElfBuilder, expected: LoadError| {
        assert_eq!(plan(&b.build(), ImageFormat::Elf, &cfg), Err(expected));
    };
    let mut b = pvh64();
    b.machine = EM_386;
    check(b, LoadError::WrongMachine { class_bits: 64, machine: EM_386 });
    let mut b = pvh64();
    b.e_type = 3;
    check(b, LoadError::NotExecutable { e_type: 3 });
    let mut b = pvh64();
    b.segs[2].memsz = 0x10;
    check(b, LoadError::SegmentFileSizeExceedsMemSize { index: 2, file_size: 0x80, mem_size: 0x10 });
    let mut b = pvh64();
    b.segs[2].paddr = u64::MAX - 0x100;
    check(b, LoadError::SegmentAddressOverflow { index: 2, gpa: u64::MAX - 0x100, mem_size: 0x2000 });
    let mut b = pvh64();
    b.segs[2].paddr = 0x10_0100;
    check(b, LoadError::SegmentsOverlap { first: 0, second: 2 });
    let b = pvh64().seg(Seg::load(0x3000, vec![0; 4], 0x2000));
    check(b, LoadError::SegmentOverlapsBootInfo { index: 3, gpa: 0x3000, end: 0x5000 });
    let b = ElfBuilder::new(true).seg(Seg::note(pvh_note(&0x10_0000u64.to_le_bytes())));
    check(b, LoadError::NoLoadableSegment);
    let b = ElfBuilder::new(true).seg(Seg::note(pvh_note(&0x30_0000u64.to_le_bytes()))).seg(Seg::load(
        0x10_0000,
        vec![0; 4],
        4,
    ));
    check(b, LoadError::EntryOutsideSegments { entry: 0x30_0000 });
    let b = ElfBuilder::new(true).seg(Seg::note(pvh_note(&0x1_0000_0000u64.to_le_bytes()))).seg(Seg::load(
        0x10_0000,
        vec![0; 4],
        4,
    ));
    check(b, LoadError::EntryAbove4GiB { entry: 0x1_0000_0000 });
    let b = ElfBuilder::new(true).seg(Seg::note(pvh_note(&[0; 2]))).seg(Seg::load(0x10_0000, vec![0; 4], 4));
    check(b, LoadError::BadPvhNoteSize { desc_size: 2 });
    let b = ElfBuilder::new(true).seg(Seg::load(0x10_0000, vec![0; 4], 4));
    check(b, LoadError::NoBootProtocol);
    let mut b = ElfBuilder::new(true);
    for i in 0..=MAX_SEGMENTS as u64 {
        b = b.seg(Seg::load(0x10_0000 + i * 0x1000, vec![], 0x1000));
    }
    check(b, LoadError::TooManySegments { max: MAX_SEGMENTS });

    let mut note = pvh_note(&0x10_0000u64.to_le_bytes());
    note[4] = 0xFF; // descsz runs past the segment
    let b = ElfBuilder::new(true).seg(Seg::note(note)).seg(Seg::load(0x10_0000, vec![0; 4], 4));
    check(b, LoadError::MalformedNote { segment: 0 });

    let mut b = multiboot32();
    b.segs[0].data[8] ^= 1;
    check(b, LoadError::MultibootBadChecksum { offset: 0x54 });
    let mut b = multiboot32();
    b.segs[0].data[..12].copy_from_slice(&multiboot_header(1 << 2));
    check(b, LoadError::MultibootUnsupportedFlags { flags: 1 << 2 });
    let mut b = multiboot32();
    b.segs[0].data[..12].copy_from_slice(&multiboot_header(1 << 16));
    check(b, LoadError::MultibootAoutKludge);

    let image = pvh64().build();
    assert_eq!(plan(&image, ImageFormat::Multiboot1, &cfg), Err(LoadError::NoMultibootHeader));
    assert_eq!(plan(&multiboot32().build(), ImageFormat::Pvh, &cfg), Err(LoadError::NoPvhNote));
    assert_eq!(plan(b"MZ\x90\x00", ImageFormat::Elf, &cfg), Err(LoadError::NotElf));
    let mut big_endian = image.clone();
    big_endian[5] = 2;
    assert_eq!(plan(&big_endian, ImageFormat::Elf, &cfg), Err(LoadError::NotLittleEndian));
    let mut bad_phentsize = image.clone();
    bad_phentsize[54] = 55;
    assert!(matches!(plan(&bad_phentsize, ImageFormat::Elf, &cfg), Err(LoadError::Elf(_))));
    let mut no_phdrs = image;
    no_phdrs[32..40].fill(0);
    assert_eq!(plan(&no_phdrs, ImageFormat::Elf, &cfg), Err(LoadError::NoProgramHeaders));
}

#[test]
fn segment_past_the_end_of_the_file_is_rejected() {
    let image = pvh64().build();
    let truncated = &image[..image.len() - 1];
    let err = plan(truncated, ImageFormat::Elf, &config(MEM_64M)).unwrap_err();
    assert!(matches!(err, LoadError::SegmentBeyondFile { index: 2, .. }), "{err:?}");
    assert!(err.to_string().starts_with("segment 2 takes 0x80 bytes at file offset"), "{err}");
}

#[test]
fn memory_and_command_line_limits() {
    let image = pvh64().build();
    // The segments fit in 2 MiB but the boot info must too; 8 KiB of memory holds neither.
    assert!(plan(&image, ImageFormat::Elf, &config(2 * MIB)).is_ok());
    let tiny = ElfBuilder::new(true)
        .seg(Seg::note(pvh_note(&0x800u64.to_le_bytes())))
        .seg(Seg::load(0x800, vec![0; 4], 4))
        .build();
    assert_eq!(
        plan(&tiny, ImageFormat::Elf, &config(0x2000)),
        Err(LoadError::MemoryTooSmallForBootInfo { mem_size: 0x2000, needed: 0x4000 })
    );
    let long = "x".repeat(CMDLINE_MAX_LEN + 1);
    let cfg = GuestConfig { mem_size: MEM_64M, cmdline: &long, rsdp: None };
    assert_eq!(
        plan(&image, ImageFormat::Elf, &cfg),
        Err(LoadError::CmdlineTooLong { len: CMDLINE_MAX_LEN + 1, max: CMDLINE_MAX_LEN })
    );
    let longest = "x".repeat(CMDLINE_MAX_LEN);
    for format in [ImageFormat::Elf, ImageFormat::Multiboot1] {
        let image = if format == ImageFormat::Elf { pvh64().build() } else { multiboot32().build() };
        let cfg = GuestConfig { mem_size: MEM_64M, cmdline: &longest, rsdp: None };
        assert!(plan(&image, format, &cfg).is_ok());
    }
    let cfg = GuestConfig { mem_size: MEM_64M, cmdline: "a\0b", rsdp: None };
    assert_eq!(plan(&image, ImageFormat::Elf, &cfg), Err(LoadError::CmdlineHasNul));
}

#[test]
fn every_truncation_is_an_error_and_never_a_panic() {
    for image in [pvh64().build(), multiboot32().build()] {
        for len in 0..image.len() {
            let result = plan(&image[..len], ImageFormat::Elf, &config(MEM_64M));
            // The last segment's bytes end the file, so every proper prefix lacks some.
            assert!(result.is_err(), "prefix of {len} bytes accepted");
            let _ = result.unwrap_err().to_string();
        }
    }
}

/// xorshift64*: deterministic, so a failure reproduces.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_mutations_give_sound_plans_or_typed_errors() {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let cfg = config(MEM_64M);
    let mut accepted = 0;
    for base in [pvh64().build(), multiboot32().build()] {
        let headers = 64 + 56 * 4;
        for _ in 0..20_000 {
            let mut image = base.clone();
            for _ in 0..1 + rng.below(4) {
                // Mostly the headers, where the interesting fields are.
                let at = if rng.below(4) == 0 { rng.below(image.len()) } else { rng.below(headers) };
                match rng.below(3) {
                    0 => image[at] ^= 1 << rng.below(8),
                    1 => image[at] = rng.next() as u8,
                    _ => image[at] = [0, 0xFF, 0x7F, 0x80][rng.below(4)],
                }
            }
            if rng.below(8) == 0 {
                image.truncate(rng.below(image.len()));
            }
            for format in [ImageFormat::Elf, ImageFormat::Pvh, ImageFormat::Multiboot1] {
                match plan(&image, format, &cfg) {
                    Ok(plan) => {
                        accepted += 1;
                        assert_plan_is_sound(&image, &plan, cfg.mem_size);
                    }
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
            }
        }
    }
    // Flips in unused bytes keep an image valid: the check above ran on real plans.
    assert!(accepted > 1000, "only {accepted} mutated images were accepted");
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 2000, ..Default::default() })]

    /// Arbitrary bytes behind a valid ELF identification never panic the loader.
    #[test]
    fn arbitrary_elf_bodies_never_panic(is_64: bool, body in proptest::collection::vec(proptest::num::u8::ANY, 0..512), mem_mib in 0u64..128) {
        let mut image = vec![0x7F, b'E', b'L', b'F', if is_64 { 2 } else { 1 }, 1, 1];
        image.resize(16, 0);
        image.extend(body);
        let cfg = config(mem_mib * MIB);
        if let Ok(plan) = plan(&image, ImageFormat::Elf, &cfg) {
            assert_plan_is_sound(&image, &plan, cfg.mem_size);
        }
    }

    #[test]
    fn arbitrary_flat_placements_never_panic(len in 1usize..4096, load_gpa: u64, entry: Option<u64>, mem_size: u64) {
        let image = vec![0u8; len];
        let cfg = GuestConfig { mem_size, cmdline: "", rsdp: None };
        let flat = ImageFormat::Flat { load_gpa: Gpa::new(load_gpa), entry_gpa: entry.map(Gpa::new) };
        if let Ok(plan) = plan(&image, flat, &cfg) {
            assert_plan_is_sound(&image, &plan, mem_size);
            assert!(plan.entry.mode.entry_gpa() < Gpa::new(0x10_0000));
        }
    }
}

#[test]
fn entries_follow_the_boot_conventions() {
    let image = pvh64().build();
    let entry = plan(&image, ImageFormat::Elf, &config(MEM_64M)).unwrap().entry;
    assert_eq!(entry.mode, EntryMode::Protected32 { eip: 0x10_0010 });
    assert_eq!((entry.eax, entry.ebx), (0, 0x1000), "PVH: ebx = start info");

    let mb = plan(&multiboot32().build(), ImageFormat::Elf, &config(MEM_64M)).unwrap().entry;
    assert_eq!((mb.eax, mb.ebx), (0x2BAD_B002, 0x1000));

    let flat = super::plan(
        &[0; 4],
        ImageFormat::Flat { load_gpa: Gpa::new(0x1_0000), entry_gpa: None },
        &config(MIB),
    )
    .unwrap()
    .entry;
    assert_eq!(flat.mode, EntryMode::RealMode16 { cs: 0x1000, ip: 0 });
}

#[test]
fn sizes_display_in_the_largest_exact_unit() {
    assert_eq!(Size(64 * MIB).to_string(), "64 MiB");
    assert_eq!(Size(3 * 1024).to_string(), "3 KiB");
    assert_eq!(Size(1000).to_string(), "1000 bytes");
    assert_eq!(Size(4 << 30).to_string(), "4 GiB");
}

/// The guest images, when built (`cargo build -p guest-images --target
/// x86_64-unknown-none --release`), are PVH ELFs this loader accepts.
#[test]
fn built_guest_images_are_valid_pvh_elfs() {
    extern crate std;
    use std::{env, eprintln, fs, path::PathBuf};
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("x86_64-unknown-none/release");
    let names = [
        "hello",
        "memtouch",
        "roots",
        "tlbprobe",
        "exitbench",
        "cpuid",
        "xmmiso",
        "guardrails",
        "platform",
        "mmio",
        "apic",
    ];
    // `cargo xtask test` builds the guests before the host tests; a plain `cargo test` on
    // a tree built before a guest was added has only some of them, so skip unless all are.
    if !names.iter().all(|name| dir.join(name).exists()) {
        eprintln!(
            "skipped: not every guest image is in {} (build them with `cargo build -p guest-images --target \
             x86_64-unknown-none --release`)",
            dir.display()
        );
        return;
    }
    for name in names {
        let image = fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cfg = GuestConfig { mem_size: MEM_64M, cmdline: "mib=16", rsdp: None };
        let plan = plan(&image, ImageFormat::Pvh, &cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_plan_is_sound(&image, &plan, MEM_64M);
        assert!(plan.segments.iter().all(|s| s.gpa >= Gpa::new(MIB)), "{name} is linked at 1 MiB");
        assert!(matches!(plan.entry.mode, EntryMode::Protected32 { .. }));
    }
}
