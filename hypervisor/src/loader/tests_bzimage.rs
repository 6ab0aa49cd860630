//! Host tests of the Linux boot protocol (bzImage) and of initrd placement (bzImage and
//! PVH): hand-built setup headers, every field out of range, every truncation, random
//! mutations; boot_params, the e820 map, the GDT and the identity map read back.

use alloc::string::ToString;
use alloc::vec::Vec;
use taproot_guest_abi::boot::{hvm_start_info as si, linux as bp};

use super::bzimage::e820_of;
use super::tests::{Rng, config, multiboot32, pvh64};
use super::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const MEM_64M: u64 = 64 * MIB;
const KERNEL_BYTE: u8 = 0x90;

/// A bzImage as a distribution's kernel has it: relocatable, preferring 16 MiB with 2 MiB
/// alignment, one setup sector, protocol 2.15, a 64-bit entry.
#[derive(Clone)]
pub(crate) struct BzBuilder {
    setup_sects: u8,
    boot_flag: u16,
    header: u32,
    version: u16,
    jump: u8,
    loadflags: u8,
    initrd_addr_max: u32,
    kernel_alignment: u32,
    relocatable: u8,
    xloadflags: u16,
    cmdline_size: u32,
    pref_address: u64,
    init_size: u32,
    kernel_len: usize,
}

pub(crate) fn bz() -> BzBuilder {
    BzBuilder {
        setup_sects: 1,
        boot_flag: 0xAA55,
        header: 0x5372_6448,
        version: 0x020F,
        jump: 0x66,
        loadflags: bp::LOADED_HIGH,
        initrd_addr_max: 0x7FFF_FFFF,
        kernel_alignment: 0x20_0000,
        relocatable: 1,
        xloadflags: bp::XLF_KERNEL_64,
        cmdline_size: 2047,
        pref_address: 0x100_0000,
        init_size: 0x40_0000,
        kernel_len: 0x2000,
    }
}

impl BzBuilder {
    /// The same image with `kernel_len` bytes of protected-mode kernel (and an `init_size`
    /// that covers them).
    pub(crate) fn with_kernel_len(self, kernel_len: usize) -> Self {
        Self { kernel_len, init_size: kernel_len as u32, ..self }
    }

    fn setup_len(&self) -> usize {
        (if self.setup_sects == 0 { 4 } else { usize::from(self.setup_sects) } + 1) * 512
    }

