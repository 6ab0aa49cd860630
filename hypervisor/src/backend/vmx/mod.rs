//! The Intel VMX backend (Intel SDM Vol. 3C, chapters 24 to 31).
//!
//! Per host CPU: IA32_FEATURE_CONTROL checked (and locked with VMX on if the firmware left
//! it unlocked), CR0/CR4 fixed bits, CR4.VMXE and a VMXON region. Per vCPU: a VMCS, made
//! current and filled on the CPU the vCPU runs on (vCPUs stay on one CPU: a VMCS that moves
//! must be VMCLEARed on its old CPU first, which nothing here needs yet). Per VM: a VPID,
//! the I/O and MSR bitmaps, and the EPT tables of the TDP MMU.
//!
//! Guests start in real mode or 32-bit protected mode with paging off, which needs the
//! "unrestricted guest" control; CR0.WP and CR4.PGE are guest-owned (no exits), and so is
//! every CR0/CR4 bit except those VMX fixes (NE, VMXE), which the read shadows hide.
#![allow(unsafe_code, reason = "VMX instructions, MSRs and hardware-defined pages")]

mod consts;
mod world_switch;

use super::tags::TagPool;
use super::vcpu_set::{VcpuSet, VcpuSync};
use super::{BackendVcpu, EntryMode, EntryState, Exit, GuestRegs, IoExit};
use crate::mmu::{Access, FlushScope, TlbFlush};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use consts::*;
use core::sync::atomic::{AtomicU64, Ordering};
use libos::mm::frame;
use libos::smp::MAX_CPUS;
use x86::msr;
use x86::vmx::vmcs::{self, control, guest, host, ro};
use x86_64::registers::model_specific::Msr;

/// Each CPU's VMXON region (0 = VMX off on that CPU).
static VMXON_REGION: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// The VMCS current on each CPU, so a vCPU knows whether it must VMPTRLD.
static CURRENT_VMCS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static VPIDS: TagPool = TagPool::new();
/// VPIDs are 16 bits, 0 being the host's (SDM Vol. 3C §29.1).
const VPID_LIMIT: u32 = 1 << 16;

/// Instruction lengths VMX reports itself (VM-exit instruction length), so none here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmxError {
    NotSupported,
    DisabledByFirmware,
    /// Controls the CPU cannot give, by name.
    MissingControls {
        set: &'static str,
        names: String,
    },
    OutOfMemory,
    /// A VMX instruction failed, with the VM-instruction error when there is one.
    Instruction {
        what: &'static str,
        error: String,
    },
}

impl core::fmt::Display for VmxError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VmxError::NotSupported => f.write_str("this CPU has no Intel VMX"),
            VmxError::DisabledByFirmware => {
                f.write_str("VMX is disabled by the firmware (IA32_FEATURE_CONTROL locked with VMX off); enable it in the BIOS")
            }
            VmxError::MissingControls { set, names } => {
                write!(f, "this CPU's VMX lacks {set} controls Taproot needs: {names}")
            }
            VmxError::OutOfMemory => f.write_str("out of memory for VMX structures"),
            VmxError::Instruction { what, error } => write!(f, "{what} failed: {error}"),
        }
    }
}

fn rdmsr(index: u32) -> u64 {
    // SAFETY: only called for MSRs that exist when CPUID reports VMX (the VMX capability
    // MSRs, IA32_FEATURE_CONTROL) or that exist on every x86-64 CPU (FS/GS base, EFER, PAT).
    unsafe { Msr::new(index).read() }
}

fn caps() -> Option<libos::virt::VmxCaps> {
    match libos::smp::virt_caps(libos::smp::current_cpu()) {
        Some(libos::virt::VirtCaps::Vmx(caps)) => Some(caps),
        _ => None,
    }
}

