//! The ACPI tables of a VM (ACPI 6.5 chapter 5, "ACPI Software Programming Model"), built
//! with rust-vmm's `acpi_tables` into one byte buffer for a given guest-physical address:
//!
//! - RSDP (§5.2.5.3), revision 2, pointing at the XSDT only;
//! - XSDT (§5.2.8) listing the FADT and the MADT;
//! - FADT (§5.2.9), a full (not hardware-reduced) one: the PM1a event and control blocks
//!   and the 32-bit PM timer of `devices::acpi_pm`, SCI on IRQ 9, the reset register
//!   (I/O port 0xCF9, value 0x06), an 8042 and legacy devices present, 64-bit pointers to
//!   the DSDT and the FACS;
//! - MADT (§5.2.12): the local APIC page, PCAT_COMPAT (8259s present), one enabled local
//!   APIC per vCPU (APIC ID = vCPU index), the I/O APIC, the overrides ISA IRQ 0 -> GSI 2
//!   and IRQ 9 level/active high (the SCI), and LINT1 as NMI on every processor;
//! - DSDT (§5.2.11.1): `\_S5` (the SLP_TYP `devices::acpi_pm` powers off on) and the COM1
//!   device (PNP0501, I/O 0x3F8-0x3FF, IRQ 4);
//! - FACS (§5.2.10), 64-byte aligned.
//!
//! Every table's bytes sum to 0 (the RSDP's first 20 bytes too).
//!
//! # How the VM uses it
//! `build(&PlatformDescription::pc(vcpus), BIOS_AREA_BASE)` at VM creation, then write
//! [`AcpiTables::bytes`] to guest memory at that address (the VM's memory must back it:
//! the tables take a few hundred bytes plus 8 per vCPU). At [`BIOS_AREA_BASE`] the RSDP is
//! where the legacy scan finds it (§5.2.5.1); PVH guests get
//! [`AcpiTables::rsdp_address`] in `hvm_start_info.rsdp_paddr`.

use alloc::vec;
use alloc::vec::Vec;

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink, aml, facs::FACS};
use taproot_guest_abi::port::{COM1_BASE, COM1_LEN};

use crate::devices::acpi_pm::{
    PM_TIMER_32_BIT, PM_TMR_BLK, PM_TMR_LEN, PM1_CNT_LEN, PM1_EVT_LEN, PM1A_CNT_BLK, PM1A_EVT_BLK,
    RESET_PORT, RESET_VALUE, S5_SLP_TYP, SCI_IRQ,
};
use crate::devices::lapic::DEFAULT_APIC_BASE;

/// Where a PC's firmware leaves the RSDP so that the legacy scan finds it: the BIOS
/// read-only area 0xE0000-0xFFFFF, on a 16-byte boundary (ACPI 6.5 §5.2.5.1, "Finding the
/// RSDP on IA-PC Systems").
pub const BIOS_AREA_BASE: u64 = 0xE_0000;
/// One past the end of that area.
pub const BIOS_AREA_END: u64 = 0x10_0000;
/// The RSDP's alignment (§5.2.5.1).
const RSDP_ALIGN: u64 = 16;
/// The FACS's alignment (§5.2.10: "aligned on a 64-byte boundary").
const FACS_ALIGN: u64 = 64;
/// Alignment of the other tables (none is required; 16 keeps them tidy in a dump).
const TABLE_ALIGN: u64 = 16;

/// The OEM fields of every table header (§5.2.6).
pub const OEM_ID: [u8; 6] = *b"TAPRT ";
pub const OEM_TABLE_ID: [u8; 8] = *b"TAPROOT ";
pub const OEM_REVISION: u32 = 1;

/// The I/O APIC's register page: the model's (`devices::ioapic::IOAPIC_BASE`), named once
/// there.
pub const IO_APIC_DEFAULT_BASE: u32 = crate::devices::ioapic::IOAPIC_BASE as u32;

/// COM1's ISA interrupt (IBM PC/AT: IRQ 4 for the first serial port).
pub const COM1_IRQ: u8 = 4;

/// FADT IAPC_BOOT_ARCH flags (§5.2.9.3, "IA-PC Boot Architecture Flags").
const IAPC_BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;