    pub(crate) fn build(&self) -> Vec<u8> {
        let mut out = alloc::vec![0u8; self.setup_len()];
        let mut put = |at: usize, v: &[u8]| out[at..at + v.len()].copy_from_slice(v);
        put(bp::SETUP_SECTS, &[self.setup_sects]);
        put(bp::BOOT_FLAG, &self.boot_flag.to_le_bytes());
        put(0x200, &[0xEB, self.jump]);
        put(bp::HEADER, &self.header.to_le_bytes());
        put(bp::VERSION, &self.version.to_le_bytes());
        put(bp::LOADFLAGS, &[self.loadflags]);
        put(bp::CODE32_START, &0x10_0000u32.to_le_bytes());
        put(bp::INITRD_ADDR_MAX, &self.initrd_addr_max.to_le_bytes());
        put(bp::KERNEL_ALIGNMENT, &self.kernel_alignment.to_le_bytes());
        put(bp::RELOCATABLE_KERNEL, &[self.relocatable]);
        put(bp::XLOADFLAGS, &self.xloadflags.to_le_bytes());
        put(bp::CMDLINE_SIZE, &self.cmdline_size.to_le_bytes());
        put(bp::PREF_ADDRESS, &self.pref_address.to_le_bytes());
        put(bp::INIT_SIZE, &self.init_size.to_le_bytes());
        out.resize(self.setup_len() + self.kernel_len, KERNEL_BYTE);
        out
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn plan_bz(image: &[u8], cfg: &GuestConfig<'_>) -> Result<LoadPlan, LoadError> {
    plan(image, ImageFormat::BzImage, cfg)
}

/// The boot information's bytes at `gpa`.
fn at(info: &BootInfoPlan, gpa: u64) -> &[u8] {
    &info.bytes[(gpa - info.gpa.raw()) as usize..]
}

/// Walks the loader's page tables for `va` (4-level, 2 MiB leaves): the physical address,
/// or `None` if unmapped.
fn translate(info: &BootInfoPlan, cr3: u64, va: u64) -> Option<u64> {
    let entry = |table: u64, index: u64| {
        let e = u64_at(at(info, table), (index * 8) as usize);
        (e & 1 != 0).then_some(e)
    };
    let pml4e = entry(cr3, (va >> 39) & 511)?;
    let pdpte = entry(pml4e & !0xFFF, (va >> 30) & 511)?;
    assert_eq!(pdpte & 0x80, 0, "no 1 GiB pages");
    let pde = entry(pdpte & !0xFFF, (va >> 21) & 511)?;
    assert_ne!(pde & 0x80, 0, "2 MiB pages");
    assert_ne!(pde & 0x2, 0, "writable");
    Some((pde & !0x1F_FFFF & ((1 << 52) - 1)) | (va & 0x1F_FFFF))
}

/// What every accepted bzImage plan must satisfy, whatever the input was.
fn assert_bz_plan_is_sound(image: &[u8], plan: &LoadPlan, mem_size: u64) {
    assert_eq!(plan.protocol, BootProtocol::Linux);
    let [kernel] = plan.segments.as_slice() else { panic!("one segment: {plan:?}") };
    assert!(kernel.file_range.end == image.len() && kernel.file_range.start < image.len());
    assert!(kernel.gpa.raw() >= MIB && kernel.gpa_range().end.raw() <= mem_size);
    let EntryMode::Long64 { rip, cr3, gdt_base, gdt_limit } = plan.entry.mode else { panic!("64-bit entry") };
    assert_eq!(rip, kernel.gpa.raw() + 0x200);
    let info = plan.boot_info.as_ref().unwrap();
    assert_eq!(plan.entry.rsi, info.gpa.raw());
    let end = info.gpa.raw() + info.bytes.len() as u64;
    assert!(end <= 0xA_0000 && gdt_base + u64::from(gdt_limit) < end && cr3 < end);
    for va in [0, rip, info.gpa.raw(), mem_size - 1] {
        assert_eq!(translate(info, cr3, va), Some(va), "identity map at {va:#x}");
    }
    let area = plan.initrd_area.as_ref().unwrap();
    assert!(area.lowest >= kernel.gpa_range().end);
}

#[test]
fn bzimage_plans_the_kernel_the_64_bit_entry_and_boot_params() {
    let image = bz().build();
    let cfg = GuestConfig { rsdp: Some(Gpa::new(0xE_0000)), ..config(MEM_64M) };
    let plan = plan_bz(&image, &cfg).unwrap();
    assert_bz_plan_is_sound(&image, &plan, MEM_64M);
    assert_eq!(plan.segments[0].gpa, Gpa::new(0x100_0000), "pref_address");
    assert_eq!(plan.segments[0].file_range, 1024..image.len());
    assert!(plan.segments[0].file_bytes(&image).iter().all(|&b| b == KERNEL_BYTE));
    assert_eq!(plan.entry.mode.entry_gpa(), Gpa::new(0x100_0200));
    assert_eq!((plan.entry.rsi, plan.entry.eax, plan.entry.ebx), (0x1000, 0, 0));

    let info = plan.boot_info.as_ref().unwrap();
    assert_eq!(info.gpa, BOOT_PARAMS_GPA);
    let params = &info.bytes[..bp::BOOT_PARAMS_SIZE];
    // The setup header, copied as the protocol says, with the loader's fields filled.
    let written = [
        bp::TYPE_OF_LOADER..bp::TYPE_OF_LOADER + 1,
        bp::CODE32_START..bp::CODE32_START + 4,
        bp::CMD_LINE_PTR..bp::CMD_LINE_PTR + 4,
    ];
    for offset in bp::SETUP_HEADER..0x268 {
        if !written.iter().any(|r| r.contains(&offset)) {
            assert_eq!(params[offset], image[offset], "setup header byte {offset:#x}");
        }
    }
    assert_eq!(u32_at(params, bp::HEADER), 0x5372_6448);
    assert_eq!(u16_at(params, bp::VERSION), 0x020F);
    assert_eq!(u32_at(params, bp::INIT_SIZE), 0x40_0000);
    assert_eq!(params[bp::TYPE_OF_LOADER], 0xFF);
    assert_eq!(u32_at(params, bp::CODE32_START), 0x100_0000);
    assert_eq!(u64_at(params, bp::ACPI_RSDP_ADDR), 0xE_0000);
    assert_eq!(
        (u32_at(params, bp::RAMDISK_IMAGE), u32_at(params, bp::RAMDISK_SIZE)),
        (0, 0),
        "no initrd yet"
    );
    let cmdline = u64::from(u32_at(params, bp::CMD_LINE_PTR));
    assert_eq!(u32_at(params, bp::EXT_CMD_LINE_PTR), 0);
    assert_eq!(&at(info, cmdline)[..13], b"mib=16 hello\0");
    // Nothing of the zero page outside the header and the loader's fields is set.
    assert!(params[..bp::ACPI_RSDP_ADDR].iter().all(|&b| b == 0), "screen_info and the rest untouched");
    assert!(params[bp::ACPI_RSDP_ADDR + 8..bp::EXT_RAMDISK_IMAGE].iter().all(|&b| b == 0));
}

#[test]
fn e820_reports_ram_the_legacy_hole_and_the_boot_tables() {
    let image = bz().build();
    let plan = plan_bz(&image, &config(MEM_64M)).unwrap();
    let info = plan.boot_info.unwrap();
    let tables = BOOT_TABLES_GPA.raw();
    // GDT, PML4, PDPT and four page directories for 4 GiB.
    let tables_end = tables + 7 * 4096;
    assert_eq!(
        e820_of(&info.bytes),
        [
            (0, tables, MemoryKind::Ram),
            (tables, tables_end - tables, MemoryKind::Reserved),
            (tables_end, 0xA_0000 - tables_end, MemoryKind::Ram),
            (0xA_0000, 0x6_0000, MemoryKind::Reserved),
            (MIB, MEM_64M - MIB, MemoryKind::Ram),
        ]
    );
    assert_eq!(info.bytes.len() as u64, tables_end - info.gpa.raw());
}

#[test]
fn the_gdt_holds_boot_cs_and_boot_ds_and_the_map_covers_ram_beyond_4_gib() {
    let mem = 6 * GIB;
    let plan = plan_bz(&bz().build(), &config(mem)).unwrap();
    assert_bz_plan_is_sound(&bz().build(), &plan, mem);
    let info = plan.boot_info.as_ref().unwrap();
    let EntryMode::Long64 { cr3, gdt_base, gdt_limit, .. } = plan.entry.mode else { unreachable!() };
    assert_eq!(gdt_limit, 31);
    let gdt = at(info, gdt_base);
    let desc = |sel: u16| u64_at(gdt, usize::from(sel));
    let (cs, ds) = (desc(bp::BOOT_CS), desc(bp::BOOT_DS));
    // P, S, code, L=1, D=0; data P, S, writable.
    assert_eq!((cs >> 47) & 1, 1);
    assert_eq!((cs >> 43) & 3, 3, "code, S");
    assert_eq!(((cs >> 53) & 1, (cs >> 54) & 1), (1, 0), "L=1, D=0");
    assert_eq!((ds >> 43) & 3, 2, "data, S");
    assert_eq!((ds >> 41) & 1, 1, "writable");
    assert_eq!((ds >> 47) & 1, 1);
    for va in [4 * GIB, mem - 1] {
        assert_eq!(translate(info, cr3, va), Some(va));
    }
    assert_eq!(translate(info, cr3, mem.next_multiple_of(GIB) + 4096), None);
}

#[test]
fn placement_follows_relocatable_alignment_and_init_size() {
    let fixed = BzBuilder { relocatable: 0, ..bz() };
    assert_eq!(plan_bz(&fixed.build(), &config(MEM_64M)).unwrap().segments[0].gpa, Gpa::new(MIB));
    let odd = BzBuilder { pref_address: 0x110_0000, ..bz() };
    assert_eq!(plan_bz(&odd.build(), &config(MEM_64M)).unwrap().segments[0].gpa, Gpa::new(0x120_0000));
    let low = BzBuilder { pref_address: 0x1000, kernel_alignment: 0x1000, ..bz() };
    assert_eq!(
        plan_bz(&low.build(), &config(MEM_64M)).unwrap().segments[0].gpa,
        Gpa::new(MIB),
        "not below 1 MiB"
    );
    // init_size decides whether the kernel fits, and where the initrd may start.
    let plan = plan_bz(&bz().build(), &config(MEM_64M)).unwrap();
    assert_eq!(plan.initrd_area.unwrap().lowest, Gpa::new(0x140_0000));
    let tight = config(0x140_0000);
    assert!(plan_bz(&bz().build(), &tight).is_ok());
    assert_eq!(
        plan_bz(&bz().build(), &config(0x13F_F000)).unwrap_err(),
        LoadError::BzImageDoesNotFit { load_gpa: 0x100_0000, init_size: 0x40_0000, mem_size: 0x13F_F000 }
    );
}

#[test]
fn every_bad_header_field_is_a_typed_error() {
    let cfg = config(MEM_64M);
    let cases: [(BzBuilder, LoadError); 10] = [
        (BzBuilder { boot_flag: 0x55AA, ..bz() }, LoadError::BzImageNoBootFlag { found: 0x55AA }),
        (BzBuilder { header: 0x5372_6449, ..bz() }, LoadError::BzImageNoHeader),
        (BzBuilder { version: 0x020B, ..bz() }, LoadError::BzImageProtocolTooOld { version: 0x020B }),
        (BzBuilder { jump: 0x40, ..bz() }, LoadError::BzImageHeaderTooShort { end: 0x242 }),
        (BzBuilder { loadflags: 0, ..bz() }, LoadError::BzImageNotLoadedHigh),
        (BzBuilder { xloadflags: bp::XLF_CAN_BE_LOADED_ABOVE_4G, ..bz() }, LoadError::BzImageNo64BitEntry),
        (BzBuilder { kernel_len: 0, ..bz() }, LoadError::BzImageNoKernel { setup_len: 1024, file_len: 1024 }),
        (
            BzBuilder { kernel_alignment: 0x30_0000, ..bz() },
            LoadError::BzImageBadAlignment { alignment: 0x30_0000 },
        ),
        (
            BzBuilder { pref_address: 4 * GIB, ..bz() },
            LoadError::BzImagePrefAddress { pref_address: 4 * GIB },
        ),
        (BzBuilder { cmdline_size: 5, ..bz() }, LoadError::CmdlineTooLong { len: 12, max: 5 }),
    ];
    for (builder, expected) in cases {
        let error = plan_bz(&builder.build(), &cfg).unwrap_err();
        assert_eq!(error, expected);
        assert!(!error.to_string().is_empty());
    }
    // An ELF is not a bzImage, and a bzImage is not an ELF.
    assert!(matches!(
        plan_bz(&pvh64().build(), &cfg),
        Err(LoadError::BzImageTooShort { .. } | LoadError::BzImageNoBootFlag { .. })
    ));
    assert_eq!(plan(&bz().build(), ImageFormat::Elf, &cfg).unwrap_err(), LoadError::NotElf);
    // setup_sects 0 means 4.
    let four = BzBuilder { setup_sects: 0, ..bz() };
    assert_eq!(plan_bz(&four.build(), &cfg).unwrap().segments[0].file_range.start, 5 * 512);
}

#[test]
fn every_bzimage_truncation_is_an_error_and_never_a_panic() {
    let image = bz().build();
    let setup = bz().setup_len();
    for len in 0..=setup {
        let result = plan_bz(&image[..len], &config(MEM_64M));
        assert!(result.is_err(), "prefix of {len} bytes accepted");
        let _ = result.unwrap_err().to_string();
    }
    // A shorter kernel is still a kernel: the file's bytes are what gets loaded.
    let plan = plan_bz(&image[..setup + 1], &config(MEM_64M)).unwrap();
    assert_eq!(plan.segments[0].file_range, setup..setup + 1);
}

#[test]
fn random_header_mutations_give_sound_plans_or_typed_errors() {
    let mut rng = Rng(0xB2_1A6E_0000_0011);
    let base = bz().build();
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut image = base.clone();
        for _ in 0..1 + rng.below(4) {
            let at = 0x1F0 + rng.below(0x80);
            match rng.below(3) {
                0 => image[at] ^= 1 << rng.below(8),
                1 => image[at] = rng.next() as u8,
                _ => image[at] = [0, 0xFF, 0x7F, 0x80][rng.below(4)],
            }
        }
        let mem = [MIB, 20 * MIB, MEM_64M, 5 * GIB][rng.below(4)];
        match plan_bz(&image, &config(mem)) {
            Ok(mut plan) => {
                accepted += 1;
                assert_bz_plan_is_sound(&image, &plan, mem);
                if let Ok(gpa) = plan.place_initrd(1 + rng.next() % (64 * MIB)) {
                    let area = plan.initrd_area.as_ref().unwrap();
                    assert!(gpa >= area.lowest && gpa.raw().is_multiple_of(4096));
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    assert!(accepted > 1000, "only {accepted} mutated images were accepted");
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 2000, ..Default::default() })]

    /// Any value in any field the loader reads gives a sound plan or an error.
    #[test]
    fn arbitrary_header_fields_never_panic(
        setup_sects: u8, jump: u8, version: u16, loadflags: u8, initrd_addr_max: u32,
        kernel_alignment: u32, relocatable: u8, xloadflags: u16, cmdline_size: u32,
        pref_address: u64, init_size: u32, kernel_len in 0usize..4096, mem_mib in 0u64..8192,
        initrd_size: u64,
    ) {
        let image = BzBuilder {
            setup_sects, jump, version, loadflags, initrd_addr_max, kernel_alignment, relocatable,
            xloadflags, cmdline_size, pref_address, init_size, kernel_len, ..bz()
        }.build();
        let cfg = config(mem_mib * MIB);
        if let Ok(mut plan) = plan_bz(&image, &cfg) {
            assert_bz_plan_is_sound(&image, &plan, cfg.mem_size);
            if let Ok(gpa) = plan.place_initrd(initrd_size) {
                assert!(gpa.raw() + initrd_size <= cfg.mem_size);
            }
        }
    }
}

#[test]
fn the_initrd_goes_page_aligned_as_high_as_initrd_addr_max_and_ram_allow() {
    let mut plan = plan_bz(&bz().build(), &config(MEM_64M)).unwrap();
    let gpa = plan.place_initrd(0x1234).unwrap();
    assert_eq!(gpa, Gpa::new(MEM_64M - 0x2000), "highest page-aligned start that fits below RAM's end");
    let params = &plan.boot_info.as_ref().unwrap().bytes;
    assert_eq!(
        (u32_at(params, bp::RAMDISK_IMAGE), u32_at(params, bp::RAMDISK_SIZE)),
        (gpa.raw() as u32, 0x1234)
    );
    assert_eq!((u32_at(params, bp::EXT_RAMDISK_IMAGE), u32_at(params, bp::EXT_RAMDISK_SIZE)), (0, 0));

    // Replacing it overwrites the fields.
    let again = plan.place_initrd(3 * MIB).unwrap();
    assert_eq!(again, Gpa::new(MEM_64M - 3 * MIB));
    assert_eq!(u32_at(&plan.boot_info.as_ref().unwrap().bytes, bp::RAMDISK_SIZE), 3 * MIB as u32);

    // initrd_addr_max bounds the last byte.
    let capped = BzBuilder { initrd_addr_max: 0x1FF_FFFF, ..bz() };
    let mut plan = plan_bz(&capped.build(), &config(MEM_64M)).unwrap();
    assert_eq!(plan.place_initrd(0x1000).unwrap(), Gpa::new(0x1FF_F000));

    // Too large for the room between init_size's end (20 MiB) and RAM's end.
    let mut plan = plan_bz(&bz().build(), &config(MEM_64M)).unwrap();
    assert_eq!(
        plan.place_initrd(MEM_64M - 20 * MIB + 1).unwrap_err(),
        LoadError::InitrdDoesNotFit { size: MEM_64M - 20 * MIB + 1, lowest: 20 * MIB, limit: MEM_64M }
    );
    assert_eq!(plan.place_initrd(MEM_64M - 20 * MIB).unwrap(), Gpa::new(20 * MIB));
    assert_eq!(plan.place_initrd(0).unwrap_err(), LoadError::InitrdEmpty);
}

#[test]
fn above_4_gib_the_ext_ramdisk_fields_carry_the_high_half() {
    let mem = 6 * GIB;
    let high = BzBuilder { xloadflags: bp::XLF_KERNEL_64 | bp::XLF_CAN_BE_LOADED_ABOVE_4G, ..bz() };
    let mut plan = plan_bz(&high.build(), &config(mem)).unwrap();
    let gpa = plan.place_initrd(MIB).unwrap();
    assert_eq!(gpa, Gpa::new(mem - MIB));
    let params = &plan.boot_info.as_ref().unwrap().bytes;
    assert_eq!(u32_at(params, bp::RAMDISK_IMAGE), (gpa.raw() & 0xFFFF_FFFF) as u32);
    assert_eq!(u32_at(params, bp::EXT_RAMDISK_IMAGE), 1);
    // Without XLF_CAN_BE_LOADED_ABOVE_4G, initrd_addr_max (2 GiB) holds.
    let mut plan = plan_bz(&bz().build(), &config(mem)).unwrap();
    assert_eq!(plan.place_initrd(MIB).unwrap(), Gpa::new(2 * GIB - MIB));
}

#[test]
fn pvh_takes_the_initrd_as_module_0_and_multiboot_takes_none() {
    let mut plan = plan(&pvh64().build(), ImageFormat::Pvh, &config(MEM_64M)).unwrap();
    let info = plan.boot_info.as_ref().unwrap();
    assert_eq!(u32_at(&info.bytes, si::NR_MODULES), 0, "no module until an initrd is placed");
    let gpa = plan.place_initrd(5000).unwrap();
    assert_eq!(gpa, Gpa::new(MEM_64M - 0x2000));
    let info = plan.boot_info.as_ref().unwrap();
    assert_eq!(u32_at(&info.bytes, si::NR_MODULES), 1);
    let modlist = u64_at(&info.bytes, si::MODLIST_PADDR);
    let entry = at(info, modlist);
    assert_eq!((u64_at(entry, 0), u64_at(entry, 8), u64_at(entry, 16)), (gpa.raw(), 5000, 0));
    assert!(modlist + 32 <= info.gpa.raw() + info.bytes.len() as u64);
    // The module stays above the image and below 4 GiB.
    let mut big = plan.clone();
    assert!(matches!(big.place_initrd(5 * GIB), Err(LoadError::InitrdDoesNotFit { limit: MEM_64M, .. })));

    let mut mb = plan_mb();
    assert_eq!(
        mb.place_initrd(10).unwrap_err(),
        LoadError::InitrdNotSupported { protocol: BootProtocol::Multiboot1 }
    );
}

fn plan_mb() -> LoadPlan {
    plan(&multiboot32().build(), ImageFormat::Multiboot1, &config(MEM_64M)).unwrap()
}

#[test]
fn format_names_include_bzimage() {
    assert_eq!(ImageFormat::by_name("bzimage"), Some(ImageFormat::BzImage));
    assert_eq!(ImageFormat::by_name("pvh"), Some(ImageFormat::Pvh));
    assert_eq!(ImageFormat::by_name("vmlinuz"), None);
}