/// Turns VMX on for the calling CPU (VMXON). Idempotent.
pub fn enable_on_this_cpu() -> Result<(), VmxError> {
    let cpu = libos::smp::current_cpu();
    if VMXON_REGION[cpu].load(Ordering::Acquire) != 0 {
        return Ok(());
    }
    let caps = caps().ok_or(VmxError::NotSupported)?;
    if caps.disabled_by_firmware {
        return Err(VmxError::DisabledByFirmware);
    }
    let control = rdmsr(msr::IA32_FEATURE_CONTROL);
    if control & FEATURE_CONTROL_LOCKED == 0 {
        // SAFETY: the MSR is unlocked, so writing it is allowed (SDM §24.7); we enable VMX
        // outside SMX and lock, as firmware normally does.
        unsafe {
            Msr::new(msr::IA32_FEATURE_CONTROL)
                .write(control | FEATURE_CONTROL_LOCKED | FEATURE_CONTROL_VMX_OUTSIDE_SMX)
        };
    } else if control & FEATURE_CONTROL_VMX_OUTSIDE_SMX == 0 {
        return Err(VmxError::DisabledByFirmware);
    }
    let region = frame::alloc_zeroed(1).ok_or(VmxError::OutOfMemory)?;
    let revision = rdmsr(msr::IA32_VMX_BASIC) as u32 & 0x7FFF_FFFF;
    // SAFETY: 1. the region is a fresh page owned by this CPU for good; its first word is
    // the VMCS revision (SDM §25.11.5). 2. CR0/CR4 get the bits VMX requires (fixed-0
    // ones set, fixed-1 ones kept: SDM §24.8), which libos's own settings already satisfy
    // but for NE and VMXE, neither of which changes how libos runs. 3. VMXON then enters
    // VMX root operation on this CPU.
    unsafe {
        (region as *mut u32).write_volatile(revision);
        let cr0 = x86_64::registers::control::Cr0::read_raw();
        let cr0 = (cr0 | rdmsr(msr::IA32_VMX_CR0_FIXED0)) & rdmsr(msr::IA32_VMX_CR0_FIXED1);
        x86_64::registers::control::Cr0::write_raw(cr0);
        let cr4 = x86_64::registers::control::Cr4::read_raw() | CR4_VMXE;
        let cr4 = (cr4 | rdmsr(msr::IA32_VMX_CR4_FIXED0)) & rdmsr(msr::IA32_VMX_CR4_FIXED1);
        x86_64::registers::control::Cr4::write_raw(cr4);
        x86::bits64::vmx::vmxon(region)
            .map_err(|e| VmxError::Instruction { what: "VMXON", error: format!("{e:?}") })?;
    }
    VMXON_REGION[cpu].store(region, Ordering::Release);
    Ok(())
}

/// `(desired | must-be-one) & may-be-one`, failing with the names of required bits the
/// CPU cannot set (SDM Vol. 3D §A.3-A.5: allowed-0 settings in the low half, allowed-1 in
/// the high half of the capability MSR).
fn adjust(cap_msr: u32, set: &'static str, required: u32, names: fn(u32) -> String) -> Result<u32, VmxError> {
    let cap = rdmsr(cap_msr);
    let (must, may) = (cap as u32, (cap >> 32) as u32);
    let missing = required & !may;
    if missing != 0 {
        return Err(VmxError::MissingControls { set, names: names(missing) });
    }
    Ok((required | must) & may)
}

fn true_or(normal: u32, true_msr: u32) -> u32 {
    if rdmsr(msr::IA32_VMX_BASIC) & VMX_BASIC_TRUE_CTLS != 0 { true_msr } else { normal }
}

/// A VM's VMX resources.
pub struct VmxVm {
    vpid: u16,
    /// I/O bitmaps A and B (two pages) and the MSR bitmap (one page), all ones: every
    /// port and MSR access exits.
    io_bitmaps: u64,
    msr_bitmap: u64,
    vcpus: VcpuSet,
}

const IO_BITMAP_FRAMES: usize = 2;
/// MSRs the guest may use without exits because VM entry and exit switch them (the
/// "load/save IA32_EFER" and "load/save IA32_PAT" controls, and the guest-state fields for
/// SYSENTER_CS/ESP/EIP and the FS/GS bases; SDM Vol. 3C §26.3.2.1 and §28.3): IA32_EFER,
/// IA32_PAT, IA32_SYSENTER_CS/ESP/EIP, IA32_FS_BASE, IA32_GS_BASE. The bitmap's halves
/// are laid out as in SDM Vol. 3C §25.6.9.
const PASSTHROUGH_MSRS: [u32; 7] = [0xC000_0080, 0x277, 0x174, 0x175, 0x176, 0xC000_0100, 0xC000_0101];

impl VmxVm {
    pub fn new() -> Result<Arc<Self>, VmxError> {
        let io_bitmaps = frame::alloc(IO_BITMAP_FRAMES).ok_or(VmxError::OutOfMemory)?;
        let Some(msr_bitmap) = frame::alloc(1) else {
            frame::free(io_bitmaps, IO_BITMAP_FRAMES);
            return Err(VmxError::OutOfMemory);
        };
        // SAFETY: fresh frames owned by this VM, identity mapped.
        unsafe {
            core::ptr::write_bytes(io_bitmaps as *mut u8, 0xFF, IO_BITMAP_FRAMES * 4096);
            core::ptr::write_bytes(msr_bitmap as *mut u8, 0xFF, 4096);
        }
        for msr in PASSTHROUGH_MSRS {
            let (base, read_offset, write_offset) =
                if msr >= 0xC000_0000 { (0xC000_0000, 0x400, 0xC00) } else { (0, 0x000, 0x800) };
            let bit = (msr - base) as usize;
            for offset in [read_offset, write_offset] {
                // SAFETY: `offset + bit / 8` is inside the 4 KiB bitmap allocated above.
                unsafe {
                    let byte = (msr_bitmap as *mut u8).add(offset + bit / 8);
                    byte.write(byte.read() & !(1 << (bit % 8)));
                }
            }
        }
        let Some(vpid) = VPIDS.alloc(VPID_LIMIT) else {
            frame::free(io_bitmaps, IO_BITMAP_FRAMES);
            frame::free(msr_bitmap, 1);
            return Err(VmxError::OutOfMemory);
        };
        Ok(Arc::new(Self { vpid: vpid as u16, io_bitmaps, msr_bitmap, vcpus: VcpuSet::default() }))
    }

