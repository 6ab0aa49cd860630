//! The contract between Taproot and its child guests, defined once and used by both sides:
//! the hypervisor (device model, CPUID policy, hypercall dispatch, loader) and the guest
//! images in `guest-images/`.
//!
//! - [`port`]: the I/O ports the device model answers.
//! - [`hypercall`]: numbers, arguments and results of VMMCALL (AMD) / VMCALL (Intel).
//! - [`cpuid`]: the hypervisor leaves at 0x4000_0000 (signature, features, timing).
//! - [`boot`]: the registers every vCPU of a guest starts with.
#![no_std]
#![deny(unsafe_code)]

/// I/O ports of the device model.
pub mod port {
    /// First register of the 16550 UART (COM1): THR/RBR/DLL at +0 ... SCR at +7.
    pub const COM1_BASE: u16 = 0x3F8;
    /// Number of registers of the 16550 UART.
    pub const COM1_LEN: u16 = 8;

    /// Exit port, compatible with QEMU's `isa-debug-exit` device (`iobase=0xf4`). A write
    /// of `value` ends the VM; Taproot reports `status = value` (QEMU, where the same
    /// guest can run directly, ends its own process with `value * 2 + 1`, see
    /// [`qemu_process_status`]).
    pub const DEBUG_EXIT: u16 = 0xF4;

    /// Debug/timestamp port (the classic POST-code port). Each write is appended, with the
    /// time of the exit, to the VM's event log: boot-time measurement from inside a guest.
    pub const DEBUG_EVENT: u16 = 0x80;

    /// The exit status QEMU's `isa-debug-exit` gives its process for a write of `value`.
    #[must_use]
    pub const fn qemu_process_status(value: u32) -> u64 {
        (value as u64) * 2 + 1
    }

    /// Whether `port` is one of the UART's registers.
    #[must_use]
    pub const fn is_com1(port: u16) -> bool {
        port >= COM1_BASE && port < COM1_BASE + COM1_LEN
    }
}

/// Exit statuses the guest images use by convention.
pub mod status {
    /// Success.
    pub const OK: u32 = 0;
    /// A check inside the guest failed (for example a memory pattern mismatch).
    pub const FAILED: u32 = 1;
    /// The guest panicked (the same status Rust's test harness and libos use).
    pub const PANIC: u32 = 101;
    /// The guest's runtime could not start this vCPU (for example an index beyond the
    /// stacks it has).
    pub const BAD_BOOT: u32 = 102;
}

/// Hypercalls: VMMCALL on AMD SVM, VMCALL on Intel VMX (CPUID leaf
/// [`cpuid::FEATURES_LEAF`] tells the guest which one, see
/// [`cpuid::FEATURE_HYPERCALL_VMMCALL`]).
///
/// Registers: `rax` = number, `rdi`, `rsi`, `rdx` = arguments; the result comes back in
/// `rax` (see [`encode_result`]); every other register is preserved. The hypervisor
/// advances `rip` past the 3-byte instruction before it resumes the guest.
pub mod hypercall {
    use core::fmt;

    /// A hypercall number (the value of `rax` at VMMCALL/VMCALL).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[repr(u64)]
    pub enum Hypercall {
        /// `EXIT(status)`: ends the VM with `status` (as a write to the exit port does).
        /// Never returns.
        Exit = 1,
        /// `SWITCH_ADDRESS_SPACE(as_id)`: this vCPU continues in address space `as_id`
        /// ([`ADDRESS_SPACE_NORMAL`] or [`ADDRESS_SPACE_ALTERNATE`]). Both address spaces
        /// map the VM's memory slots (like KVM's SMM address space, which sees the normal
        /// slots plus its own), so the instruction after the hypercall is fetched as
        /// before; the TDP root, however, is a different one.
        SwitchAddressSpace = 2,
        /// `RESET_VCPU`: resets this vCPU as INIT would and restarts it at the guest's
        /// entry with the boot registers of its first start (see [`crate::boot`]). Memory
        /// is untouched, so a guest can tell a restart from a first start. Never returns.
        ResetVcpu = 3,
        /// `DISCARD_PAGE(gpa)`: the hypervisor zaps the 4 KiB guest page at `gpa` (which
        /// must be page-aligned and inside a memory slot) and backs it with fresh zeroed
        /// memory, synchronously: when the call returns, every vCPU of the VM, including
        /// ones running in the guest without exiting, reads zeroes there.
        DiscardPage = 4,
        /// `VCPU_COUNT`: returns the number of vCPUs of the VM.
        VcpuCount = 5,
        /// `LOG_EVENT(value)`: appends `value` with a timestamp to the VM's event log.
        LogEvent = 6,
    }