/// The MADT's header: the local APIC address at offset 36, flags at 40 (§5.2.12, "Multiple
/// APIC Description Table (MADT) Format").
const MADT_HEADER_LEN: u32 = 44;
const MADT_LOCAL_APIC_ADDRESS_OFFSET: usize = 36;
const MADT_FLAGS_OFFSET: usize = 40;
/// MADT revision: only structures of ACPI 1.0 (types 0, 1, 2, 4) are used.
const MADT_REVISION: u8 = 1;
/// MADT flag PCAT_COMPAT: the system also has dual 8259s (§5.2.12, "Multiple APIC Flags").
const MADT_PCAT_COMPAT: u32 = 1 << 0;
/// Interrupt Source Override structure (§5.2.12.5): type 2, 10 bytes, bus 0 = ISA.
const MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const MADT_INTERRUPT_SOURCE_OVERRIDE_LEN: u8 = 10;
const ISA_BUS: u8 = 0;
/// Local APIC NMI structure (§5.2.12.7): type 4, 6 bytes; processor UID 0xFF = all.
const MADT_TYPE_LOCAL_APIC_NMI: u8 = 4;
const MADT_LOCAL_APIC_NMI_LEN: u8 = 6;
const ALL_PROCESSORS: u8 = 0xFF;
/// The local APIC input wired to NMI (LINT1, as on every PC).
const NMI_LINT: u8 = 1;
/// MPS INTI flags (§5.2.12.5, "MPS INTI Flags"): polarity in bits 0-1, trigger mode in
/// bits 2-3; 0 = conforms to the bus (ISA: edge, active high).
const MPS_INTI_CONFORMS: u16 = 0;
const MPS_INTI_ACTIVE_HIGH: u16 = 0b01;
const MPS_INTI_LEVEL: u16 = 0b11 << 2;
/// ISA IRQ 0 (the PIT) reaches the I/O APIC on pin 2, as on every PC since the MP spec.
const PIT_ISA_IRQ: u8 = 0;
const PIT_GSI: u32 = 2;

/// DSDT revision 2: AML integers are 64 bits (§5.2.11.1).
const DSDT_REVISION: u8 = 2;
/// The size of an SDT header (§5.2.6).
const SDT_HEADER_LEN: u32 = 36;

/// The small resource IRQ descriptor without its optional information byte (§6.4.2.1,
/// "IRQ Descriptor"): tag 0x22, then the mask of ISA IRQs 0-15.
const IRQ_DESCRIPTOR_NO_FLAGS: u8 = 0x22;

/// What the tables describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlatformDescription {
    /// vCPUs, with APIC IDs 0..vcpus (1-255: xAPIC IDs are 8 bits and 0xFF is broadcast).
    pub vcpus: u8,
    /// The I/O APIC's ID (its ID register must say the same).
    pub io_apic_id: u8,
    /// The I/O APIC's register page.
    pub io_apic_address: u32,
}

impl PlatformDescription {
    /// `vcpus` vCPUs and the I/O APIC at its usual address with ID 0 (as QEMU's).
    #[must_use]
    pub const fn pc(vcpus: u8) -> Self {
        Self { vcpus, io_apic_id: 0, io_apic_address: IO_APIC_DEFAULT_BASE }
    }
}

/// Why the tables could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiBuildError {
    /// `vcpus` is 0.
    NoVcpus,
    /// The tables would not fit below 2^64 at that address.
    AddressOverflow,
}

/// The built tables: `bytes` go to guest memory at `base`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    base: u64,
    bytes: Vec<u8>,
    rsdp_offset: usize,
}

impl AcpiTables {
    /// The guest-physical address the bytes were built for.
    #[must_use]
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The tables, to be written to guest memory at [`Self::base`].
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The RSDP's offset in [`Self::bytes`] (16-byte aligned in guest memory).
    #[must_use]
    pub fn rsdp_offset(&self) -> usize {
        self.rsdp_offset
    }

    /// The RSDP's guest-physical address (for `hvm_start_info.rsdp_paddr`).
    #[must_use]
    pub fn rsdp_address(&self) -> u64 {
        self.base + self.rsdp_offset as u64
    }
}

/// Places tables one after another from a guest-physical base address.
struct Layout {
    base: u64,
    end: u64,
}