    pub fn flushes(&self) -> u64 {
        self.vcpus.flushes()
    }
}

impl Drop for VmxVm {
    fn drop(&mut self) {
        frame::free(self.io_bitmaps, IO_BITMAP_FRAMES);
        frame::free(self.msr_bitmap, 1);
        VPIDS.free(self.vpid as u32);
    }
}

/// The MMU's flush hook for one VM: the protocol of `backend::vcpu_set`; the flush itself
/// is an INVEPT that each vCPU executes on its own CPU before its next VM entry.
impl TlbFlush for VmxVm {
    fn flush(&self, _scope: FlushScope) {
        self.vcpus.flush();
    }

    fn kick_all(&self) {
        self.vcpus.kick_all();
    }
}

fn vmread(field: u32) -> u64 {
    // SAFETY: only called while this vCPU's VMCS is current on this CPU (inside `run` and
    // the exit handlers it returns to, which run on the same CPU before the next entry).
    unsafe { x86::bits64::vmx::vmread(field).unwrap_or(0) }
}

fn vmwrite(field: u32, value: u64) -> Result<(), VmxError> {
    // SAFETY: as in `vmread`.
    unsafe { x86::bits64::vmx::vmwrite(field, value) }.map_err(|_| VmxError::Instruction {
        what: "VMWRITE",
        error: format!("field {field:#x}: {}", instruction_error(vmread(ro::VM_INSTRUCTION_ERROR))),
    })
}

/// INVEPT of `kind` (single-context with `eptp`, or all-context).
fn invept(kind: u64, eptp: u64) {
    let descriptor: [u64; 2] = [eptp, 0];
    // SAFETY: VMX is on (we are about to enter a guest on this CPU); the descriptor is a
    // valid 16-byte operand; the type was checked against the CPU's capabilities.
    unsafe {
        core::arch::asm!("invept {kind}, [{desc}]", kind = in(reg) kind, desc = in(reg) descriptor.as_ptr(), options(nostack));
    }
}

fn invvpid(kind: u64, vpid: u16) {
    let descriptor: [u64; 2] = [vpid as u64, 0];
    // SAFETY: as for `invept`.
    unsafe {
        core::arch::asm!("invvpid {kind}, [{desc}]", kind = in(reg) kind, desc = in(reg) descriptor.as_ptr(), options(nostack));
    }
}

/// The longest a guest runs without an exit when the VMX-preemption timer exists: one host
/// timer period. It bounds the time to the next exit even where external-interrupt exits
/// are late (Bochs 2.7 delivers none to a guest that runs with RFLAGS.IF clear).
const GUEST_SLICE_NS: u64 = 10_000_000;

/// The preemption timer counts down at the TSC rate divided by 2^(IA32_VMX_MISC[4:0])
/// (SDM Vol. 3C §26.5.1).
fn preemption_timer_ticks() -> u64 {
    let shift = rdmsr(msr::IA32_VMX_MISC) & 0x1F;
    let tsc_ticks = (libos::time::tsc_hz() as u128 * GUEST_SLICE_NS as u128 / 1_000_000_000) as u64;
    (tsc_ticks >> shift).clamp(1, u32::MAX as u64)
}

/// One vCPU: its VMCS and the registers VM entry does not load.
pub struct VmxVcpu {
    vm: Arc<VmxVm>,
    vmcs: u64,
    regs: GuestRegs,
    sync: Arc<VcpuSync>,
    /// The CPU whose VMCS setup this vCPU has done, and whether VMLAUNCH happened.
    set_up_on: Option<usize>,
    launched: bool,
    entry: EntryState,
    /// Guest-visible values of the CR0/CR4 bits VMX fixes (the read shadows).
    cr0_shadow: u64,
    cr4_shadow: u64,
    eptp: u64,
    last_exit_reason: u32,
}

impl VmxVcpu {
    pub fn new(vm: &Arc<VmxVm>, entry: &EntryState) -> Result<Self, VmxError> {
        let vmcs = frame::alloc_zeroed(1).ok_or(VmxError::OutOfMemory)?;
        let revision = rdmsr(msr::IA32_VMX_BASIC) as u32 & 0x7FFF_FFFF;
        // SAFETY: a fresh page owned by this vCPU; its first word is the revision.
        unsafe { (vmcs as *mut u32).write_volatile(revision) };
        let sync = vm.vcpus.register();
        // The EPT root and the VPID may have served another VM on this CPU: flush both
        // before the first entry (INVEPT here, INVVPID at VMCS setup).
        sync.request_flush();
        Ok(Self {
            vm: vm.clone(),
            vmcs,
            regs: entry.regs,
            sync,
            set_up_on: None,
            launched: false,
            entry: *entry,
            cr0_shadow: 0,
            cr4_shadow: 0,
            eptp: 0,
            last_exit_reason: 0,
        })
    }

