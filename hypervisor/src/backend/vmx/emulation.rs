//! What the instruction emulator (`emulate`) needs from a VMX vCPU, read from and written
//! to the current VMCS: control registers, CPL, segment bases and the code size (SDM Vol.
//! 3C §25.4.1), RSP and RFLAGS; the #PF and #UD it may inject; and the string I/O operands
//! of the VM-exit instruction information.
//!
//! CR2 is not part of the VMCS: the guest's CR2 is the CPU's while it runs, and VM entry
//! does not load it for an injected #PF (SDM Vol. 3C §27.6.1.2, "the VMM must load CR2
//! before VM entry"). A #PF the emulator injects therefore keeps its CR2 in
//! [`PendingCr2`], which the entry writes to CR2 with interrupts off just before VMLAUNCH
//! or VMRESUME, as KVM's `vmx_vcpu_run` does.

use super::consts::{access_rights, io_instr_info};
use super::vmcs::Current;
use crate::backend::events::{Event, EventQueue};
use crate::backend::{PF_VECTOR, StringIoExit, UD_VECTOR, exception_error_code_valid};
use crate::emulate::{CodeSize, ControlRegs, CpuState, Segment, SegmentBases};
use x86::vmx::vmcs::{guest, ro};

/// EFER.LMA (SDM Vol. 3A §2.2.1).
const EFER_LMA: u64 = 1 << 10;

/// The emulator's view of the vCPU. CR0 and CR4 as they are in the VMCS: the bits VMX
/// forces (NE, VMXE) play no part in a page walk.
pub fn cpu_state(v: &Current) -> CpuState {
    let efer = v.read(guest::IA32_EFER_FULL);
    let cs = v.read(guest::CS_ACCESS_RIGHTS);
    let dpl = (v.read(guest::SS_ACCESS_RIGHTS) >> access_rights::DPL_SHIFT) & 3;
    CpuState {
        control: ControlRegs {
            cr0: v.read(guest::CR0),
            cr3: v.read(guest::CR3),
            cr4: v.read(guest::CR4),
            efer,
            cpl: dpl as u8,
        },
        segments: SegmentBases {
            es: v.read(guest::ES_BASE),
            cs: v.read(guest::CS_BASE),
            ss: v.read(guest::SS_BASE),
            ds: v.read(guest::DS_BASE),
            fs: v.read(guest::FS_BASE),
            gs: v.read(guest::GS_BASE),
        },
        code_size: CodeSize::from_cs(
            efer & EFER_LMA != 0,
            cs & access_rights::L != 0,
            cs & access_rights::D != 0,
        ),
    }
}

/// The CR2 of a #PF requested and not yet entered with.
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingCr2(Option<u64>);

impl PendingCr2 {
    /// Just before VM entry, interrupts off: loads the pending CR2, if any.
    pub fn load(&mut self) {
        if let Some(value) = self.0.take() {
            // SAFETY: CR2 holds only the last page-fault address; the host reads it only
            // in its own #PF handler, which ends the image. Nothing on this CPU runs
            // between here and VM entry (interrupts are off), so the guest sees `value`.
            unsafe { x86::controlregs::cr2_write(value) };
        }
    }

    /// A reset vCPU has no #PF to deliver.
    pub fn clear(&mut self) {
        self.0 = None;
    }
}

/// #PF with `error_code` and CR2 = `linear` at the next entry (an error code only in
/// protected mode: `exception_error_code_valid`).
pub fn inject_page_fault(
    v: &Current,
    events: &mut EventQueue,
    cr2: &mut PendingCr2,
    error_code: u32,
    linear: u64,
) {
    cr2.0 = Some(linear);
    let error_code = exception_error_code_valid(v.read(guest::CR0)).then_some(error_code);
    events.request(Event::exception(PF_VECTOR, error_code));
}

/// #UD, which has no error code.
pub fn inject_undefined_opcode(events: &mut EventQueue) {
    events.request(Event::exception(UD_VECTOR, None));
}

/// What an INS/OUTS exit says beyond the exit qualification's port, size and direction:
/// REP from the qualification (SDM Vol. 3C Table 28-5), and where the CPU reports it
/// (`has_instruction_info`: IA32_VMX_BASIC[54]) the address size and OUTS's segment from
/// the VM-exit instruction information (SDM Vol. 3C §28.2.5, Table 28-8).
pub fn string_io(v: &Current, qualification: u64, has_instruction_info: bool) -> StringIoExit {
    let is_rep = qualification & super::consts::io_qual::REP != 0;
    if !has_instruction_info {
        return StringIoExit { is_rep, address_size: None, segment: None };
    }
    let info = v.read(ro::VMEXIT_INSTRUCTION_INFO);
    let address_size = match (info >> io_instr_info::ADDRESS_SIZE_SHIFT) & io_instr_info::FIELD_MASK {
        0 => Some(2),
        1 => Some(4),
        2 => Some(8),
        _ => None,
    };
    let segment = match (info >> io_instr_info::SEGMENT_SHIFT) & io_instr_info::FIELD_MASK {
        0 => Some(Segment::Es),
        1 => Some(Segment::Cs),
        2 => Some(Segment::Ss),
        3 => Some(Segment::Ds),
        4 => Some(Segment::Fs),
        5 => Some(Segment::Gs),
        _ => None,
    };
    StringIoExit { is_rep, address_size, segment }
}
