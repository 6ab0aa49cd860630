//! The host NMI a VM exit consumed (see `backend::nmi`): run the host's handler.

#![deny(unsafe_code)]

use super::exit;
use super::vmcs::Current;
use crate::backend::nmi::vmx_exit_is_host_nmi;
use x86::vmx::vmcs::ro;

/// Right after a VM exit (interrupts off, VM entry succeeded): if the exit was a host NMI,
/// runs libos's NMI handler, which the NMI never reached.
#[inline]
pub fn handle_host_nmi(v: &Current) {
    let reason = v.read(ro::EXIT_REASON) as u32;
    if !exit::is_exception(reason) {
        return;
    }
    if vmx_exit_is_host_nmi(true, v.read(ro::VMEXIT_INTERRUPTION_INFO) as u32) {
        libos::smp::run_nmi_handler();
    }
}
