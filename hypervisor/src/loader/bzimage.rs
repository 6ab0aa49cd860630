//! The Linux/x86 boot protocol, 2.12 and later, with the 64-bit entry (Linux
//! `Documentation/arch/x86/boot.rst`, "64-bit Boot Protocol"): a bzImage is a boot sector
//! and `setup_sects` sectors of real-mode setup code, whose setup header (at 0x1F1)
//! describes the protected-mode kernel that follows them in the file.
//!
//! The plan:
//! 1. check the header: boot flag 0xAA55, "HdrS", version >= 2.12, LOADED_HIGH,
//!    XLF_KERNEL_64, the command line within `cmdline_size`;
//! 2. place the protected-mode kernel: a relocatable kernel at `pref_address` (aligned up
//!    to `kernel_alignment`), any other at 1 MiB; `init_size` bytes from there must lie in
//!    RAM (the kernel decompresses itself inside them);
//! 3. build the boot information below 640 KiB in one block at [`BOOT_PARAMS_GPA`]:
//!    `boot_params` (the setup header copied in, `type_of_loader` 0xFF, the e820 map,
//!    command line pointer, ACPI RSDP), the command line, then the boot tables: a GDT with
//!    `__BOOT_CS` and `__BOOT_DS` and an identity map of 2 MiB pages over the first 4 GiB
//!    (or all RAM, if more), which the e820 map reports reserved;
//! 4. enter at load address + 0x200 in 64-bit mode with `rsi` = `boot_params`.
//!
//! The initrd goes in later ([`super::LoadPlan::place_initrd`]): page-aligned, as high
//! as `initrd_addr_max` and RAM allow, above the kernel's `init_size`.

use taproot_guest_abi::boot::linux as bp;

use super::bootinfo;
use super::initrd::{InitrdArea, InitrdFields};
use super::{
    BOOT_INFO_GPA, BootInfoPlan, BootProtocol, Entry, EntryMode, GuestConfig, LoadError, LoadPlan, Segment,
};
use crate::addr::Gpa;

/// `boot_params` (the zero page): the start of the boot information.
pub const BOOT_PARAMS_GPA: Gpa = BOOT_INFO_GPA;
/// The command line, after `boot_params`.
const CMDLINE_GPA: u64 = BOOT_PARAMS_GPA.raw() + bp::BOOT_PARAMS_SIZE as u64;
/// The GDT, in its own page after the command line's (which holds the longest one).
const GDT_GPA: u64 = CMDLINE_GPA + PAGE;
/// The identity map: PML4, PDPT, then one page directory per GiB.
const PML4_GPA: u64 = GDT_GPA + PAGE;
const PDPT_GPA: u64 = PML4_GPA + PAGE;
const PD_GPA: u64 = PDPT_GPA + PAGE;
/// The boot tables (GDT and identity map) start here; the e820 map reserves them.
pub const BOOT_TABLES_GPA: Gpa = Gpa::new(GDT_GPA);

const PAGE: u64 = 4096;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// The lowest address a protected-mode kernel loads at, and where a non-relocatable one
/// goes (the protocol's default `code32_start`).
const KERNEL_MIN_GPA: u64 = MIB;
/// The oldest protocol with `xloadflags` (2.12), which says whether a 64-bit entry exists.
const MIN_VERSION: u16 = 0x020C;
/// Identity-map at least the first 4 GiB: the kernel, boot_params, command line and an
/// initrd below `initrd_addr_max` all lie there.
const IDENTITY_MAP_MIN: u64 = 4 * GIB;

/// Long-mode descriptors (SDM Vol. 3A §3.4.5, Figure 3-8): flat code with L=1, D=0
/// (P, S, execute/read, G) at `__BOOT_CS`; flat read/write data (P, S, G, B) at
/// `__BOOT_DS`. 0x00 and 0x08 are null.
const GDT: [u64; 4] = [0, 0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF];
/// Paging-structure entry bits (SDM Vol. 3A §4.5, Tables 4-15 to 4-18): present and
/// writable; and PS, a 2 MiB page in a page directory.
const PTE_PRESENT_WRITABLE: u64 = 0x3;
const PDE_PAGE_SIZE: u64 = 1 << 7;

/// The setup header fields the loader uses.
#[derive(Clone, Copy, Debug)]
struct SetupHeader {
    setup_sects: u8,
    /// Header bytes 0x1F1..end to copy into `boot_params`.
    end: usize,
    loadflags: u8,
    initrd_addr_max: u32,
    kernel_alignment: u32,
    relocatable: bool,
    xloadflags: u16,
    cmdline_size: u32,
    pref_address: u64,
    init_size: u32,
}

fn read<const N: usize>(image: &[u8], offset: usize) -> Result<[u8; N], LoadError> {
    image
        .get(offset..offset + N)
        .and_then(|b| b.try_into().ok())
        .ok_or(LoadError::BzImageTooShort { len: image.len() as u64 })
}

