//! The tables, parsed back with the `acpi` crate (the parser libos uses on real hardware)
//! and checked byte by byte where that parser says nothing (checksums, the DSDT's AML).

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use acpi::address::AddressSpace as ParsedAddressSpace;
use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiTables as ParsedTables, PhysicalMapping};

use super::*;

/// Guest memory holding the tables at their guest-physical address, for the parser.
#[derive(Clone, Copy)]
struct GuestMemory {
    base: usize,
    bytes: &'static [u8],
}

impl GuestMemory {
    /// The tables in memory with the same alignment as their guest-physical addresses up
    /// to a page (the parser reads packed structures, but keep it honest). Leaked: tests
    /// are short.
    fn new(tables: &AcpiTables) -> Self {
        const PAGE: usize = 4096;
        let base = tables.base() as usize;
        let storage: &'static mut [u8] = Box::leak(vec![0u8; tables.bytes().len() + PAGE].into_boxed_slice());
        let misalignment = (base % PAGE + PAGE - storage.as_ptr() as usize % PAGE) % PAGE;
        let bytes = &mut storage[misalignment..misalignment + tables.bytes().len()];
        bytes.copy_from_slice(tables.bytes());
        Self { base, bytes }
    }

    /// The bytes at guest-physical `address`, `len` of them.
    fn slice(&self, address: u64, len: usize) -> &'static [u8] {
        let offset = address as usize - self.base;
        &self.bytes[offset..offset + len]
    }
}

