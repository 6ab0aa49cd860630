//! `guardrails`: guest state the host must virtualize, one check per `test=`:
//! - `xsetbv`: valid XCR0 values take effect (read back with XGETBV); invalid ones (x87
//!   clear, AVX without SSE, a reserved bit, ECX other than 0) raise #GP(0), caught by
//!   this guest's IDT, and leave XCR0 alone; CPUID's OSXSAVE follows CR4.OSXSAVE;
//! - `breakpoint`: a data breakpoint (DR0, DR7) armed by vCPU 0 survives exits and host
//!   time slices in which vCPU 2 (on the same host CPU with `vcpus=3`) writes other
//!   values to DR0-DR3, and fires (#DB, DR6.B0) on the write;
//! - `cr8`: the last vCPU (vCPU 1 with `vcpus=2`, alone on host CPU 1) writes CR8 = 15,
//!   reads it back and halts; vCPU 0 ends the VM. Were the physical TPR the guest's, host
//!   CPU 1 would take no interrupt again (no timer, no wake-up IPI), and the next VM's
//!   vCPU 1 there would never run.
//! - `cr4`: a MOV to CR4 that sets VMXE (no guest is offered VMX; VMX keeps the bit
//!   host-owned, so the host carries the MOV out) or a reserved bit raises #GP(0) and
//!   leaves CR4 alone, as on a CPU.
//! - `pae`: from long mode down to 32-bit PAE paging and back, as a boot loader or a
//!   32-bit kernel's kexec does: compatibility mode, paging off (long mode ends), LME
//!   off, CR3 = a PAE PDPT, then paging on with CR0.NE toggled in the same MOV (on VMX
//!   that MOV exits, and the host must load the PDPTEs into the VMCS, as the CPU would
//!   from memory), a read through PAE paging, and back to long mode the same way.
//!
//! Prints `guardrails: <test> ok` and ends the VM with status 0, or a `FAILED` line and 1.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_images::guest_main!(guest);

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, naked_asm};
    use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    use guest_images::logic::cmdline_value;
    use guest_images::rt::{CPUID1_ECX_AVX, CPUID1_ECX_OSXSAVE, CPUID1_ECX_XSAVE, CR4_OSFXSR, CR4_OSXSAVE};
    use guest_images::{println, rt};
    use taproot_guest_abi::status;

    const GP_VECTOR: usize = 13;
    const DB_VECTOR: usize = 1;
    /// DR7: L0, R/W0 = 01 (data writes), LEN0 = 11 (four bytes); SDM Vol. 3B §18.2.4.
    const DR7_L0_WRITE_4: u64 = 1 | (0b01 << 16) | (0b11 << 18);
    const DR6_B0: u64 = 1;
    /// Host time slices the armed breakpoint must survive.
    const SLICES: u32 = 10;

    static GP_COUNT: AtomicU64 = AtomicU64::new(0);
    static GP_ERROR: AtomicU64 = AtomicU64::new(u64::MAX);
    static DB_COUNT: AtomicU64 = AtomicU64::new(0);
    static DB_DR6: AtomicU64 = AtomicU64::new(0);
    /// Bumped by vCPU 2 on every turn of its loop; `DONE` stops it.
    static TURNS: AtomicU64 = AtomicU64::new(0);
    static DONE: AtomicBool = AtomicBool::new(false);
    /// The breakpoint's target.
    static TARGET: AtomicU32 = AtomicU32::new(0);

    /// 32 gates of 16 bytes: the exceptions (SDM Vol. 3A §7.14.1).
    static IDT: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

    pub fn guest(boot: &rt::Boot) -> u32 {
        let test = cmdline_value(boot.cmdline(), "test").unwrap_or("xsetbv");
        // The helper is the last vCPU: vCPU 2 of 3 shares host CPU 0 with vCPU 0; vCPU 1 of
        // 2 has host CPU 1 to itself.
        let helper = boot.vcpu_index != 0 && boot.vcpu_index == boot.vcpu_count - 1;
        if boot.vcpu_index != 0 && !helper {
            rt::halt_forever();
        }
        install_idt();
        let passed = match (test, helper) {
            ("breakpoint", true) => clobber_debug_registers(),
            ("cr8", true) => raise_tpr_and_halt(),
            (_, true) => rt::halt_forever(),
            ("xsetbv", false) => xsetbv(),
            ("breakpoint", false) => breakpoint(boot.vcpu_count),
            ("cr8", false) => outlive_a_high_tpr(),
            ("cr4", false) => reserved_cr4_bits(),
            ("pae", false) => pae_paging_round_trip(),
            _ => {
                println!("guardrails: FAILED: unknown test {test:?}");
                false
            }
        };
        DONE.store(true, Ordering::Relaxed);
        if passed {
            println!("guardrails: {test} ok");
            status::OK
        } else {
            status::FAILED
        }
    }

    fn install_idt() {
        let cs: u16;
        // SAFETY: reading CS has no side effects.
        unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
        for (vector, handler) in
            [(GP_VECTOR, gp_handler as *const () as u64), (DB_VECTOR, db_handler as *const () as u64)]
        {
            let offset = handler;
            // Offset 15:0, selector, present 64-bit interrupt gate (0x8E), offset 31:16;
            // then offset 63:32.
            let low = (offset & 0xFFFF) | (cs as u64) << 16 | 0x8E << 40 | ((offset >> 16) & 0xFFFF) << 48;
            IDT[vector * 2].store(low, Ordering::Relaxed);
            IDT[vector * 2 + 1].store(offset >> 32, Ordering::Relaxed);
        }
        let mut pointer = [0u8; 10];
        pointer[..2].copy_from_slice(&((IDT.len() * 8 - 1) as u16).to_le_bytes());
        pointer[2..].copy_from_slice(&(IDT.as_ptr() as u64).to_le_bytes());
        // SAFETY: the IDT is static, its gates point at this image's handlers; every vCPU
        // loads the same table.
        unsafe { asm!("lidt [{}]", in(reg) pointer.as_ptr(), options(readonly, nostack, preserves_flags)) };
    }

    /// #GP: records the error code, skips the 3-byte XSETBV or `mov cr4, rax` (0F 22 E0)
    /// that raised it.
    #[unsafe(naked)]
    extern "C" fn gp_handler() {
        naked_asm!(
            "push rax",
            "mov rax, [rsp + 8]",
            "mov [rip + {error}], rax",
            "lock inc qword ptr [rip + {count}]",
            "add qword ptr [rsp + 16], 3",
            "pop rax",
            "add rsp, 8",
            "iretq",
            error = sym GP_ERROR,
            count = sym GP_COUNT,
        );
    }

    /// #DB (a data breakpoint is a trap: RIP is already past the write): records DR6 and
    /// clears its status bits.
    #[unsafe(naked)]
    extern "C" fn db_handler() {
        naked_asm!(
            "push rax",
            "mov rax, dr6",
            "mov [rip + {dr6}], rax",
            "lock inc qword ptr [rip + {count}]",
            "mov eax, 0xFFFF0FF0",
            "mov dr6, rax",
            "pop rax",
            "iretq",
            dr6 = sym DB_DR6,
            count = sym DB_COUNT,
        );
    }

    fn write_xcr(index: u32, value: u64) {
        // SAFETY: CR4.OSXSAVE is set; an invalid value raises #GP, which `gp_handler`
        // skips.
        unsafe { rt::xsetbv(index, value) };
    }

    fn xcr0() -> u64 {
        // SAFETY: `xsetbv` set CR4.OSXSAVE before any call.
        unsafe { rt::xcr0() }
    }

    fn xsetbv() -> bool {
        let ecx = rt::cpuid_regs(1)[2];
        if ecx & CPUID1_ECX_XSAVE == 0 {
            println!("guardrails: no XSAVE on this CPU");
            return true;
        }
        // CPUID's OSXSAVE mirrors this vCPU's CR4.OSXSAVE (SDM Vol. 2A, CPUID leaf 1).
        let before = ecx & CPUID1_ECX_OSXSAVE != 0;
        // SAFETY: PAE stays on; OSXSAVE exists with CPUID.XSAVE.
        unsafe { rt::write_cr4(rt::read_cr4() | CR4_OSFXSR | CR4_OSXSAVE) };
        let after = rt::cpuid_regs(1)[2] & CPUID1_ECX_OSXSAVE != 0;
        if before || !after {
            println!("guardrails: FAILED: CPUID OSXSAVE {before} before CR4.OSXSAVE, {after} after");
            return false;
        }
        let mut valid = [0b11, 0b111];
        let valid = if ecx & CPUID1_ECX_AVX != 0 { &mut valid[..] } else { &mut valid[..1] };
        for &value in valid.iter() {
            write_xcr(0, value);
            if GP_COUNT.load(Ordering::Relaxed) != 0 || xcr0() != value {
                println!("guardrails: FAILED: XSETBV {value:#x} read back {:#x}", xcr0());
                return false;
            }
        }
        let before = xcr0();
        // x87 clear; AVX without SSE; a reserved bit; XCR 1.
        let invalid: [(u32, u64); 4] = [(0, 0b10), (0, 0b101), (0, 1 << 62 | 0b11), (1, 0b1)];
        for (n, &(index, value)) in invalid.iter().enumerate() {
            write_xcr(index, value);
            let count = GP_COUNT.load(Ordering::Relaxed);
            if count != n as u64 + 1 || GP_ERROR.load(Ordering::Relaxed) != 0 || xcr0() != before {
                println!(
                    "guardrails: FAILED: XSETBV ecx={index} {value:#x}: #GP count {count}, error code {:#x}, XCR0 {:#x}",
                    GP_ERROR.load(Ordering::Relaxed),
                    xcr0()
                );
                return false;
            }
        }
        println!("guardrails: xsetbv valid={valid:x?} invalid={}", invalid.len());
        true
    }

    /// CR4.VMXE and CR4 bit 31 (reserved) each raise #GP(0), and CR4 keeps its value.
    fn reserved_cr4_bits() -> bool {
        const CR4_VMXE: u64 = 1 << 13;
        const CR4_RESERVED_31: u64 = 1 << 31;
        let before = rt::read_cr4();
        for (n, bits) in [CR4_VMXE, CR4_RESERVED_31, CR4_VMXE | CR4_RESERVED_31].into_iter().enumerate() {
            // SAFETY: the value keeps PAE; its extra bit faults (`gp_handler` skips the
            // 3-byte `mov cr4, rax`) or, on a broken host, turns on a mode this guest never
            // uses.
            unsafe { asm!("mov cr4, rax", in("rax") before | bits, options(nostack, preserves_flags)) };
            let (count, error, cr4) =
                (GP_COUNT.load(Ordering::Relaxed), GP_ERROR.load(Ordering::Relaxed), rt::read_cr4());
            if count != n as u64 + 1 || error != 0 || cr4 != before {
                println!(
                    "guardrails: FAILED: CR4 {before:#x} | {bits:#x}: #GP count {count}, error code {error:#x}, CR4 {cr4:#x}"
                );
                return false;
            }
        }
        println!("guardrails: CR4.VMXE and a reserved CR4 bit raise #GP");
        true
    }

    /// The PAE page-directory-pointer table: rt's four page directories (which map
    /// [0, 4 GiB) with 2 MiB pages, an entry format PAE shares), present, no other bit
    /// (bits 2:1 and 8:5 are reserved in a PDPTE: SDM Vol. 3A §4.4.1).
    #[repr(C, align(32))]
    struct Pdpt([AtomicU64; 4]);
    static PAE_PDPT: Pdpt = Pdpt([const { AtomicU64::new(0) }; 4]);
    /// Read through PAE paging.
    static PAE_MARKER: AtomicU64 = AtomicU64::new(0x7061_6520_6f6b);
    /// rt's PML4, for the way back (32-bit code reaches it by absolute address).
    static PAE_PML4: AtomicU64 = AtomicU64::new(0);
    /// Null; 64-bit code 0x08; data 0x10; 32-bit code 0x18 (SDM Vol. 3A §3.4.5).
    static PAE_GDT: [u64; 4] = [0, 0x00209A0000000000, 0x00CF92000000FFFF, 0x00CF9A000000FFFF];

    fn pae_paging_round_trip() -> bool {
        unsafe extern "C" {
            static guest_pml4: u8;
        }
        // rt lays out its tables as PML4, PDPT, then the four page directories.
        let pds = &raw const guest_pml4 as u64 + 0x2000;
        for (i, entry) in PAE_PDPT.0.iter().enumerate() {
            entry.store((pds + i as u64 * 0x1000) | 1, Ordering::Relaxed);
        }
        PAE_PML4.store(&raw const guest_pml4 as u64, Ordering::Relaxed);
        let mut gdt_ptr = [0u8; 10];
        gdt_ptr[..2].copy_from_slice(&((PAE_GDT.len() * 8 - 1) as u16).to_le_bytes());
        gdt_ptr[2..].copy_from_slice(&(PAE_GDT.as_ptr() as u64).to_le_bytes());
        let mut saved_gdt = [0u8; 10];
        let seen: u64;
        let cr0_before = rt::read_cr0();
        // SAFETY: every address used in 32-bit mode is below 4 GiB and identity mapped by
        // both rt's tables and the PAE PDPT built above; no interrupt or exception is
        // expected between leaving and re-entering long mode (IF is clear); every register
        // the sequence changes is restored (GDT, CR3, EFER.LME, CR0) or declared.
        unsafe {
            asm!(
                "sgdt [{saved}]",
                "lgdt [{gdt}]",
                "push 0x18",
                "lea rax, [rip + 2f]",
                "push rax",
                "retfq",
                ".code32",
                "2:",
                // Flat data segments: rt's data descriptor has limit 0, which only 64-bit
                // mode ignores.
                "mov ecx, 0x10",
                "mov ds, ecx",
                "mov es, ecx",
                "mov ss, ecx",
                // Paging off in compatibility mode ends long mode; then LME off.
                "mov eax, cr0",
                "and eax, 0x7FFFFFFF",
                "mov cr0, eax",
                "mov ecx, 0xC0000080",
                "rdmsr",
                "and eax, 0xFFFFFEFF",
                "wrmsr",
                "mov cr3, esi",
                // PAE paging on, NE toggled in the same MOV.
                "mov eax, cr0",
                "or eax, 0x80000000",
                "xor eax, 0x20",
                "mov cr0, eax",
                "mov eax, dword ptr [{marker}]",
                "mov edx, dword ptr [{marker} + 4]",
                // Back: paging off, CR3 = rt's PML4, LME on, paging on with NE restored.
                "mov ecx, cr0",
                "and ecx, 0x7FFFFFFF",
                "mov cr0, ecx",
                "mov ecx, dword ptr [{pml4}]",
                "mov cr3, ecx",
                "push eax",
                "push edx",
                "mov ecx, 0xC0000080",
                "rdmsr",
                "or eax, 0x100",
                "wrmsr",
                "pop edx",
                "pop eax",
                "mov ecx, cr0",
                "or ecx, 0x80000000",
                "xor ecx, 0x20",
                "mov cr0, ecx",
                // ljmp 0x08:3f (JMP ptr16:32).
                ".byte 0xEA",
                ".long 3f",
                ".short 0x08",
                ".code64",
                "3:",
                "lgdt [{saved}]",
                "mov ecx, 0x10",
                "mov ds, ecx",
                "mov es, ecx",
                "mov ss, ecx",
                "shl rdx, 32",
                "or rax, rdx",
                saved = in(reg) saved_gdt.as_mut_ptr(),
                gdt = in(reg) gdt_ptr.as_ptr(),
                marker = sym PAE_MARKER,
                pml4 = sym PAE_PML4,
                in("rsi") PAE_PDPT.0.as_ptr() as u64,
                out("rax") seen,
                out("rcx") _,
                out("rdx") _,
            );
        }
        let cr0_after = rt::read_cr0();
        let expected = PAE_MARKER.load(Ordering::Relaxed);
        if seen != expected || cr0_after != cr0_before {
            println!(
                "guardrails: FAILED: read {seen:#x} through PAE paging (expected {expected:#x}); CR0 {cr0_before:#x} -> {cr0_after:#x}"
            );
            return false;
        }
        println!("guardrails: PAE paging round trip read {seen:#x}");
        true
    }

    /// Host time slices seen: `TURNS` moved since the last look (vCPU 2 ran in between).
    /// The wait spins without exits: Bochs preempts a guest only through the VMX-preemption
    /// timer, which every entry restarts. With fewer than three vCPUs, CPUID exits stand in
    /// for the slices.
    fn wait_slices(vcpus: u32, slices: u32) {
        if vcpus < 3 {
            for _ in 0..2000 {
                let _ = rt::cpuid_regs(0);
            }
            return;
        }
        let mut last = TURNS.load(Ordering::Relaxed);
        let mut seen = 0;
        while seen < slices {
            let turns = TURNS.load(Ordering::Relaxed);
            if turns != last {
                last = turns;
                seen += 1;
            }
            core::hint::spin_loop();
        }
    }

    fn breakpoint(vcpus: u32) -> bool {
        let target = TARGET.as_ptr() as u64;
        // SAFETY: arming a data breakpoint on this image's own variable; `db_handler`
        // takes the #DB.
        unsafe {
            asm!("mov dr0, {}", in(reg) target, options(nomem, nostack, preserves_flags));
            asm!("mov dr7, {}", in(reg) DR7_L0_WRITE_4, options(nomem, nostack, preserves_flags));
        }
        wait_slices(vcpus, SLICES);
        let (dr0, dr7): (u64, u64);
        // SAFETY: reading debug registers at CPL 0 has no side effects.
        unsafe {
            asm!("mov {}, dr0", out(reg) dr0, options(nomem, nostack, preserves_flags));
            asm!("mov {}, dr7", out(reg) dr7, options(nomem, nostack, preserves_flags));
        }
        if dr0 != target || dr7 & 0xFFFF_00FF != DR7_L0_WRITE_4 {
            println!("guardrails: FAILED: DR0 {dr0:#x} (armed {target:#x}), DR7 {dr7:#x} after exits");
            return false;
        }
        TARGET.store(1, Ordering::Relaxed);
        let (count, dr6) = (DB_COUNT.load(Ordering::Relaxed), DB_DR6.load(Ordering::Relaxed));
        // SAFETY: disarming the breakpoint.
        unsafe { asm!("mov dr7, {}", in(reg) 0x400u64, options(nomem, nostack, preserves_flags)) };
        if count != 1 || dr6 & DR6_B0 == 0 {
            println!("guardrails: FAILED: the write raised {count} #DB, DR6 {dr6:#x}");
            return false;
        }
        println!("guardrails: breakpoint fired once, DR6 {dr6:#x}");
        true
    }

    /// vCPU 2 of `breakpoint`: other values in DR0-DR3 (no breakpoint enabled) while vCPU
    /// 0 waits.
    fn clobber_debug_registers() -> ! {
        let other = &raw const GP_COUNT as u64;
        while !DONE.load(Ordering::Relaxed) {
            // SAFETY: this vCPU's DR7 enables nothing, so the addresses are inert.
            unsafe {
                asm!("mov dr0, {0}", "mov dr1, {0}", "mov dr2, {0}", "mov dr3, {0}", in(reg) other, options(nomem, nostack, preserves_flags));
            }
            TURNS.fetch_add(1, Ordering::Relaxed);
        }
        rt::halt_forever()
    }

    /// The helper of `cr8`: the highest task priority, then halt for good.
    fn raise_tpr_and_halt() -> ! {
        // SAFETY: CR8 only sets the task priority (of the virtual APIC, if the host does
        // its job).
        unsafe { asm!("mov cr8, {}", in(reg) 15u64, options(nomem, nostack, preserves_flags)) };
        let cr8: u64;
        // SAFETY: reading CR8 has no side effects.
        unsafe { asm!("mov {}, cr8", out(reg) cr8, options(nomem, nostack, preserves_flags)) };
        println!("guardrails: the last vcpu wrote CR8=15, read back {cr8}, halting");
        TURNS.fetch_add(1, Ordering::Relaxed);
        rt::halt_forever()
    }

    /// vCPU 0 of `cr8`: ends the VM once the helper raised its TPR.
    fn outlive_a_high_tpr() -> bool {
        // Spin without exits (see `wait_slices`) until the helper wrote CR8.
        while TURNS.load(Ordering::Relaxed) == 0 {
            core::hint::spin_loop();
        }
        let start = rt::rdtsc();
        for _ in 0..2000 {
            let _ = rt::cpuid_regs(0);
        }
        println!("guardrails: vcpu 0 ran on after the TPR write ({} TSC ticks)", rt::rdtsc() - start);
        true
    }
}

#[cfg(target_os = "none")]
use guest::guest;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "guardrails is a bare-metal guest: cargo build -p guest-images --target x86_64-unknown-none --release"
    );
}
