//! The guests' runtime: PVH entry, long mode, per-vCPU stacks, console, exit, hypercalls,
//! panic handler. Bare metal only.
//!
//! A guest also has the Linux boot protocol's 64-bit entry at image start + 0x200
//! (`linux_start64`, placed there by `link.ld`), so xtask can wrap any guest into a
//! bzImage (`cargo xtask`'s `bzimage`); it runs as vCPU 0 of 1.

use core::arch::{asm, global_asm, naked_asm};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use taproot_guest_abi::boot::{self, hvm_start_info as si, linux as bp, multiboot_info as mbi};
use taproot_guest_abi::{cpuid, hypercall, port, status};

/// The most vCPUs a guest runs on (one stack each).
pub const MAX_VCPUS: u32 = 8;
/// Stack size per vCPU (a power of two: the entry shifts by its log2).
const STACK_SHIFT: u32 = 15;

/// 16550 registers (PC16550D data sheet, Table II), as offsets from COM1.
const UART_THR: u16 = 0;
const UART_RBR: u16 = 0;
const UART_IER: u16 = 1;
const UART_DLL: u16 = 0;
const UART_DLM: u16 = 1;
const UART_FCR: u16 = 2;
const UART_LCR: u16 = 3;
const UART_MCR: u16 = 4;
const UART_LSR: u16 = 5;
/// LCR: 8 data bits, no parity, 1 stop bit; bit 7 opens the divisor latch.
const LCR_8N1: u8 = 0x03;
const LCR_DLAB: u8 = 0x80;
/// LSR bit 0: data ready (a received byte waits in RBR, or in the receive FIFO).
const LSR_DR: u8 = 1 << 0;
/// LSR bit 5: transmitter holding register empty.
const LSR_THRE: u8 = 1 << 5;

/// CR0.PE, CR0.NE, CR0.WP, CR0.PG (SDM Vol. 3A §2.5).
const CR0_PE: u64 = 1 << 0;
const CR0_NE: u64 = 1 << 5;
pub const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
/// CR4.PAE, CR4.PGE (SDM Vol. 3A §2.5).
const CR4_PAE: u64 = 1 << 5;
pub const CR4_PGE: u64 = 1 << 7;
/// IA32_EFER and its LME bit (SDM Vol. 3A §2.2.1, Vol. 4 Table 2-2).
const MSR_EFER: u32 = 0xC000_0080;
const EFER_LME: u64 = 1 << 8;
/// Paging-structure entry bits (SDM Vol. 3A §4.5, Tables 4-15 to 4-18): present,
/// writable, and page size (a 2 MiB page in a page directory).
const PTE_PRESENT_WRITABLE: u64 = 0x3;
const PDE_2M_PAGE: u64 = 0x83;
/// GDT selectors of `guest_gdt`.
const SELECTOR_CODE64: u16 = 0x08;
const SELECTOR_DATA: u16 = 0x10;

/// Multiboot 0.6.96 §3.1.2, header flag bit 1: the loader must pass memory information.
const MULTIBOOT1_FLAGS: u32 = 1 << 1;

/// Which protocol entered the guest: set at entry (every vCPU writes the same value).
static BOOT_PROTOCOL: AtomicU8 = AtomicU8::new(PROTOCOL_PVH);
const PROTOCOL_PVH: u8 = 0;
const PROTOCOL_MULTIBOOT1: u8 = 1;
const PROTOCOL_LINUX: u8 = 2;

/// What the Linux 64-bit entry found, in the order of [`LinuxEntry`]'s fields.
static LINUX_ENTRY: [core::sync::atomic::AtomicU64; 5] = [const { core::sync::atomic::AtomicU64::new(0) }; 5];
/// CR0.WP for the Linux entry, which arrives with the loader's CR0 (PE, PG).
const CR0_WP_BIT: u64 = CR0_WP;

