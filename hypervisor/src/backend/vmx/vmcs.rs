//! A VMCS region, and [`Current`], the token that proves it is the current VMCS of this CPU
//! so that VMREAD and VMWRITE through it are safe.
//!
//! Protocol (SDM Vol. 3C §25.1 and §25.11.3): a VMCS is VMCLEARed once, then made current
//! by VMPTRLD; VMREAD and VMWRITE act on the current VMCS of the CPU that executes them. A
//! launched VMCS may be made current again only on the CPU it was launched on (moving it
//! needs a VMCLEAR on the old CPU first, which nothing here needs: a vCPU stays on its CPU),
//! so [`Vmcs::bind`] ties it to the first CPU that uses it. [`Vmcs::current`] is the only
//! VMPTRLD; the [`Current`] it returns borrows the VMCS and is not `Send`, so it is used on
//! this CPU while the VMCS lives. Nothing else makes another VMCS current on this CPU while a
//! token lives: tokens live inside one call of their vCPU's methods, and the scheduler runs
//! one vCPU at a time per CPU, without preempting it inside such a call.
#![allow(unsafe_code, reason = "VMCLEAR, VMPTRLD, VMREAD and VMWRITE")]

use super::consts::instruction_error;
use super::cpu;
use crate::backend::BackendError;
use crate::backend::host::Frames;
use alloc::format;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering};
use libos::smp::MAX_CPUS;
use x86::vmx::vmcs::ro;

/// The VMCS current on each CPU, so that [`Vmcs::current`] knows whether it must VMPTRLD.
static CURRENT_VMCS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// One VMCS region, owned by its vCPU.
pub struct Vmcs {
    region: Frames,
    /// The CPU it was cleared and first made current on.
    bound: Option<usize>,
}

/// Proof that a VMCS is current on this CPU: VMREAD and VMWRITE go through it.
pub struct Current<'a> {
    _vmcs: PhantomData<&'a Vmcs>,
    /// Not `Send`: current-ness belongs to one CPU.
    _this_cpu: PhantomData<*const ()>,
}

impl Vmcs {
    /// A fresh region with the VMCS revision `revision` (SDM §25.2), bound to no CPU yet.
    pub fn new(revision: u32) -> Result<Self, BackendError> {
        let mut region = Frames::zeroed(1).ok_or(cpu::OUT_OF_MEMORY)?;
        region.bytes_mut()[..4].copy_from_slice(&revision.to_le_bytes());
        Ok(Self { region, bound: None })
    }

    pub fn bound_cpu(&self) -> Option<usize> {
        self.bound
    }

    /// Binds the VMCS to this CPU the first time (VMCLEAR puts it in the clear state: SDM
    /// §25.11.3) and returns whether it did, i.e. whether the VMCS still needs setting up.
    pub fn bind(&mut self) -> Result<bool, BackendError> {
        let cpu = self.check_cpu()?;
        if self.bound.is_some() {
            return Ok(false);
        }
        // SAFETY: VMX is on for this CPU (checked) and the region is ours, with its revision.
        unsafe { x86::bits64::vmx::vmclear(self.region.phys()) }
            .map_err(|e| BackendError::VmEntryFailed { what: "VMCLEAR", error: format!("{e:?}") })?;
        CURRENT_VMCS[cpu].store(0, Ordering::Relaxed);
        self.bound = Some(cpu);
        Ok(true)
    }

    /// Makes the VMCS current on this CPU, its bound one (VMPTRLD unless it already is).
    pub fn current(&self) -> Result<Current<'_>, BackendError> {
        let cpu = self.check_cpu()?;
        if self.bound.is_none() {
            return Err(BackendError::VmEntryFailed {
                what: "VMPTRLD",
                error: "the VMCS is not set up".into(),
            });
        }
        let phys = self.region.phys();
        if CURRENT_VMCS[cpu].load(Ordering::Relaxed) != phys {
            // SAFETY: our VMCS, cleared on this CPU by `bind` (its launch state is tracked
            // by the vCPU), with VMX on here.
            unsafe { x86::bits64::vmx::vmptrld(phys) }
                .map_err(|e| BackendError::VmEntryFailed { what: "VMPTRLD", error: format!("{e:?}") })?;
            CURRENT_VMCS[cpu].store(phys, Ordering::Relaxed);
        }
        Ok(Current { _vmcs: PhantomData, _this_cpu: PhantomData })
    }

    /// This CPU, if VMX is on here and the VMCS may be used here.
    fn check_cpu(&self) -> Result<usize, BackendError> {
        let cpu = libos::smp::current_cpu();
        if !cpu::is_on(cpu) {
            return Err(BackendError::VmEntryFailed {
                what: "VM entry",
                error: format!("VMX is not on for cpu {cpu}"),
            });
        }
        match self.bound {
            Some(bound) if bound != cpu => Err(BackendError::VmEntryFailed {
                what: "VM entry",
                error: format!(
                    "vCPU set up on cpu {bound} cannot move to cpu {cpu} (VMCS migration is not implemented)"
                ),
            }),
            _ => Ok(cpu),
        }
    }
}

impl Drop for Vmcs {
    fn drop(&mut self) {
        if let Some(cpu) = self.bound {
            // The VMCS may still be current on its CPU; clear our record so a later VMCS
            // at the same address is loaded afresh. (A VMCS current on another CPU would
            // need a VMCLEAR there; vCPUs are dropped after they ended on their CPU.)
            let phys = self.region.phys();
            let _ = CURRENT_VMCS[cpu].compare_exchange(phys, 0, Ordering::Relaxed, Ordering::Relaxed);
            if cpu == libos::smp::current_cpu() {
                // SAFETY: our VMCS on this CPU; VMCLEAR flushes it to memory before free.
                let _ = unsafe { x86::bits64::vmx::vmclear(phys) };
            }
        }
    }
}

impl Current<'_> {
    /// VMREAD of `field` (0 if the CPU refuses it, as for an unsupported field).
    pub fn read(&self, field: u32) -> u64 {
        // SAFETY: this token proves our VMCS is current on this CPU (module comment).
        unsafe { x86::bits64::vmx::vmread(field).unwrap_or(0) }
    }

    /// VMWRITE of `field`; the error names the field and the VM-instruction error.
    pub fn write(&self, field: u32, value: u64) -> Result<(), BackendError> {
        // SAFETY: as in `read`.
        unsafe { x86::bits64::vmx::vmwrite(field, value) }.map_err(|_| BackendError::VmEntryFailed {
            what: "VMWRITE",
            error: format!("field {field:#x}: {}", self.instruction_error()),
        })
    }

    /// The VM-instruction error of the last failed VMX instruction (SDM Vol. 3C §31.4).
    pub fn instruction_error(&self) -> &'static str {
        instruction_error(self.read(ro::VM_INSTRUCTION_ERROR))
    }
}
