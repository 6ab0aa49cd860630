//! ACPI, through the `acpi` crate: the CPUs (MADT) and how to power off (FADT PM1a control
//! block and the `\_S5` sleep type from the DSDT).

use crate::mm::phys_to_virt;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping, address::AddressSpace, fadt::Fadt, madt::Madt};
use alloc::vec::Vec;
use core::ptr::NonNull;

/// All RAM and firmware tables are identity mapped, so "mapping" is a cast.
#[derive(Clone, Copy)]
struct IdentityMapped;

impl AcpiHandler for IdentityMapped {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        let virt = NonNull::new(phys_to_virt(phys as u64) as *mut T).expect("ACPI table at address 0");
        // SAFETY: the boot page tables identity-map the first 4 GiB, where firmware puts
        // its tables, and the direct map covers RAM above; the crate reads only within
        // `size` bytes.
        unsafe { PhysicalMapping::new(phys, virt, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// Facts the platform's ACPI tables give.
#[derive(Debug, Default)]
pub struct Platform {
    /// APIC IDs of the usable CPUs, boot CPU first.
    pub apic_ids: Vec<u32>,
    /// I/O port of PM1a_CNT, where S5 is entered.
    pub pm1a_control_port: Option<u16>,
    /// SLP_TYPa of `\_S5` (ACPI 6.5 §7.4.2.5).
    pub s5_sleep_type: Option<u16>,
}

/// MADT Processor Local APIC flags bit 0: enabled; bit 1: online capable (ACPI 6.5
/// §5.2.12.2).
const MADT_CPU_ENABLED: u32 = 1 << 0;
const MADT_CPU_ONLINE_CAPABLE: u32 = 1 << 1;

/// Reads the tables from `rsdp` (or the BIOS areas when the loader gave none).
pub fn discover(rsdp: Option<u64>) -> Option<Platform> {
    // SAFETY: `rsdp` comes from the loader (PVH start info or multiboot2 tag, copied to
    // an image static), and the BIOS search reads only the architectural areas; all of
    // it is identity mapped.
    let tables = unsafe {
        match rsdp {
            Some(addr) => AcpiTables::from_rsdp(IdentityMapped, addr as usize),
            None => AcpiTables::search_for_rsdp_bios(IdentityMapped),
        }
    };
    let tables = match tables {
        Ok(t) => t,
        Err(e) => {
            log::warn!("acpi: no usable tables ({e:?}); running on the boot CPU only");
            return None;
        }
    };
    let mut platform = Platform::default();
    if let Ok(madt) = tables.find_table::<Madt>() {
        for entry in madt.get().entries() {
            let (id, flags) = match entry {
                acpi::madt::MadtEntry::LocalApic(e) => (e.apic_id as u32, { e.flags }),
                acpi::madt::MadtEntry::LocalX2Apic(e) => ({ e.x2apic_id }, { e.flags }),
                _ => continue,
            };
            if flags & (MADT_CPU_ENABLED | MADT_CPU_ONLINE_CAPABLE) != 0 && !platform.apic_ids.contains(&id) {
                platform.apic_ids.push(id);
            }
        }
    }
    if let Ok(fadt) = tables.find_table::<Fadt>()
        && let Ok(block) = fadt.pm1a_control_block()
        && block.address_space == AddressSpace::SystemIo
    {
        platform.pm1a_control_port = u16::try_from(block.address).ok();
    }
    if let Ok(dsdt) = tables.dsdt() {
        // SAFETY: the DSDT's AML stream, as located by the crate from the FADT, is
        // firmware memory that stays mapped and unchanged.
        let aml =
            unsafe { core::slice::from_raw_parts(phys_to_virt(dsdt.address as u64), dsdt.length as usize) };
        platform.s5_sleep_type = s5_sleep_type(aml);
    }
    Some(platform)
}

/// Finds `Name(_S5, Package() { SLP_TYPa, ... })` in AML without an interpreter: the name,
/// a PackageOp (0x12), its PkgLength, the element count, then the first element as a
/// ByteConst (0x0A nn), ZeroOp (0x00) or OneOp (0x01) (ACPI 6.5 §20.2.3, §20.2.5.4).
pub fn s5_sleep_type(aml: &[u8]) -> Option<u16> {
    let at = aml.windows(4).position(|w| w == b"_S5_")?;
    let mut i = at + 4;
    if *aml.get(i)? != 0x12 {
        return None;
    }
    i += 1;
    let extra_length_bytes = (*aml.get(i)? >> 6) as usize;
    i += 1 + extra_length_bytes + 1;
    match *aml.get(i)? {
        0x0A => aml.get(i + 1).map(|v| *v as u16),
        0x00 => Some(0),
        0x01 => Some(1),
        other => Some(other as u16),
    }
}