    /// The normal address space.
    pub const ADDRESS_SPACE_NORMAL: u64 = 0;
    /// The alternate address space (SMM-like).
    pub const ADDRESS_SPACE_ALTERNATE: u64 = 1;
    /// Number of address spaces.
    pub const ADDRESS_SPACE_COUNT: u64 = 2;

    /// Every hypercall, for tables and tests.
    pub const ALL: [Hypercall; 6] = [
        Hypercall::Exit,
        Hypercall::SwitchAddressSpace,
        Hypercall::ResetVcpu,
        Hypercall::DiscardPage,
        Hypercall::VcpuCount,
        Hypercall::LogEvent,
    ];

    impl Hypercall {
        /// The hypercall with number `rax`, if there is one.
        #[must_use]
        pub const fn from_number(rax: u64) -> Option<Self> {
            Some(match rax {
                1 => Self::Exit,
                2 => Self::SwitchAddressSpace,
                3 => Self::ResetVcpu,
                4 => Self::DiscardPage,
                5 => Self::VcpuCount,
                6 => Self::LogEvent,
                _ => return None,
            })
        }

        /// The number the guest puts in `rax`.
        #[must_use]
        pub const fn number(self) -> u64 {
            self as u64
        }

        /// Its name, as used in exit statistics.
        #[must_use]
        pub const fn name(self) -> &'static str {
            match self {
                Self::Exit => "exit",
                Self::SwitchAddressSpace => "switch_address_space",
                Self::ResetVcpu => "reset_vcpu",
                Self::DiscardPage => "discard_page",
                Self::VcpuCount => "vcpu_count",
                Self::LogEvent => "log_event",
            }
        }
    }

    /// Why a hypercall failed. In `rax` as the negated code, so errors are the values
    /// `-4095..=-1` (as with Linux system calls) and every other value is a success.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[repr(u64)]
    pub enum HypercallError {
        /// No hypercall has this number.
        UnknownHypercall = 1,
        /// An argument is out of range (an address space that does not exist, an
        /// unaligned gpa, ...).
        InvalidArgument = 2,
        /// The gpa is not inside any memory slot.
        NotMapped = 3,
    }

    /// Highest error code; `rax` values `-(MAX_ERROR)..=-1` are errors.
    pub const MAX_ERROR: u64 = 4095;

    impl HypercallError {
        const fn from_code(code: u64) -> Option<Self> {
            Some(match code {
                1 => Self::UnknownHypercall,
                2 => Self::InvalidArgument,
                3 => Self::NotMapped,
                _ => return None,
            })
        }
    }

    impl fmt::Display for HypercallError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(match self {
                Self::UnknownHypercall => "unknown hypercall",
                Self::InvalidArgument => "invalid argument",
                Self::NotMapped => "address not in any memory slot",
            })
        }
    }

    /// The `rax` value the hypervisor returns for `result`. Successful values must be
    /// below `-MAX_ERROR` (they are counts and zeroes in practice); larger ones are an
    /// error of the hypervisor and are returned as `InvalidArgument`.
    #[must_use]
    pub const fn encode_result(result: Result<u64, HypercallError>) -> u64 {
        match result {
            Ok(value) if value <= u64::MAX - MAX_ERROR => value,
            Ok(_) => (HypercallError::InvalidArgument as u64).wrapping_neg(),
            Err(error) => (error as u64).wrapping_neg(),
        }
    }

    /// What a guest makes of the `rax` it got back. An error code this ABI version does
    /// not know is reported as `Ok` of the raw value only if it lies outside the error
    /// range; inside it, it becomes `InvalidArgument`.
    pub const fn decode_result(rax: u64) -> Result<u64, HypercallError> {
        if rax > u64::MAX - MAX_ERROR {
            match HypercallError::from_code(rax.wrapping_neg()) {
                Some(error) => Err(error),
                None => Err(HypercallError::InvalidArgument),
            }
        } else {
            Ok(rax)
        }
    }
}