// Static page tables: one PML4, one PDPT and four page directories of 2 MiB pages
// identity-map [0, 4 GiB), which covers any guest memory below 4 GiB. They are data in the
// image, not built at run time, so every vCPU (and a vCPU restarting after RESET_VCPU) can
// use them at once without a race.
global_asm!(
    r#"
    .section .data.page_tables, "aw"
    .balign 4096
    .global guest_pml4
guest_pml4:
    .quad guest_pdpt + {table}
    .fill 511, 8, 0
guest_pdpt:
    .quad guest_pds + {table}
    .quad guest_pds + 0x1000 + {table}
    .quad guest_pds + 0x2000 + {table}
    .quad guest_pds + 0x3000 + {table}
    .fill 508, 8, 0
guest_pds:
    .set pde_index, 0
    .rept 2048
    .quad (pde_index << 21) | {page_2m}
    .set pde_index, pde_index + 1
    .endr

    // The multiboot1 header (multiboot 0.6.96 §3.1.1), which `link.ld` puts first in the
    // image, well inside the 8 KiB a loader searches. The entry is the ELF's, the same as
    // PVH's: `pvh_start32` tells the two apart by the magic in eax.
    .section .multiboot1_header, "a"
    .balign 4
    .long {mb_magic}
    .long {mb_flags}
    .long {mb_checksum}

    .section .rodata.guest_gdt, "a"
    .balign 16
    // Null; 64-bit code (P, S, execute/read, L); data (P, S, read/write): SDM Vol. 3A
    // §3.4.5, Figure 3-8.
guest_gdt:
    .quad 0
    .quad 0x00209A0000000000
    .quad 0x0000920000000000
guest_gdt_end:
    .balign 4
guest_gdt_ptr:
    .short guest_gdt_end - guest_gdt - 1
    .long guest_gdt

    .section .bss.guest_stacks, "aw", @nobits
    .balign 4096
guest_stacks:
    .skip {stacks_size}
"#,
    stacks_size = const (MAX_VCPUS as usize) << STACK_SHIFT,
    mb_magic = const boot::MULTIBOOT1_HEADER_MAGIC,
    mb_flags = const MULTIBOOT1_FLAGS,
    mb_checksum = const 0u32.wrapping_sub(boot::MULTIBOOT1_HEADER_MAGIC.wrapping_add(MULTIBOOT1_FLAGS)),
    table = const PTE_PRESENT_WRITABLE,
    page_2m = const PDE_2M_PAGE,
);

