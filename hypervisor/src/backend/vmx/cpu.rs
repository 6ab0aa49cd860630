//! VMX on one CPU: what the CPU offers (read once: the backend's [`Caps`] from libos's
//! detection, and [`VmxHost`], the capability MSRs the VMCS setup needs), VMXON, and the
//! TLB invalidations INVEPT and INVVPID.
//!
//! Every CPU is assumed to offer what the boot CPU offers (the banner warns when they
//! differ): the capabilities are read on the first CPU that asks and serve all of them.
//! What is per CPU state, not capability, is read per CPU: IA32_FEATURE_CONTROL here, the
//! host-state MSRs at VMCS setup.

use super::consts::*;
use crate::backend::choice::{self, Choice};
use crate::backend::host::Frames;
use crate::backend::{BackendError, Caps};
use alloc::format;
use alloc::string::ToString;
use core::sync::atomic::{AtomicU64, Ordering};
use libos::smp::MAX_CPUS;
use spin::Once;
use x86::msr;
use x86_64::registers::model_specific::Msr;

/// VPIDs are 16 bits, 0 being the host's (SDM Vol. 3C §29.1).
pub const VPID_LIMIT: u32 = 1 << 16;
pub const OUT_OF_MEMORY: BackendError = BackendError::OutOfMemory { backend: "VMX" };

/// Each CPU's VMXON region, kept for good once VMX is on there.
static VMXON_REGIONS: [Once<Frames>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];
static CAPS: Once<Caps> = Once::new();
static HOST: Once<VmxHost> = Once::new();

pub fn rdmsr(index: u32) -> u64 {
    // SAFETY: only called for MSRs that exist when CPUID reports VMX (the VMX capability
    // MSRs, IA32_FEATURE_CONTROL) or that exist on every x86-64 CPU (FS/GS base, EFER, PAT,
    // KERNEL_GS_BASE).
    unsafe { Msr::new(index).read() }
}

/// What each CPU's IA32_KERNEL_GS_BASE holds, as last written or read here; starts as a
/// non-canonical value no MSR can hold ("unknown"). WRMSR is among the costliest steps of
/// an entry, and with one vCPU per CPU the value is already there.
static KERNEL_GS_BASE_HELD: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(UNKNOWN_MSR) }; MAX_CPUS];
const UNKNOWN_MSR: u64 = 1 << 63;

/// Makes `cpu`'s (the calling CPU's) IA32_KERNEL_GS_BASE `value`, the only MSR the vCPU
/// switches by hand; no WRMSR when it already holds it.
pub fn load_kernel_gs_base(cpu: usize, value: u64) {
    if KERNEL_GS_BASE_HELD[cpu].load(Ordering::Relaxed) == value {
        return;
    }
    // SAFETY: the MSR exists on every x86-64 CPU; the host never executes SWAPGS, so its
    // value (the guest's, here) means nothing to the host. A non-canonical value would #GP,
    // but it was read from the MSR after a guest ran (the CPU only holds canonical values)
    // or is the reset value 0.
    unsafe { Msr::new(super::consts::MSR_KERNEL_GS_BASE).write(value) }
    KERNEL_GS_BASE_HELD[cpu].store(value, Ordering::Relaxed);
}

/// `cpu`'s (the calling CPU's) IA32_KERNEL_GS_BASE after a guest ran (SWAPGS and WRMSR in
/// the guest change it without an exit).
pub fn save_kernel_gs_base(cpu: usize) -> u64 {
    let value = rdmsr(super::consts::MSR_KERNEL_GS_BASE);
    KERNEL_GS_BASE_HELD[cpu].store(value, Ordering::Relaxed);
    value
}

