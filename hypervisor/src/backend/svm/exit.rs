//! Decoding an SVM #VMEXIT: the exit code and EXITINFO1/2 of the VMCB into an [`Exit`]
//! (APM Vol. 2 §15.9 and Appendix C).

#![deny(unsafe_code)]

use super::vmcb::{self, Vmcb, control, exit_code};
use crate::addr::Gpa;
use crate::backend::events::{self, Event};
use crate::backend::{Exit, IoExit, StringIoExit};
use crate::mmu::Access;

/// The exit the VMCB describes, after a VMRUN returned.
pub fn decode(vmcb: &Vmcb) -> Exit {
    let code = vmcb.read64(control::EXIT_CODE);
    let info1 = vmcb.read64(control::EXIT_INFO1);
    let info2 = vmcb.read64(control::EXIT_INFO2);
    match code {
        exit_code::INTR | exit_code::NMI | exit_code::SMI => Exit::HostInterrupt,
        exit_code::CPUID => Exit::Cpuid,
        exit_code::HLT => Exit::Hlt,
        exit_code::VINTR => Exit::InterruptWindow,
        exit_code::IRET => Exit::NmiWindow,
        exit_code::VMMCALL => Exit::Hypercall,
        exit_code::SHUTDOWN => Exit::Shutdown,
        // VMEXIT_INVALID is -1 in the 64-bit field; QEMU TCG writes it 32 bits wide.
        exit_code::INVALID | exit_code::INVALID_32 => Exit::InvalidState,
        exit_code::IOIO => {
            use vmcb::ioio;
            let size = if info1 & ioio::SIZE32 != 0 {
                4
            } else if info1 & ioio::SIZE16 != 0 {
                2
            } else {
                1
            };
            Exit::Io(IoExit {
                port: (info1 >> ioio::PORT_SHIFT) as u16,
                size,
                is_in: info1 & ioio::TYPE_IN != 0,
                is_string: info1 & ioio::STRING != 0,
                next_rip: info2,
                string: string_io(info1),
            })
        }
        exit_code::MSR => Exit::Msr { write: info1 & 1 != 0 },
        exit_code::NPF if info1 & vmcb::npf::RESERVED != 0 => Exit::TdpMisconfig { gpa: Gpa::new(info2) },
        exit_code::NPF => {
            let access = if info1 & vmcb::npf::WRITE != 0 {
                Access::Write
            } else if info1 & vmcb::npf::EXECUTE != 0 {
                Access::Execute
            } else {
                Access::Read
            };
            Exit::NestedPageFault { gpa: Gpa::new(info2), access }
        }
        code => Exit::Unhandled { code },
    }
}

/// What EXITINFO1 says of an INS/OUTS (APM Vol. 2 §15.10.2): REP, and the address size
/// when any of its bits is set. The segment field (bits 12:10) is a decode assist, which
/// Taproot does not rely on: the VM layer reads the segment from the instruction.
fn string_io(info1: u64) -> StringIoExit {
    use vmcb::ioio;
    let address_size = if info1 & ioio::ADDR64 != 0 {
        Some(8)
    } else if info1 & ioio::ADDR32 != 0 {
        Some(4)
    } else if info1 & ioio::ADDR16 != 0 {
        Some(2)
    } else {
        None
    };
    StringIoExit { is_rep: info1 & ioio::REP != 0, address_size, segment: None }
}

/// The event whose delivery the exit interrupted (EXITINTINFO, APM Vol. 2 §15.7.2), to be
/// injected again; `None` if there is none, or if it is a software interrupt or exception
/// (INT n, INT3, INTO): the saved RIP still points at the instruction, which raises it
/// again when the guest resumes (KVM's `svm_complete_interrupts` does the same).
pub fn in_flight(vmcb: &Vmcb) -> Option<Event> {
    const BP: u8 = 3;
    const OF: u8 = 4;
    let raw = vmcb.read64(control::EXIT_INT_INFO);
    let event = Event::from_info(raw as u32, (raw >> vmcb::EVENT_ERROR_CODE_SHIFT) as u32, 0)?;
    let software = event.kind() == events::TYPE_SOFTWARE_INTERRUPT
        || (event.kind() == events::TYPE_EXCEPTION && matches!(event.vector(), BP | OF));
    (!software).then_some(event)
}