// The parser's handler interface is unsafe by contract (it maps physical memory); this one
// only hands out pointers into `bytes`, checked to lie inside it.
#[allow(unsafe_code)]
impl acpi::AcpiHandler for GuestMemory {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let offset = physical_address.checked_sub(self.base).expect("below the tables");
        assert!(offset + size <= self.bytes.len(), "past the tables: {physical_address:#x}+{size:#x}");
        let start = core::ptr::NonNull::from(&self.bytes[offset]).cast::<T>();
        // SAFETY: `start..start+size` lies inside `bytes`, which lives for the whole test
        // and is never written again; the parser reads only packed structures.
        unsafe { PhysicalMapping::new(physical_address, start, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

fn parse(tables: &AcpiTables) -> (GuestMemory, ParsedTables<GuestMemory>) {
    let memory = GuestMemory::new(tables);
    #[allow(unsafe_code)]
    // SAFETY: the address is the RSDP's inside `memory`, which the handler maps checked.
    let parsed = unsafe { ParsedTables::from_rsdp(memory, tables.rsdp_address() as usize) };
    (memory, parsed.expect("the parser accepts the tables"))
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |s, &b| s.wrapping_add(b))
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

/// The SDT at `address` with its header's length.
fn table(memory: &GuestMemory, address: u64) -> &'static [u8] {
    let len = u32_at(memory.slice(address, 8), 4) as usize;
    memory.slice(address, len)
}

/// `(signature, bytes)` of every table the XSDT reaches, and the DSDT through the FADT.
fn all_tables(memory: &GuestMemory, rsdp_address: u64) -> Vec<([u8; 4], &'static [u8])> {
    let rsdp = memory.slice(rsdp_address, 36);
    let xsdt = table(memory, u64_at(rsdp, 24));
    let mut tables = vec![(*b"XSDT", xsdt)];
    for entry in xsdt[36..].chunks(8) {
        let t = table(memory, u64::from_le_bytes(entry.try_into().unwrap()));
        tables.push((t[..4].try_into().unwrap(), t));
    }
    let fadt = tables.iter().find(|(s, _)| s == b"FACP").expect("XSDT lists the FADT").1;
    // X_DSDT at offset 140 (ACPI 6.5 §5.2.9, the FADT format table).
    tables.push((*b"DSDT", table(memory, u64_at(fadt, 140))));
    tables
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn rsdp_is_in_the_bios_area_16_byte_aligned_with_both_checksums() {
    let tables = build(&PlatformDescription::pc(2), BIOS_AREA_BASE).unwrap();
    assert_eq!(tables.rsdp_address(), BIOS_AREA_BASE);
    assert!(BIOS_AREA_BASE + tables.bytes().len() as u64 <= BIOS_AREA_END);
    let rsdp = &tables.bytes()[tables.rsdp_offset()..tables.rsdp_offset() + 36];
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(rsdp[15], 2, "revision 2: the XSDT address is valid");
    assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
    assert_eq!(sum(rsdp), 0, "extended checksum");
    // An unaligned base: the RSDP moves to the next 16-byte boundary.
    let shifted = build(&PlatformDescription::pc(2), BIOS_AREA_BASE + 3).unwrap();
    assert_eq!(shifted.rsdp_address(), BIOS_AREA_BASE + 16);
    assert_eq!(shifted.rsdp_offset(), 13);
}

#[test]
fn every_table_sums_to_zero() {
    for vcpus in [1, 2, 7, 255] {
        let tables = build(&PlatformDescription::pc(vcpus), BIOS_AREA_BASE).unwrap();
        let memory = GuestMemory::new(&tables);
        let found = all_tables(&memory, tables.rsdp_address());
        let signatures: Vec<_> = found.iter().map(|(s, _)| *s).collect();
        assert_eq!(signatures, [*b"XSDT", *b"FACP", *b"APIC", *b"DSDT"]);
        for (signature, bytes) in found {
            assert_eq!(sum(bytes), 0, "{} with {vcpus} vCPUs", core::str::from_utf8(&signature).unwrap());
        }
    }
}

#[test]
fn madt_lists_each_vcpu_the_io_apic_the_overrides_and_the_nmi() {
    let platform = PlatformDescription { vcpus: 4, io_apic_id: 4, io_apic_address: IO_APIC_DEFAULT_BASE };
    let tables = build(&platform, BIOS_AREA_BASE).unwrap();
    let (_memory, parsed) = parse(&tables);
    let madt = parsed.find_table::<Madt>().expect("an MADT");
    assert_eq!({ madt.get().local_apic_address }, 0xFEE0_0000);
    assert!(madt.get().supports_8259(), "PCAT_COMPAT");
    let mut apic_ids = Vec::new();
    let (mut io_apics, mut overrides, mut nmis) = (Vec::new(), Vec::new(), Vec::new());
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(e) => {
                assert_eq!({ e.flags } & 1, 1, "enabled");
                assert_eq!(e.processor_id, e.apic_id);
                apic_ids.push(e.apic_id);
            }
            MadtEntry::IoApic(e) => {
                io_apics.push((e.io_apic_id, { e.io_apic_address }, { e.global_system_interrupt_base }));
            }
            MadtEntry::InterruptSourceOverride(e) => {
                overrides.push((e.bus, e.irq, { e.global_system_interrupt }, { e.flags }));
            }
            MadtEntry::LocalApicNmi(e) => nmis.push((e.processor_id, { e.flags }, e.nmi_line)),
            _ => panic!("unexpected MADT entry"),
        }
    }
    assert_eq!(apic_ids, [0, 1, 2, 3]);
    assert_eq!(io_apics, [(4, 0xFEC0_0000, 0)]);
    // IRQ 0 -> GSI 2 conforming (edge, high); IRQ 9 -> GSI 9 level, active high.
    assert_eq!(overrides, [(0, 0, 2, 0), (0, 9, 9, 0b1101)]);
    assert_eq!(nmis, [(0xFF, 0, 1)], "LINT1 of every processor");
}

#[test]
fn madt_has_one_local_apic_per_vcpu_up_to_255() {
    for vcpus in [1, 255] {
        let tables = build(&PlatformDescription::pc(vcpus), 0x1000_0000).unwrap();
        let (_memory, parsed) = parse(&tables);
        let madt = parsed.find_table::<Madt>().unwrap();
        let count = madt.get().entries().filter(|e| matches!(e, MadtEntry::LocalApic(_))).count();
        assert_eq!(count, usize::from(vcpus));
    }
    assert_eq!(build(&PlatformDescription::pc(0), BIOS_AREA_BASE), Err(AcpiBuildError::NoVcpus));
}

#[test]
fn fadt_names_the_pm_ports_the_sci_and_the_reset_register() {
    let tables = build(&PlatformDescription::pc(1), BIOS_AREA_BASE).unwrap();
    let (memory, parsed) = parse(&tables);
    let fadt = parsed.find_table::<Fadt>().expect("a FADT");
    let fadt = fadt.get();
    let io = |gas: acpi::address::GenericAddress| {
        assert!(matches!(gas.address_space, ParsedAddressSpace::SystemIo));
        (gas.address, gas.bit_width)
    };
    assert_eq!(io(fadt.pm1a_event_block().unwrap()), (0x600, 32));
    assert_eq!(io(fadt.pm1a_control_block().unwrap()), (0x604, 16));
    assert_eq!(io(fadt.pm_timer_block().unwrap().expect("a PM timer")), (0x608, 32));
    assert!(fadt.pm1b_event_block().unwrap().is_none() && fadt.pm1b_control_block().unwrap().is_none());
    assert!({ fadt.flags }.pm_timer_is_32_bit());
    assert!(!{ fadt.flags }.system_is_hw_reduced_acpi());
    assert!({ fadt.flags }.supports_system_reset_via_fadt());
    assert!(!{ fadt.flags }.power_button_is_control_method(), "the fixed power button exists");
    assert_eq!(io(fadt.reset_register().unwrap()), (0xCF9, 8));
    assert_eq!(fadt.reset_value, 0x06);
    assert_eq!({ fadt.sci_interrupt }, 9);
    assert_eq!({ fadt.smi_cmd_port }, 0, "always in ACPI mode");
    assert!({ fadt.iapc_boot_arch }.motherboard_implements_8042());
    assert!({ fadt.iapc_boot_arch }.legacy_devices_are_accessible());
    // The DSDT and the FACS are inside the tables, the FACS 64-byte aligned.
    let end = (tables.base() as usize)..(tables.base() as usize + tables.bytes().len());
    let facs = fadt.facs_address().unwrap();
    assert!(end.contains(&facs) && facs % 64 == 0);
    assert_eq!(memory.slice(facs as u64, 4), b"FACS");
    assert!(end.contains(&fadt.dsdt_address().unwrap()));
    // The parser's DSDT is its AML body, after the header.
    let aml = parsed.dsdt().unwrap();
    assert_eq!(aml.address, fadt.dsdt_address().unwrap() + SDT_HEADER_LEN as usize);
    assert_eq!(
        aml.length as usize + SDT_HEADER_LEN as usize,
        table(&memory, aml.address as u64 - u64::from(SDT_HEADER_LEN)).len()
    );
}

#[test]
fn dsdt_declares_s5_with_the_pm_devices_sleep_type_and_com1() {
    let tables = build(&PlatformDescription::pc(1), BIOS_AREA_BASE).unwrap();
    let memory = GuestMemory::new(&tables);
    let (_, dsdt) = all_tables(&memory, tables.rsdp_address()).pop().unwrap();
    assert!(contains(dsdt, b"_S5_"));
    // Name(\_S5, Package(4) {5, 5, 0, 0}): NameOp '\' "_S5_" PackageOp len count, then
    // BytePrefix 5 twice and ZeroOp twice.
    let s5 =
        [0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0A, S5_SLP_TYP, 0x0A, S5_SLP_TYP, 0, 0];
    assert!(contains(dsdt, &s5), "{dsdt:x?}");
    // COM1: _HID EISAID("PNP0501") as a DWordPrefix integer, IO 0x3F8-0x3FF, IRQ 4.
    assert!(contains(dsdt, b"COM1"));
    assert!(contains(dsdt, &[b'_', b'H', b'I', b'D', 0x0C, 0x41, 0xD0, 0x05, 0x01]));
    assert!(contains(dsdt, &[0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08]), "IO descriptor");
    assert!(contains(dsdt, &[0x22, 0x10, 0x00]), "IRQ descriptor: IRQ 4");
}

#[test]
fn tables_fit_the_bios_area_with_many_vcpus_and_refuse_overflowing_addresses() {
    let tables = build(&PlatformDescription::pc(255), BIOS_AREA_BASE).unwrap();
    assert!(BIOS_AREA_BASE + tables.bytes().len() as u64 <= BIOS_AREA_END);
    assert_eq!(build(&PlatformDescription::pc(1), u64::MAX - 100), Err(AcpiBuildError::AddressOverflow));
}