    /// Makes the VMCS current on this CPU, setting it up the first time.
    fn make_current(&mut self) -> Result<(), VmxError> {
        let cpu = libos::smp::current_cpu();
        if VMXON_REGION[cpu].load(Ordering::Acquire) == 0 {
            return Err(VmxError::Instruction {
                what: "VM entry",
                error: format!("VMX is not on for cpu {cpu}"),
            });
        }
        match self.set_up_on {
            Some(c) if c == cpu => {
                if CURRENT_VMCS[cpu].load(Ordering::Relaxed) != self.vmcs {
                    // SAFETY: our VMCS, already clear-launched state tracked by `launched`.
                    unsafe { x86::bits64::vmx::vmptrld(self.vmcs) }
                        .map_err(|e| VmxError::Instruction { what: "VMPTRLD", error: format!("{e:?}") })?;
                    CURRENT_VMCS[cpu].store(self.vmcs, Ordering::Relaxed);
                }
                Ok(())
            }
            Some(c) => Err(VmxError::Instruction {
                what: "VM entry",
                error: format!(
                    "vCPU set up on cpu {c} cannot move to cpu {cpu} (VMCS migration is not implemented)"
                ),
            }),
            None => {
                // SAFETY: our fresh VMCS page with its revision: VMCLEAR puts it in the
                // clear state, VMPTRLD makes it current (SDM §25.11.3).
                unsafe {
                    x86::bits64::vmx::vmclear(self.vmcs)
                        .map_err(|e| VmxError::Instruction { what: "VMCLEAR", error: format!("{e:?}") })?;
                    x86::bits64::vmx::vmptrld(self.vmcs)
                        .map_err(|e| VmxError::Instruction { what: "VMPTRLD", error: format!("{e:?}") })?;
                }
                CURRENT_VMCS[cpu].store(self.vmcs, Ordering::Relaxed);
                self.set_up_on = Some(cpu);
                self.write_controls()?;
                if caps().is_some_and(|c| c.vpid && c.invvpid) {
                    invvpid(INVVPID_SINGLE_CONTEXT, self.vm.vpid);
                }
                self.write_host_state()?;
                let entry = self.entry;
                self.write_guest_state(&entry)?;
                Ok(())
            }
        }
    }

    fn write_controls(&mut self) -> Result<(), VmxError> {
        use vmcs::control::{
            EntryControls, ExitControls, PinbasedControls, PrimaryControls, SecondaryControls,
        };
        let caps = caps().ok_or(VmxError::NotSupported)?;
        let mut pin = PinbasedControls::EXTERNAL_INTERRUPT_EXITING | PinbasedControls::NMI_EXITING;
        if caps.preemption_timer {
            pin |= PinbasedControls::VMX_PREEMPTION_TIMER;
        }
        let pin = adjust(
            true_or(msr::IA32_VMX_PINBASED_CTLS, msr::IA32_VMX_TRUE_PINBASED_CTLS),
            "pin-based",
            pin.bits(),
            |b| format!("{:?}", PinbasedControls::from_bits_truncate(b)),
        )?;
        let primary = adjust(
            true_or(msr::IA32_VMX_PROCBASED_CTLS, msr::IA32_VMX_TRUE_PROCBASED_CTLS),
            "primary processor-based",
            (PrimaryControls::HLT_EXITING
                | PrimaryControls::USE_IO_BITMAPS
                | PrimaryControls::USE_MSR_BITMAPS
                | PrimaryControls::SECONDARY_CONTROLS)
                .bits(),
            |b| format!("{:?}", PrimaryControls::from_bits_truncate(b)),
        )?;
        let mut secondary = SecondaryControls::ENABLE_EPT | SecondaryControls::UNRESTRICTED_GUEST;
        if caps.vpid {
            secondary |= SecondaryControls::ENABLE_VPID;
        }
        let secondary =
            adjust(msr::IA32_VMX_PROCBASED_CTLS2, "secondary processor-based", secondary.bits(), |b| {
                format!("{:?}", SecondaryControls::from_bits_truncate(b))
            })?;
        let exit = adjust(
            true_or(msr::IA32_VMX_EXIT_CTLS, msr::IA32_VMX_TRUE_EXIT_CTLS),
            "VM-exit",
            (ExitControls::HOST_ADDRESS_SPACE_SIZE
                | ExitControls::SAVE_IA32_EFER
                | ExitControls::LOAD_IA32_EFER
                | ExitControls::SAVE_IA32_PAT
                | ExitControls::LOAD_IA32_PAT)
                .bits(),
            |b| format!("{:?}", ExitControls::from_bits_truncate(b)),
        )?;
        let entry = adjust(
            true_or(msr::IA32_VMX_ENTRY_CTLS, msr::IA32_VMX_TRUE_ENTRY_CTLS),
            "VM-entry",
            (EntryControls::LOAD_IA32_EFER | EntryControls::LOAD_IA32_PAT).bits(),
            |b| format!("{:?}", EntryControls::from_bits_truncate(b)),
        )?;
        vmwrite(control::PINBASED_EXEC_CONTROLS, pin as u64)?;
        vmwrite(control::PRIMARY_PROCBASED_EXEC_CONTROLS, primary as u64)?;
        vmwrite(control::SECONDARY_PROCBASED_EXEC_CONTROLS, secondary as u64)?;
        vmwrite(control::VMEXIT_CONTROLS, exit as u64)?;
        vmwrite(control::VMENTRY_CONTROLS, entry as u64)?;
        vmwrite(control::EXCEPTION_BITMAP, 0)?;
        vmwrite(control::IO_BITMAP_A_ADDR_FULL, self.vm.io_bitmaps)?;
        vmwrite(control::IO_BITMAP_B_ADDR_FULL, self.vm.io_bitmaps + 4096)?;
        vmwrite(control::MSR_BITMAPS_ADDR_FULL, self.vm.msr_bitmap)?;
        vmwrite(control::CR3_TARGET_COUNT, 0)?;
        vmwrite(control::VMEXIT_MSR_STORE_COUNT, 0)?;
        vmwrite(control::VMEXIT_MSR_LOAD_COUNT, 0)?;
        vmwrite(control::VMENTRY_MSR_LOAD_COUNT, 0)?;
        vmwrite(control::VMENTRY_INTERRUPTION_INFO_FIELD, 0)?;
        if caps.vpid {
            vmwrite(control::VPID, self.vm.vpid as u64)?;
        }
        // The bits VMX fixes to one (NE, VMXE) are host-owned and hidden by the shadows;
        // every other bit, CR0.WP and CR4.PGE among them, is the guest's own.
        vmwrite(control::CR0_GUEST_HOST_MASK, CR0_NE)?;
        vmwrite(control::CR4_GUEST_HOST_MASK, CR4_VMXE)?;
        Ok(())
    }

