//! `mmio`: the device pages and string port I/O through the hypervisor's instruction
//! emulator, in 64-bit mode (vCPU 0; the others halt). `test=` picks:
//! - `forms` (default): the local APIC's version register (0xFEE00030) read with
//!   `mov eax, [moffs64]`, `mov eax, [r8 + disp]`, `movzx` (byte and word), `cmp` and
//!   `test` against memory; its TPR (0xFEE00080) written with `mov [mem], imm`,
//!   `mov [mem], reg`, `or`, `and`, `add`, `sub`, `xor` with an immediate, `stosd` and
//!   `movsd` from RAM, each read back; the I/O APIC's ID and version through IOREGSEL and
//!   IOWIN; `movsd` from the APIC page to an unmapped page, which must raise #PF (CR2,
//!   error code) without touching the device; then `rep outsb` of a line to the UART and
//!   `rep insb` of fw_cfg's signature.
//!   Each value prints as `mmio: <check> <value> ok` (or `FAILED`, expected value); the VM
//!   ends with status 0, or the number of the first check that failed;
//! - `unsupported`: prints `mmio: xchg on the TPR next` and executes
//!   `xchg [r8 + 0x80], eax` (bytes 41 87 80 80 00 00 00) on the APIC page, which the
//!   emulator does not handle: the VM must end `crashed` with those bytes.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_images::guest_main!(guest::guest);

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, naked_asm};
    use core::sync::atomic::{AtomicU64, Ordering};
    use guest_images::logic::cmdline_value;
    use guest_images::{println, rt};

    const LAPIC: u64 = 0xFEE0_0000;
    const IOAPIC: u64 = 0xFEC0_0000;
    /// The model's version register: version 0x14, highest LVT index 5 (as KVM's).
    const LAPIC_VERSION: u32 = 0x0005_0014;
    /// 82093AA-style: version 0x20, 24 pins (highest redirection entry 23).
    const IOAPIC_VERSION: u32 = 0x0017_0020;
    const COM1: u16 = 0x3F8;
    const FW_CFG_SELECTOR: u16 = 0x510;
    const FW_CFG_DATA: u16 = 0x511;
    const PF_VECTOR: usize = 14;
    /// A linear address the runtime leaves unmapped (PML4 entry 1).
    const UNMAPPED: u64 = 0x80_0000_0000;
    /// #PF error code: a write to a page that is not present, at CPL 0 (SDM Vol. 3A §4.7).
    const PF_WRITE_NOT_PRESENT: u64 = 0b010;

    static PF_CR2: AtomicU64 = AtomicU64::new(0);
    static PF_ERROR: AtomicU64 = AtomicU64::new(u64::MAX);
    static PF_COUNT: AtomicU64 = AtomicU64::new(0);
    /// 32 gates of 16 bytes: the exceptions (SDM Vol. 3A §7.14.1).
    static IDT: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

    /// The checks so far and the first that failed.
    struct Checks {
        count: u32,
        first_failure: u32,
    }

    impl Checks {
        fn check(&mut self, name: &str, value: u64, expected: u64) {
            self.count += 1;
            if value == expected {
                println!("mmio: {name} {value:#x} ok");
            } else {
                println!("mmio: {name} {value:#x} FAILED (expected {expected:#x})");
                if self.first_failure == 0 {
                    self.first_failure = self.count;
                }
            }
        }
    }

    pub fn guest(boot: &rt::Boot) -> u32 {
        if boot.vcpu_index != 0 {
            rt::halt_forever();
        }
        match cmdline_value(boot.cmdline(), "test").unwrap_or("forms") {
            "unsupported" => xchg_on_the_tpr(),
            _ => {
                let mut checks = Checks { count: 0, first_failure: 0 };
                lapic_reads(&mut checks);
                tpr_writes(&mut checks);
                ioapic(&mut checks);
                page_fault(&mut checks);
                string_io(&mut checks);
                println!("mmio: {} checks, first failure {}", checks.count, checks.first_failure);
                checks.first_failure
            }
        }
    }

    fn lapic_reads(checks: &mut Checks) {
        let version = u64::from(LAPIC_VERSION);
        let (abs, based, byte, word): (u32, u32, u32, u32);
        let (cmp_equal, test_nonzero): (u8, u8);
        // SAFETY: loads from the APIC page, identity-mapped by the runtime; no memory of
        // the program changes.
        unsafe {
            asm!(
                // mov eax, [0xFEE00030] (A1 + moffs64: a disp32 would sign-extend)
                ".byte 0xA1",
                ".quad 0xFEE00030",
                "mov {based:e}, dword ptr [r8 + 0x30]",
                "movzx {byte:e}, byte ptr [r8 + 0x30]",
                "movzx {word:e}, word ptr [r8 + 0x32]",
                "cmp dword ptr [r8 + 0x30], {expected:e}",
                "sete {cmp_equal}",
                "test dword ptr [r8 + 0x30], 0xFF",
                "setnz {test_nonzero}",
                in("r8") LAPIC,
                expected = in(reg) LAPIC_VERSION,
                out("eax") abs,
                based = out(reg) based,
                byte = out(reg) byte,
                word = out(reg) word,
                cmp_equal = out(reg_byte) cmp_equal,
                test_nonzero = out(reg_byte) test_nonzero,
                options(nostack, readonly),
            );
        }
        checks.check("lapic version mov eax,[moffs64]", abs.into(), version);
        checks.check("lapic version mov r32,[r8+0x30]", based.into(), version);
        checks.check("lapic version movzx r32,byte", byte.into(), version & 0xFF);
        checks.check("lapic version movzx r32,word [+2]", word.into(), version >> 16);
        checks.check("lapic version cmp [mem],r32 sets ZF", cmp_equal.into(), 1);
        checks.check("lapic version test [mem],imm clears ZF", test_nonzero.into(), 1);
    }

    fn tpr() -> u64 {
        let value: u32;
        // SAFETY: a load from the APIC page.
        unsafe {
            asm!("mov {v:e}, dword ptr [{a}]", a = in(reg) LAPIC + 0x80, v = out(reg) value, options(nostack, readonly))
        };
        value.into()
    }

    /// One instruction on the TPR, `[r8 + 0x80]` with r8 = the APIC page and ECX = 0x30.
    macro_rules! on_tpr {
        ($instruction:literal) => {
            // SAFETY: an access to the TPR on the identity-mapped APIC page.
            unsafe { asm!($instruction, in("r8") LAPIC, in("ecx") 0x30u32, options(nostack)) }
        };
    }

    fn tpr_writes(checks: &mut Checks) {
        on_tpr!("mov dword ptr [r8 + 0x80], 0x20");
        checks.check("tpr after mov [mem],imm", tpr(), 0x20);
        on_tpr!("mov dword ptr [r8 + 0x80], ecx");
        checks.check("tpr after mov [mem],r32", tpr(), 0x30);
        on_tpr!("or dword ptr [r8 + 0x80], 0x40");
        checks.check("tpr after or [mem],imm", tpr(), 0x70);
        on_tpr!("and dword ptr [r8 + 0x80], 0xF0");
        checks.check("tpr after and [mem],imm", tpr(), 0x70);
        on_tpr!("add dword ptr [r8 + 0x80], 0x10");
        checks.check("tpr after add [mem],imm", tpr(), 0x80);
        on_tpr!("sub dword ptr [r8 + 0x80], 0x20");
        checks.check("tpr after sub [mem],imm", tpr(), 0x60);
        on_tpr!("xor dword ptr [r8 + 0x80], 0x0F");
        checks.check("tpr after xor [mem],imm", tpr(), 0x6F);
        // SAFETY: STOSD stores EAX to the TPR and moves RDI past it (declared).
        unsafe {
            asm!("cld", "stosd", inout("rdi") LAPIC + 0x80 => _, in("eax") 0x50u32, options(nostack));
        }
        checks.check("tpr after stosd", tpr(), 0x50);
        let source: u32 = 0x90;
        // SAFETY: MOVSD copies `source` to the TPR and moves RSI and RDI (declared).
        unsafe {
            asm!(
                "cld",
                "movsd",
                inout("rsi") &raw const source => _,
                inout("rdi") LAPIC + 0x80 => _,
                options(nostack),
            );
        }
        checks.check("tpr after movsd from ram", tpr(), 0x90);
        on_tpr!("mov dword ptr [r8 + 0x80], 0");
    }

    fn ioapic(checks: &mut Checks) {
        let read = |index: u32| -> u64 {
            let value: u32;
            // SAFETY: IOREGSEL and IOWIN on the I/O APIC page.
            unsafe {
                asm!(
                    "mov dword ptr [r8], {index:e}",
                    "mov {value:e}, dword ptr [r8 + 0x10]",
                    in("r8") IOAPIC,
                    index = in(reg) index,
                    value = out(reg) value,
                    options(nostack),
                );
            }
            value.into()
        };
        checks.check("ioapic id", read(0), 0);
        checks.check("ioapic version", read(1), IOAPIC_VERSION.into());
    }

    /// `movsd` from the APIC page to an unmapped page: the device read exits, and the
    /// emulator finds the store would fault first, as the CPU would: #PF with the store's
    /// address in CR2 and a write error code, the device untouched.
    fn page_fault(checks: &mut Checks) {
        install_pf_handler();
        let (rsi, rdi): (u64, u64);
        // SAFETY: MOVSD faults on the store (the handler resumes after it); RSI and RDI
        // are read back.
        unsafe {
            asm!(
                "cld",
                "movsd",
                inout("rsi") LAPIC + 0x30 => rsi,
                inout("rdi") UNMAPPED => rdi,
                options(nostack),
            );
        }
        checks.check("#PF count after movsd to an unmapped page", PF_COUNT.load(Ordering::Relaxed), 1);
        checks.check("#PF cr2", PF_CR2.load(Ordering::Relaxed), UNMAPPED);
        checks.check("#PF error code", PF_ERROR.load(Ordering::Relaxed), PF_WRITE_NOT_PRESENT);
        checks.check("#PF left rsi", rsi, LAPIC + 0x30);
        checks.check("#PF left rdi", rdi, UNMAPPED);
    }

    fn install_pf_handler() {
        let cs: u16;
        // SAFETY: reading CS has no side effects.
        unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
        let offset = pf_handler as *const () as u64;
        // Offset 15:0, selector, present 64-bit interrupt gate (0x8E), offset 31:16; then
        // offset 63:32.
        let low = (offset & 0xFFFF) | u64::from(cs) << 16 | 0x8E << 40 | ((offset >> 16) & 0xFFFF) << 48;
        IDT[PF_VECTOR * 2].store(low, Ordering::Relaxed);
        IDT[PF_VECTOR * 2 + 1].store(offset >> 32, Ordering::Relaxed);
        let mut pointer = [0u8; 10];
        pointer[..2].copy_from_slice(&((IDT.len() * 8 - 1) as u16).to_le_bytes());
        pointer[2..].copy_from_slice(&(IDT.as_ptr() as u64).to_le_bytes());
        // SAFETY: the IDT is static and its one gate points at this image's handler.
        unsafe { asm!("lidt [{}]", in(reg) pointer.as_ptr(), options(readonly, nostack, preserves_flags)) };
    }

    /// #PF: records CR2 and the error code, skips the 1-byte MOVSD that raised it.
    #[unsafe(naked)]
    extern "C" fn pf_handler() {
        naked_asm!(
            "push rax",
            "mov rax, [rsp + 8]",
            "mov [rip + {error}], rax",
            "mov rax, cr2",
            "mov [rip + {cr2}], rax",
            "lock inc qword ptr [rip + {count}]",
            "add qword ptr [rsp + 16], 1",
            "pop rax",
            "add rsp, 8",
            "iretq",
            error = sym PF_ERROR,
            cr2 = sym PF_CR2,
            count = sym PF_COUNT,
        );
    }

    fn string_io(checks: &mut Checks) {
        let line = b"mmio: rep outsb reached the uart\n";
        // SAFETY: REP OUTSB reads `line`; RSI and RCX are declared clobbered.
        unsafe {
            asm!(
                "cld",
                "rep outsb",
                in("dx") COM1,
                inout("rsi") line.as_ptr() => _,
                inout("rcx") line.len() => _,
                options(nostack, readonly),
            );
        }
        rt::outw(FW_CFG_SELECTOR, 0);
        let mut signature = [0u8; 4];
        // SAFETY: REP INSB writes the 4 bytes of `signature`.
        unsafe {
            asm!(
                "cld",
                "rep insb",
                in("dx") FW_CFG_DATA,
                inout("rdi") signature.as_mut_ptr() => _,
                inout("rcx") signature.len() => _,
                options(nostack),
            );
        }
        checks.check(
            "fw_cfg signature by rep insb",
            u32::from_le_bytes(signature).into(),
            u32::from_le_bytes(*b"QEMU").into(),
        );
    }

    fn xchg_on_the_tpr() -> u32 {
        println!("mmio: xchg on the TPR next");
        // SAFETY: an exchange with the TPR; the hypervisor ends the VM here.
        unsafe {
            asm!("xchg dword ptr [r8 + 0x80], eax", in("r8") LAPIC, inout("eax") 0x10u32 => _, options(nostack))
        };
        println!("mmio: FAILED: the xchg was emulated");
        1
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "mmio is a bare-metal guest: cargo build -p guest-images --target x86_64-unknown-none --release"
    );
}
