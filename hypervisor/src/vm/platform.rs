//! The guest's view of the platform as the VM sets it up and answers it: the ACPI tables
//! in guest RAM, and what a port access that ends or resets the platform does.
//!
//! # ACPI tables
//! At creation, when RAM covers the BIOS area 0xE0000-0xFFFFF ([`acpi::BIOS_AREA_BASE`]
//! to [`acpi::BIOS_AREA_END`], 1 MiB of RAM or more), the VM writes the tables of
//! `firmware::acpi` there: the RSDP is at the area's start, where the legacy scan finds it.
//! The loader's memory maps (PVH memmap, multiboot mmap) report 0xA0000-0xFFFFF reserved,
//! so guests leave it alone; PVH guests also get the RSDP in `hvm_start_info.rsdp_paddr`.
//! An image with a segment in the area replaces the tables, and then no RSDP is passed.
//! The tables stay across resets (the guest may not write to them; if it does, it keeps
//! what it wrote, as on a PC whose shadowed BIOS area is writable).
//!
//! # Effects of port writes ([`IoEffect`])
//! - the exit port: the VM ends `exited` with the written status;
//! - ACPI S5 (PM1a_CNT with SLP_TYP 5 and SLP_EN): the VM ends `exited` with status 0;
//! - the reset register 0xCF9 (RST_CPU) or the i8042's reset pulse (0xFE to port 0x64):
//!   a platform reset, done in place, the VM staying `running`: the bus resets its
//!   devices (`PortBus::reset_platform`), the VM counts the reset and kicks every vCPU,
//!   and each vCPU, at the top of its loop, sees the count change and restarts at the
//!   image's entry (as INIT: its roots dropped, the normal address space). Memory is kept,
//!   as the API's `reset` then `start` keeps it: the guest's image is not reloaded, so a
//!   guest sees its own writes after the reset. A vCPU that has already left its loop
//!   (HLT, which ends a vCPU until interrupts are delivered) does not restart.

use super::{VmConfig, VmError, VmState};
use crate::addr::Gpa;
use crate::devices::IoEffect;
use crate::firmware::acpi::{self, PlatformDescription};
use crate::loader::LoadPlan;
use crate::memslot::AsId;
use crate::mmu::{Mmu, Platform};
use alloc::format;

/// What the vCPU loop does after a port access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Continue,
    End(VmState),
    /// ACPI S5: end `exited` with status 0, noted in the event log as a power-off.
    PowerOff,
    ResetPlatform,
}

/// The VM's answer to a port access's effect.
pub(crate) fn outcome_of(effect: Option<IoEffect>) -> Outcome {
    match effect {
        None => Outcome::Continue,
        Some(IoEffect::Exit(status)) => Outcome::End(VmState::Exited { status }),
        Some(IoEffect::PowerOff) => Outcome::PowerOff,
        Some(IoEffect::Reset) => Outcome::ResetPlatform,
    }
}

/// Whether RAM of `memory_bytes` covers the BIOS area the tables go to.
pub(crate) const fn ram_covers_bios_area(memory_bytes: u64) -> bool {
    memory_bytes >= acpi::BIOS_AREA_END
}

/// Writes the ACPI tables for `config` at [`acpi::BIOS_AREA_BASE`] if RAM covers it;
/// returns the RSDP's address.
pub(crate) fn write_acpi_tables<P: Platform>(
    mmu: &Mmu<P>,
    config: &VmConfig,
) -> Result<Option<Gpa>, VmError> {
    if !ram_covers_bios_area(config.memory_mib << 20) {
        return Ok(None);
    }
    // MAX_VCPUS is 64, within the MADT's 8-bit APIC IDs.
    let vcpus = u8::try_from(config.vcpus).map_err(|_| VmError::InvalidConfig("too many vCPUs".into()))?;
    let tables = acpi::build(&PlatformDescription::pc(vcpus), acpi::BIOS_AREA_BASE)
        .map_err(|e| VmError::Memory(format!("ACPI tables: {e:?}")))?;
    debug_assert!(tables.base() + tables.bytes().len() as u64 <= acpi::BIOS_AREA_END);
    mmu.write_guest(AsId::Normal, Gpa::new(tables.base()), tables.bytes())
        .map_err(|e| VmError::Memory(format!("{e:?}")))?;
    Ok(Some(Gpa::new(tables.rsdp_address())))
}

/// Whether a segment of `plan` lies in the BIOS area (and so overwrites the tables).
pub(crate) fn overlaps_acpi_tables(plan: &LoadPlan) -> bool {
    plan.segments.iter().any(|segment| {
        let range = segment.gpa_range();
        range.start.raw() < acpi::BIOS_AREA_END && range.end.raw() > acpi::BIOS_AREA_BASE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_and_power_off_end_the_vm_and_resets_reset_it() {
        assert_eq!(outcome_of(None), Outcome::Continue);
        assert_eq!(outcome_of(Some(IoEffect::Exit(7))), Outcome::End(VmState::Exited { status: 7 }));
        assert_eq!(outcome_of(Some(IoEffect::PowerOff)), Outcome::PowerOff);
        assert_eq!(outcome_of(Some(IoEffect::Reset)), Outcome::ResetPlatform);
    }

    #[test]
    fn tables_need_ram_up_to_one_mib() {
        assert!(!ram_covers_bios_area(0xF_FFFF));
        assert!(ram_covers_bios_area(1 << 20));
    }
}