    fn write_host_state(&mut self) -> Result<(), VmxError> {
        use x86_64::instructions::tables::{sgdt, sidt};
        let gdt = sgdt();
        let tr: u16;
        // SAFETY: STR only reads the task register.
        unsafe { core::arch::asm!("str {0:x}", out(reg) tr, options(nomem, nostack, preserves_flags)) };
        // The TSS descriptor's base (SDM Vol. 3A §8.2.3, 16-byte system descriptor).
        // SAFETY: the GDT libos loaded is live for good and TR indexes a TSS descriptor in it.
        let tss_base = unsafe {
            let desc = (gdt.base.as_u64() + (tr & !7) as u64) as *const u64;
            let (low, high) = (desc.read(), desc.add(1).read());
            ((low >> 16) & 0xFF_FFFF) | ((low >> 56) << 24) | ((high & 0xFFFF_FFFF) << 32)
        };
        vmwrite(host::CR0, x86_64::registers::control::Cr0::read_raw())?;
        vmwrite(host::CR3, x86_64::registers::control::Cr3::read_raw().0.start_address().as_u64())?;
        vmwrite(host::CR4, x86_64::registers::control::Cr4::read_raw())?;
        use x86_64::instructions::segmentation::{CS, SS, Segment};
        vmwrite(host::CS_SELECTOR, CS::get_reg().0 as u64)?;
        let ss = SS::get_reg().0 as u64;
        for field in [host::SS_SELECTOR, host::DS_SELECTOR, host::ES_SELECTOR] {
            vmwrite(field, ss)?;
        }
        vmwrite(host::FS_SELECTOR, 0)?;
        vmwrite(host::GS_SELECTOR, 0)?;
        vmwrite(host::TR_SELECTOR, tr as u64)?;
        vmwrite(host::FS_BASE, rdmsr(msr::IA32_FS_BASE))?;
        vmwrite(host::GS_BASE, rdmsr(msr::IA32_GS_BASE))?;
        vmwrite(host::TR_BASE, tss_base)?;
        vmwrite(host::GDTR_BASE, gdt.base.as_u64())?;
        vmwrite(host::IDTR_BASE, sidt().base.as_u64())?;
        vmwrite(host::IA32_SYSENTER_CS, 0)?;
        vmwrite(host::IA32_SYSENTER_ESP, 0)?;
        vmwrite(host::IA32_SYSENTER_EIP, 0)?;
        vmwrite(host::IA32_EFER_FULL, rdmsr(msr::IA32_EFER))?;
        vmwrite(host::IA32_PAT_FULL, rdmsr(msr::IA32_PAT))?;
        vmwrite(host::RIP, world_switch::exit_target())?;
        Ok(())
    }

