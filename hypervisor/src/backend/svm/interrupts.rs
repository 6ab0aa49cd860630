//! Interrupt and NMI delivery on SVM: what the guest can take ([`openings`]), and the
//! window exits the entry path asks for ([`write_windows`]). The decisions are
//! `backend::events`'s; this file only encodes them in the VMCB.
//!
//! - Interrupt window: a virtual interrupt (V_IRQ, V_IGN_TPR so the guest's TPR does not
//!   hide it) with the VINTR intercept: the CPU exits as soon as the guest could take it
//!   (RFLAGS.IF and no shadow), APM Vol. 2 §15.21.4. Its vector is never delivered: the
//!   exit comes first, and the entry after it clears V_IRQ and injects the real interrupt
//!   through EVENTINJ.
//! - NMI window: SVM (without vNMI, which QEMU TCG lacks) keeps no NMI blocking in the
//!   VMCB, so the backend records it (`events::NmiBlocking`): blocked from the injection of an
//!   NMI until the guest's IRET (intercepted while an NMI is wanted or blocked). As in
//!   KVM, the IRET exit comes *before* the IRET runs, so NMIs stay blocked until the
//!   guest's RIP has moved past it (seen at a later exit).

#![deny(unsafe_code)]

use super::vmcb::{self, Vmcb, control, misc1, save};
use crate::backend::events::{self, EventQueue, NmiBlocking, Windows};
use crate::devices::irqchip::Openings;

/// What the guest can take at the next entry.
pub fn openings(vmcb: &Vmcb, nmi: &NmiBlocking, queue: &EventQueue) -> Openings {
    let interrupts_enabled = vmcb.read64(save::RFLAGS) & vmcb::RFLAGS_IF != 0;
    let shadow = vmcb.read64(control::INTERRUPT_SHADOW) & vmcb::INTERRUPT_SHADOW_ACTIVE != 0;
    events::openings(interrupts_enabled, shadow, nmi.blocked(), queue)
}

/// Writes the window exits `windows` asks for: V_IRQ and the VINTR intercept, and the IRET
/// intercept (also kept while an NMI handler runs, to see its end; off while the
/// intercepted IRET has yet to run, `NmiBlocking::iret_pending`). V_TPR and the other
/// VINTR bits are the guest's and stay.
pub fn write_windows(vmcb: &mut Vmcb, windows: Windows, nmi: &NmiBlocking) {
    let mut vintr = vmcb.read64(control::VINTR) & !(vmcb::V_IRQ | vmcb::V_IGN_TPR | vmcb::V_INTR_PRIO_MASK);
    let mut intercepts = vmcb.read32(control::INTERCEPT_MISC1) & !(misc1::VINTR | misc1::IRET);
    if windows.interrupt {
        vintr |= vmcb::V_IRQ | vmcb::V_IGN_TPR | vmcb::V_INTR_PRIO_MASK;
        intercepts |= misc1::VINTR;
    }
    if nmi.in_handler() || (windows.nmi && !nmi.iret_pending()) {
        intercepts |= misc1::IRET;
    }
    vmcb.write64(control::VINTR, vintr);
    vmcb.write32(control::INTERCEPT_MISC1, intercepts);
}