/// The hypervisor's CPUID leaves (Intel SDM Vol. 2A, CPUID: leaves 0x4000_0000-0x4FFF_FFFF
/// are "invalid" on real CPUs and by convention belong to the hypervisor).
pub mod cpuid {
    /// Signature leaf: `eax` = highest hypervisor leaf, `ebx`/`ecx`/`edx` = [`SIGNATURE`].
    pub const SIGNATURE_LEAF: u32 = 0x4000_0000;
    /// Feature leaf: `eax` = feature bits, `ebx` = [`ABI_VERSION`], `ecx` = `edx` = 0.
    pub const FEATURES_LEAF: u32 = 0x4000_0001;
    /// Timing leaf, the generic convention VMware proposed (lwn.net/Articles/301888) and
    /// ACRN, illumos and others read from any hypervisor whose [`SIGNATURE_LEAF`] `eax`
    /// reaches it (Linux, `arch/x86/kernel/cpu/vmware.c`, under VMware only): `eax` = the
    /// TSC frequency in kHz, `ebx` = the local APIC timer's bus frequency in kHz, `ecx` =
    /// `edx` = 0. The guest TSC runs at this rate, so a guest need not calibrate it.
    pub const TIMING_LEAF: u32 = 0x4000_0010;
    /// Highest hypervisor leaf. Leaves between [`FEATURES_LEAF`] and [`TIMING_LEAF`] read
    /// as zeroes.
    pub const MAX_LEAF: u32 = TIMING_LEAF;
    /// Last leaf of the hypervisor range (leaves above [`MAX_LEAF`] read as zeroes).
    pub const RANGE_END: u32 = 0x4000_00FF;

    /// The 12-byte signature in `ebx`, `ecx`, `edx` (in that order, as KVM's "KVMKVMKVM").
    pub const SIGNATURE: [u8; 12] = *b"TaprootTaprt";

    /// Feature bit: hypercalls use VMMCALL (AMD SVM); clear: VMCALL (Intel VMX).
    pub const FEATURE_HYPERCALL_VMMCALL: u32 = 1 << 0;

    /// Version of this ABI.
    pub const ABI_VERSION: u32 = 1;

    /// `ebx`, `ecx`, `edx` of the signature leaf.
    #[must_use]
    pub const fn signature_regs() -> [u32; 3] {
        let s = SIGNATURE;
        [
            u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
            u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
            u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
        ]
    }

    /// Whether `ebx`, `ecx`, `edx` of leaf [`SIGNATURE_LEAF`] name Taproot.
    #[must_use]
    pub const fn is_taproot(ebx: u32, ecx: u32, edx: u32) -> bool {
        let [b, c, d] = signature_regs();
        ebx == b && ecx == c && edx == d
    }
}

