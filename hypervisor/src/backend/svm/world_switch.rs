//! VMRUN with the registers it does not switch: the general-purpose registers other than
//! RAX/RSP, and (through VMSAVE/VMLOAD) FS, GS, TR, LDTR, KernelGsBase and the syscall MSRs.
//!
//! Sequence (APM Vol. 2 §15.5 and §15.17; the interrupt handling follows KVM's older
//! `svm_vcpu_run`): VMSAVE the host's extra state; CLGI (physical interrupts held); STI so
//! that, in the guest, a physical interrupt causes an INTR #VMEXIT (with V_INTR_MASKING
//! the host's IF decides); VMLOAD and VMRUN the guest; VMSAVE the guest; CLI; VMLOAD the
//! host's extra state (its GS base is the per-CPU pointer); STGI. Interrupts that arrived
//! stay pending until the caller sets IF again.

use crate::backend::GuestRegs;
use core::arch::naked_asm;
use core::mem::offset_of;

/// Runs the guest of `vmcb_pa` once.
///
/// # Safety
/// SVM is enabled on this CPU, `vmcb_pa` is a valid VMCB whose intercepts include VMRUN
/// and INTR, `host_area_pa` is this CPU's host VMSAVE page, and `regs` is this vCPU's
/// register block. Called with interrupts enabled or disabled; returns with them disabled.
#[unsafe(naked)]
pub unsafe extern "C" fn run(vmcb_pa: u64, regs: &mut GuestRegs, host_area_pa: u64) {
    naked_asm!(
        "push rbx",
        "push rbp",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "push rdx",          // [rsp+16]: host area
        "push rsi",          // [rsp+8]:  regs
        "push rdi",          // [rsp]:    vmcb
        "cli",
        "mov rax, rdx",
        "vmsave rax",
        "clgi",
        "sti",
        "mov rbx, [rsi + {rbx}]",
        "mov rcx, [rsi + {rcx}]",
        "mov rdx, [rsi + {rdx}]",
        "mov rbp, [rsi + {rbp}]",
        "mov r8,  [rsi + {r8}]",
        "mov r9,  [rsi + {r9}]",
        "mov r10, [rsi + {r10}]",
        "mov r11, [rsi + {r11}]",
        "mov r12, [rsi + {r12}]",
        "mov r13, [rsi + {r13}]",
        "mov r14, [rsi + {r14}]",
        "mov r15, [rsi + {r15}]",
        "mov rax, rdi",
        "mov rdi, [rsi + {rdi}]",
        "mov rsi, [rsi + {rsi}]",
        "vmload rax",
        "vmrun rax",
        "vmsave rax",
        "cli",
        // Guest registers are live; RAX (the VMCB address) and RSP are the host's again.
        "push rsi",          // guest rsi; regs pointer is now at [rsp+16]
        "mov rsi, [rsp + 16]",
        "mov [rsi + {rbx}], rbx",
        "mov [rsi + {rcx}], rcx",
        "mov [rsi + {rdx}], rdx",
        "mov [rsi + {rdi}], rdi",
        "mov [rsi + {rbp}], rbp",
        "mov [rsi + {r8}], r8",
        "mov [rsi + {r9}], r9",
        "mov [rsi + {r10}], r10",
        "mov [rsi + {r11}], r11",
        "mov [rsi + {r12}], r12",
        "mov [rsi + {r13}], r13",
        "mov [rsi + {r14}], r14",
        "mov [rsi + {r15}], r15",
        "pop rax",
        "mov [rsi + {rsi}], rax",
        "pop rdi",           // vmcb
        "pop rsi",           // regs
        "pop rax",           // host area
        "vmload rax",
        "stgi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbp",
        "pop rbx",
        "ret",
        rbx = const offset_of!(GuestRegs, rbx),
        rcx = const offset_of!(GuestRegs, rcx),
        rdx = const offset_of!(GuestRegs, rdx),
        rsi = const offset_of!(GuestRegs, rsi),
        rdi = const offset_of!(GuestRegs, rdi),
        rbp = const offset_of!(GuestRegs, rbp),
        r8 = const offset_of!(GuestRegs, r8),
        r9 = const offset_of!(GuestRegs, r9),
        r10 = const offset_of!(GuestRegs, r10),
        r11 = const offset_of!(GuestRegs, r11),
        r12 = const offset_of!(GuestRegs, r12),
        r13 = const offset_of!(GuestRegs, r13),
        r14 = const offset_of!(GuestRegs, r14),
        r15 = const offset_of!(GuestRegs, r15),
    );
}
