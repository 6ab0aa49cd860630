//! Hostile guests built into the image, for the tests that a guest never takes the
//! hypervisor down (and that real mode gets what a CPU gives it): a few real-mode
//! instructions each, assembled by hand (flat images loaded and entered at 0000:7C00).

/// Where the flat images are loaded and entered.
pub const LOAD_GPA: u64 = 0x7C00;

/// (name, code, what it does)
pub static BUILTIN_GUESTS: &[(&str, &[u8], &str)] = &[
    (
        "hello16",
        // mov dx, 0x3f8; mov si, msg; l: lodsb; test al, al; jz done; out dx, al; jmp l;
        // done: mov al, 0; out 0xf4, al; hlt; msg: "hello from a real-mode guest\n\0"
        b"\xBA\xF8\x03\xBE\x13\x7C\xAC\x84\xC0\x74\x03\xEE\xEB\xF8\xB0\x00\xE6\xF4\xF4hello from a real-mode guest\n\0",
        "prints a line through the UART and exits 0",
    ),
    (
        "triplefault",
        // cli; lidt [0x7C08] (limit 0); int3 -> #GP -> #DF -> shutdown
        &[0xFA, 0x0F, 0x01, 0x1E, 0x08, 0x7C, 0xCC, 0xF4, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
        "loads an empty IDT and raises an exception: triple fault",
    ),
    ("spin", &[0xEB, 0xFE], "jmp $: never exits by itself"),
    (
        "halt16",
        // cli; hlt; jmp $-2 (back to the hlt)
        &[0xFA, 0xF4, 0xEB, 0xFD],
        "halts with interrupts off for good: nothing wakes it, only a time limit ends it",
    ),
    (
        "wild",
        // mov ax, 0xFFFF; mov ds, ax; mov byte [0x10], 1 (writes 0x100000); hlt
        &[0xB8, 0xFF, 0xFF, 0x8E, 0xD8, 0xC6, 0x06, 0x10, 0x00, 0x01, 0xF4],
        "writes guest address 0x100000 (beyond 1 MiB of memory)",
    ),
    (
        "reset16",
        // inc byte [count]; cmp byte [count], 1; mov si, msg1; je print; mov si, msg2;
        // print: mov dx, 0x3f8; l: lodsb; test al, al; jz done; out dx, al; jmp l;
        // done: cmp byte [count], 1; jne second; mov al, 6; mov dx, 0xcf9; out dx, al; hlt;
        // second: mov al, 0; out 0xf4, al; hlt; count: 0; msg1; msg2
        b"\xFE\x06\x2F\x7C\x80\x3E\x2F\x7C\x01\xBE\x30\x7C\x74\x03\xBE\x44\x7C\xBA\xF8\x03\
          \xAC\x84\xC0\x74\x03\xEE\xEB\xF8\x80\x3E\x2F\x7C\x01\x75\x07\xB0\x06\xBA\xF9\x0C\xEE\xF4\
          \xB0\x00\xE6\xF4\xF4\x00reset16: resetting\n\0reset16: after reset\n\0",
        "resets the platform through 0xCF9 once (memory survives: a counter), then exits 0",
    ),
    (
        "ioscan",
        // xor dx, dx; l: in al, dx; inc dx; jnz l; mov al, 0; out 0xF4, al; hlt
        &[0x31, 0xD2, 0xEC, 0x42, 0x75, 0xFC, 0xB0, 0x00, 0xE6, 0xF4, 0xF4],
        "reads every I/O port once, then exits 0",
    ),
    (
        "msr16",
        // cli; xor ax, ax; mov ds, ax; mov ss, ax; mov sp, 0x7000;
        // mov word [13*4], handler; mov word [13*4+2], ax            (#GP vector -> 0000:handler)
        // mov ecx, 0x1b; rdmsr; cmp eax, 0xfee00900; jne fail        (IA32_APIC_BASE of the BSP)
        // mov ecx, 0x1234; faulting: rdmsr; mov al, 2; out 0xf4, al; hlt   (unknown MSR: #GP)
        // handler: mov bx, sp; cmp bx, 0x7000 - 6; jne fail          (IP, CS, FLAGS: no error code)
        // cmp word [bx], faulting; jne fail; cmp word [bx+2], 0; jne fail
        // print msg; mov al, 0; out 0xf4, al; hlt; fail: mov al, 1; out 0xf4, al; hlt
        b"\xFA\x31\xC0\x8E\xD8\x8E\xD0\xBC\x00\x70\xC7\x06\x34\x00\x30\x7C\xA3\x36\x00\x66\xB9\x1B\x00\x00\
          \x00\x0F\x32\x66\x3D\x00\x09\xE0\xFE\x75\x34\x66\xB9\x34\x12\x00\x00\x0F\x32\xB0\x02\xE6\xF4\xF4\
          \x89\xE3\x81\xFB\xFA\x6F\x75\x1F\x81\x3F\x29\x7C\x75\x19\x83\x7F\x02\x00\x75\x13\xBA\xF8\x03\xBE\
          \x5C\x7C\xAC\x84\xC0\x74\x03\xEE\xEB\xF8\xB0\x00\xE6\xF4\xF4\xB0\x01\xE6\xF4\xF4\
          msr16: APIC base 0xfee00900, #GP without an error code\n\0",
        "reads IA32_APIC_BASE, then an unknown MSR: #GP through its IVT without an error code, exits 0",
    ),
    (
        "mmio32",
        // cli; xor ax, ax; mov ds, ax; lgdt [gdtr]; mov eax, cr0; or al, 1; mov cr0, eax;
        // jmp 0x08:pm32 | pm32 (32-bit, flat, paging off): mov ax, 0x10; mov ds/es/ss, ax;
        // mov eax, [0xFEE00030]; cmp eax, 0x50014; jne fail; mov dword [0xFEE00080], 0x42;
        // mov ebx, 0xFEE00000; mov ecx, [ebx + 0x80]; cmp ecx, 0x42; jne fail;
        // mov dword [ebx + 0x80], 0; print msg; mov al, 0; out 0xf4, al; hlt;
        // fail: mov al, 1; out 0xf4, al; hlt; gdt: null, code 0x00CF9A000000FFFF,
        // data 0x00CF92000000FFFF; gdtr: 23, gdt; msg (GNU as --32, ld -Ttext 0x7C00)
        b"\xFA\x31\xC0\x8E\xD8\x66\x0F\x01\x16\x88\x7C\x0F\x20\xC0\x0C\x01\x0F\x22\xC0\xEA\x18\x7C\x08\x00\
          \x66\xB8\x10\x00\x8E\xD8\x8E\xC0\x8E\xD0\xA1\x30\x00\xE0\xFE\x3D\x14\x00\x05\x00\x75\x3A\xC7\x05\
          \x80\x00\xE0\xFE\x42\x00\x00\x00\xBB\x00\x00\xE0\xFE\x8B\x8B\x80\x00\x00\x00\x83\xF9\x42\x75\x20\
          \xC7\x83\x80\x00\x00\x00\x00\x00\x00\x00\xBE\x8E\x7C\x00\x00\x66\xBA\xF8\x03\xAC\x84\xC0\x74\x03\
          \xEE\xEB\xF8\xB0\x00\xE6\xF4\xF4\xB0\x01\xE6\xF4\xF4\x8D\x76\x00\x00\x00\x00\x00\x00\x00\x00\x00\
          \xFF\xFF\x00\x00\x00\x9A\xCF\x00\xFF\xFF\x00\x00\x00\x92\xCF\x00\x17\x00\x70\x7C\x00\x00\
          mmio32: lapic version 0x50014 and tpr 0x42 in 32-bit protected mode\n\0",
        "enters 32-bit protected mode (paging off) and reads and writes the local APIC page, exits 0",
    ),
    (
        "outs16",
        // xor ax, ax; mov ds, ax; mov es, ax; cld; mov dx, 0x510; out dx, ax (fw_cfg key 0);
        // mov dx, 0x511; mov di, sig; mov cx, 4; rep insb; mov dx, 0x3f8; mov si, msg;
        // mov cx, 66; rep outsb; mov al, 0; out 0xf4, al; hlt; msg, with sig its 23rd byte
        b"\x31\xC0\x8E\xD8\x8E\xC0\xFC\xBA\x10\x05\xEF\xBA\x11\x05\xBF\x3C\x7C\xB9\x04\x00\xF3\x6C\xBA\xF8\
          \x03\xBE\x26\x7C\xB9\x42\x00\xF3\x6E\xB0\x00\xE6\xF4\xF4\
          outs16: rep insb read ???? from fw_cfg, rep outsb wrote this line\n",
        "reads fw_cfg's signature with REP INSB and prints a line with REP OUTSB (16-bit addresses), exits 0",
    ),
    (
        "pic16",
        // cli; xor ax, ax; mov ds, ax; mov ss, ax; mov sp, 0x7000;
        // mov word [8*4], handler; mov word [8*4+2], ax              (IVT 8 -> 0000:handler)
        // ICW1 0x11 to 0x20 and 0xA0; ICW2 0x08 to 0x21, 0x70 to 0xA1 (BIOS bases);
        // ICW3 0x04 to 0x21, 0x02 to 0xA1; ICW4 0x01 to both; OCW1 0xFE to 0x21 (IRQ 0
        // only), 0xFF to 0xA1; PIT: 0x34 to 0x43 (channel 0, mode 2), 11932 (~100 Hz) to
        // 0x40 low then high; wait: sti; hlt; cli; cmp byte [count], 5; jb wait;
        // mov al, [count]; add al, '0'; mov [digit], al; print msg; mov al, 0; out 0xf4, al;
        // hlt; handler: push ax; inc byte cs:[count]; mov al, 0x20; out 0x20, al (non-specific
        // EOI); pop ax; iret; count: 0; msg: "pic16: ", digit: "? ticks..."
        // (GNU as --32 .code16, ld -Ttext 0x7C00)
        b"\xFA\x31\xC0\x8E\xD8\x8E\xD0\xBC\x00\x70\xC7\x06\x20\x00\x68\x7C\xA3\x22\x00\xB0\x11\xE6\x20\xE6\
          \xA0\xB0\x08\xE6\x21\xB0\x70\xE6\xA1\xB0\x04\xE6\x21\xB0\x02\xE6\xA1\xB0\x01\xE6\x21\xE6\xA1\xB0\
          \xFE\xE6\x21\xB0\xFF\xE6\xA1\xB0\x34\xE6\x43\xB0\x9C\xE6\x40\xB0\x2E\xE6\x40\xFB\xF4\xFA\x80\x3E\
          \x74\x7C\x05\x72\xF6\xA0\x74\x7C\x04\x30\xA2\x7C\x7C\xBA\xF8\x03\xBE\x75\x7C\xAC\x84\xC0\x74\x03\
          \xEE\xEB\xF8\xB0\x00\xE6\xF4\xF4\x50\x2E\xFE\x06\x74\x7C\xB0\x20\xE6\x20\x58\xCF\x00\
          pic16: ? ticks of IRQ 0 through the 8259 and the IVT\n\0",
        "takes 5 PIT ticks on IRQ 0 through the 8259 (ExtINT on LINT0) and its IVT, exits 0",
    ),
];

pub fn find(name: &str) -> Option<&'static [u8]> {
    BUILTIN_GUESTS.iter().find(|(n, _, _)| *n == name).map(|(_, code, _)| *code)
}
