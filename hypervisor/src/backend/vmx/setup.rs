//! Filling a VMCS: the execution, exit and entry controls (adjusted to what the CPU
//! allows), the host state VM exits return to, and the guest state a vCPU starts in (SDM
//! Vol. 3C chapter 25, checked by VM entry as in chapter 27).

#![deny(unsafe_code)]

use super::consts::*;
use super::cpu::{self, VmxHost};
use super::cr::{self, CrShadows};
use super::vmcs::Current;
use super::world_switch;
use crate::backend::{BackendError, Caps, EntryState};
use alloc::format;
use alloc::string::String;
use x86::msr;
use x86::vmx::vmcs::{self, control, guest, host};

/// What a VMCS's controls name of its VM: the I/O bitmaps A and B (two consecutive
/// pages) and the MSR bitmap.
pub struct VmResources {
    pub io_bitmaps: u64,
    pub msr_bitmap: u64,
}

/// `(desired | must-be-one) & may-be-one`, failing with the names of required bits the
/// CPU cannot set (SDM Vol. 3D §A.3-A.5: allowed-0 settings in the low half, allowed-1 in
/// the high half of the capability MSR).
fn adjust(cap: u64, set: &'static str, required: u32, names: fn(u32) -> String) -> Result<u32, BackendError> {
    let (must, may) = (cap as u32, (cap >> 32) as u32);
    let missing = required & !may;
    if missing != 0 {
        return Err(BackendError::NotSupported {
            why: format!("this CPU's VMX lacks {set} controls Taproot needs: {}", names(missing)),
        });
    }
    Ok((required | must) & may)
}

pub fn write_controls(
    v: &Current,
    caps: &Caps,
    host: &VmxHost,
    vm: &VmResources,
) -> Result<(), BackendError> {
    use vmcs::control::{EntryControls, ExitControls, PinbasedControls, PrimaryControls, SecondaryControls};
    let mut pin = PinbasedControls::EXTERNAL_INTERRUPT_EXITING | PinbasedControls::NMI_EXITING;
    if caps.preemption_timer {
        pin |= PinbasedControls::VMX_PREEMPTION_TIMER;
    }
    let pin = adjust(host.pin_controls, "pin-based", pin.bits(), |b| {
        format!("{:?}", PinbasedControls::from_bits_truncate(b))
    })? | super::interrupts::optional_pin_controls(host);
    let primary = adjust(
        host.primary_controls,
        "primary processor-based",
        (PrimaryControls::HLT_EXITING
            | PrimaryControls::CR8_LOAD_EXITING
            | PrimaryControls::CR8_STORE_EXITING
            | PrimaryControls::USE_TSC_OFFSETTING
            | PrimaryControls::USE_IO_BITMAPS
            | PrimaryControls::USE_MSR_BITMAPS
            | PrimaryControls::SECONDARY_CONTROLS)
            .bits(),
        |b| format!("{:?}", PrimaryControls::from_bits_truncate(b)),
    )?;
    let mut secondary = SecondaryControls::ENABLE_EPT | SecondaryControls::UNRESTRICTED_GUEST;
    if caps.tags > 0 {
        secondary |= SecondaryControls::ENABLE_VPID;
    }
    let secondary = adjust(host.secondary_controls, "secondary processor-based", secondary.bits(), |b| {
        format!("{:?}", SecondaryControls::from_bits_truncate(b))
    })?;
    let exit = adjust(
        host.exit_controls,
        "VM-exit",
        (ExitControls::HOST_ADDRESS_SPACE_SIZE
            | ExitControls::SAVE_DEBUG_CONTROLS
            | ExitControls::SAVE_IA32_EFER
            | ExitControls::LOAD_IA32_EFER
            | ExitControls::SAVE_IA32_PAT
            | ExitControls::LOAD_IA32_PAT)
            .bits(),
        |b| format!("{:?}", ExitControls::from_bits_truncate(b)),
    )?;
    let entry = adjust(
        host.entry_controls,
        "VM-entry",
        (EntryControls::LOAD_DEBUG_CONTROLS | EntryControls::LOAD_IA32_EFER | EntryControls::LOAD_IA32_PAT)
            .bits(),
        |b| format!("{:?}", EntryControls::from_bits_truncate(b)),
    )?;
    v.write(control::PINBASED_EXEC_CONTROLS, pin as u64)?;
    v.write(control::PRIMARY_PROCBASED_EXEC_CONTROLS, primary as u64)?;
    v.write(control::SECONDARY_PROCBASED_EXEC_CONTROLS, secondary as u64)?;
    v.write(control::VMEXIT_CONTROLS, exit as u64)?;
    v.write(control::VMENTRY_CONTROLS, entry as u64)?;
    v.write(control::EXCEPTION_BITMAP, REFLECTED_EXCEPTIONS)?;
    v.write(control::IO_BITMAP_A_ADDR_FULL, vm.io_bitmaps)?;
    v.write(control::IO_BITMAP_B_ADDR_FULL, vm.io_bitmaps + 4096)?;
    v.write(control::MSR_BITMAPS_ADDR_FULL, vm.msr_bitmap)?;
    v.write(control::CR3_TARGET_COUNT, 0)?;
    v.write(control::VMEXIT_MSR_STORE_COUNT, 0)?;
    v.write(control::VMEXIT_MSR_LOAD_COUNT, 0)?;
    v.write(control::VMENTRY_MSR_LOAD_COUNT, 0)?;
    v.write(control::VMENTRY_INTERRUPTION_INFO_FIELD, 0)?;
    // The bits VMX fixes to one (NE, VMXE) and CR0.PG are host-owned and hidden by the
    // shadows (see `cr`); every other bit is the guest's own.
    v.write(control::CR0_GUEST_HOST_MASK, cr::CR0_HOST_OWNED)?;
    v.write(control::CR4_GUEST_HOST_MASK, cr::CR4_HOST_OWNED)?;
    Ok(())
}