/// What the boot CPU's VMX offers, as libos detected it.
pub fn caps() -> &'static Caps {
    CAPS.call_once(|| {
        let Some(libos::virt::VirtCaps::Vmx(vmx)) = libos::smp::virt_caps(0) else { return Caps::none() };
        // INVEPT exists only with bit 20 of IA32_VMX_EPT_VPID_CAP (SDM Vol. 3D §A.10), and
        // EPT is usable only with a way to flush it (`backend::tlb`).
        let invept_single = vmx.invept && vmx.invept_single;
        let invept_all = vmx.invept && vmx.invept_all;
        Caps {
            nested_paging: vmx.ept && (invept_single || invept_all),
            max_page_size: crate::backend::largest_leaf(vmx.ept_2m, vmx.ept_1g),
            // VPIDs need an INVVPID type to make a reused number safe; without one, run
            // untagged (VM entry and exit then flush the guest's linear translations).
            tags: if vmx.invvpid_single || vmx.invvpid_all { VPID_LIMIT } else { 0 },
            flush_one_vm: invept_single,
            flush_all: invept_all,
            flush_tag: vmx.invvpid_single,
            flush_all_tags: vmx.invvpid_all,
            next_rip: true,
            vgif: false,
            accessed_dirty: vmx.ept_ad,
            preemption_timer: vmx.preemption_timer,
            disabled_by_firmware: vmx.disabled_by_firmware,
            features: libos::virt::VirtCaps::Vmx(vmx).features().to_string(),
        }
    })
}

/// The VMX capability MSRs the VMCS setup needs (SDM Vol. 3D Appendix A), read once.
pub struct VmxHost {
    /// The VMCS revision identifier (IA32_VMX_BASIC[30:0]).
    pub revision: u32,
    /// CR0/CR4 bits VMX operation fixes to 1 (FIXED0) and allows to be 1 (FIXED1).
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
    /// Allowed settings of each control set (the TRUE MSRs when they exist): allowed-0 in
    /// the low half, allowed-1 in the high half.
    pub pin_controls: u64,
    pub primary_controls: u64,
    pub secondary_controls: u64,
    pub exit_controls: u64,
    pub entry_controls: u64,
    /// The VMX-preemption timer counts at the TSC rate divided by 2^this.
    pub preemption_timer_shift: u32,
    /// INS/OUTS exits report address size and segment (IA32_VMX_BASIC[54]).
    pub has_ins_outs_info: bool,
}

/// The capability MSRs. Only after [`enable_on_this_cpu`] succeeded once (reading them
/// where VMX does not exist would fault).
pub fn host() -> &'static VmxHost {
    HOST.call_once(|| {
        let basic = rdmsr(msr::IA32_VMX_BASIC);
        let true_or =
            |normal, true_msr| rdmsr(if basic & VMX_BASIC_TRUE_CTLS != 0 { true_msr } else { normal });
        VmxHost {
            revision: basic as u32 & 0x7FFF_FFFF,
            cr0_fixed0: rdmsr(msr::IA32_VMX_CR0_FIXED0),
            cr0_fixed1: rdmsr(msr::IA32_VMX_CR0_FIXED1),
            cr4_fixed0: rdmsr(msr::IA32_VMX_CR4_FIXED0),
            cr4_fixed1: rdmsr(msr::IA32_VMX_CR4_FIXED1),
            pin_controls: true_or(msr::IA32_VMX_PINBASED_CTLS, msr::IA32_VMX_TRUE_PINBASED_CTLS),
            primary_controls: true_or(msr::IA32_VMX_PROCBASED_CTLS, msr::IA32_VMX_TRUE_PROCBASED_CTLS),
            secondary_controls: rdmsr(msr::IA32_VMX_PROCBASED_CTLS2),
            exit_controls: true_or(msr::IA32_VMX_EXIT_CTLS, msr::IA32_VMX_TRUE_EXIT_CTLS),
            entry_controls: true_or(msr::IA32_VMX_ENTRY_CTLS, msr::IA32_VMX_TRUE_ENTRY_CTLS),
            preemption_timer_shift: (rdmsr(msr::IA32_VMX_MISC) & 0x1F) as u32,
            has_ins_outs_info: basic & VMX_BASIC_INS_OUTS_INFO != 0,
        }
    })
}

/// Whether VMX is on for `cpu`.
pub fn is_on(cpu: usize) -> bool {
    VMXON_REGIONS[cpu].is_completed()
}

