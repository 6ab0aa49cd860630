//! Host tests of staged uploads over an MMU backed by host pages: an image written to the
//! top of guest RAM is planned by reading guest memory (in bounded pieces) and placed
//! guest-to-guest; what breaks the staging rule is refused before anything is written.

use super::*;
use crate::loader::{GuestConfig, HEAD_LEN, TABLE_MAX_LEN, plan_from};
use crate::memslot::{SlotId, SlotSpec};
use crate::mmu::MmuConfig;
use crate::mmu::ept::Ept;
use crate::mmu::host::{HostPages, HostPagesConfig, HostPlatform, RecordingFlush};
use alloc::sync::Arc;
use core::cell::Cell;

type Host = HostPlatform<Ept>;

const MIB: u64 = 1 << 20;

/// A VM's memory: one RAM slot of `mem_size` bytes at 0.
fn guest(mem_size: u64) -> Mmu<Host> {
    let pages = HostPages::new(HostPagesConfig::default());
    let mmu =
        Mmu::new(MmuConfig::default(), Arc::new(pages), Arc::new(RecordingFlush::new()), Default::default());
    let spec = SlotSpec {
        id: SlotId(0),
        as_id: AsId::Normal,
        base: Gpa::new(0),
        size: mem_size,
        flags: Default::default(),
    };
    mmu.add_slot(spec).unwrap();
    mmu
}

/// Writes `image` to its staging area in pieces, as an upload arrives.
fn stage(mmu: &Mmu<Host>, image: &[u8], mem_size: u64) -> StagedImage {
    let staged = staging_area(image.len() as u64, mem_size).unwrap();
    for (i, piece) in image.chunks(64 * 1024 + 7).enumerate() {
        let gpa = Gpa::new(staged.gpa.raw() + (i * (64 * 1024 + 7)) as u64);
        mmu.write_guest(AsId::Normal, gpa, piece).unwrap();
    }
    staged
}

/// An image source that counts what is read through it.
struct Counting<'a> {
    inner: &'a dyn ImageSource,
    read: Cell<u64>,
}

impl ImageSource for Counting<'_> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), LoadError> {
        self.read.set(self.read.get() + buf.len() as u64);
        self.inner.read_at(offset, buf)
    }
}

/// A bzImage whose kernel bytes differ at every offset (so a shifted copy shows).
fn bzimage(kernel_len: usize) -> Vec<u8> {
    let mut image = crate::loader::tests_bzimage::bz().with_kernel_len(kernel_len).build();
    let setup_len = image.len() - kernel_len;
    for (i, byte) in image[setup_len..].iter_mut().enumerate() {
        *byte = (i ^ (i >> 11) ^ (i >> 19)) as u8;
    }
    image
}

fn read(mmu: &Mmu<Host>, gpa: u64, len: usize) -> Vec<u8> {
    let mut buf = alloc::vec![0; len];
    mmu.read_guest(AsId::Normal, Gpa::new(gpa), &mut buf).unwrap();
    buf
}

#[test]
fn a_128_mib_bzimage_staged_in_a_512_mib_vm_is_planned_from_bounded_reads_and_placed() {
    let mem_size = 512 * MIB;
    let mmu = guest(mem_size);
    let image = bzimage(128 * MIB as usize - 1024);
    let staged = stage(&mmu, &image, mem_size);
    assert_eq!(staged.gpa.raw(), mem_size - 128 * MIB, "staged at the top of RAM");

    let source = GuestImage { mmu: &mmu, staged };
    let counting = Counting { inner: &source, read: Cell::new(0) };
    let config = GuestConfig { mem_size, cmdline: "console=ttyS0", rsdp: None };
    let plan = plan_from(&counting, ImageFormat::BzImage, &config).unwrap();
    assert!(counting.read.get() <= HEAD_LEN as u64, "planning read {} bytes", counting.read.get());

    check_below_staging(&plan, &staged).unwrap();
    place_segments(&mmu, &source, &plan).unwrap();
    let segment = &plan.segments[0];
    assert_eq!(segment.gpa.raw(), 16 * MIB);
    let kernel = &image[segment.file_range.clone()];
    for (i, expected) in kernel.chunks(COPY_CHUNK * 3 + 1).enumerate() {
        let at = segment.gpa.raw() + (i * (COPY_CHUNK * 3 + 1)) as u64;
        assert!(read(&mmu, at, expected.len()) == expected, "kernel bytes at {at:#x}");
    }
}

