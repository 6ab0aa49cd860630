//! Entry points. Both loaders enter in 32-bit protected mode with paging off:
//! - PVH (QEMU `-kernel`): `ebx` = physical address of `hvm_start_info`.
//! - Multiboot2 (GRUB): `eax` = 0x36D76289, `ebx` = physical address of the boot information.
//!
//! The shared 32-bit path builds an identity map of the first 4 GiB with 2 MiB pages, turns
//! on long mode and calls [`super::boot::rust_start`] with RSP = 8 (mod 16), as the System V
//! ABI expects at a function's entry (debug builds check alignment, so a mistake here shows).

use super::boot::{MULTIBOOT2_BOOT_MAGIC, PVH_BOOT_TAG};
use core::arch::{global_asm, naked_asm};

/// Multiboot2 specification §3.1.1: header magic.
const MULTIBOOT2_HEADER_MAGIC: u32 = 0xE852_50D6;

/// Size of the boot CPU's stack (the boot CPU runs the application's main; debug builds of
/// the network stack use deep frames).
pub const BOOT_STACK_SIZE: usize = 512 * 1024;

// The identity map built before long mode: one PML4, one PDPT and four page directories of
// 2 MiB pages cover [0, 4 GiB), which holds the image, low memory, the local APIC and the
// usual PCI holes. RAM above 4 GiB is mapped later from Rust (`paging::map_high_ram`).
global_asm!(
    r#"
    .section .bss.boot_page_tables, "aw", @nobits
    .balign 4096
    .global boot_pml4
boot_pml4:      .skip 4096
boot_pdpt:      .skip 4096
boot_pds:       .skip 4 * 4096
    .balign 16
    .global boot_stack_bottom
boot_stack_bottom:
    .skip {stack_size}
    .global boot_stack_top
boot_stack_top:

    .section .multiboot2, "a"
    .balign 8
mb2_header_start:
    .long {mb2_magic}
    .long 0
    .long mb2_header_end - mb2_header_start
    .long 0x100000000 - {mb2_magic} - (mb2_header_end - mb2_header_start)
    .short 0
    .short 0
    .long 8
mb2_header_end:

    .section .rodata.boot_gdt, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00209A0000000000
    .quad 0x0000920000000000
boot_gdt_end:
    .balign 4
boot_gdt_ptr:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .text.boot32, "ax"
    .code32
    .global _start
_start:
    cmp eax, {mb2_boot_magic}
    jne 1f
    mov edi, eax
    mov esi, ebx
    jmp start32_common
1:  cli
    hlt
    jmp 1b

    .global start32_common
start32_common:
    cld
    mov esp, offset boot_stack_top

    // Clear the six table pages (the loader zeroes .bss, but a stub that relies on that
    // breaks silently when an image is loaded by something that does not).
    push edi
    mov edi, offset boot_pml4
    xor eax, eax
    mov ecx, 6 * 1024
    rep stosd
    pop edi

    mov eax, offset boot_pdpt
    or eax, 3
    mov [boot_pml4], eax

    mov ebx, offset boot_pds
    xor ecx, ecx
2:  mov eax, ebx
    or eax, 3
    mov [boot_pdpt + ecx * 8], eax
    add ebx, 4096
    inc ecx
    cmp ecx, 4
    jne 2b

    // 2048 PDEs, each a 2 MiB page (P | RW | PS), addresses 0..4 GiB.
    xor ecx, ecx
3:  mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov [boot_pds + ecx * 8], eax
    inc ecx
    cmp ecx, 2048
    jne 3b

    mov eax, offset boot_pml4
    mov cr3, eax
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16) | 1
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    // ljmp 0x08:start64 (JMP ptr16:32, opcode EA), spelled out for the assembler.
    .byte 0xEA
    .long start64
    .short 0x08

    .code64
start64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov edi, edi
    mov esi, esi
    lea rsp, [rip + boot_stack_top]
    xor ebp, ebp
    call {rust_start}
4:  cli
    hlt
    jmp 4b
    "#,
    stack_size = const BOOT_STACK_SIZE,
    mb2_magic = const MULTIBOOT2_HEADER_MAGIC,
    mb2_boot_magic = const MULTIBOOT2_BOOT_MAGIC,
    rust_start = sym super::boot::rust_start,
);

pvh::xen_elfnote_phys32_entry!(pvh_start32);

/// The PVH entry (Xen's x86/HVM direct boot ABI, as QEMU implements it for `-kernel`).
#[unsafe(naked)]
unsafe extern "C" fn pvh_start32() -> ! {
    naked_asm!(
        ".code32",
        "mov edi, {tag}",
        "mov esi, ebx",
        "jmp start32_common",
        ".code64",
        tag = const PVH_BOOT_TAG,
    );
}