/// The entry of both protocols: 32-bit protected mode, paging off, `ebx` = PVH start info
/// or, with `eax` = the multiboot1 magic, the multiboot information; and Taproot's
/// `esi` = vCPU index, `edi` = vCPU count. Without Taproot's CPUID signature (QEMU
/// `-kernel`), `esi`/`edi` mean nothing and the guest runs as vCPU 0 of 1.
///
/// # Safety
/// Only a PVH or multiboot1 loader enters here.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub unsafe extern "C" fn pvh_start32() -> ! {
    naked_asm!(
        ".code32",
        "cli",
        "cld",
        "cmp eax, {mb_boot_magic}",
        "jne 1f",
        "mov byte ptr [{boot_protocol}], {protocol_mb1}",
        "1:",
        "mov ebp, ebx",
        "mov eax, {sig_leaf}",
        "cpuid",
        "cmp ebx, {sig0}",
        "jne 2f",
        "cmp ecx, {sig1}",
        "jne 2f",
        "cmp edx, {sig2}",
        "jne 2f",
        "jmp 3f",
        "2:",
        "xor esi, esi",
        "mov edi, 1",
        "3:",
        "cmp esi, {max_vcpus}",
        "jae 5f",
        // The stack of vCPU n is the n-th slice of guest_stacks; it grows down from the
        // slice's end, which is 16-byte aligned.
        "lea eax, [esi + 1]",
        "shl eax, {stack_shift}",
        "add eax, offset guest_stacks",
        "mov esp, eax",
        "mov eax, offset guest_pml4",
        "mov cr3, eax",
        "mov eax, cr4",
        "or eax, {cr4_pae}",
        "mov cr4, eax",
        "mov ecx, {msr_efer}",
        "rdmsr",
        "or eax, {efer_lme}",
        "wrmsr",
        // Paging on with LME set: long mode. NE goes on in the same MOV, as Linux does
        // (`CR0_STATE`): VMX keeps NE host-owned, so this MOV exits and the host must do
        // what the CPU does (EFER.LMA, the IA-32e mode entry control).
        "mov eax, cr0",
        "or eax, {cr0_bits}",
        "mov cr0, eax",
        "lgdt [guest_gdt_ptr]",
        // ljmp code64:4f (JMP ptr16:32, opcode EA).
        ".byte 0xEA",
        ".long 4f",
        ".short {code64}",
        ".code64",
        "4:",
        "mov ax, {data}",
        "mov ds, ax",
        "mov es, ax",
        "mov ss, ax",
        "xor eax, eax",
        "mov fs, ax",
        "mov gs, ax",
        // rust_start(index = esi, count = edi, boot_info = ebp); each `mov r32` zeroes
        // the upper half. RSP is 16-byte aligned here, so 8 mod 16 at rust_start's entry.
        "mov eax, esi",
        "mov esi, edi",
        "mov edi, eax",
        "mov edx, ebp",
        "xor ebp, ebp",
        "call {rust_start}",
        "6:",
        "cli",
        "hlt",
        "jmp 6b",
        ".code32",
        "5:",
        "mov al, {bad_boot}",
        "out {exit_port}, al",
        "7:",
        "cli",
        "hlt",
        "jmp 7b",
        ".code64",
        mb_boot_magic = const boot::MULTIBOOT1_BOOT_MAGIC,
        boot_protocol = sym BOOT_PROTOCOL,
        protocol_mb1 = const PROTOCOL_MULTIBOOT1,
        sig_leaf = const cpuid::SIGNATURE_LEAF,
        sig0 = const cpuid::signature_regs()[0],
        sig1 = const cpuid::signature_regs()[1],
        sig2 = const cpuid::signature_regs()[2],
        max_vcpus = const MAX_VCPUS,
        stack_shift = const STACK_SHIFT,
        rust_start = sym rust_start,
        bad_boot = const status::BAD_BOOT,
        cr4_pae = const CR4_PAE,
        msr_efer = const MSR_EFER,
        efer_lme = const EFER_LME,
        cr0_bits = const CR0_PG | CR0_WP | CR0_NE | CR0_PE,
        code64 = const SELECTOR_CODE64,
        data = const SELECTOR_DATA,
        exit_port = const port::DEBUG_EXIT,
    );
}

/// The Linux boot protocol's 64-bit entry (Linux `Documentation/arch/x86/boot.rst`):
/// long mode on the loader's identity map and GDT, `rsi` = `boot_params`, interrupts off.
/// It records what it found ([`linux_entry`]), moves to the runtime's own page tables and
/// runs the guest as vCPU 0 of 1.
///
/// # Safety
/// Only a Linux boot protocol loader enters here.
#[unsafe(no_mangle)]
#[unsafe(naked)]
#[unsafe(link_section = ".text.linux64")]
pub unsafe extern "C" fn linux_start64() -> ! {
    naked_asm!(
        "cli",
        "cld",
        "lea rax, [rip + {me}]",
        "mov [rip + {state}], rax",
        "xor eax, eax",
        "mov ax, cs",
        "mov [rip + {state} + 8], rax",
        "mov ecx, {msr_efer}",
        "rdmsr",
        "shl rdx, 32",
        "or rax, rdx",
        "mov [rip + {state} + 16], rax",
        "mov rax, cr0",
        "mov [rip + {state} + 24], rax",
        "mov [rip + {state} + 32], rsi",
        "mov byte ptr [rip + {boot_protocol}], {protocol_linux}",
        "lea rsp, [rip + guest_stacks + {stack_size}]",
        "lea rax, [rip + guest_pml4]",
        "mov cr3, rax",
        "mov rax, cr0",
        "or rax, {cr0_wp}",
        "mov cr0, rax",
        // rust_start(index 0, count 1, boot_info = rsi), boot_params being below 4 GiB.
        "mov edx, esi",
        "xor edi, edi",
        "mov esi, 1",
        "xor ebp, ebp",
        "call {rust_start}",
        "2:",
        "cli",
        "hlt",
        "jmp 2b",
        me = sym linux_start64,
        state = sym LINUX_ENTRY,
        msr_efer = const MSR_EFER,
        boot_protocol = sym BOOT_PROTOCOL,
        protocol_linux = const PROTOCOL_LINUX,
        stack_size = const 1u64 << STACK_SHIFT,
        cr0_wp = const CR0_WP_BIT,
        rust_start = sym rust_start,
    );
}