    fn write_guest_state(&mut self, entry: &EntryState) -> Result<(), VmxError> {
        let (cs_sel, cs_base, cs_limit, cs_ar, data_ar, data_limit, cr0_guest, rip) = match entry.mode {
            EntryMode::Real16 { cs, ip } => (
                cs as u64,
                (cs as u64) << 4,
                0xFFFF,
                access_rights::REAL_CODE,
                access_rights::REAL_DATA,
                0xFFFF,
                CR0_ET,
                ip as u64,
            ),
            EntryMode::Protected32 { eip } => (
                0x08,
                0,
                0xFFFF_FFFF,
                access_rights::FLAT32_CODE,
                access_rights::FLAT32_DATA,
                0xFFFF_FFFF,
                CR0_ET | CR0_PE,
                eip as u64,
            ),
        };
        let data_sel = if matches!(entry.mode, EntryMode::Protected32 { .. }) { 0x10 } else { 0 };
        vmwrite(guest::CS_SELECTOR, cs_sel)?;
        vmwrite(guest::CS_BASE, cs_base)?;
        vmwrite(guest::CS_LIMIT, cs_limit)?;
        vmwrite(guest::CS_ACCESS_RIGHTS, cs_ar as u64)?;
        for (sel, base, limit, ar) in [
            (guest::SS_SELECTOR, guest::SS_BASE, guest::SS_LIMIT, guest::SS_ACCESS_RIGHTS),
            (guest::DS_SELECTOR, guest::DS_BASE, guest::DS_LIMIT, guest::DS_ACCESS_RIGHTS),
            (guest::ES_SELECTOR, guest::ES_BASE, guest::ES_LIMIT, guest::ES_ACCESS_RIGHTS),
            (guest::FS_SELECTOR, guest::FS_BASE, guest::FS_LIMIT, guest::FS_ACCESS_RIGHTS),
            (guest::GS_SELECTOR, guest::GS_BASE, guest::GS_LIMIT, guest::GS_ACCESS_RIGHTS),
        ] {
            vmwrite(sel, data_sel)?;
            vmwrite(base, 0)?;
            vmwrite(limit, data_limit)?;
            vmwrite(ar, data_ar as u64)?;
        }
        vmwrite(guest::LDTR_SELECTOR, 0)?;
        vmwrite(guest::LDTR_BASE, 0)?;
        vmwrite(guest::LDTR_LIMIT, 0xFFFF)?;
        vmwrite(guest::LDTR_ACCESS_RIGHTS, access_rights::UNUSABLE as u64)?;
        vmwrite(guest::TR_SELECTOR, 0)?;
        vmwrite(guest::TR_BASE, 0)?;
        vmwrite(guest::TR_LIMIT, 0xFFFF)?;
        vmwrite(guest::TR_ACCESS_RIGHTS, access_rights::BUSY_TSS32 as u64)?;
        vmwrite(guest::GDTR_BASE, 0)?;
        vmwrite(guest::GDTR_LIMIT, 0xFFFF)?;
        vmwrite(guest::IDTR_BASE, 0)?;
        vmwrite(guest::IDTR_LIMIT, 0xFFFF)?;
        // CR0: what the guest sees (shadow) plus the bits VMX fixes; with unrestricted
        // guest PE and PG may be 0 (SDM §26.3.1.1).
        self.cr0_shadow = cr0_guest;
        self.cr4_shadow = 0;
        let fixed0 = rdmsr(msr::IA32_VMX_CR0_FIXED0) & !(CR0_PE | CR0_PG);
        vmwrite(guest::CR0, cr0_guest | fixed0)?;
        vmwrite(control::CR0_READ_SHADOW, self.cr0_shadow)?;
        vmwrite(guest::CR4, rdmsr(msr::IA32_VMX_CR4_FIXED0))?;
        vmwrite(control::CR4_READ_SHADOW, self.cr4_shadow)?;
        vmwrite(guest::CR3, 0)?;
        vmwrite(guest::DR7, 0x400)?;
        vmwrite(guest::RSP, 0)?;
        vmwrite(guest::RIP, rip)?;
        vmwrite(guest::RFLAGS, 0x2)?;
        vmwrite(guest::PENDING_DBG_EXCEPTIONS, 0)?;
        vmwrite(guest::INTERRUPTIBILITY_STATE, 0)?;
        vmwrite(guest::ACTIVITY_STATE, 0)?;
        vmwrite(guest::IA32_SYSENTER_CS, 0)?;
        vmwrite(guest::IA32_SYSENTER_ESP, 0)?;
        vmwrite(guest::IA32_SYSENTER_EIP, 0)?;
        vmwrite(guest::IA32_EFER_FULL, 0)?;
        vmwrite(guest::IA32_PAT_FULL, DEFAULT_PAT)?;
        vmwrite(guest::IA32_DEBUGCTL_FULL, 0)?;
        vmwrite(guest::LINK_PTR_FULL, u64::MAX)?;
        let mut entry_ctls = vmread(control::VMENTRY_CONTROLS);
        entry_ctls &= !(vmcs::control::EntryControls::IA32E_MODE_GUEST.bits() as u64);
        vmwrite(control::VMENTRY_CONTROLS, entry_ctls)?;
        self.regs = entry.regs;
        Ok(())
    }