/// The host state VM exits load: this CPU's control registers, segments, descriptor
/// tables, FS/GS/TR bases, EFER and PAT, and the world switch's exit label (SDM §28.5).
pub fn write_host_state(v: &Current) -> Result<(), BackendError> {
    use x86_64::instructions::segmentation::{CS, SS, Segment};
    use x86_64::instructions::tables::{sgdt, sidt};
    let gdt = sgdt();
    let (tr, tss_base) = task_register(gdt.base.as_u64());
    v.write(host::CR0, x86_64::registers::control::Cr0::read_raw())?;
    v.write(host::CR3, x86_64::registers::control::Cr3::read_raw().0.start_address().as_u64())?;
    v.write(host::CR4, x86_64::registers::control::Cr4::read_raw())?;
    v.write(host::CS_SELECTOR, CS::get_reg().0 as u64)?;
    let ss = SS::get_reg().0 as u64;
    for field in [host::SS_SELECTOR, host::DS_SELECTOR, host::ES_SELECTOR] {
        v.write(field, ss)?;
    }
    v.write(host::FS_SELECTOR, 0)?;
    v.write(host::GS_SELECTOR, 0)?;
    v.write(host::TR_SELECTOR, tr as u64)?;
    v.write(host::FS_BASE, cpu::rdmsr(msr::IA32_FS_BASE))?;
    v.write(host::GS_BASE, cpu::rdmsr(msr::IA32_GS_BASE))?;
    v.write(host::TR_BASE, tss_base)?;
    v.write(host::GDTR_BASE, gdt.base.as_u64())?;
    v.write(host::IDTR_BASE, sidt().base.as_u64())?;
    v.write(host::IA32_SYSENTER_CS, 0)?;
    v.write(host::IA32_SYSENTER_ESP, 0)?;
    v.write(host::IA32_SYSENTER_EIP, 0)?;
    v.write(host::IA32_EFER_FULL, cpu::rdmsr(msr::IA32_EFER))?;
    v.write(host::IA32_PAT_FULL, cpu::rdmsr(msr::IA32_PAT))?;
    v.write(host::RIP, world_switch::exit_target())?;
    Ok(())
}

/// This CPU's task register and the base of the TSS it selects in the GDT at `gdt_base`
/// (SDM Vol. 3A §8.2.3, 16-byte system descriptor).
#[allow(unsafe_code, reason = "STR, and a read of the live GDT")]
fn task_register(gdt_base: u64) -> (u16, u64) {
    let tr: u16;
    // SAFETY: STR only reads the task register.
    unsafe { core::arch::asm!("str {0:x}", out(reg) tr, options(nomem, nostack, preserves_flags)) };
    // SAFETY: the GDT libos loaded is live for good and TR indexes a TSS descriptor in it.
    let (low, high) = unsafe {
        let desc = (gdt_base + (tr & !7) as u64) as *const u64;
        (desc.read(), desc.add(1).read())
    };
    (tr, ((low >> 16) & 0xFF_FFFF) | ((low >> 56) << 24) | ((high & 0xFFFF_FFFF) << 32))
}