#[test]
fn reads_of_a_staged_image_stay_inside_it() {
    let mem_size = 8 * MIB;
    let mmu = guest(mem_size);
    let staged = stage(&mmu, &[7; 5000], mem_size);
    let source = GuestImage { mmu: &mmu, staged };
    let mut buf = [0; 8];
    source.read_at(4992, &mut buf).unwrap();
    assert_eq!(buf, [7; 8]);
    assert_eq!(source.read_at(4993, &mut buf), Err(LoadError::ImageRead { offset: 4993 }));
    assert_eq!(source.read_at(u64::MAX, &mut buf), Err(LoadError::ImageRead { offset: u64::MAX }));
}

#[test]
fn a_bad_image_after_staging_is_refused_by_the_plan() {
    let mem_size = 64 * MIB;
    let mmu = guest(mem_size);
    // Cut off inside its kernel's setup: the header says more setup than there is.
    let mut image = bzimage(0x2000);
    image.truncate(1000);
    let staged = stage(&mmu, &image, mem_size);
    let config = GuestConfig { mem_size, cmdline: "", rsdp: None };
    let source = GuestImage { mmu: &mmu, staged };
    assert!(matches!(
        plan_from(&source, ImageFormat::BzImage, &config),
        Err(LoadError::BzImageNoKernel { .. })
    ));
    // Not an ELF.
    assert_eq!(plan_from(&source, ImageFormat::Pvh, &config), Err(LoadError::NotElf));
}

#[test]
fn segments_that_reach_the_staging_area_are_refused_before_any_copy() {
    // 40 MiB of kernel at 16 MiB ends at 56 MiB; staged in a 64 MiB VM it starts at 24 MiB.
    let mem_size = 64 * MIB;
    let mmu = guest(mem_size);
    let image = bzimage(40 * MIB as usize);
    let staged = stage(&mmu, &image, mem_size);
    let config = GuestConfig { mem_size, cmdline: "", rsdp: None };
    let plan = plan_from(&GuestImage { mmu: &mmu, staged }, ImageFormat::BzImage, &config).unwrap();
    let Err(VmError::BadImage(message)) = check_below_staging(&plan, &staged) else {
        panic!("a segment overlapping the staging area is refused");
    };
    assert!(message.contains("97 MiB of RAM or more"), "{message}");
    // With the RAM the message names, the same image places.
    let mmu = guest(97 * MIB);
    let staged = stage(&mmu, &image, 97 * MIB);
    let config = GuestConfig { mem_size: 97 * MIB, ..config };
    let plan = plan_from(&GuestImage { mmu: &mmu, staged }, ImageFormat::BzImage, &config).unwrap();
    check_below_staging(&plan, &staged).unwrap();
}

#[test]
fn the_staging_area_ends_at_the_top_of_ram_and_never_reaches_below_1_mib() {
    let area = staging_area(5000, 64 * MIB).unwrap();
    assert_eq!((area.gpa.raw(), area.len), (64 * MIB - 0x2000, 5000));
    assert_eq!(staging_area(63 * MIB, 64 * MIB).unwrap().gpa.raw(), STAGING_LOWEST);
    for len in [63 * MIB + 1, 64 * MIB, 65 * MIB, u64::MAX - 10] {
        assert!(matches!(staging_area(len, 64 * MIB), Err(VmError::TooLarge(_))), "{len}");
    }
}

#[test]
fn planning_an_elf_reads_only_its_head_and_tables() {
    // An ELF whose program header table would be larger than the loader reads.
    let mut head = alloc::vec![0u8; 64];
    head[..4].copy_from_slice(b"\x7fELF");
    head[4] = 2; // ELFCLASS64
    head[5] = 1; // little-endian
    head[6] = 1; // EV_CURRENT
    head[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    head[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    head[20..24].copy_from_slice(&1u32.to_le_bytes());
    head[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    head[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    head[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    head[56..58].copy_from_slice(&0xFFFEu16.to_le_bytes()); // e_phnum
    let mem_size = 16 * MIB;
    let config = GuestConfig { mem_size, cmdline: "", rsdp: None };
    let image: &[u8] = &head;
    assert!(matches!(
        plan_from(&image, ImageFormat::Elf, &config),
        Err(LoadError::ElfTableTooLarge { max: TABLE_MAX_LEN, .. })
    ));
}
