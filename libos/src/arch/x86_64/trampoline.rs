//! The real-mode start-up code of the application processors. A SIPI starts an AP in real
//! mode at `TRAMPOLINE_PHYS` (CS = 0x0800, IP = 0). The trampoline loads a small GDT, turns
//! on PAE, the kernel's CR3, EFER.LME and paging in one go, jumps to 64-bit code and calls
//! `entry(arg)` on the given stack. It is position dependent on `TRAMPOLINE_PHYS`, which
//! is why it is copied there rather than run in place.

use core::arch::global_asm;

/// A free page below 1 MiB (conventional memory, not handed to the frame allocator).
pub const TRAMPOLINE_PHYS: u64 = 0x8000;

global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .balign 16
    .global ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    mov ax, cs
    mov ds, ax
    lgdt [{gdt_ptr}]
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov eax, [{params}]
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16) | 1
    mov cr0, eax
    .byte 0x66, 0xEA
    .long {base} + (ap_long_mode - ap_trampoline_start)
    .short 0x08

    .code64
ap_long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, [{base} + {params} + 8]
    mov rdi, [{base} + {params} + 24]
    mov rax, [{base} + {params} + 16]
    xor ebp, ebp
    call rax
2:  cli
    hlt
    jmp 2b

    .org {gdt}
    .quad 0
    .quad 0x00209A0000000000
    .quad 0x0000920000000000
    .org {gdt_ptr}
    .short 23
    .long {base} + {gdt}
    .org {params}
    .quad 0, 0, 0, 0
    .global ap_trampoline_end
ap_trampoline_end:
    .text
    "#,
    base = const TRAMPOLINE_PHYS,
    gdt = const GDT_OFFSET,
    gdt_ptr = const GDT_PTR_OFFSET,
    params = const PARAMS_OFFSET,
);

// Fixed offsets inside the trampoline: Intel-syntax memory operands cannot name the
// difference of two labels, and `.org` makes the assembler check the code fits below.
const GDT_OFFSET: usize = 0xC0;
const GDT_PTR_OFFSET: usize = 0xD8;
const PARAMS_OFFSET: usize = 0xE0;

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// The parameter block at `PARAMS_OFFSET`, read by the trampoline.
#[repr(C)]
struct Params {
    cr3: u64,
    stack_top: u64,
    entry: u64,
    arg: u64,
}

/// Copies the trampoline to [`TRAMPOLINE_PHYS`] and fills in the parameters for one AP.
pub fn install(cr3: u64, stack_top: u64, entry: extern "C" fn(u64) -> !, arg: u64) {
    // SAFETY: the symbols delimit the trampoline in the image's read-only data;
    // TRAMPOLINE_PHYS..+len is conventional memory below 1 MiB that libos never hands
    // out (see `mm::LOW_MEMORY_END`), identity mapped; only the boot CPU writes it, and
    // only while no AP is executing it (APs are started one at a time).
    unsafe {
        let start = &raw const ap_trampoline_start;
        let len = (&raw const ap_trampoline_end).offset_from(start) as usize;
        let dest = crate::mm::phys_to_virt(TRAMPOLINE_PHYS);
        core::ptr::copy_nonoverlapping(start, dest, len);
        let params = dest.add(PARAMS_OFFSET) as *mut Params;
        params.write_volatile(Params { cr3, stack_top, entry: entry as usize as u64, arg });
    }
}
