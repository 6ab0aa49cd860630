//! What the instruction emulator (`emulate`) needs from an SVM vCPU, read from and written
//! to the VMCB: control registers, CPL, segment bases and the code size (APM Vol. 2,
//! Appendix B, Table B-2), RSP and RFLAGS; and the #PF and #UD it may inject.

#![deny(unsafe_code)]

use super::vmcb::{Vmcb, save};
use crate::backend::events::{Event, EventQueue};
use crate::backend::{PF_VECTOR, UD_VECTOR, exception_error_code_valid};
use crate::emulate::{CodeSize, ControlRegs, CpuState, SegmentBases};

/// EFER.LMA (APM Vol. 2 §3.1.7).
const EFER_LMA: u64 = 1 << 10;
/// CS.L and CS.D in the VMCB's packed attributes, which hold descriptor bits 52-55 in
/// attribute bits 8-11 (APM Vol. 2 §15.5.1, "Segment state in the VMCB").
const ATTRIB_L: u16 = 1 << 9;
const ATTRIB_D: u16 = 1 << 10;

/// The emulator's view of the vCPU.
pub fn cpu_state(vmcb: &Vmcb) -> CpuState {
    let efer = vmcb.read64(save::EFER);
    let cs = vmcb.read_segment(save::CS);
    let base = |offset| vmcb.read_segment(offset).base;
    CpuState {
        control: ControlRegs {
            cr0: vmcb.read64(save::CR0),
            cr3: vmcb.read64(save::CR3),
            cr4: vmcb.read64(save::CR4),
            efer,
            cpl: vmcb.read8(save::CPL) & 3,
        },
        segments: SegmentBases {
            es: base(save::ES),
            cs: cs.base,
            ss: base(save::SS),
            ds: base(save::DS),
            fs: base(save::FS),
            gs: base(save::GS),
        },
        code_size: CodeSize::from_cs(
            efer & EFER_LMA != 0,
            cs.attrib & ATTRIB_L != 0,
            cs.attrib & ATTRIB_D != 0,
        ),
    }
}

/// #PF with `error_code` and CR2 = `linear`: VMRUN loads the guest's CR2 from the VMCB, so
/// it is there when the injected #PF is delivered (APM Vol. 2 §15.20). An error code only in
/// protected mode (`exception_error_code_valid`; paging implies it anyway).
pub fn inject_page_fault(vmcb: &mut Vmcb, events: &mut EventQueue, error_code: u32, linear: u64) {
    vmcb.write64(save::CR2, linear);
    let error_code = exception_error_code_valid(vmcb.read64(save::CR0)).then_some(error_code);
    events.request(Event::exception(PF_VECTOR, error_code));
}

/// #UD, which has no error code.
pub fn inject_undefined_opcode(events: &mut EventQueue) {
    events.request(Event::exception(UD_VECTOR, None));
}
