//! Decoding a VM exit: the exit reason and qualification of the current VMCS into an
//! [`Exit`] (SDM Vol. 3C §28.2 and Vol. 3D Appendix C).

#![deny(unsafe_code)]

use super::consts::*;
use super::vmcs::Current;
use crate::addr::Gpa;
use crate::backend::events::Event;
use crate::backend::{Exit, IoExit};
use crate::mmu::Access;
use x86::vmx::vmcs::{guest, ro};

/// The last exit of the VMCS: its full exit reason (bit 31 set for a failed VM entry) and
/// what it means.
pub fn decode(v: &Current) -> (u32, Exit) {
    let full = v.read(ro::EXIT_REASON) as u32;
    if full & exit_reason::ENTRY_FAILURE != 0 {
        return (full, Exit::InvalidState);
    }
    let qual = v.read(ro::EXIT_QUALIFICATION);
    let exit = match full as u16 {
        exit_reason::EXTERNAL_INTERRUPT | exit_reason::PREEMPTION_TIMER => Exit::HostInterrupt,
        exit_reason::EXCEPTION_OR_NMI => Exit::HostInterrupt,
        exit_reason::TRIPLE_FAULT => Exit::Shutdown,
        exit_reason::CPUID => Exit::Cpuid,
        exit_reason::HLT => Exit::Hlt,
        exit_reason::INTERRUPT_WINDOW => Exit::InterruptWindow,
        exit_reason::NMI_WINDOW => Exit::NmiWindow,
        exit_reason::VMCALL => Exit::Hypercall,
        exit_reason::RDMSR => Exit::Msr { write: false },
        exit_reason::WRMSR => Exit::Msr { write: true },
        exit_reason::IO_INSTRUCTION => {
            let size = match qual & io_qual::SIZE_MASK {
                0 => 1,
                1 => 2,
                _ => 4,
            };
            let len = v.read(ro::VMEXIT_INSTRUCTION_LEN);
            Exit::Io(IoExit {
                port: (qual >> io_qual::PORT_SHIFT) as u16,
                size,
                is_in: qual & io_qual::IN != 0,
                is_string: qual & io_qual::STRING != 0,
                next_rip: v.read(guest::RIP) + len,
                string: super::emulation::string_io(v, qual, super::cpu::host().has_ins_outs_info),
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
            Exit::NestedPageFault { gpa: Gpa::new(v.read(ro::GUEST_PHYSICAL_ADDR_FULL)), access }
        }
        exit_reason::EPT_MISCONFIG => {
            Exit::TdpMisconfig { gpa: Gpa::new(v.read(ro::GUEST_PHYSICAL_ADDR_FULL)) }
        }
        exit_reason::INVALID_GUEST_STATE | exit_reason::MSR_LOADING | exit_reason::MACHINE_CHECK => {
            Exit::InvalidState
        }
        other => Exit::Unhandled { code: other as u64 },
    };
    (full, exit)
}

/// Whether the exit of reason `full` is a control-register access (the CR emulation's).
pub fn is_cr_access(full: u32) -> bool {
    full & exit_reason::ENTRY_FAILURE == 0 && full as u16 == exit_reason::CR_ACCESS
}

/// Whether the exit of reason `full` is an exception or NMI (the reflected #DB and #AC, or
/// a host NMI).
pub fn is_exception(full: u32) -> bool {
    full & exit_reason::ENTRY_FAILURE == 0 && full as u16 == exit_reason::EXCEPTION_OR_NMI
}

/// Whether the exit of reason `full` is XSETBV (emulated by the backend).
pub fn is_xsetbv(full: u32) -> bool {
    full & exit_reason::ENTRY_FAILURE == 0 && full as u16 == exit_reason::XSETBV
}

/// The event whose delivery the exit interrupted (IDT-vectoring information, SDM Vol. 3C
/// §28.2.4), to be injected again with its error code and, for software interrupts and
/// exceptions, the length of the instruction that raised it (which VM exits during their
/// delivery report; the saved RIP still points at that instruction).
pub fn in_flight(v: &Current) -> Option<Event> {
    Event::from_info(
        v.read(ro::IDT_VECTORING_INFO) as u32,
        v.read(ro::IDT_VECTORING_ERR_CODE) as u32,
        v.read(ro::VMEXIT_INSTRUCTION_LEN) as u32,
    )
}