/// The registers every vCPU of a guest starts with.
///
/// Every vCPU starts at the same entry, at the same time (no INIT-SIPI dance), with:
/// - `esi` = its index, `0..count`;
/// - `edi` = the number of vCPUs;
///
/// in addition to what the boot format defines:
/// - PVH (32-bit protected mode, paging off): `ebx` = gpa of `hvm_start_info`;
/// - multiboot1 (32-bit protected mode, paging off): `eax` = [`MULTIBOOT1_BOOT_MAGIC`],
///   `ebx` = gpa of the multiboot information;
/// - flat binary (16-bit real mode): nothing else.
///
/// A Linux bzImage ([`boot::linux`]) starts as the Linux boot protocol says instead: 64-bit
/// mode on the loader's identity map, `rsi` = gpa of `boot_params`, no `esi`/`edi`
/// convention.
///
/// A vCPU reset through [`hypercall::Hypercall::ResetVcpu`] starts again with the same
/// registers.
pub mod boot {
    /// Multiboot specification 0.6.96 §3.1.1: the magic of the header in the image.
    pub const MULTIBOOT1_HEADER_MAGIC: u32 = 0x1BAD_B002;
    /// Multiboot specification 0.6.96 §3.2: the magic in `eax` at entry.
    pub const MULTIBOOT1_BOOT_MAGIC: u32 = 0x2BAD_B002;
    /// Multiboot specification 0.6.96 §3.1.1: the header lies in the first 8 KiB.
    pub const MULTIBOOT1_SEARCH_LEN: usize = 8192;

    /// Xen `elfnote.h`: `XEN_ELFNOTE_PHYS32_ENTRY`, the PVH 32-bit entry note type.
    pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    /// Xen `arch-x86/hvm/start_info.h`: `XEN_HVM_START_MAGIC_VALUE`.
    pub const HVM_START_MAGIC: u32 = 0x336E_C578;

    /// The ACPI address range type of RAM (ACPI 6.5 §15.1, Table 15.1), which both the PVH
    /// memory map (`XEN_HVM_MEMMAP_TYPE_RAM`) and the multiboot1 memory map use.
    pub const MEMORY_TYPE_RAM: u32 = 1;
    /// The same table: reserved.
    pub const MEMORY_TYPE_RESERVED: u32 = 2;

    /// Xen `arch-x86/hvm/start_info.h`, `struct hvm_start_info` (version 1): its size and
    /// byte offsets, written by the loader and read by the guests.
    pub mod hvm_start_info {
        pub const SIZE: usize = 56;
        pub const MAGIC: usize = 0;
        pub const VERSION: usize = 4;
        /// How many modules `MODLIST_PADDR` lists (u32); the first is the initrd.
        pub const NR_MODULES: usize = 12;
        /// Gpa of an array of `struct hvm_modlist_entry` (u64).
        pub const MODLIST_PADDR: usize = 16;
        pub const CMDLINE_PADDR: usize = 24;
        /// The ACPI RSDP's gpa (0: none).
        pub const RSDP_PADDR: usize = 32;
        pub const MEMMAP_PADDR: usize = 40;
        pub const MEMMAP_ENTRIES: usize = 48;
        /// `struct hvm_memmap_table_entry`: addr u64, size u64, type u32, reserved u32.
        pub const MEMMAP_ENTRY_SIZE: usize = 24;
        pub const MEMMAP_ENTRY_ADDR: usize = 0;
        pub const MEMMAP_ENTRY_LEN: usize = 8;
        pub const MEMMAP_ENTRY_TYPE: usize = 16;
        /// `struct hvm_modlist_entry`: paddr u64, size u64, cmdline_paddr u64, reserved u64.
        pub const MODLIST_ENTRY_SIZE: usize = 32;
        pub const MODLIST_ENTRY_PADDR: usize = 0;
        pub const MODLIST_ENTRY_LEN: usize = 8;
    }

