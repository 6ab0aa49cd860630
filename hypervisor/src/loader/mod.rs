//! Guest image formats: parse and validate an image into a [`LoadPlan`] without touching
//! guest memory. A backend then copies [`LoadPlan::segments`] and [`LoadPlan::boot_info`]
//! into the guest and starts each vCPU at [`LoadPlan::entry`] (the backend sets up the
//! mode's segments and control registers).
//!
//! Formats ([`ImageFormat`]):
//! - a flat binary, loaded at a given gpa and entered in 16-bit real mode;
//! - an ELF32/ELF64 with a PVH `XEN_ELFNOTE_PHYS32_ENTRY` note: 32-bit protected mode,
//!   `ebx` = gpa of `hvm_start_info` (built here, with a memory map and the command line);
//! - a multiboot1 ELF: 32-bit protected mode, `eax` = 0x2BADB002, `ebx` = gpa of the
//!   multiboot information (memory sizes, memory map, command line);
//! - a Linux bzImage (boot protocol 2.12+, see `bzimage`): 64-bit mode on an identity map
//!   the loader builds, `rsi` = gpa of `boot_params`.
//!
//! PVH and bzImage plans take an initrd ([`LoadPlan::place_initrd`], see `initrd`).
//!
//! Every rule an image can break is a [`LoadError`] variant whose `Display` is the message
//! a user sees. Nothing here panics on any input (see the truncation and mutation tests).
//!
//! Guest memory is `[0, mem_size)`. The boot information lives at [`BOOT_INFO_GPA`], below
//! 1 MiB and above the real-mode interrupt table and BIOS data area, in
//! [`BOOT_INFO_MAX_LEN`] bytes that no segment may overlap. A bzImage's is larger (boot_params,
//! command line, GDT and identity map: at most 84 KiB, below 640 KiB) and its kernel loads
//! at 1 MiB or above, so the two never meet either.

mod bootinfo;
mod bzimage;
mod elf_image;
mod error;
mod initrd;
mod source;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_bzimage;

use alloc::vec::Vec;
use core::ops::Range;

use crate::addr::Gpa;

pub use bootinfo::{MemoryKind, MemoryRange, guest_memory_map};
pub use bzimage::{BOOT_PARAMS_GPA, BOOT_TABLES_GPA};
pub use error::{LoadError, Size};
pub use initrd::InitrdArea;
pub use source::{HEAD_LEN, ImageSource, TABLE_MAX_LEN};

/// Where the boot information goes (PVH start info or multiboot info, memory map, command
/// line).
pub const BOOT_INFO_GPA: Gpa = Gpa::new(0x1000);
/// Bytes reserved for the boot information at [`BOOT_INFO_GPA`].
pub const BOOT_INFO_MAX_LEN: u64 = 0x3000;
/// Longest command line, without its terminating NUL.
pub const CMDLINE_MAX_LEN: usize = 2048;
/// Most loadable segments an ELF image may have.
pub const MAX_SEGMENTS: usize = 64;

/// How to read the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// Raw bytes loaded at `load_gpa` and entered in 16-bit real mode at `entry_gpa`
    /// (default: `load_gpa`), which must lie inside the image and below 1 MiB.
    Flat { load_gpa: Gpa, entry_gpa: Option<Gpa> },
    /// An ELF with a PVH entry note or, failing that, a multiboot1 header.
    Elf,
    /// An ELF that must carry a PVH entry note.
    Pvh,
    /// An ELF that must carry a multiboot1 header.
    Multiboot1,
    /// A Linux bzImage (boot protocol 2.12 or later, with the 64-bit entry).
    BzImage,
}

impl ImageFormat {
    /// A format a user names that needs no parameters: `elf` (PVH note, else multiboot
    /// header), `pvh`, `multiboot` or `multiboot1`, `bzimage`. The API and the image's
    /// command line both take these.
    #[must_use]
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "elf" => Some(Self::Elf),
            "pvh" => Some(Self::Pvh),
            "multiboot" | "multiboot1" => Some(Self::Multiboot1),
            "bzimage" => Some(Self::BzImage),
            _ => None,
        }
    }
}

