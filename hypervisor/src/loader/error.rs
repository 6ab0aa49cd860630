//! Why an image cannot be loaded. Each `Display` is the message the user sees.

use alloc::string::String;
use core::fmt;

/// A byte count shown the way people say it: "64 MiB", "12 KiB", "1000 bytes".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        const GIB: u64 = 1024 * MIB;
        match self.0 {
            0 => write!(f, "0 bytes"),
            n if n % GIB == 0 => write!(f, "{} GiB", n / GIB),
            n if n % MIB == 0 => write!(f, "{} MiB", n / MIB),
            n if n % KIB == 0 => write!(f, "{} KiB", n / KIB),
            n => write!(f, "{n} bytes"),
        }
    }
}

/// Why an image was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    EmptyImage,
    ImageTooLarge {
        size: u64,
        mem_size: u64,
    },
    CmdlineTooLong {
        len: usize,
        max: usize,
    },
    CmdlineHasNul,
    /// Reading the image where it was staged failed (guest memory it was streamed to is
    /// gone, or a read reached beyond the image).
    ImageRead {
        offset: u64,
    },
    /// An ELF table the loader reads whole (program headers, a note segment) is larger
    /// than it reads ([`super::source::TABLE_MAX_LEN`]).
    ElfTableTooLarge {
        what: &'static str,
        len: u64,
        max: usize,
    },
    /// The boot information does not fit in guest memory.
    MemoryTooSmallForBootInfo {
        mem_size: u64,
        needed: u64,
    },
    /// The boot information (memory map and command line) is larger than its area.
    BootInfoTooLarge {
        len: u64,
        max: u64,
    },

    FlatAddressOverflow {
        load_gpa: u64,
        len: u64,
    },
    FlatBeyondMemory {
        load_gpa: u64,
        end: u64,
        mem_size: u64,
    },
    EntryOutsideImage {
        entry: u64,
        start: u64,
        end: u64,
    },
    EntryNotRealMode {
        entry: u64,
    },

    NotElf,
    /// A header or table of the ELF is malformed or lies outside the file (the `elf`
    /// crate's reason, whose `ParseError` is neither `Clone` nor `Eq`).
    Elf(String),
    NotLittleEndian,
    WrongMachine {
        class_bits: u8,
        machine: u16,
    },
    NotExecutable {
        e_type: u16,
    },
    NoProgramHeaders,
    TooManySegments {
        max: usize,
    },
    SegmentFileSizeExceedsMemSize {
        index: usize,
        file_size: u64,
        mem_size: u64,
    },
    SegmentBeyondFile {
        index: usize,
        offset: u64,
        file_size: u64,
        file_len: u64,
    },
    SegmentAddressOverflow {
        index: usize,
        gpa: u64,
        mem_size: u64,
    },
    SegmentBeyondMemory {
        index: usize,
        end: u64,
        mem_size: u64,
    },
    SegmentsOverlap {
        first: usize,
        second: usize,
    },
    SegmentOverlapsBootInfo {
        index: usize,
        gpa: u64,
        end: u64,
    },
    NoLoadableSegment,
    EntryOutsideSegments {
        entry: u64,
    },
    EntryAbove4GiB {
        entry: u64,
    },

    MalformedNote {
        segment: usize,
    },
    BadPvhNoteSize {
        desc_size: u32,
    },
    NoPvhNote,
    NoMultibootHeader,
    /// Neither a PVH note nor a multiboot1 header.
    NoBootProtocol,
    MultibootBadChecksum {
        offset: usize,
    },
    /// Multiboot requirement bits (0-15) this loader cannot honour.
    MultibootUnsupportedFlags {
        flags: u32,
    },
    /// Multiboot flag 16 (load addresses in the header, for a.out images).
    MultibootAoutKludge,

    /// The bzImage ends before a setup header field the loader reads.
    BzImageTooShort {
        len: u64,
    },
    BzImageNoBootFlag {
        found: u16,
    },
    BzImageNoHeader,
    BzImageProtocolTooOld {
        version: u16,
    },
    /// The header's own length (0x202 + the jump's offset) ends before `init_size`.
    BzImageHeaderTooShort {
        end: usize,
    },
    BzImageNotLoadedHigh,
    BzImageNo64BitEntry,
    BzImageNoKernel {
        setup_len: u64,
        file_len: u64,
    },
    BzImageBadAlignment {
        alignment: u32,
    },
    BzImagePrefAddress {
        pref_address: u64,
    },
    BzImageDoesNotFit {
        load_gpa: u64,
        init_size: u64,
        mem_size: u64,
    },

    InitrdNotSupported {
        protocol: super::BootProtocol,
    },
    InitrdEmpty,
    InitrdDoesNotFit {
        size: u64,
        lowest: u64,
        limit: u64,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LoadError as E;
        match *self {
            E::EmptyImage => write!(f, "the image is empty"),
            E::ImageTooLarge { size, mem_size } => {
                write!(f, "the image ({}) is larger than the {} of guest memory", Size(size), Size(mem_size))
            }
            E::CmdlineTooLong { len, max } => {
                write!(f, "the command line is {len} bytes long, more than the {max} allowed")
            }
            E::CmdlineHasNul => write!(f, "the command line contains a NUL byte"),
            E::ImageRead { offset } => write!(f, "the image could not be read at offset {offset:#x}"),
            E::ElfTableTooLarge { what, len, max } => {
                write!(f, "the ELF's {what} is {len} bytes long; the loader reads at most {max}")
            }
            E::MemoryTooSmallForBootInfo { mem_size, needed } => write!(
                f,
                "{} of guest memory is too small for the boot information, which needs {needed:#x} bytes",
                Size(mem_size)
            ),
            E::BootInfoTooLarge { len, max } => {
                write!(f, "the boot information needs {len} bytes, more than its area of {max}")
            }
            E::FlatAddressOverflow { load_gpa, len } => {
                write!(f, "the image ({}) loaded at {load_gpa:#x} wraps around the address space", Size(len))
            }
            E::FlatBeyondMemory { load_gpa, end, mem_size } => write!(
                f,
                "the image loaded at {load_gpa:#x} ends at {end:#x}, beyond the {} of guest memory",
                Size(mem_size)
            ),
            E::EntryOutsideImage { entry, start, end } => {
                write!(f, "the entry point {entry:#x} lies outside the image at {start:#x}..{end:#x}")
            }
            E::EntryNotRealMode { entry } => {
                write!(f, "the entry point {entry:#x} is not reachable in real mode (it must be below 1 MiB)")
            }
            E::NotElf => write!(f, "the image is not an ELF file (no \\x7fELF magic)"),
            E::Elf(ref reason) => write!(f, "malformed ELF: {reason}"),
            E::NotLittleEndian => write!(f, "the ELF is not little-endian"),
            E::WrongMachine { class_bits, machine } => write!(
                f,
                "the ELF{class_bits} is for machine {machine}, not x86 ({} for ELF32, {} for ELF64)",
                ::elf::abi::EM_386,
                ::elf::abi::EM_X86_64
            ),
            E::NotExecutable { e_type } => {
                write!(f, "the ELF has type {e_type}, not an executable (ET_EXEC, {})", ::elf::abi::ET_EXEC)
            }
            E::NoProgramHeaders => write!(f, "the ELF has no program headers"),
            E::TooManySegments { max } => write!(f, "the ELF has more than {max} loadable segments"),
            E::SegmentFileSizeExceedsMemSize { index, file_size, mem_size } => write!(
                f,
                "segment {index} has {file_size:#x} bytes in the file but only {mem_size:#x} in memory"
            ),
            E::SegmentBeyondFile { index, offset, file_size, file_len } => write!(
                f,
                "segment {index} takes {file_size:#x} bytes at file offset {offset:#x}, past the end of the \
                 {file_len}-byte file"
            ),
            E::SegmentAddressOverflow { index, gpa, mem_size } => write!(
                f,
                "segment {index} at {gpa:#x} with {mem_size:#x} bytes wraps around the address space"
            ),
            E::SegmentBeyondMemory { index, end, mem_size } => {
                write!(f, "segment {index} ends at {end:#x}, beyond the {} of guest memory", Size(mem_size))
            }
            E::SegmentsOverlap { first, second } => write!(f, "segments {first} and {second} overlap"),
            E::SegmentOverlapsBootInfo { index, gpa, end } => write!(
                f,
                "segment {index} at {gpa:#x}..{end:#x} overlaps the boot information at {:#x}..{:#x}",
                super::BOOT_INFO_GPA.raw(),
                super::BOOT_INFO_GPA.raw() + super::BOOT_INFO_MAX_LEN
            ),
            E::NoLoadableSegment => write!(f, "the ELF has no loadable segment"),
            E::EntryOutsideSegments { entry } => {
                write!(f, "the entry point {entry:#x} lies outside every loaded segment")
            }
            E::EntryAbove4GiB { entry } => {
                write!(f, "the entry point {entry:#x} is not reachable in 32-bit mode (above 4 GiB)")
            }
            E::MalformedNote { segment } => write!(f, "the note segment {segment} is malformed"),
            E::BadPvhNoteSize { desc_size } => {
                write!(f, "the PVH entry note has a {desc_size}-byte address (expected 4 or 8)")
            }
            E::NoPvhNote => write!(f, "the ELF has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"),
            E::NoMultibootHeader => {
                write!(f, "no multiboot header (magic 0x1BADB002) in the first 8 KiB of the image")
            }
            E::NoBootProtocol => write!(
                f,
                "the ELF has neither a PVH entry note nor a multiboot header, so its entry state is unknown"
            ),
            E::MultibootBadChecksum { offset } => {
                write!(f, "the multiboot header at offset {offset:#x} has a bad checksum")
            }
            E::MultibootUnsupportedFlags { flags } => write!(
                f,
                "the multiboot header requires features this loader lacks (flags {flags:#x}: video mode or \
                 unknown bits)"
            ),
            E::MultibootAoutKludge => write!(
                f,
                "the multiboot header asks for header load addresses (flag 16, a.out kludge): not supported"
            ),
            E::BzImageTooShort { len } => {
                write!(f, "the image ({len} bytes) is too short for a Linux setup header (bzImage)")
            }
            E::BzImageNoBootFlag { found } => {
                write!(f, "not a bzImage: the boot flag at 0x1fe is {found:#06x}, not 0xaa55")
            }
            E::BzImageNoHeader => write!(f, "not a bzImage: no \"HdrS\" setup header magic at 0x202"),
            E::BzImageProtocolTooOld { version } => write!(
                f,
                "the kernel speaks boot protocol {}.{:02}; 2.12 or later is needed (a 64-bit entry)",
                version >> 8,
                version & 0xFF
            ),
            E::BzImageHeaderTooShort { end } => {
                write!(f, "the bzImage setup header ends at {end:#x}, before the fields of protocol 2.12")
            }
            E::BzImageNotLoadedHigh => {
                write!(
                    f,
                    "the kernel cannot be loaded above 1 MiB (loadflags.LOADED_HIGH is clear: a zImage)"
                )
            }
            E::BzImageNo64BitEntry => {
                write!(f, "the kernel has no 64-bit entry (xloadflags.XLF_KERNEL_64 is clear)")
            }
            E::BzImageNoKernel { setup_len, file_len } => write!(
                f,
                "the bzImage's setup takes {setup_len} bytes, and the {file_len}-byte file has no kernel after it"
            ),
            E::BzImageBadAlignment { alignment } => {
                write!(
                    f,
                    "the kernel asks for an alignment of {alignment:#x}, not a power of two up to 1 GiB"
                )
            }
            E::BzImagePrefAddress { pref_address } => {
                write!(f, "the kernel's preferred address {pref_address:#x} is not below 4 GiB")
            }
            E::BzImageDoesNotFit { load_gpa, init_size, mem_size } => write!(
                f,
                "the kernel needs {} from {load_gpa:#x} (init_size), beyond the {} of guest memory",
                Size(init_size),
                Size(mem_size)
            ),
            E::InitrdNotSupported { protocol } => {
                write!(f, "an initrd needs a bzimage or pvh image, and this image is {protocol:?}")
            }
            E::InitrdEmpty => write!(f, "the initrd is empty"),
            E::InitrdDoesNotFit { size, lowest, limit } => write!(
                f,
                "the initrd ({}) does not fit between the kernel's end {lowest:#x} and its limit {limit:#x}",
                Size(size)
            ),
        }
    }
}

impl core::error::Error for LoadError {}