impl Layout {
    /// Reserves `len` bytes at the next address aligned to `align`: its offset from base.
    fn reserve(&mut self, len: usize, align: u64) -> Result<u64, AcpiBuildError> {
        let start = self.end.checked_next_multiple_of(align).ok_or(AcpiBuildError::AddressOverflow)?;
        self.end = start.checked_add(len as u64).ok_or(AcpiBuildError::AddressOverflow)?;
        Ok(start - self.base)
    }
}

/// Builds the tables for `platform`, to be placed at guest-physical `base`.
pub fn build(platform: &PlatformDescription, base: u64) -> Result<AcpiTables, AcpiBuildError> {
    if platform.vcpus == 0 {
        return Err(AcpiBuildError::NoVcpus);
    }
    let madt = madt(platform);
    let dsdt = dsdt();
    let facs = aml_bytes(&FACS::new());
    let xsdt_len = SDT_HEADER_LEN as usize + 2 * core::mem::size_of::<u64>();

    let mut layout = Layout { base, end: base };
    let rsdp_offset = layout.reserve(Rsdp::len(), RSDP_ALIGN)?;
    let xsdt_offset = layout.reserve(xsdt_len, TABLE_ALIGN)?;
    let fadt_offset = layout.reserve(acpi_tables::fadt::FADT::len(), TABLE_ALIGN)?;
    let madt_offset = layout.reserve(madt.len(), TABLE_ALIGN)?;
    let dsdt_offset = layout.reserve(dsdt.len(), TABLE_ALIGN)?;
    let facs_offset = layout.reserve(facs.len(), FACS_ALIGN)?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(base + fadt_offset);
    xsdt.add_entry(base + madt_offset);
    let fadt = fadt(base + dsdt_offset, base + facs_offset);
    let rsdp = Rsdp::new(OEM_ID, base + xsdt_offset);

    let mut bytes = vec![0; (layout.end - base) as usize];
    for (offset, table) in [
        (rsdp_offset, aml_bytes(&rsdp)),
        (xsdt_offset, aml_bytes(&xsdt)),
        (fadt_offset, aml_bytes(&fadt)),
        (madt_offset, madt.as_slice().to_vec()),
        (dsdt_offset, dsdt.as_slice().to_vec()),
        (facs_offset, facs),
    ] {
        let offset = offset as usize;
        bytes[offset..offset + table.len()].copy_from_slice(&table);
    }
    Ok(AcpiTables { base, bytes, rsdp_offset: rsdp_offset as usize })
}

fn aml_bytes(item: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    item.to_aml_bytes(&mut bytes);
    bytes
}

/// A system I/O register of `bytes` bytes for a FADT X_ field (access size undefined: the
/// register's own width, as QEMU describes them).
fn io_register(port: u16, bytes: u8) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8 * bytes, 0, AccessSize::Undefined, u64::from(port))
}

fn fadt(dsdt: u64, facs: u64) -> acpi_tables::fadt::FADT {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .firmware_ctrl_64(facs)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        // No fixed sleep button (the fixed power button exists: PWR_BUTTON stays clear).
        .flag(Flags::SlpButton)
        // RTC wake status is not in the fixed registers.
        .flag(Flags::FixRtc)
        .flag(Flags::ResetRegSup);
    if PM_TIMER_32_BIT {
        fadt = fadt.flag(Flags::TmrValExt);
    }
    // SMI_CMD stays 0: no SMM, the platform is in ACPI mode from reset (SCI_EN set).
    fadt.sci_int = u16::from(SCI_IRQ).into();
    fadt.pm1a_evt_blk = u32::from(PM1A_EVT_BLK).into();
    fadt.pm1a_cnt_blk = u32::from(PM1A_CNT_BLK).into();
    fadt.pm_tmr_blk = u32::from(PM_TMR_BLK).into();
    fadt.pm1_evt_len = PM1_EVT_LEN;
    fadt.pm1_cnt_len = PM1_CNT_LEN;
    fadt.pm_tmr_len = PM_TMR_LEN;
    fadt.x_pm1a_evt_blk = io_register(PM1A_EVT_BLK, PM1_EVT_LEN);
    fadt.x_pm1a_cnt_blk = io_register(PM1A_CNT_BLK, PM1_CNT_LEN);
    fadt.x_pm_tmr_blk = io_register(PM_TMR_BLK, PM_TMR_LEN);
    fadt.iapc_boot_arch = (IAPC_BOOT_ARCH_LEGACY_DEVICES | IAPC_BOOT_ARCH_8042).into();
    fadt.reset_reg = GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, u64::from(RESET_PORT));
    fadt.reset_value = RESET_VALUE;
    fadt.finalize()
}