    /// The Linux/x86 boot protocol (Linux `Documentation/arch/x86/boot.rst`, and
    /// `arch/x86/include/uapi/asm/bootparam.h`): the setup header at the start of a bzImage
    /// and `struct boot_params` (the "zero page") that the loader fills and passes in `rsi`
    /// to the 64-bit entry. The setup header sits at the same offsets in both.
    pub mod linux {
        /// Size of `struct boot_params`.
        pub const BOOT_PARAMS_SIZE: usize = 4096;
        /// The setup header: its first and (at most) last byte + 1 in `boot_params`.
        pub const SETUP_HEADER: usize = 0x1F1;
        pub const SETUP_HEADER_MAX_END: usize = 0x290;
        /// `u8`: 512-byte sectors of real-mode setup code after the boot sector (0: 4).
        pub const SETUP_SECTS: usize = 0x1F1;
        /// `u16` [`BOOT_FLAG_MAGIC`].
        pub const BOOT_FLAG: usize = 0x1FE;
        pub const BOOT_FLAG_MAGIC: u16 = 0xAA55;
        /// `u8` at 0x201, the second byte of the `jump` instruction: the setup header ends
        /// at 0x202 + this.
        pub const JUMP_OFFSET: usize = 0x201;
        /// `u32` [`HEADER_MAGIC`] ("HdrS").
        pub const HEADER: usize = 0x202;
        pub const HEADER_MAGIC: u32 = 0x5372_6448;
        /// `u16` protocol version, major << 8 | minor.
        pub const VERSION: usize = 0x206;
        /// `u8` boot loader type; 0xFF: undefined.
        pub const TYPE_OF_LOADER: usize = 0x210;
        pub const LOADER_UNDEFINED: u8 = 0xFF;
        /// `u8` flags; bit 0 LOADED_HIGH: the protected-mode code loads at 1 MiB or above.
        pub const LOADFLAGS: usize = 0x211;
        pub const LOADED_HIGH: u8 = 1 << 0;
        /// `u32` the protected-mode kernel's load address.
        pub const CODE32_START: usize = 0x214;
        /// `u32` initrd address and size (upper halves in [`EXT_RAMDISK_IMAGE`] and
        /// [`EXT_RAMDISK_SIZE`]).
        pub const RAMDISK_IMAGE: usize = 0x218;
        pub const RAMDISK_SIZE: usize = 0x21C;
        /// `u32` the command line's address (upper half in [`EXT_CMD_LINE_PTR`]).
        pub const CMD_LINE_PTR: usize = 0x228;
        /// `u32` highest address the initrd's last byte may have.
        pub const INITRD_ADDR_MAX: usize = 0x22C;
        /// `u32` alignment a relocatable kernel needs.
        pub const KERNEL_ALIGNMENT: usize = 0x230;
        /// `u8` whether the kernel may be loaded elsewhere than its preferred address.
        pub const RELOCATABLE_KERNEL: usize = 0x234;
        /// `u16` bit 0 XLF_KERNEL_64: a 64-bit entry at load address + 0x200; bit 1
        /// XLF_CAN_BE_LOADED_ABOVE_4G: kernel, boot_params, command line and initrd may be
        /// above 4 GiB.
        pub const XLOADFLAGS: usize = 0x236;
        pub const XLF_KERNEL_64: u16 = 1 << 0;
        pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
        /// `u32` longest command line, without its NUL.
        pub const CMDLINE_SIZE: usize = 0x238;
        /// `u64` the address a relocatable kernel prefers.
        pub const PREF_ADDRESS: usize = 0x258;
        /// `u32` bytes from the load address the kernel needs before it relocates itself.
        pub const INIT_SIZE: usize = 0x260;
        /// Offset of the 64-bit entry from the protected-mode kernel's load address.
        pub const ENTRY64_OFFSET: u64 = 0x200;

        /// `u64` the ACPI RSDP's address (0: the kernel searches for it).
        pub const ACPI_RSDP_ADDR: usize = 0x070;
        pub const EXT_RAMDISK_IMAGE: usize = 0x0C0;
        pub const EXT_RAMDISK_SIZE: usize = 0x0C4;
        pub const EXT_CMD_LINE_PTR: usize = 0x0C8;
        /// `u8` entries in [`E820_TABLE`].
        pub const E820_ENTRIES: usize = 0x1E8;
        /// `struct boot_e820_entry[128]`: addr u64, size u64, type u32 (packed, 20 bytes).
        pub const E820_TABLE: usize = 0x2D0;
        pub const E820_ENTRY_SIZE: usize = 20;
        pub const E820_MAX_ENTRIES: usize = 128;

        /// The GDT selectors the 64-bit entry expects: `__BOOT_CS` (flat 64-bit code) and
        /// `__BOOT_DS` (flat data).
        pub const BOOT_CS: u16 = 0x10;
        pub const BOOT_DS: u16 = 0x18;
    }