/// The CPU state the Linux 64-bit entry found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxEntry {
    pub rip: u64,
    pub cs: u64,
    pub efer: u64,
    pub cr0: u64,
    pub rsi: u64,
}

/// What the Linux entry recorded (`None` when another protocol booted the guest).
#[must_use]
pub fn linux_entry() -> Option<LinuxEntry> {
    if BOOT_PROTOCOL.load(Ordering::Relaxed) != PROTOCOL_LINUX {
        return None;
    }
    let [rip, cs, efer, cr0, rsi] = LINUX_ENTRY.each_ref().map(|v| v.load(Ordering::Relaxed));
    Some(LinuxEntry { rip, cs, efer, cr0, rsi })
}

/// How the guest was booted.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Pvh,
    Multiboot1,
    /// The Linux boot protocol's 64-bit entry (a bzImage).
    Linux,
}

impl Protocol {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Pvh => "pvh",
            Self::Multiboot1 => "multiboot1",
            Self::Linux => "linux",
        }
    }
}

/// What a guest's main gets: who it is and what it was given.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Boot {
    pub vcpu_index: u32,
    pub vcpu_count: u32,
    pub protocol: Protocol,
    /// Gpa of the PVH `hvm_start_info`, of the multiboot information or of Linux's
    /// `boot_params`.
    pub boot_info: u32,
    /// Whether CPUID names Taproot (otherwise: no hypercalls, one vCPU).
    pub under_taproot: bool,
}

/// Longest command line read; most memory-map entries read.
const CMDLINE_MAX: usize = 4096;
const MEMMAP_MAX_ENTRIES: u64 = 128;

/// Reads a `T` at guest-physical (= virtual) address `base + offset` (a field of a boot
/// information structure, whose layouts `taproot_guest_abi::boot` gives in byte offsets).
///
/// # Safety
/// The address must be mapped (the runtime identity-maps 4 GiB) and hold a `T` (any bit
/// pattern must be valid for `T`).
unsafe fn read_phys<T: Copy>(base: u64, offset: usize) -> T {
    // SAFETY: the caller promises the address is mapped and holds a T; unaligned reads
    // are allowed for the boot information's fields.
    unsafe { core::ptr::read_unaligned((base + offset as u64) as *const T) }
}

/// A NUL-terminated string at `addr` ("" when absent or not UTF-8).
fn c_string(addr: u64) -> &'static str {
    if addr == 0 || addr >= 1 << 32 {
        return "";
    }
    // SAFETY: the loader placed a NUL-terminated string at `addr` in guest memory; we
    // read at most CMDLINE_MAX bytes of the identity-mapped first 4 GiB, and guest
    // memory is never unmapped, so the slice stays valid for 'static.
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, CMDLINE_MAX) };
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(0);
    core::str::from_utf8(&bytes[..len]).unwrap_or("")
}

impl Boot {
    /// The boot information's flags when it is valid: the PVH magic checked, or the
    /// multiboot flags (multiboot has no magic of its own besides the one in eax).
    fn valid_info(&self) -> Option<u32> {
        if self.boot_info == 0 {
            return None;
        }
        let base = u64::from(self.boot_info);
        // SAFETY: the boot information's gpa comes from the loader and lies in guest memory
        // below 4 GiB, which the runtime maps; both structures begin with a u32.
        let first_word = unsafe { read_phys::<u32>(base, 0) };
        match self.protocol {
            Protocol::Pvh => (first_word == boot::HVM_START_MAGIC).then_some(0),
            Protocol::Multiboot1 => Some(first_word),
            Protocol::Linux => {
                // SAFETY: boot_params is 4 KiB at a mapped gpa.
                let header = unsafe { read_phys::<u32>(base, bp::HEADER) };
                (header == bp::HEADER_MAGIC).then_some(0)
            }
        }
    }