/// The guest state of `entry` (as after INIT, in real mode, flat 32-bit protected mode or
/// the 64-bit mode of `entry`'s `Long64`).
pub fn write_guest_state(
    v: &Current,
    host: &VmxHost,
    shadows: &mut CrShadows,
    entry: &EntryState,
) -> Result<(), BackendError> {
    let cpu = super::entry::entry_cpu(entry.mode);
    let (cs, data) = (cpu.cs, cpu.data);
    v.write(guest::CS_SELECTOR, cs.selector)?;
    v.write(guest::CS_BASE, cs.base)?;
    v.write(guest::CS_LIMIT, cs.limit)?;
    v.write(guest::CS_ACCESS_RIGHTS, cs.access_rights as u64)?;
    for (sel, base, limit, ar) in [
        (guest::SS_SELECTOR, guest::SS_BASE, guest::SS_LIMIT, guest::SS_ACCESS_RIGHTS),
        (guest::DS_SELECTOR, guest::DS_BASE, guest::DS_LIMIT, guest::DS_ACCESS_RIGHTS),
        (guest::ES_SELECTOR, guest::ES_BASE, guest::ES_LIMIT, guest::ES_ACCESS_RIGHTS),
        (guest::FS_SELECTOR, guest::FS_BASE, guest::FS_LIMIT, guest::FS_ACCESS_RIGHTS),
        (guest::GS_SELECTOR, guest::GS_BASE, guest::GS_LIMIT, guest::GS_ACCESS_RIGHTS),
    ] {
        v.write(sel, data.selector)?;
        v.write(base, data.base)?;
        v.write(limit, data.limit)?;
        v.write(ar, data.access_rights as u64)?;
    }
    v.write(guest::LDTR_SELECTOR, 0)?;
    v.write(guest::LDTR_BASE, 0)?;
    v.write(guest::LDTR_LIMIT, 0xFFFF)?;
    v.write(guest::LDTR_ACCESS_RIGHTS, access_rights::UNUSABLE as u64)?;
    v.write(guest::TR_SELECTOR, 0)?;
    v.write(guest::TR_BASE, 0)?;
    v.write(guest::TR_LIMIT, 0xFFFF)?;
    v.write(guest::TR_ACCESS_RIGHTS, access_rights::BUSY_TSS32 as u64)?;
    v.write(guest::GDTR_BASE, cpu.gdt_base)?;
    v.write(guest::GDTR_LIMIT, cpu.gdt_limit)?;
    v.write(guest::IDTR_BASE, 0)?;
    v.write(guest::IDTR_LIMIT, 0xFFFF)?;
    cr::set_cr0(v, host, shadows, cpu.cr0)?;
    cr::set_cr4(v, host, shadows, cpu.cr4)?;
    v.write(guest::CR3, cpu.cr3)?;
    v.write(guest::DR7, 0x400)?;
    v.write(guest::RSP, 0)?;
    v.write(guest::RIP, cpu.rip)?;
    v.write(guest::RFLAGS, 0x2)?;
    v.write(guest::PENDING_DBG_EXCEPTIONS, 0)?;
    v.write(guest::INTERRUPTIBILITY_STATE, 0)?;
    v.write(guest::ACTIVITY_STATE, 0)?;
    v.write(guest::IA32_SYSENTER_CS, 0)?;
    v.write(guest::IA32_SYSENTER_ESP, 0)?;
    v.write(guest::IA32_SYSENTER_EIP, 0)?;
    v.write(guest::IA32_EFER_FULL, cpu.efer)?;
    v.write(guest::IA32_PAT_FULL, DEFAULT_PAT)?;
    v.write(guest::IA32_DEBUGCTL_FULL, 0)?;
    v.write(guest::LINK_PTR_FULL, u64::MAX)?;
    let ia32e = vmcs::control::EntryControls::IA32E_MODE_GUEST.bits() as u64;
    let entry_ctls = v.read(control::VMENTRY_CONTROLS) & !ia32e;
    v.write(control::VMENTRY_CONTROLS, if cpu.ia32e_mode { entry_ctls | ia32e } else { entry_ctls })?;
    Ok(())
}
