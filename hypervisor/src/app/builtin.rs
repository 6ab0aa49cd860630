//! Hostile guests built into the image, for the tests that a guest never takes the
//! hypervisor down: a few real-mode instructions each, assembled by hand (flat images
//! loaded and entered at 0000:7C00).

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
];

pub fn find(name: &str) -> Option<&'static [u8]> {
    BUILTIN_GUESTS.iter().find(|(n, _, _)| *n == name).map(|(_, code, _)| *code)
}