    /// The ACPI RSDP's address from the PVH start info (`None` for multiboot or when the
    /// loader gave none).
    #[must_use]
    pub fn rsdp_paddr(&self) -> Option<u64> {
        self.valid_info()?;
        match self.protocol {
            // SAFETY: the start info is valid (magic checked) and mapped.
            Protocol::Pvh => Some(unsafe { read_phys::<u64>(u64::from(self.boot_info), si::RSDP_PADDR) })
                .filter(|&a| a != 0),
            Protocol::Linux => {
                // SAFETY: boot_params is valid ("HdrS" checked) and mapped.
                let rsdp = unsafe { read_phys::<u64>(u64::from(self.boot_info), bp::ACPI_RSDP_ADDR) };
                Some(rsdp).filter(|&a| a != 0)
            }
            Protocol::Multiboot1 => None,
        }
    }

    /// The command line from the boot information ("" when there is none).
    #[must_use]
    pub fn cmdline(&self) -> &'static str {
        let Some(flags) = self.valid_info() else { return "" };
        let base = u64::from(self.boot_info);
        match self.protocol {
            // SAFETY: the start info is valid (magic checked) and mapped.
            Protocol::Pvh => c_string(unsafe { read_phys(base, si::CMDLINE_PADDR) }),
            Protocol::Multiboot1 if flags & mbi::FLAG_CMDLINE != 0 => {
                // SAFETY: the loader set the flag that makes this field valid.
                c_string(u64::from(unsafe { read_phys::<u32>(base, mbi::CMDLINE) }))
            }
            Protocol::Multiboot1 => "",
            // SAFETY: boot_params is valid ("HdrS" checked) and mapped.
            Protocol::Linux => c_string(u64::from(unsafe { read_phys::<u32>(base, bp::CMD_LINE_PTR) })),
        }
    }

    /// The initrd's gpa and size: Linux's `ramdisk_image`/`ramdisk_size` (with their
    /// `ext_` upper halves), or PVH module 0. `None` when the loader gave none.
    #[must_use]
    pub fn initrd(&self) -> Option<(u64, u64)> {
        self.valid_info()?;
        let base = u64::from(self.boot_info);
        let found = match self.protocol {
            // SAFETY: boot_params is valid ("HdrS" checked) and mapped.
            Protocol::Linux => unsafe {
                let half = |lo: usize, hi: usize| {
                    u64::from(read_phys::<u32>(base, lo)) | (u64::from(read_phys::<u32>(base, hi)) << 32)
                };
                (half(bp::RAMDISK_IMAGE, bp::EXT_RAMDISK_IMAGE), half(bp::RAMDISK_SIZE, bp::EXT_RAMDISK_SIZE))
            },
            Protocol::Pvh => {
                // SAFETY: the start info is valid (magic checked) and mapped; a module
                // entry lies at modlist_paddr when nr_modules > 0.
                unsafe {
                    if read_phys::<u32>(base, si::NR_MODULES) == 0 {
                        return None;
                    }
                    let list: u64 = read_phys(base, si::MODLIST_PADDR);
                    (read_phys(list, si::MODLIST_ENTRY_PADDR), read_phys(list, si::MODLIST_ENTRY_LEN))
                }
            }
            Protocol::Multiboot1 => return None,
        };
        (found.1 != 0).then_some(found)
    }

    /// The initrd's gpa and bytes, when the loader gave one below 4 GiB, page-aligned
    /// above the image (where a loader must put it).
    #[must_use]
    pub fn initrd_bytes(&self) -> Option<(u64, &'static [u8])> {
        let (gpa, size) = self.initrd()?;
        let fits = gpa.is_multiple_of(4096) && gpa >= image_end() && gpa.checked_add(size)? <= 1 << 32;
        // SAFETY: the loader placed `size` initrd bytes at `gpa`, in guest RAM below 4 GiB,
        // which the runtime identity-maps and nothing else uses.
        fits.then(|| (gpa, unsafe { core::slice::from_raw_parts(gpa as *const u8, size as usize) }))
    }

    /// The end of the RAM range that contains `addr`, from the boot information's memory
    /// map.
    #[must_use]
    pub fn ram_end_from(&self, addr: u64) -> Option<u64> {
        let flags = self.valid_info()?;
        let base = u64::from(self.boot_info);
        let ram_end = |start: u64, size: u64, ram: bool| {
            let end = start.checked_add(size)?;
            (ram && (start..end).contains(&addr)).then_some(end)
        };
        match self.protocol {
            Protocol::Pvh => {
                // SAFETY: the start info is valid (magic checked) and mapped.
                let (map, entries): (u64, u32) =
                    unsafe { (read_phys(base, si::MEMMAP_PADDR), read_phys(base, si::MEMMAP_ENTRIES)) };
                (0..u64::from(entries).min(MEMMAP_MAX_ENTRIES)).find_map(|i| {
                    let entry = map + i * si::MEMMAP_ENTRY_SIZE as u64;
                    // SAFETY: the loader wrote `entries` memory-map entries at `map`.
                    let (start, size, kind): (u64, u64, u32) = unsafe {
                        (
                            read_phys(entry, si::MEMMAP_ENTRY_ADDR),
                            read_phys(entry, si::MEMMAP_ENTRY_LEN),
                            read_phys(entry, si::MEMMAP_ENTRY_TYPE),
                        )
                    };
                    ram_end(start, size, kind == boot::MEMORY_TYPE_RAM)
                })
            }
            Protocol::Multiboot1 if flags & mbi::FLAG_MMAP != 0 => {
                // SAFETY: the loader set the flag that makes these fields valid.
                let (length, map): (u32, u32) =
                    unsafe { (read_phys(base, mbi::MMAP_LENGTH), read_phys(base, mbi::MMAP_ADDR)) };
                let (mut entry, end) = (u64::from(map), u64::from(map) + u64::from(length));
                for _ in 0..MEMMAP_MAX_ENTRIES {
                    if entry >= end {
                        break;
                    }
                    // SAFETY: the entry lies inside the map the loader described.
                    let (size, start, len, kind): (u32, u64, u64, u32) = unsafe {
                        (
                            read_phys(entry, 0),
                            read_phys(entry, mbi::MMAP_ENTRY_BASE),
                            read_phys(entry, mbi::MMAP_ENTRY_LEN),
                            read_phys(entry, mbi::MMAP_ENTRY_TYPE),
                        )
                    };
                    if let Some(found) = ram_end(start, len, kind == boot::MEMORY_TYPE_RAM) {
                        return Some(found);
                    }
                    entry += u64::from(size) + 4;
                }
                None
            }
            Protocol::Multiboot1 => None,
            Protocol::Linux => {
                // SAFETY: boot_params is valid ("HdrS" checked) and mapped.
                let entries = unsafe { read_phys::<u8>(base, bp::E820_ENTRIES) };
                (0..usize::from(entries).min(bp::E820_MAX_ENTRIES)).find_map(|i| {
                    let at = bp::E820_TABLE + i * bp::E820_ENTRY_SIZE;
                    // SAFETY: the loader wrote `entries` e820 entries in boot_params.
                    let (start, size, kind): (u64, u64, u32) =
                        unsafe { (read_phys(base, at), read_phys(base, at + 8), read_phys(base, at + 16)) };
                    ram_end(start, size, kind == boot::MEMORY_TYPE_RAM)
                })
            }
        }
    }
}