    /// Multiboot specification 0.6.96 §3.3, the boot information: the byte offsets of the
    /// fields Taproot fills in and the flag bits that make them valid.
    pub mod multiboot_info {
        /// Up to and including `boot_loader_name` (offset 64) and the APM/VBE fields after
        /// it, which stay zero.
        pub const SIZE: usize = 88;
        pub const FLAGS: usize = 0;
        pub const MEM_LOWER: usize = 4;
        pub const MEM_UPPER: usize = 8;
        pub const CMDLINE: usize = 16;
        pub const MMAP_LENGTH: usize = 44;
        pub const MMAP_ADDR: usize = 48;
        pub const BOOT_LOADER_NAME: usize = 64;

        pub const FLAG_MEM: u32 = 1 << 0;
        pub const FLAG_CMDLINE: u32 = 1 << 2;
        pub const FLAG_MMAP: u32 = 1 << 6;
        pub const FLAG_BOOT_LOADER_NAME: u32 = 1 << 9;

        /// An mmap entry: `size` (u32, the bytes after it), base u64, length u64, type u32.
        pub const MMAP_ENTRY_SIZE_FIELD: u32 = 20;
        pub const MMAP_ENTRY_BASE: usize = 4;
        pub const MMAP_ENTRY_LEN: usize = 12;
        pub const MMAP_ENTRY_TYPE: usize = 20;
    }
}

#[cfg(test)]
mod tests {
    use super::hypercall::{self, Hypercall, HypercallError};
    use super::*;

    #[test]
    fn hypercall_numbers_round_trip_and_are_distinct() {
        for (i, call) in hypercall::ALL.iter().enumerate() {
            assert_eq!(Hypercall::from_number(call.number()), Some(*call));
            for other in &hypercall::ALL[i + 1..] {
                assert_ne!(call.number(), other.number());
                assert_ne!(call.name(), other.name());
            }
        }
        assert_eq!(Hypercall::from_number(0), None);
        assert_eq!(Hypercall::from_number(u64::MAX), None);
    }

    #[test]
    fn hypercall_results_round_trip() {
        for value in [0, 1, 64, u64::MAX - hypercall::MAX_ERROR] {
            assert_eq!(hypercall::decode_result(hypercall::encode_result(Ok(value))), Ok(value));
        }
        for error in
            [HypercallError::UnknownHypercall, HypercallError::InvalidArgument, HypercallError::NotMapped]
        {
            let rax = hypercall::encode_result(Err(error));
            assert!(rax > u64::MAX - hypercall::MAX_ERROR);
            assert_eq!(hypercall::decode_result(rax), Err(error));
        }
        // A success value inside the error range cannot be encoded as a success.
        assert!(hypercall::encode_result(Ok(u64::MAX)) > u64::MAX - hypercall::MAX_ERROR);
        // An error code this version does not know still reads as an error.
        assert_eq!(hypercall::decode_result(100u64.wrapping_neg()), Err(HypercallError::InvalidArgument));
    }

    #[test]
    fn signature_regs_spell_the_signature() {
        let regs = cpuid::signature_regs();
        let mut bytes = [0u8; 12];
        for (chunk, reg) in bytes.chunks_exact_mut(4).zip(regs) {
            chunk.copy_from_slice(&reg.to_le_bytes());
        }
        assert_eq!(&bytes, b"TaprootTaprt");
        assert!(cpuid::is_taproot(regs[0], regs[1], regs[2]));
        assert!(!cpuid::is_taproot(regs[0], regs[2], regs[1]));
    }

    #[test]
    fn qemu_status_matches_isa_debug_exit() {
        assert_eq!(port::qemu_process_status(0), 1);
        assert_eq!(port::qemu_process_status(50), 101);
        assert_eq!(port::qemu_process_status(u32::MAX), 2 * u64::from(u32::MAX) + 1);
        assert!(port::is_com1(0x3F8) && port::is_com1(0x3FF));
        assert!(!port::is_com1(0x3F7) && !port::is_com1(0x400));
    }
}