/// An SDT holding only its header, with the crate's creator fields.
fn sdt(signature: [u8; 4], length: u32, revision: u8) -> Sdt {
    Sdt::new(signature, length, revision, OEM_ID, OEM_TABLE_ID, OEM_REVISION)
}

fn madt(platform: &PlatformDescription) -> Sdt {
    let mut madt = sdt(*b"APIC", MADT_HEADER_LEN, MADT_REVISION);
    madt.write_u32(MADT_LOCAL_APIC_ADDRESS_OFFSET, DEFAULT_APIC_BASE as u32);
    madt.write_u32(MADT_FLAGS_OFFSET, MADT_PCAT_COMPAT);
    for id in 0..platform.vcpus {
        madt.append_slice(&aml_bytes(&ProcessorLocalApic::new(id, id, EnabledStatus::Enabled)));
    }
    madt.append_slice(&aml_bytes(&IoApic::new(platform.io_apic_id, platform.io_apic_address, 0)));
    madt.append_slice(&interrupt_source_override(PIT_ISA_IRQ, PIT_GSI, MPS_INTI_CONFORMS));
    madt.append_slice(&interrupt_source_override(
        SCI_IRQ,
        u32::from(SCI_IRQ),
        MPS_INTI_ACTIVE_HIGH | MPS_INTI_LEVEL,
    ));
    madt.append_slice(&local_apic_nmi(ALL_PROCESSORS, MPS_INTI_CONFORMS, NMI_LINT));
    madt
}

/// An Interrupt Source Override structure for ISA IRQ `source` (§5.2.12.5).
fn interrupt_source_override(source: u8, gsi: u32, flags: u16) -> [u8; 10] {
    let mut entry = [0; MADT_INTERRUPT_SOURCE_OVERRIDE_LEN as usize];
    entry[..4].copy_from_slice(&[
        MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE,
        MADT_INTERRUPT_SOURCE_OVERRIDE_LEN,
        ISA_BUS,
        source,
    ]);
    entry[4..8].copy_from_slice(&gsi.to_le_bytes());
    entry[8..].copy_from_slice(&flags.to_le_bytes());
    entry
}

/// A Local APIC NMI structure (§5.2.12.7).
fn local_apic_nmi(processor_uid: u8, flags: u16, lint: u8) -> [u8; 6] {
    let [flags_lo, flags_hi] = flags.to_le_bytes();
    [MADT_TYPE_LOCAL_APIC_NMI, MADT_LOCAL_APIC_NMI_LEN, processor_uid, flags_lo, flags_hi, lint]
}

/// An ISA IRQ in an IRQ descriptor without flags (high true, edge, exclusive).
struct IrqNoFlags(u8);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(IRQ_DESCRIPTOR_NO_FLAGS);
        sink.word(1 << (self.0 & 0xF));
    }
}

fn dsdt() -> Sdt {
    let s5 = S5_SLP_TYP;
    let s5_package = aml::Package::new(vec![&s5, &s5, &0u8, &0u8]);
    let sleep_s5 = aml::Name::new("\\_S5_".into(), &s5_package);

    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let uid = aml::Name::new("_UID".into(), &1u8);
    let io = aml::IO::new(COM1_BASE, COM1_BASE, 1, COM1_LEN as u8);
    let irq = IrqNoFlags(COM1_IRQ);
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&io, &irq]));
    let com1 = aml::Device::new("COM1".into(), vec![&hid, &uid, &crs]);
    let system_bus = aml::Scope::new("\\_SB_".into(), vec![&com1]);

    let mut dsdt = sdt(*b"DSDT", SDT_HEADER_LEN, DSDT_REVISION);
    let mut body = aml_bytes(&sleep_s5);
    system_bus.to_aml_bytes(&mut body);
    dsdt.append_slice(&body);
    dsdt
}

#[cfg(test)]
mod tests;
