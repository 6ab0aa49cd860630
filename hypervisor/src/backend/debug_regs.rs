//! The guest debug registers neither VMRUN nor VM entry switch: DR0-DR3 in both backends,
//! and DR6 on VMX (SVM keeps DR6 and DR7 in the VMCB; VMX keeps DR7 and IA32_DEBUGCTL in
//! the VMCS with the "load/save debug controls" entry/exit controls). Loaded before entry
//! and saved after exit, eagerly: the guest reads and writes them without exits.
//!
//! The host never arms a breakpoint: its DR7 is 0x400 outside guests (VMX loads that on
//! every exit; SVM restores the host's DR7 from the host save area), so the guest's
//! addresses left in DR0-DR3 after an exit are inert, and nothing of the host needs
//! restoring. Cost per round trip: four (SVM) or five (VMX) MOVs to and as many from DRn.
#![allow(unsafe_code, reason = "MOV to and from the debug registers")]

use core::arch::asm;

/// DR6's value after reset (SDM Vol. 3B §18.2.3: reserved bits read as one).
pub const DR6_RESET: u64 = 0xFFFF_0FF0;
/// DR6 bits a #DB reports: B0-B3, BD, BS, BT (SDM Vol. 3B §18.2.3).
pub const DR6_STATUS: u64 = 0xF | (1 << 13) | (1 << 14) | (1 << 15);

/// A vCPU's DR0-DR3 and, where the backend switches it here, DR6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugRegs {
    pub dr: [u64; 4],
    pub dr6: u64,
}

impl Default for DebugRegs {
    fn default() -> Self {
        Self { dr: [0; 4], dr6: DR6_RESET }
    }
}

macro_rules! mov_to_dr {
    ($n:literal, $value:expr) => {
        // SAFETY: the host never enables a breakpoint (module doc), so a debug address
        // register's value has no effect on it; DR6 is status only.
        unsafe { asm!(concat!("mov dr", $n, ", {}"), in(reg) $value, options(nomem, nostack, preserves_flags)) }
    };
}

macro_rules! mov_from_dr {
    ($n:literal) => {{
        let value: u64;
        // SAFETY: reading a debug register (CPL 0) has no side effects.
        unsafe { asm!(concat!("mov {}, dr", $n), out(reg) value, options(nomem, nostack, preserves_flags)) };
        value
    }};
}

impl DebugRegs {
    /// Loads DR0-DR3 (and DR6 with `with_dr6`) into the CPU, just before entry.
    pub fn load(&self, with_dr6: bool) {
        mov_to_dr!("0", self.dr[0]);
        mov_to_dr!("1", self.dr[1]);
        mov_to_dr!("2", self.dr[2]);
        mov_to_dr!("3", self.dr[3]);
        if with_dr6 {
            mov_to_dr!("6", self.dr6);
        }
    }

    /// Saves what the guest left in DR0-DR3 (and DR6), just after exit.
    pub fn save(&mut self, with_dr6: bool) {
        self.dr = [mov_from_dr!("0"), mov_from_dr!("1"), mov_from_dr!("2"), mov_from_dr!("3")];
        if with_dr6 {
            self.dr6 = mov_from_dr!("6");
        }
    }
}