    /// Handles exits that only concern VMX (CR0/CR4 writes that touch a host-owned bit).
    fn handle_internally(&mut self, reason: u16) -> bool {
        if reason != exit_reason::CR_ACCESS {
            return false;
        }
        let qual = vmread(ro::EXIT_QUALIFICATION);
        let cr = qual & cr_qual::CR_MASK;
        let kind = (qual >> cr_qual::TYPE_SHIFT) & cr_qual::TYPE_MASK;
        if kind != cr_qual::TYPE_MOV_TO_CR || !(cr == 0 || cr == 4) {
            return false;
        }
        let value = match (qual >> cr_qual::REG_SHIFT) & cr_qual::REG_MASK {
            0 => self.regs.rax,
            1 => self.regs.rcx,
            2 => self.regs.rdx,
            3 => self.regs.rbx,
            4 => vmread(guest::RSP),
            5 => self.regs.rbp,
            6 => self.regs.rsi,
            7 => self.regs.rdi,
            8 => self.regs.r8,
            9 => self.regs.r9,
            10 => self.regs.r10,
            11 => self.regs.r11,
            12 => self.regs.r12,
            13 => self.regs.r13,
            14 => self.regs.r14,
            _ => self.regs.r15,
        };
        let result = if cr == 0 {
            self.cr0_shadow = value;
            let fixed0 = rdmsr(msr::IA32_VMX_CR0_FIXED0) & !(CR0_PE | CR0_PG);
            vmwrite(control::CR0_READ_SHADOW, value).and_then(|()| vmwrite(guest::CR0, value | fixed0))
        } else {
            self.cr4_shadow = value;
            vmwrite(control::CR4_READ_SHADOW, value)
                .and_then(|()| vmwrite(guest::CR4, value | rdmsr(msr::IA32_VMX_CR4_FIXED0)))
        };
        if result.is_err() {
            return false;
        }
        self.skip_exiting_instruction();
        true
    }

    fn decode_exit(&mut self) -> (u16, Exit) {
        let full = vmread(ro::EXIT_REASON) as u32;
        self.last_exit_reason = full;
        let reason = full as u16;
        if full & exit_reason::ENTRY_FAILURE != 0 {
            return (reason, Exit::InvalidState);
        }
        let qual = vmread(ro::EXIT_QUALIFICATION);
        let exit = match reason {
            exit_reason::EXTERNAL_INTERRUPT | exit_reason::PREEMPTION_TIMER => Exit::HostInterrupt,
            exit_reason::EXCEPTION_OR_NMI => Exit::HostInterrupt,
            exit_reason::TRIPLE_FAULT => Exit::Shutdown,
            exit_reason::CPUID => Exit::Cpuid,
            exit_reason::HLT => Exit::Hlt,
            exit_reason::VMCALL => Exit::Hypercall,
            exit_reason::RDMSR => Exit::Msr { write: false },
            exit_reason::WRMSR => Exit::Msr { write: true },
            exit_reason::IO_INSTRUCTION => {
                let size = match qual & io_qual::SIZE_MASK {
                    0 => 1,
                    1 => 2,
                    _ => 4,
                };
                let len = vmread(ro::VMEXIT_INSTRUCTION_LEN);
                Exit::Io(IoExit {
                    port: (qual >> io_qual::PORT_SHIFT) as u16,
                    size,
                    is_in: qual & io_qual::IN != 0,
                    is_string: qual & io_qual::STRING != 0,
                    next_rip: vmread(guest::RIP) + len,
                })
            }
            exit_reason::EPT_VIOLATION => {
                let access = if qual & ept_qual::WRITE != 0 {
                    Access::Write
                } else if qual & ept_qual::FETCH != 0 {
                    Access::Execute
                } else {
                    Access::Read
                };
                Exit::NestedPageFault { gpa: vmread(ro::GUEST_PHYSICAL_ADDR_FULL), access }
            }
            exit_reason::INVALID_GUEST_STATE
            | exit_reason::MSR_LOADING
            | exit_reason::MACHINE_CHECK
            | exit_reason::EPT_MISCONFIG => Exit::InvalidState,
            other => Exit::Unhandled { code: other as u64 },
        };
        (reason, exit)
    }

    fn entry_failed(&mut self, error: VmxError) -> Exit {
        log::error!("vmx: {error}");
        Exit::InvalidState
    }
}

impl Drop for VmxVcpu {
    fn drop(&mut self) {
        self.vm.vcpus.unregister(&self.sync);
        if let Some(cpu) = self.set_up_on {
            // The VMCS may still be current on its CPU; clear our record so a later VMCS
            // at the same address is loaded afresh. (A VMCS current on another CPU would
            // need a VMCLEAR there; vCPUs are dropped after they ended on their CPU.)
            let _ = CURRENT_VMCS[cpu].compare_exchange(self.vmcs, 0, Ordering::Relaxed, Ordering::Relaxed);
            if cpu == libos::smp::current_cpu() {
                // SAFETY: our VMCS on this CPU; VMCLEAR flushes it to memory before free.
                let _ = unsafe { x86::bits64::vmx::vmclear(self.vmcs) };
            }
        }
        frame::free(self.vmcs, 1);
    }
}

impl BackendVcpu for VmxVcpu {
    fn reset(&mut self, entry: &EntryState) {
        self.entry = *entry;
        self.regs = entry.regs;
        if self.set_up_on.is_some() && self.make_current().is_ok() {
            let _ = self.write_guest_state(entry);
            if caps().is_some_and(|c| c.invvpid) {
                invvpid(INVVPID_SINGLE_CONTEXT, self.vm.vpid);
            }
        }
    }

    fn regs(&self) -> &GuestRegs {
        &self.regs
    }