/// What the guest is given besides its image.
#[derive(Clone, Copy, Debug)]
pub struct GuestConfig<'a> {
    /// Guest memory size in bytes; guest memory is `[0, mem_size)`.
    pub mem_size: u64,
    /// The guest's command line (PVH, multiboot and bzImage; a flat binary gets none).
    pub cmdline: &'a str,
    /// Where the VM put the ACPI RSDP, for `hvm_start_info.rsdp_paddr` and
    /// `boot_params.acpi_rsdp_addr` (the memory map reports the BIOS area that holds it
    /// reserved).
    pub rsdp: Option<Gpa>,
}

/// The boot protocol an image was planned for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    Flat,
    Pvh,
    Multiboot1,
    Linux,
}

/// Everything a backend needs to load and start an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    pub protocol: BootProtocol,
    /// Disjoint, in ascending gpa order, each inside guest memory and outside the boot
    /// information.
    pub segments: Vec<Segment>,
    pub entry: Entry,
    /// Bytes to write at a gpa before the first vCPU starts (none for a flat binary).
    pub boot_info: Option<BootInfoPlan>,
    /// Where an initrd may go (PVH and bzImage; `None`: the protocol has no initrd).
    pub initrd_area: Option<InitrdArea>,
}

/// One piece of the image in guest memory: `file_range` of the image is copied to `gpa`,
/// and the rest of `mem_size` (the ELF's `.bss`) is zeroed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub gpa: Gpa,
    pub file_range: Range<usize>,
    /// Bytes the segment occupies in guest memory, at least `file_range.len()`.
    pub mem_size: u64,
}

impl Segment {
    /// The bytes to copy to [`Segment::gpa`].
    ///
    /// # Panics
    /// If `image` is not the image the plan was made from (shorter than `file_range`).
    #[must_use]
    pub fn file_bytes<'a>(&self, image: &'a [u8]) -> &'a [u8] {
        &image[self.file_range.clone()]
    }

    /// Bytes after the file bytes to fill with zeroes.
    #[must_use]
    pub fn zero_fill_len(&self) -> u64 {
        self.mem_size - self.file_range.len() as u64
    }

    /// The guest-physical range the segment occupies.
    #[must_use]
    pub fn gpa_range(&self) -> Range<Gpa> {
        self.gpa..Gpa::new(self.gpa.raw() + self.mem_size)
    }
}

/// Boot information to place in guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfoPlan {
    pub gpa: Gpa,
    pub bytes: Vec<u8>,
}

/// Where and how the vCPUs start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub mode: EntryMode,
    /// `eax` at entry (multiboot magic; 0 otherwise).
    pub eax: u32,
    /// `ebx` at entry (gpa of the boot information for PVH and multiboot; 0 otherwise).
    pub ebx: u32,
    /// `rsi` at entry (gpa of `boot_params` for a bzImage; 0 otherwise, where the VM
    /// passes the vCPU index).
    pub rsi: u64,
}

/// The CPU mode at entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 16-bit real mode at `cs:ip` (`cs` base = `cs * 16`).
    RealMode16 { cs: u16, ip: u16 },
    /// 32-bit protected mode, paging off, flat 4 GiB segments, at `eip`.
    Protected32 { eip: u32 },
    /// 64-bit mode at `rip`: paging on with `cr3`, the GDT at `gdt_base` (limit
    /// `gdt_limit`) holding Linux's `__BOOT_CS` (64-bit code) and `__BOOT_DS` (data), which
    /// CS and the data segments hold.
    Long64 { rip: u64, cr3: u64, gdt_base: u64, gdt_limit: u16 },
}