unsafe extern "C" {
    /// Defined by [`crate::guest_main!`].
    fn taproot_guest_main(boot: &Boot) -> u32;
    /// End of the image (`link.ld`).
    static __image_end: u8;
}

/// The first address after the image (its `.bss` included).
#[must_use]
pub fn image_end() -> u64 {
    // Only the address of the linker symbol is taken, never its contents.
    (&raw const __image_end) as u64
}

extern "C" fn rust_start(vcpu_index: u32, vcpu_count: u32, boot_info: u32) -> ! {
    let [_, b, c, d] = cpuid_regs(cpuid::SIGNATURE_LEAF);
    let protocol = match BOOT_PROTOCOL.load(Ordering::Relaxed) {
        PROTOCOL_MULTIBOOT1 => Protocol::Multiboot1,
        PROTOCOL_LINUX => Protocol::Linux,
        _ => Protocol::Pvh,
    };
    let boot =
        Boot { vcpu_index, vcpu_count, protocol, boot_info, under_taproot: cpuid::is_taproot(b, c, d) };
    // SAFETY: `taproot_guest_main` is the function `guest_main!` defined with this
    // signature.
    let code = unsafe { taproot_guest_main(&boot) };
    exit(code)
}

/// Runs CPUID.
#[must_use]
pub fn cpuid_regs(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Writes one byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port output to the devices Taproot (or QEMU) models; no memory is touched.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

/// Writes a 16-bit word to an I/O port.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags)) };
}

