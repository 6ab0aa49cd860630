//! VMLAUNCH/VMRESUME with the general-purpose registers VM entry does not load. VM exit
//! returns to `vmx_exit` (HOST_RIP) with RSP = HOST_RSP, which the entry path writes just
//! before entering, pointing at the saved register-block pointer. On exit RFLAGS is 0x2
//! (interrupts off) and the host's CR3, segments, FS/GS/TR bases, EFER and PAT come from
//! the VMCS host-state area (SDM Vol. 3C §28.5).

use crate::backend::GuestRegs;
use core::arch::naked_asm;
use core::mem::offset_of;

unsafe extern "C" {
    static vmx_exit: u8;
}

/// The address VM exits jump to (HOST_RIP).
pub fn exit_target() -> u64 {
    &raw const vmx_exit as u64
}

/// Enters the guest of the current VMCS; returns `false` after a VM exit, `true` if
/// VMLAUNCH/VMRESUME itself failed (read VM_INSTRUCTION_ERROR).
///
/// # Safety
/// VMX is on, the vCPU's VMCS is current on this CPU with valid host state whose HOST_RIP
/// is [`exit_target`], and `regs` is the vCPU's register block.
#[unsafe(naked)]
pub unsafe extern "C" fn run(regs: &mut GuestRegs, launched: bool) -> bool {
    naked_asm!(
        "push rbx",
        "push rbp",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "push rdi",                      // [rsp]: the register block
        "cli",
        "mov rax, {host_rsp}",
        "vmwrite rax, rsp",
        "test sil, sil",
        "mov rax, [rdi + {rax}]",
        "mov rbx, [rdi + {rbx}]",
        "mov rcx, [rdi + {rcx}]",
        "mov rdx, [rdi + {rdx}]",
        "mov rsi, [rdi + {rsi}]",
        "mov rbp, [rdi + {rbp}]",
        "mov r8,  [rdi + {r8}]",
        "mov r9,  [rdi + {r9}]",
        "mov r10, [rdi + {r10}]",
        "mov r11, [rdi + {r11}]",
        "mov r12, [rdi + {r12}]",
        "mov r13, [rdi + {r13}]",
        "mov r14, [rdi + {r14}]",
        "mov r15, [rdi + {r15}]",
        "mov rdi, [rdi + {rdi}]",
        // The MOVs leave the flags of `test` alone.
        "jnz 2f",
        "vmlaunch",
        "jmp 3f",
        "2:",
        "vmresume",
        "3:",
        // VMLAUNCH/VMRESUME fell through: it failed. Host RSP is intact.
        "pop rdi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbp",
        "pop rbx",
        "mov eax, 1",
        "ret",
        ".global vmx_exit",
        "vmx_exit:",
        "push rdi",                      // guest rdi; the block pointer is at [rsp + 8]
        "mov rdi, [rsp + 8]",
        "mov [rdi + {rax}], rax",
        "mov [rdi + {rbx}], rbx",
        "mov [rdi + {rcx}], rcx",
        "mov [rdi + {rdx}], rdx",
        "mov [rdi + {rsi}], rsi",
        "mov [rdi + {rbp}], rbp",
        "mov [rdi + {r8}], r8",
        "mov [rdi + {r9}], r9",
        "mov [rdi + {r10}], r10",
        "mov [rdi + {r11}], r11",
        "mov [rdi + {r12}], r12",
        "mov [rdi + {r13}], r13",
        "mov [rdi + {r14}], r14",
        "mov [rdi + {r15}], r15",
        "pop rax",
        "mov [rdi + {rdi}], rax",
        "pop rdi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbp",
        "pop rbx",
        "xor eax, eax",
        "ret",
        // HOST_RSP (SDM Vol. 3D Appendix B, encoding 0x6C14).
        host_rsp = const x86::vmx::vmcs::host::RSP,
        rax = const offset_of!(GuestRegs, rax),
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
