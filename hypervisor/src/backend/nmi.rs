//! Host NMIs that arrive while a guest runs (host-tested decoding; both backends).
//!
//! The NMI belongs to the host, never to the guest, and the host handles it as any other
//! NMI (libos's handler counts and reports it, and the image carries on):
//! - VMX, with the "NMI exiting" pin-based control on: the NMI causes a VM exit of basic
//!   reason 0 whose interruption information has type NMI (SDM Vol. 3C §25.2, §28.2.2,
//!   Appendix C). The exit consumed the NMI: nothing delivers it to the host IDT. The
//!   backend, right after such an exit (interrupts still off), runs the host's handler
//!   with `libos::smp::run_nmi_handler`, whose IRET also ends the NMI blocking the exit
//!   left in effect. [`vmx_exit_is_host_nmi`] is the decision.
//! - SVM, with the NMI intercept on: the NMI causes #VMEXIT(NMI) and stays pending while
//!   GIF=0; the world switch's STGI lets the CPU deliver it through the host IDT (APM Vol.
//!   2 §15.17 "Global Interrupt Flag"). Nothing for the backend to do: the same handler
//!   runs there.

use super::events::{TYPE_MASK, TYPE_SHIFT, VALID};

/// The interruption type of an NMI, the same in VMX interruption information (SDM Vol. 3C
/// §25.9.2) and SVM EXITINTINFO/EVENTINJ (APM Vol. 2 §15.20).
pub const TYPE_NMI: u32 = 2;

/// VMX: whether an exit whose basic reason is "exception or NMI" (`exception_or_nmi`,
/// VM-entry failures excluded) with VM-exit interruption information `info` is a host NMI
/// the exit consumed, rather than a guest exception the exception bitmap intercepted.
pub fn vmx_exit_is_host_nmi(exception_or_nmi: bool, info: u32) -> bool {
    exception_or_nmi && info & VALID != 0 && (info >> TYPE_SHIFT) & TYPE_MASK == TYPE_NMI
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Interruption information: valid, `kind`, vector `vector`.
    fn info(kind: u32, vector: u32) -> u32 {
        VALID | kind << TYPE_SHIFT | vector
    }

    #[test]
    fn an_nmi_exit_is_the_hosts_nmi() {
        assert!(vmx_exit_is_host_nmi(true, info(TYPE_NMI, 2)));
    }

    #[test]
    fn intercepted_guest_exceptions_are_not_nmis() {
        const HARDWARE_EXCEPTION: u32 = 3;
        const PRIV_SOFTWARE_EXCEPTION: u32 = 5;
        assert!(!vmx_exit_is_host_nmi(true, info(HARDWARE_EXCEPTION, 1)), "#DB");
        assert!(!vmx_exit_is_host_nmi(true, info(HARDWARE_EXCEPTION, 17) | 1 << 11), "#AC");
        assert!(!vmx_exit_is_host_nmi(true, info(PRIV_SOFTWARE_EXCEPTION, 1)), "ICEBP");
    }

    #[test]
    fn other_exits_and_invalid_information_are_not_nmis() {
        assert!(!vmx_exit_is_host_nmi(false, info(TYPE_NMI, 2)), "another exit reason");
        assert!(!vmx_exit_is_host_nmi(true, info(TYPE_NMI, 2) & !VALID), "valid bit clear");
    }
}