/// Reads one byte from an I/O port.
#[must_use]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Ends the VM with `status` through the exit port; halts if nothing ends it.
pub fn exit(status: u32) -> ! {
    outb(port::DEBUG_EXIT, status as u8);
    halt_forever()
}

/// Stops this vCPU (HLT with interrupts off: under Taproot the vCPU stays halted off its
/// host CPU, counted in the stats' `halted_vcpus`, until the VM ends).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: CLI; HLT only stops this vCPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Serialises console output of several vCPUs, and initialises the UART once.
static CONSOLE_LOCK: AtomicBool = AtomicBool::new(false);
static CONSOLE_READY: AtomicBool = AtomicBool::new(false);

/// The console: the 16550 at COM1, programmed 8N1 at 115200 baud.
pub struct Console(());

impl Console {
    /// Takes the console (spinning while another vCPU prints).
    pub fn lock() -> Self {
        while CONSOLE_LOCK.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::spin_loop();
        }
        if !CONSOLE_READY.load(Ordering::Relaxed) {
            let base = port::COM1_BASE;
            outb(base + UART_IER, 0);
            outb(base + UART_LCR, LCR_DLAB);
            outb(base + UART_DLL, 1);
            outb(base + UART_DLM, 0);
            outb(base + UART_LCR, LCR_8N1);
            outb(base + UART_FCR, 0xC7); // enable and clear FIFOs, 14-byte threshold
            outb(base + UART_MCR, 0x0B); // DTR | RTS | OUT2
            CONSOLE_READY.store(true, Ordering::Relaxed);
        }
        Self(())
    }

    /// A byte typed at the console, if one has arrived (LSR.DR polled; no interrupt).
    pub fn try_read(&mut self) -> Option<u8> {
        let ready = inb(port::COM1_BASE + UART_LSR) & LSR_DR != 0;
        ready.then(|| inb(port::COM1_BASE + UART_RBR))
    }

    fn put(&mut self, byte: u8) {
        while inb(port::COM1_BASE + UART_LSR) & LSR_THRE == 0 {
            core::hint::spin_loop();
        }
        outb(port::COM1_BASE + UART_THR, byte);
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        CONSOLE_LOCK.store(false, Ordering::Release);
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.put(b'\r');
            }
            self.put(byte);
        }
        Ok(())
    }
}

/// Prints a line to the console (whole, even with several vCPUs printing).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut console = $crate::rt::Console::lock();
        let _ = console.write_fmt(format_args!($($arg)*));
        let _ = console.write_str("\n");
    }};
}

/// 0: not known yet; 1: VMMCALL; 2: VMCALL; 3: not under Taproot.
static HYPERCALL_KIND: AtomicU8 = AtomicU8::new(0);

