//! Interrupt and NMI delivery on VMX: what the guest can take ([`openings`]) and the window
//! exits the entry path asks for ([`apply_windows`]). The decisions are
//! `backend::events`'s; this file only reads and writes the VMCS.
//!
//! - Interrupt window: the primary control "interrupt-window exiting": a VM exit before
//!   any instruction once RFLAGS.IF is 1 and nothing blocks interrupts (SDM Vol. 3C
//!   §25.6.2, §26.7.5).
//! - NMI window: "NMI-window exiting", which needs "virtual NMIs" (SDM Vol. 3C §27.2.1.1):
//!   the CPU then keeps the guest's NMI blocking in the interruptibility state (bit 3),
//!   set by an injected NMI and cleared by the guest's IRET. Without virtual NMIs (a CPU
//!   that lacks them) the guest is never offered an NMI.
//!
//! An injected external interrupt needs RFLAGS.IF = 1 and no STI / MOV SS blocking, an
//! injected NMI no MOV SS blocking (VM-entry checks, SDM Vol. 3C §27.3.1.5): the openings
//! guarantee both.

#![deny(unsafe_code)]

use super::consts::RFLAGS_IF;
use super::consts::intr_info::{
    INTERRUPTIBILITY_BLOCKING_BY_MOV_SS, INTERRUPTIBILITY_BLOCKING_BY_NMI, INTERRUPTIBILITY_BLOCKING_BY_STI,
};
use super::cpu::VmxHost;
use super::vmcs::Current;
use crate::backend::BackendError;
use crate::backend::events::{self, EventQueue, Windows};
use crate::devices::irqchip::Openings;
use x86::vmx::vmcs::control::{self, PinbasedControls, PrimaryControls};
use x86::vmx::vmcs::guest;

/// Whether the CPU lets pin-based control `bit` be 1 (allowed-1 settings in the high half
/// of the capability MSR, SDM Vol. 3D §A.3.1).
fn pin_allowed(host: &VmxHost, bit: u32) -> bool {
    (host.pin_controls >> 32) as u32 & bit != 0
}

/// The optional pin-based controls interrupt delivery uses: virtual NMIs where the CPU
/// has them.
pub fn optional_pin_controls(host: &VmxHost) -> u32 {
    let virtual_nmis = PinbasedControls::VIRTUAL_NMIS.bits();
    if pin_allowed(host, virtual_nmis) { virtual_nmis } else { 0 }
}

/// Whether the current VMCS runs with virtual NMIs.
fn has_virtual_nmis(v: &Current) -> bool {
    v.read(control::PINBASED_EXEC_CONTROLS) as u32 & PinbasedControls::VIRTUAL_NMIS.bits() != 0
}

/// What the guest of the current VMCS can take at the next entry.
pub fn openings(v: &Current, queue: &EventQueue) -> Openings {
    let interruptibility = v.read(guest::INTERRUPTIBILITY_STATE);
    let shadow =
        interruptibility & (INTERRUPTIBILITY_BLOCKING_BY_STI | INTERRUPTIBILITY_BLOCKING_BY_MOV_SS) != 0;
    let nmi_blocked = !has_virtual_nmis(v) || interruptibility & INTERRUPTIBILITY_BLOCKING_BY_NMI != 0;
    let interrupts_enabled = v.read(guest::RFLAGS) & RFLAGS_IF != 0;
    events::openings(interrupts_enabled, shadow, nmi_blocked, queue)
}

/// What the VM layer asked of the VMCS between entries: the window exits and the TSC
/// offset, written before the next entry when they differ from what the VMCS holds.
#[derive(Default)]
pub struct EntryRequests {
    pub windows: Windows,
    /// The windows the VMCS has (`None` once the VMCS was filled afresh).
    windows_applied: Option<Windows>,
    tsc_offset: u64,
    tsc_offset_applied: bool,
}

impl EntryRequests {
    pub fn set_tsc_offset(&mut self, offset: u64) {
        self.tsc_offset = offset;
        self.tsc_offset_applied = false;
    }

    /// The VMCS's controls were written afresh (`setup::write_controls`).
    pub fn vmcs_filled(&mut self) {
        self.windows_applied = None;
        self.tsc_offset_applied = false;
    }

    /// Writes what changed into the current VMCS.
    pub fn apply(&mut self, v: &Current) -> Result<(), BackendError> {
        if self.windows_applied != Some(self.windows) {
            apply_windows(v, self.windows)?;
            self.windows_applied = Some(self.windows);
        }
        if !self.tsc_offset_applied {
            v.write(control::TSC_OFFSET_FULL, self.tsc_offset)?;
            self.tsc_offset_applied = true;
        }
        Ok(())
    }
}

/// Sets the window-exiting controls to `windows` (an NMI window only with virtual NMIs).
fn apply_windows(v: &Current, windows: Windows) -> Result<(), BackendError> {
    let mut primary = v.read(control::PRIMARY_PROCBASED_EXEC_CONTROLS) as u32;
    let interrupt = PrimaryControls::INTERRUPT_WINDOW_EXITING.bits();
    let nmi = PrimaryControls::NMI_WINDOW_EXITING.bits();
    primary &= !(interrupt | nmi);
    if windows.interrupt {
        primary |= interrupt;
    }
    if windows.nmi && has_virtual_nmis(v) {
        primary |= nmi;
    }
    v.write(control::PRIMARY_PROCBASED_EXEC_CONTROLS, u64::from(primary))
}

/// Past an emulated instruction the STI / MOV SS shadow is over (as KVM's
/// `vmx_set_interrupt_shadow(vcpu, 0)` after skipping one).
pub fn end_shadow(v: &Current) {
    let state = v.read(guest::INTERRUPTIBILITY_STATE);
    let shadow = INTERRUPTIBILITY_BLOCKING_BY_STI | INTERRUPTIBILITY_BLOCKING_BY_MOV_SS;
    if state & shadow != 0 {
        let _ = v.write(guest::INTERRUPTIBILITY_STATE, state & !shadow);
    }
}