impl EntryMode {
    /// The gpa of the first instruction.
    #[must_use]
    pub fn entry_gpa(&self) -> Gpa {
        Gpa::new(match *self {
            Self::RealMode16 { cs, ip } => u64::from(cs) * 16 + u64::from(ip),
            Self::Protected32 { eip } => u64::from(eip),
            Self::Long64 { rip, .. } => rip,
        })
    }
}

/// Parses and validates `image` into a [`LoadPlan`] for a guest described by `config`.
pub fn plan(image: &[u8], format: ImageFormat, config: &GuestConfig<'_>) -> Result<LoadPlan, LoadError> {
    plan_from(&image, format, config)
}

/// [`plan`] for an image read through an [`ImageSource`] (the VM's memory an upload was
/// streamed to): it reads the first [`HEAD_LEN`] bytes and, for an ELF, the program
/// header table and note segments, each at most [`TABLE_MAX_LEN`] bytes.
pub fn plan_from(
    image: &dyn ImageSource,
    format: ImageFormat,
    config: &GuestConfig<'_>,
) -> Result<LoadPlan, LoadError> {
    if image.is_empty() {
        return Err(LoadError::EmptyImage);
    }
    if config.cmdline.len() > CMDLINE_MAX_LEN {
        return Err(LoadError::CmdlineTooLong { len: config.cmdline.len(), max: CMDLINE_MAX_LEN });
    }
    if config.cmdline.as_bytes().contains(&0) {
        return Err(LoadError::CmdlineHasNul);
    }
    match format {
        ImageFormat::Flat { load_gpa, entry_gpa } => plan_flat(image.len(), load_gpa, entry_gpa, config),
        ImageFormat::Elf => elf_image::plan(image, None, config),
        ImageFormat::Pvh => elf_image::plan(image, Some(elf_image::ElfProtocol::Pvh), config),
        ImageFormat::Multiboot1 => elf_image::plan(image, Some(elf_image::ElfProtocol::Multiboot1), config),
        ImageFormat::BzImage => bzimage::plan(&source::head(image)?, image.len(), config),
    }
}

/// Highest gpa + 1 reachable in real mode as `cs:ip` with `cs` a multiple of 0x1000.
const REAL_MODE_LIMIT: u64 = 0x10_0000;

fn plan_flat(
    len: u64,
    load_gpa: Gpa,
    entry_gpa: Option<Gpa>,
    config: &GuestConfig<'_>,
) -> Result<LoadPlan, LoadError> {
    let (load_gpa, entry_gpa) = (load_gpa.raw(), entry_gpa.map(Gpa::raw));
    if len > config.mem_size {
        return Err(LoadError::ImageTooLarge { size: len, mem_size: config.mem_size });
    }
    let end = load_gpa.checked_add(len).ok_or(LoadError::FlatAddressOverflow { load_gpa, len })?;
    if end > config.mem_size {
        return Err(LoadError::FlatBeyondMemory { load_gpa, end, mem_size: config.mem_size });
    }
    let entry = entry_gpa.unwrap_or(load_gpa);
    if !(load_gpa..end).contains(&entry) {
        return Err(LoadError::EntryOutsideImage { entry, start: load_gpa, end });
    }
    if entry >= REAL_MODE_LIMIT {
        return Err(LoadError::EntryNotRealMode { entry });
    }
    // cs takes the 64 KiB-aligned part, so an entry at 0x7C00 is 0000:7C00 as a BIOS
    // would give it; `entry < 1 MiB` makes both fit in 16 bits.
    let cs = ((entry & 0xF_0000) >> 4) as u16;
    let ip = (entry & 0xFFFF) as u16;
    Ok(LoadPlan {
        protocol: BootProtocol::Flat,
        segments: alloc::vec![Segment {
            gpa: Gpa::new(load_gpa),
            file_range: 0..len as usize,
            mem_size: len
        }],
        entry: Entry { mode: EntryMode::RealMode16 { cs, ip }, eax: 0, ebx: 0, rsi: 0 },
        boot_info: None,
        initrd_area: None,
    })
}