fn hypercall_kind() -> u8 {
    let mut kind = HYPERCALL_KIND.load(Ordering::Relaxed);
    if kind == 0 {
        let [_, b, c, d] = cpuid_regs(cpuid::SIGNATURE_LEAF);
        kind = if !cpuid::is_taproot(b, c, d) {
            3
        } else if cpuid_regs(cpuid::FEATURES_LEAF)[0] & cpuid::FEATURE_HYPERCALL_VMMCALL != 0 {
            1
        } else {
            2
        };
        HYPERCALL_KIND.store(kind, Ordering::Relaxed);
    }
    kind
}

/// Calls hypercall `call` with up to three arguments. Not under Taproot, nothing is
/// executed and the result is `UnknownHypercall`.
pub fn hypercall(call: hypercall::Hypercall, args: [u64; 3]) -> Result<u64, hypercall::HypercallError> {
    let mut rax = call.number();
    match hypercall_kind() {
        // SAFETY: VMMCALL traps to Taproot, which follows the ABI in
        // `taproot_guest_abi::hypercall`: only rax changes. It may change guest memory
        // (DISCARD_PAGE), hence no `nomem`.
        1 => unsafe {
            asm!("vmmcall", inout("rax") rax, in("rdi") args[0], in("rsi") args[1], in("rdx") args[2], options(nostack));
        },
        // SAFETY: as above, with VMCALL on Intel.
        2 => unsafe {
            asm!("vmcall", inout("rax") rax, in("rdi") args[0], in("rsi") args[1], in("rdx") args[2], options(nostack));
        },
        _ => return Err(hypercall::HypercallError::UnknownHypercall),
    }
    hypercall::decode_result(rax)
}

/// Reads CR0.
#[must_use]
pub fn read_cr0() -> u64 {
    let value;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Writes CR0.
///
/// # Safety
/// `value` must keep protected mode and paging on and be a valid CR0.
pub unsafe fn write_cr0(value: u64) {
    // SAFETY: the caller keeps CR0 valid.
    unsafe { asm!("mov cr0, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Reads CR4.
#[must_use]
pub fn read_cr4() -> u64 {
    let value;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Writes CR4.
///
/// # Safety
/// `value` must keep PAE on and be a valid CR4.
pub unsafe fn write_cr4(value: u64) {
    // SAFETY: the caller keeps CR4 valid.
    unsafe { asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// CR4.OSFXSR, CR4.OSXMMEXCPT, CR4.OSXSAVE (SDM Vol. 3A §2.5): SSE, #XM, XSAVE/XSETBV.
pub const CR4_OSFXSR: u64 = 1 << 9;
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// CPUID.01h:ECX: XSAVE (bit 26), OSXSAVE (bit 27), AVX (bit 28).
pub const CPUID1_ECX_XSAVE: u32 = 1 << 26;
pub const CPUID1_ECX_OSXSAVE: u32 = 1 << 27;
pub const CPUID1_ECX_AVX: u32 = 1 << 28;

/// XCR0, read with XGETBV.
///
/// # Safety
/// CR4.OSXSAVE must be set.
#[must_use]
pub unsafe fn xcr0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller set CR4.OSXSAVE; XGETBV of XCR0 only reads it.
    unsafe { asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    ((hi as u64) << 32) | lo as u64
}

/// Writes XCR `index` with XSETBV (3 bytes: 0F 01 D1, which a #GP handler may skip).
///
/// # Safety
/// CR4.OSXSAVE must be set, and `value` valid or a #GP handler installed.
pub unsafe fn xsetbv(index: u32, value: u64) {
    // SAFETY: as the caller promises.
    unsafe {
        asm!("xsetbv", in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack))
    };
}

/// The time-stamp counter.
#[must_use]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Whether the TSC is invariant (CPUID.80000007h:EDX[8]), the condition for cycle counts
/// to mean anything.
#[must_use]
pub fn has_invariant_tsc() -> bool {
    cpuid_regs(0x8000_0000)[0] >= 0x8000_0007 && cpuid_regs(0x8000_0007)[3] & (1 << 8) != 0
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // Take the console even if the panicking vCPU held it.
    CONSOLE_LOCK.store(false, Ordering::Release);
    crate::println!("guest panic: {info}");
    exit(status::PANIC)
}