fn u8_at(image: &[u8], offset: usize) -> Result<u8, LoadError> {
    Ok(read::<1>(image, offset)?[0])
}
fn u16_at(image: &[u8], offset: usize) -> Result<u16, LoadError> {
    Ok(u16::from_le_bytes(read(image, offset)?))
}
fn u32_at(image: &[u8], offset: usize) -> Result<u32, LoadError> {
    Ok(u32::from_le_bytes(read(image, offset)?))
}
fn u64_at(image: &[u8], offset: usize) -> Result<u64, LoadError> {
    Ok(u64::from_le_bytes(read(image, offset)?))
}

impl SetupHeader {
    fn parse(image: &[u8]) -> Result<Self, LoadError> {
        let boot_flag = u16_at(image, bp::BOOT_FLAG)?;
        if boot_flag != bp::BOOT_FLAG_MAGIC {
            return Err(LoadError::BzImageNoBootFlag { found: boot_flag });
        }
        if u32_at(image, bp::HEADER)? != bp::HEADER_MAGIC {
            return Err(LoadError::BzImageNoHeader);
        }
        let version = u16_at(image, bp::VERSION)?;
        if version < MIN_VERSION {
            return Err(LoadError::BzImageProtocolTooOld { version });
        }
        let end = (bp::HEADER + usize::from(u8_at(image, bp::JUMP_OFFSET)?)).min(bp::SETUP_HEADER_MAX_END);
        let header = Self {
            setup_sects: u8_at(image, bp::SETUP_SECTS)?,
            end,
            loadflags: u8_at(image, bp::LOADFLAGS)?,
            initrd_addr_max: u32_at(image, bp::INITRD_ADDR_MAX)?,
            kernel_alignment: u32_at(image, bp::KERNEL_ALIGNMENT)?,
            relocatable: u8_at(image, bp::RELOCATABLE_KERNEL)? != 0,
            xloadflags: u16_at(image, bp::XLOADFLAGS)?,
            cmdline_size: u32_at(image, bp::CMDLINE_SIZE)?,
            pref_address: u64_at(image, bp::PREF_ADDRESS)?,
            init_size: u32_at(image, bp::INIT_SIZE)?,
        };
        if header.end < bp::INIT_SIZE + 4 {
            // The header claims to end before the fields of 2.12 that we read.
            return Err(LoadError::BzImageHeaderTooShort { end: header.end });
        }
        if header.loadflags & bp::LOADED_HIGH == 0 {
            return Err(LoadError::BzImageNotLoadedHigh);
        }
        if header.xloadflags & bp::XLF_KERNEL_64 == 0 {
            return Err(LoadError::BzImageNo64BitEntry);
        }
        Ok(header)
    }

    /// Bytes of the file before the protected-mode kernel: the boot sector and the setup.
    fn setup_len(&self) -> usize {
        let sects = if self.setup_sects == 0 { 4 } else { usize::from(self.setup_sects) };
        (sects + 1) * 512
    }

    fn can_be_above_4g(&self) -> bool {
        self.xloadflags & bp::XLF_CAN_BE_LOADED_ABOVE_4G != 0
    }

    /// Where the protected-mode kernel goes.
    fn load_gpa(&self) -> Result<u64, LoadError> {
        if !self.relocatable {
            return Ok(KERNEL_MIN_GPA);
        }
        let align = u64::from(self.kernel_alignment);
        if !align.is_power_of_two() || align > GIB {
            return Err(LoadError::BzImageBadAlignment { alignment: self.kernel_alignment });
        }
        let preferred = self.pref_address.max(KERNEL_MIN_GPA);
        preferred
            .checked_next_multiple_of(align)
            .filter(|&gpa| gpa < IDENTITY_MAP_MIN)
            .ok_or(LoadError::BzImagePrefAddress { pref_address: self.pref_address })
    }
}