/// Turns VMX on for the calling CPU (VMXON). Idempotent.
pub fn enable_on_this_cpu() -> Result<(), BackendError> {
    let cpu = libos::smp::current_cpu();
    if is_on(cpu) {
        return Ok(());
    }
    if choice::choose() != Choice::Vmx {
        return Err(BackendError::NotSupported { why: "this CPU has no Intel VMX".into() });
    }
    const DISABLED: BackendError = BackendError::DisabledByFirmware {
        why: "VMX is disabled by the firmware (IA32_FEATURE_CONTROL locked with VMX off); enable it in the BIOS",
    };
    if caps().disabled_by_firmware {
        return Err(DISABLED);
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
        return Err(DISABLED);
    }
    let host = host();
    let mut region = Frames::zeroed(1).ok_or(OUT_OF_MEMORY)?;
    region.bytes_mut()[..4].copy_from_slice(&host.revision.to_le_bytes());
    // SAFETY: 1. the region is a fresh page owned by this CPU for good (`VMXON_REGIONS`
    // keeps it); its first word is the VMCS revision (SDM §25.11.5). 2. CR0/CR4 get the
    // bits VMX requires (fixed-0 ones set, fixed-1 ones kept: SDM §24.8), which libos's own
    // settings already satisfy but for NE and VMXE, neither of which changes how libos
    // runs. 3. VMXON then enters VMX root operation on this CPU.
    unsafe {
        let cr0 = x86_64::registers::control::Cr0::read_raw();
        let cr0 = (cr0 | host.cr0_fixed0) & host.cr0_fixed1;
        x86_64::registers::control::Cr0::write_raw(cr0);
        let cr4 = x86_64::registers::control::Cr4::read_raw() | CR4_VMXE;
        let cr4 = (cr4 | host.cr4_fixed0) & host.cr4_fixed1;
        x86_64::registers::control::Cr4::write_raw(cr4);
        x86::bits64::vmx::vmxon(region.phys())
            .map_err(|e| BackendError::EnableFailed { what: "VMXON", error: format!("{e:?}") })?;
    }
    VMXON_REGIONS[cpu].call_once(|| region);
    crate::backend::fpu::enable_on_this_cpu();
    crate::backend::ibpb::enable_on_this_cpu();
    Ok(())
}

/// How a VMX instruction failed (SDM Vol. 3C §31.2): VMfailInvalid (CF set: no current
/// VMCS) or VMfailValid (ZF set: the number is in the current VMCS's VM-instruction error
/// field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFail {
    Invalid,
    Valid,
}

/// CF and ZF after a VMX instruction, as its outcome.
fn outcome(below_or_equal: u8) -> Result<(), VmFail> {
    const CF: u8 = 1;
    const ZF: u8 = 2;
    match below_or_equal {
        0 => Ok(()),
        flags if flags & CF != 0 => Err(VmFail::Invalid),
        _ => {
            debug_assert_eq!(below_or_equal, ZF);
            Err(VmFail::Valid)
        }
    }
}

/// Runs `$instruction` (INVEPT or INVVPID) of type `$kind` with a 16-byte descriptor
/// whose first quadword is `$first`, and returns its outcome from CF and ZF.
macro_rules! invalidate {
    ($instruction:literal, $kind:expr, $first:expr) => {{
        let descriptor: [u64; 2] = [$first, 0];
        let (cf, zf): (u8, u8);
        // SAFETY: VMX is on (we are about to enter a guest on this CPU); the descriptor is
        // a valid 16-byte operand that lives across the instruction; the instruction only
        // invalidates cached translations and reports failure in CF/ZF, read at once.
        unsafe {
            core::arch::asm!(
                concat!($instruction, " {kind}, [{desc}]"),
                "setc {cf}",
                "setz {zf}",
                kind = in(reg) $kind,
                desc = in(reg) descriptor.as_ptr(),
                cf = out(reg_byte) cf,
                zf = out(reg_byte) zf,
                options(nostack),
            );
        }
        outcome(cf | (zf << 1))
    }};
}

/// INVEPT of `kind` (single-context with `eptp`, or all-context): the caller checked the
/// type against the CPU's capabilities (`Caps::flush_one_vm`, `Caps::flush_all`).
pub fn invept(kind: u64, eptp: u64) -> Result<(), VmFail> {
    invalidate!("invept", kind, eptp)
}

/// INVVPID of `kind` (single-context with `vpid`, or all-context), checked as [`invept`].
pub fn invvpid(kind: u64, vpid: u16) -> Result<(), VmFail> {
    invalidate!("invvpid", kind, vpid as u64)
}