    fn regs_mut(&mut self) -> &mut GuestRegs {
        &mut self.regs
    }

    fn rip(&self) -> u64 {
        vmread(guest::RIP)
    }

    fn set_rip(&mut self, rip: u64) {
        let _ = vmwrite(guest::RIP, rip);
    }

    fn skip_exiting_instruction(&mut self) {
        let len = vmread(ro::VMEXIT_INSTRUCTION_LEN);
        self.set_rip(self.rip().wrapping_add(len));
    }

    fn inject_general_protection(&mut self) {
        // Valid, type hardware exception (3), deliver error code, vector 13 (SDM §25.8.3).
        const GP_EVENT: u64 = (1 << 31) | (3 << 8) | (1 << 11) | 13;
        let _ = vmwrite(control::VMENTRY_INTERRUPTION_INFO_FIELD, GP_EVENT);
        let _ = vmwrite(control::VMENTRY_EXCEPTION_ERR_CODE, 0);
    }

    fn run(&mut self, root_pointer: u64) -> Exit {
        loop {
            if let Err(e) = self.make_current() {
                return self.entry_failed(e);
            }
            let caps = caps().unwrap_or_default();
            let eptp = root_pointer
                | EPTP_MEMORY_TYPE_WB
                | EPTP_WALK_LENGTH_4
                | if caps.ept_ad { EPTP_ACCESSED_DIRTY } else { 0 };
            if eptp != self.eptp {
                if let Err(e) = vmwrite(control::EPTP_FULL, eptp) {
                    return self.entry_failed(e);
                }
                self.eptp = eptp;
            }
            if caps.preemption_timer
                && let Err(e) = vmwrite(guest::VMX_PREEMPTION_TIMER_VALUE, preemption_timer_ticks())
            {
                return self.entry_failed(e);
            }
            let cpu = libos::smp::current_cpu();
            if self.sync.entering(cpu) {
                if caps.invept_all {
                    invept(INVEPT_ALL_CONTEXT, 0);
                } else {
                    invept(INVEPT_SINGLE_CONTEXT, eptp);
                }
            }
            // SAFETY: VMX is on for this CPU, our VMCS is current and fully set up (host
            // state with this CPU's values, HOST_RIP the world switch's exit label), and
            // `regs` is this vCPU's register block.
            let failed = unsafe { world_switch::run(&mut self.regs, self.launched) };
            self.sync.exited();
            x86_64::instructions::interrupts::enable();
            if failed {
                let error = instruction_error(vmread(ro::VM_INSTRUCTION_ERROR));
                return self.entry_failed(VmxError::Instruction {
                    what: if self.launched { "VMRESUME" } else { "VMLAUNCH" },
                    error: error.into(),
                });
            }
            self.launched = true;
            let (reason, exit) = self.decode_exit();
            if !self.handle_internally(reason) {
                return exit;
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} rax={:#x} \
             rbx={:#x} rcx={:#x} rdx={:#x} exit_reason={:#x} qualification={:#x} instruction_error={}",
            vmread(guest::RIP),
            vmread(guest::RSP),
            vmread(guest::RFLAGS),
            vmread(guest::CR0),
            vmread(guest::CR3),
            vmread(guest::CR4),
            vmread(guest::IA32_EFER_FULL),
            vmread(guest::CS_SELECTOR),
            self.regs.rax,
            self.regs.rbx,
            self.regs.rcx,
            self.regs.rdx,
            self.last_exit_reason,
            vmread(ro::EXIT_QUALIFICATION),
            instruction_error(vmread(ro::VM_INSTRUCTION_ERROR)),
        )
    }
}

/// The TDP MMU as the VMX backend instantiates it.
pub struct VmxPlatform;

impl crate::mmu::Platform for VmxPlatform {
    type Format = crate::mmu::ept::Ept;
    type Pages = super::direct_map::DirectMap;
    type Flush = VmxVm;
    type Clock = super::svm::LibosClock;
}

/// The VMX backend, as the VM layer sees it.
pub struct Vmx;

impl super::Backend for Vmx {
    type Platform = VmxPlatform;
    type Vcpu = VmxVcpu;
    const NAME: &'static str = "vmx";
    const VENDOR: crate::cpuid::Vendor = crate::cpuid::Vendor::Intel;

    fn enable_on_this_cpu() -> Result<(), String> {
        enable_on_this_cpu().map_err(|e| format!("{e}"))
    }

    fn create_vm() -> Result<Arc<VmxVm>, String> {
        VmxVm::new().map_err(|e| format!("{e}"))
    }

    fn create_vcpu(vm: &Arc<VmxVm>, entry: &EntryState) -> Result<VmxVcpu, String> {
        VmxVcpu::new(vm, entry).map_err(|e| format!("{e}"))
    }

    fn pages() -> Arc<super::direct_map::DirectMap> {
        Arc::new(super::direct_map::DirectMap)
    }

    fn clock() -> super::svm::LibosClock {
        super::svm::LibosClock
    }

    fn host_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    fn flushes(vm: &VmxVm) -> u64 {
        vm.flushes()
    }
}