/// Plans a bzImage of `file_len` bytes for `config`; `image` is its start (at least the
/// setup header, which ends before [`bp::SETUP_HEADER_MAX_END`]).
pub fn plan(image: &[u8], file_len: u64, config: &GuestConfig<'_>) -> Result<LoadPlan, LoadError> {
    let header = SetupHeader::parse(image)?;
    let setup_len = header.setup_len();
    if file_len <= setup_len as u64 {
        return Err(LoadError::BzImageNoKernel { setup_len: setup_len as u64, file_len });
    }
    if config.cmdline.len() as u64 > u64::from(header.cmdline_size) {
        return Err(LoadError::CmdlineTooLong {
            len: config.cmdline.len(),
            max: header.cmdline_size as usize,
        });
    }
    let load_gpa = header.load_gpa()?;
    let kernel_len = file_len - setup_len as u64;
    // init_size covers the decompressed kernel and its work area, so the loaded file
    // normally lies within it; a header that says less still gets its file bytes.
    let reserved = kernel_len.max(u64::from(header.init_size));
    let kernel_end = load_gpa + reserved;
    if kernel_end > config.mem_size {
        return Err(LoadError::BzImageDoesNotFit {
            load_gpa,
            init_size: reserved,
            mem_size: config.mem_size,
        });
    }

    let map_len = config.mem_size.max(IDENTITY_MAP_MIN).next_multiple_of(GIB);
    let tables_end = PD_GPA + (map_len / GIB) * PAGE;
    let map = bootinfo::reserve(bootinfo::guest_memory_map(config.mem_size), GDT_GPA..tables_end);
    let mut boot = alloc::vec![0u8; (tables_end - BOOT_PARAMS_GPA.raw()) as usize];
    let params = &mut boot[..bp::BOOT_PARAMS_SIZE];
    params[bp::SETUP_HEADER..header.end].copy_from_slice(&image[bp::SETUP_HEADER..header.end]);
    params[bp::TYPE_OF_LOADER] = bp::LOADER_UNDEFINED;
    put(params, bp::CODE32_START, &(load_gpa as u32).to_le_bytes());
    put(params, bp::CMD_LINE_PTR, &(CMDLINE_GPA as u32).to_le_bytes());
    put(params, bp::ACPI_RSDP_ADDR, &config.rsdp.map_or(0, Gpa::raw).to_le_bytes());
    let entries = map.len().min(bp::E820_MAX_ENTRIES);
    params[bp::E820_ENTRIES] = entries as u8;
    for (i, range) in map.iter().take(entries).enumerate() {
        let at = bp::E820_TABLE + i * bp::E820_ENTRY_SIZE;
        put(params, at, &range.base.raw().to_le_bytes());
        put(params, at + 8, &range.len.to_le_bytes());
        put(params, at + 16, &range.kind.acpi_type().to_le_bytes());
    }
    let at = |gpa: u64| (gpa - BOOT_PARAMS_GPA.raw()) as usize;
    put(&mut boot, at(CMDLINE_GPA), config.cmdline.as_bytes());
    for (i, descriptor) in GDT.iter().enumerate() {
        put(&mut boot, at(GDT_GPA) + i * 8, &descriptor.to_le_bytes());
    }
    write_identity_map(&mut boot[at(PML4_GPA)..], map_len);

    let initrd_limit = if header.can_be_above_4g() {
        config.mem_size
    } else {
        config.mem_size.min(u64::from(header.initrd_addr_max) + 1)
    };
    Ok(LoadPlan {
        protocol: BootProtocol::Linux,
        segments: alloc::vec![Segment {
            gpa: Gpa::new(load_gpa),
            file_range: setup_len..file_len as usize,
            mem_size: kernel_len
        }],
        entry: Entry {
            mode: EntryMode::Long64 {
                rip: load_gpa + bp::ENTRY64_OFFSET,
                cr3: PML4_GPA,
                gdt_base: GDT_GPA,
                gdt_limit: (GDT.len() * 8 - 1) as u16,
            },
            eax: 0,
            ebx: 0,
            rsi: BOOT_PARAMS_GPA.raw(),
        },
        boot_info: Some(BootInfoPlan { gpa: BOOT_PARAMS_GPA, bytes: boot }),
        initrd_area: Some(InitrdArea {
            lowest: Gpa::new(kernel_end),
            limit: Gpa::new(initrd_limit),
            fields: InitrdFields::Linux,
        }),
    })
}

fn put(bytes: &mut [u8], offset: usize, value: &[u8]) {
    bytes[offset..offset + value.len()].copy_from_slice(value);
}

/// Writes, into `tables` (which starts at [`PML4_GPA`]), a PML4 and PDPT whose entries
/// lead to one page directory of 2 MiB pages per GiB of `[0, map_len)`.
fn write_identity_map(tables: &mut [u8], map_len: u64) {
    let gibs = map_len / GIB;
    put(tables, 0, &(PDPT_GPA | PTE_PRESENT_WRITABLE).to_le_bytes());
    for gib in 0..gibs {
        let pd = PD_GPA + gib * PAGE;
        put(tables, (PDPT_GPA - PML4_GPA + gib * 8) as usize, &(pd | PTE_PRESENT_WRITABLE).to_le_bytes());
        for entry in 0..512 {
            let page = gib * GIB + entry * 2 * MIB;
            let at = (pd - PML4_GPA + entry * 8) as usize;
            put(tables, at, &(page | PTE_PRESENT_WRITABLE | PDE_PAGE_SIZE).to_le_bytes());
        }
    }
}

/// The memory kinds this protocol's e820 map reports, for tests.
#[cfg(test)]
pub(super) fn e820_of(boot_params: &[u8]) -> alloc::vec::Vec<(u64, u64, bootinfo::MemoryKind)> {
    use bootinfo::MemoryKind;
    let entries = usize::from(boot_params[bp::E820_ENTRIES]);
    (0..entries)
        .map(|i| {
            let at = bp::E820_TABLE + i * bp::E820_ENTRY_SIZE;
            let word = |o: usize| u64::from_le_bytes(boot_params[at + o..at + o + 8].try_into().unwrap());
            let kind = u32::from_le_bytes(boot_params[at + 16..at + 20].try_into().unwrap());
            (word(0), word(8), if kind == 1 { MemoryKind::Ram } else { MemoryKind::Reserved })
        })
        .collect()
}
