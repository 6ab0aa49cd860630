//! `apic`: the local APIC as a guest uses it, through the x2APIC MSRs, one check per
//! `test=`:
//! - `timer`: the LAPIC timer in one-shot, periodic and TSC-deadline mode, with HLT
//!   (`sti; hlt`) between ticks. Each mode's expiries are counted against the guest TSC
//!   (which reads 0 at VM start and runs at the host rate, CPUID 4000_0010h): a timer
//!   never fires before its time, and the periodic count stays within
//!   `logic::periodic_ticks_plausible` of the elapsed periods. Then a one-shot expires
//!   while the guest spins with IF=0: it must arrive right after the STI that ends the
//!   spin (the host asks for an interrupt window), not later and not before.
//!
//! - `running`: a TSC-deadline timer armed 2 ms ahead while the guest SPINS with IF=1
//!   (no HLT, no exit of its own), `SAMPLES` times; prints the latency from each deadline
//!   to its handler in guest TSC ticks and fails when one exceeds `RUNNING_LIMIT_MS`,
//!   half the host's 10 ms scheduler tick (a host that delivers the expiry only at its
//!   next tick is late by up to a tick).
//!
//! - `ipi` (2 vCPUs): fixed IPIs through the x2APIC ICR, vCPU 0 to vCPU 1 and back,
//!   `ROUNDS` times, each side halted (`sti; hlt`) until its IPI arrives; prints the
//!   mean round trip in guest TSC ticks.
//! - `haltif0` (2 vCPUs): vCPU 1 halts with IF=0 (`cli; hlt`); vCPU 0 sends it IPIs,
//!   which it must not wake for, and ends the VM while vCPU 1 is still halted.
//!
//! - `initsipi` (2 vCPUs, `aps=sipi` on the image's command line): vCPU 1 waits for
//!   INIT-SIPI-SIPI; vCPU 0 puts a real-mode stub at 0x8000 and sends INIT and two
//!   start-up IPIs with vector 8 through the x2APIC ICR; the stub, run by vCPU 1 at CS
//!   0x800 IP 0, writes a marker and its CS at 0x7000 and halts.
//!
//! - `nmi`: an NMI to itself through the ICR; its handler sends a second one, which must
//!   wait for the handler's IRET (NMIs do not nest: the host asks for an NMI window).
//! - `bench` (2 vCPUs): prints `apic: bench irq_latency=<a> ipi_round_trip=<b> eoi=<c>`
//!   in guest TSC ticks (instructions under QEMU `-icount` and Bochs): a TSC-deadline
//!   expiry to the handler's first instruction with the vCPU halted, an IPI to vCPU 1 and
//!   its answer back, and an x2APIC EOI (a WRMSR exit) with nothing in service.
//!
//! - `pit`: the 8254's channel 0 through the I/O APIC, as Linux routes it with the 8259
//!   masked: I/O APIC pin 2 (IRQ 0's usual override) written through IOREGSEL/IOWIN on the
//!   emulated page to a fixed, edge vector for vCPU 0; mode 2 at ~100 Hz with `sti; hlt`
//!   between ticks, the count checked against the TSC with
//!   `logic::periodic_ticks_plausible` (never more ticks than elapsed periods, at least
//!   half); then mode 0 (one-shot): exactly one interrupt in 5 periods, not before its
//!   count ran out.
//! - `rtc`: the CMOS RTC's periodic interrupt (register A rate 64 Hz, register B PIE)
//!   through I/O APIC pin 8; the handler reads register C to re-arm it. The first tick's
//!   phase is the RTC's (locked to the seconds), so only the ticks after the first are
//!   held to the elapsed periods, as above.
//!
//! Prints `apic: <test> ok` and ends the VM with status 0, or a `FAILED` line and 1.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_images::guest_main!(guest);

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, naked_asm};
    use core::sync::atomic::{AtomicU64, Ordering};
    use guest_images::logic::{cmdline_value, periodic_ticks_plausible};
    use guest_images::{println, rt};
    use taproot_guest_abi::{cpuid, status};

    /// IA32_APIC_BASE and its EN (11) and EXTD (10) bits; the x2APIC registers (SDM Vol.
    /// 3A §11.12.1, Table 11-6) and IA32_TSC_DEADLINE.
    const IA32_APIC_BASE: u32 = 0x1B;
    const APIC_BASE_EN_EXTD: u64 = (1 << 11) | (1 << 10);
    const X2APIC_ID: u32 = 0x802;
    const X2APIC_EOI: u32 = 0x80B;
    const X2APIC_SVR: u32 = 0x80F;
    const X2APIC_ICR: u32 = 0x830;
    const X2APIC_LVT_TIMER: u32 = 0x832;
    const X2APIC_TIMER_INITIAL: u32 = 0x838;
    const X2APIC_TIMER_CURRENT: u32 = 0x839;
    const X2APIC_TIMER_DIVIDE: u32 = 0x83E;
    const IA32_TSC_DEADLINE: u32 = 0x6E0;
    /// SVR: APIC software-enabled (bit 8), spurious vector 0xFF.
    const SVR_ENABLED: u64 = 0x1FF;
    /// Divide configuration 1011b: divide by 1 (SDM Vol. 3A Figure 11-10).
    const DIVIDE_BY_1: u64 = 0b1011;
    /// LVT timer modes (bits 18:17).
    const ONE_SHOT: u64 = 0;
    const PERIODIC: u64 = 1 << 17;
    const TSC_DEADLINE: u64 = 2 << 17;
    const TIMER_VECTOR: usize = 0x40;
    const IPI_VECTOR: usize = 0x41;
    const NMI_VECTOR: usize = 2;
    /// ICR delivery mode NMI (bits 10:8 = 100b) to x2APIC ID 0, this vCPU.
    const ICR_NMI_TO_0: u64 = 0b100 << 8;
    const SPURIOUS_VECTOR: usize = 0xFF;
    /// CPUID.1 ECX: x2APIC (21), TSC-deadline (24).
    const CPUID1_ECX_X2APIC: u32 = 1 << 21;
    const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;
    /// The LAPIC timer's input under Taproot (CPUID 4000_0010h EBX, kHz): 1 GHz.
    const PERIOD_MS: u64 = 20;
    const PERIODIC_TICKS: u64 = 10;
    const DEADLINES: u64 = 5;
    /// `running`: deadlines armed, how far ahead, and the latency bound.
    const SAMPLES: u64 = 8;
    const RUNNING_AHEAD_MS: u64 = 2;
    const RUNNING_LIMIT_MS: u64 = 5;
    /// `running`: how long to spin for an expiry before calling it lost.
    const RUNNING_GIVE_UP_MS: u64 = 100;

    const ROUNDS: u64 = 20;

    /// The 8259 pair's mask registers (OCW1, 8259A data sheet); 0xFF masks every line.
    const PIC_MASTER_DATA: u16 = 0x21;
    const PIC_SLAVE_DATA: u16 = 0xA1;
    /// The I/O APIC page, its IOREGSEL and IOWIN (82093AA data sheet §3.0), and the
    /// redirection table's first register (entry n at 0x10 + 2n, low dword first).
    const IOAPIC: u64 = 0xFEC0_0000;
    const IOWIN_OFFSET: u64 = 0x10;
    const IOAPIC_REDIR: u32 = 0x10;
    /// A redirection entry's mask bit (16); fixed, physical, active-high, edge are zeroes.
    const REDIR_MASKED: u32 = 1 << 16;
    /// The I/O APIC pins the PC wires IRQ 0 (through the MADT override) and IRQ 8 to.
    const PIT_PIN: u32 = 2;
    const RTC_PIN: u32 = 8;
    /// The 8254 (Intel 8254 data sheet, "Control Word Format"): channel 0, low then high
    /// byte, binary, mode 2 (rate generator) or mode 0 (interrupt on terminal count).
    const PIT_CHANNEL0: u16 = 0x40;
    const PIT_COMMAND: u16 = 0x43;
    const PIT_CH0_MODE2: u8 = 0x34;
    const PIT_CH0_MODE0: u8 = 0x30;
    const PIT_HZ: u64 = 1_193_182;
    /// ~100 Hz (10.0001 ms).
    const PIT_COUNT: u16 = 11_932;
    const PIT_TICKS: u64 = 10;
    /// The CMOS RTC (MC146818A): index and data ports, registers A-C, register A with the
    /// 32.768 kHz divider (DV 010) and rate 10 (64 Hz: 512 input clocks), B's PIE bit.
    const RTC_INDEX: u16 = 0x70;
    const RTC_DATA: u16 = 0x71;
    const RTC_REG_A: u8 = 0x0A;
    const RTC_REG_B: u8 = 0x0B;
    const RTC_REG_C: u8 = 0x0C;
    const RTC_A_64HZ: u8 = 0x2A;
    const RTC_B_PIE: u8 = 0x40;
    const RTC_PERIOD_CLOCKS: u64 = 512;
    const RTC_HZ: u64 = 32_768;
    const RTC_TICKS: u64 = 10;
    const RTC_VECTOR: usize = 0x42;

    static TICKS: AtomicU64 = AtomicU64::new(0);
    /// NMIs taken, NMIs that arrived inside the NMI handler, and whether it runs.
    static NMIS: AtomicU64 = AtomicU64::new(0);
    static NESTED_NMIS: AtomicU64 = AtomicU64::new(0);
    static IN_NMI: AtomicU64 = AtomicU64::new(0);
    /// IPIs each vCPU took (by vCPU index), and vCPUs ready for them.
    static IPIS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
    static READY: AtomicU64 = AtomicU64::new(0);
    /// Wakes of vCPU 1 from its `cli; hlt` (`haltif0`): must stay 0.
    static WOKE: AtomicU64 = AtomicU64::new(0);
    /// The guest TSC in the timer handler, at the last tick.
    static TICK_TSC: AtomicU64 = AtomicU64::new(0);
    /// 256 gates of 16 bytes (SDM Vol. 3A §7.14.1).
    static IDT: [AtomicU64; 512] = [const { AtomicU64::new(0) }; 512];

    pub fn guest(boot: &rt::Boot) -> u32 {
        let start_tsc = rt::rdtsc();
        let test = cmdline_value(boot.cmdline(), "test").unwrap_or("timer");
        let passed = match test {
            "timer" => timer(start_tsc),
            "running" => running(),
            "ipi" | "haltif0" | "initsipi" | "bench" if boot.vcpu_count != 2 => {
                println!("apic: FAILED: {test} wants vcpus=2");
                false
            }
            "ipi" => ipi(boot.vcpu_index),
            "initsipi" => init_sipi(),
            "bench" => bench(boot.vcpu_index),
            "nmi" => nmi(),
            "pit" => pit(),
            "rtc" => rtc(),
            "haltif0" => halt_with_if0(boot.vcpu_index),
            _ => {
                println!("apic: FAILED: unknown test {test:?}");
                false
            }
        };
        if passed {
            println!("apic: {test} ok");
            status::OK
        } else {
            status::FAILED
        }
    }

    fn rdmsr(msr: u32) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: RDMSR of an MSR CPUID says exists; no memory is touched.
        unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
        (u64::from(hi) << 32) | u64::from(lo)
    }

    fn wrmsr(msr: u32, value: u64) {
        // SAFETY: WRMSR of a local APIC MSR; it changes interrupt delivery only.
        unsafe {
            asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
        };
    }

    fn install_idt() {
        let cs: u16;
        // SAFETY: reading CS has no side effects.
        unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
        for (vector, handler) in [
            (TIMER_VECTOR, timer_handler as *const () as u64),
            (SPURIOUS_VECTOR, spurious_handler as *const () as u64),
            (IPI_VECTOR, ipi_handler as *const () as u64),
            (NMI_VECTOR, nmi_handler as *const () as u64),
            (RTC_VECTOR, rtc_handler as *const () as u64),
        ] {
            // Offset 15:0, selector, present 64-bit interrupt gate (0x8E), offset 31:16;
            // then offset 63:32.
            let low = (handler & 0xFFFF) | (cs as u64) << 16 | 0x8E << 40 | ((handler >> 16) & 0xFFFF) << 48;
            IDT[vector * 2].store(low, Ordering::Relaxed);
            IDT[vector * 2 + 1].store(handler >> 32, Ordering::Relaxed);
        }
        let mut pointer = [0u8; 10];
        pointer[..2].copy_from_slice(&((IDT.len() * 8 - 1) as u16).to_le_bytes());
        pointer[2..].copy_from_slice(&(IDT.as_ptr() as u64).to_le_bytes());
        // SAFETY: the IDT is static and its gates point at this image's handlers.
        unsafe { asm!("lidt [{}]", in(reg) pointer.as_ptr(), options(readonly, nostack, preserves_flags)) };
    }

    /// The timer interrupt: counts, records the TSC, EOI through the x2APIC MSR.
    #[unsafe(naked)]
    extern "C" fn timer_handler() {
        naked_asm!(
            "push rax",
            "push rcx",
            "push rdx",
            "lock inc qword ptr [rip + {ticks}]",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "mov [rip + {tick_tsc}], rax",
            "jmp {eoi_and_return}",
            ticks = sym TICKS,
            tick_tsc = sym TICK_TSC,
            eoi_and_return = sym eoi_and_return,
        );
    }

    /// The interrupt handlers' common end: x2APIC EOI, the registers they saved (RAX, RCX,
    /// RDX) back, IRETQ.
    #[unsafe(naked)]
    extern "C" fn eoi_and_return() {
        naked_asm!(
            "mov ecx, {eoi}",
            "xor eax, eax",
            "xor edx, edx",
            "wrmsr",
            "pop rdx",
            "pop rcx",
            "pop rax",
            "iretq",
            eoi = const X2APIC_EOI,
        );
    }

    /// The IPI: counts it for this vCPU (its x2APIC ID, the vCPU index), EOI.
    #[unsafe(naked)]
    extern "C" fn ipi_handler() {
        naked_asm!(
            "push rax",
            "push rcx",
            "push rdx",
            "mov ecx, {id}",
            "rdmsr",
            "lea rcx, [rip + {ipis}]",
            "lock inc qword ptr [rcx + rax * 8]",
            "jmp {eoi_and_return}",
            id = const X2APIC_ID,
            ipis = sym IPIS,
            eoi_and_return = sym eoi_and_return,
        );
    }

    /// The NMI: counts, notes an NMI that arrived while the handler ran, and the first time
    /// sends itself another NMI (which must wait for the IRET).
    #[unsafe(naked)]
    extern "C" fn nmi_handler() {
        naked_asm!(
            "push rax",
            "push rcx",
            "push rdx",
            "cmp qword ptr [rip + {in_nmi}], 0",
            "je 2f",
            "lock inc qword ptr [rip + {nested}]",
            "2:",
            "mov qword ptr [rip + {in_nmi}], 1",
            "lock inc qword ptr [rip + {nmis}]",
            "cmp qword ptr [rip + {nmis}], 1",
            "jne 3f",
            "mov ecx, {icr}",
            "mov eax, {nmi_to_0}",
            "xor edx, edx",
            "wrmsr",
            // Long enough for a nested NMI to arrive if the host let one through.
            "mov ecx, 10000",
            "4:",
            "pause",
            "dec ecx",
            "jnz 4b",
            "3:",
            "mov qword ptr [rip + {in_nmi}], 0",
            "pop rdx",
            "pop rcx",
            "pop rax",
            "iretq",
            in_nmi = sym IN_NMI,
            nested = sym NESTED_NMIS,
            nmis = sym NMIS,
            icr = const X2APIC_ICR,
            nmi_to_0 = const ICR_NMI_TO_0,
        );
    }

    /// The RTC's periodic interrupt: reads register C (which lowers IRQ 8 so the next
    /// period raises it again), then counts it like a timer tick.
    #[unsafe(naked)]
    extern "C" fn rtc_handler() {
        naked_asm!(
            "push rax",
            "mov al, {reg_c}",
            "out {index}, al",
            "in al, {data}",
            "pop rax",
            "jmp {timer_handler}",
            reg_c = const RTC_REG_C,
            index = const RTC_INDEX,
            data = const RTC_DATA,
            timer_handler = sym timer_handler,
        );
    }

    /// A spurious interrupt takes no EOI (SDM Vol. 3A §11.9).
    #[unsafe(naked)]
    extern "C" fn spurious_handler() {
        naked_asm!("iretq");
    }

    /// Halts (`sti; hlt`, the interrupt shadow keeps the interrupt after the HLT) until
    /// `TICKS` reaches `target`.
    fn halt_until_ticks(target: u64) {
        halt_until(&TICKS, target);
    }

    /// Halts (`sti; hlt`) until `counter` reaches `target`.
    fn halt_until(counter: &AtomicU64, target: u64) {
        loop {
            // SAFETY: CLI masks interrupts while the count is read.
            unsafe { asm!("cli", options(nomem, nostack)) };
            if counter.load(Ordering::SeqCst) >= target {
                break;
            }
            // SAFETY: STI; HLT waits for the next interrupt, which the IDT handles.
            unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
        }
        // SAFETY: as above.
        unsafe { asm!("sti", options(nomem, nostack)) };
    }

    /// Whether CPUID offers the x2APIC and the TSC-deadline timer.
    fn has_x2apic() -> bool {
        let [_, _, ecx, _] = rt::cpuid_regs(1);
        let offered = ecx & CPUID1_ECX_X2APIC != 0 && ecx & CPUID1_ECX_TSC_DEADLINE != 0;
        if !offered {
            println!("apic: FAILED: CPUID.1 ECX {ecx:#x} offers no x2APIC or TSC-deadline timer");
        }
        offered
    }

    /// This vCPU's LAPIC in x2APIC mode, software-enabled, with this image's IDT.
    fn enable_x2apic() {
        install_idt();
        wrmsr(IA32_APIC_BASE, rdmsr(IA32_APIC_BASE) | APIC_BASE_EN_EXTD);
        wrmsr(X2APIC_SVR, SVR_ENABLED);
    }

    /// A fixed, edge IPI with `vector` to the vCPU whose x2APIC ID is `destination`
    /// (ICR: destination in bits 63:32, SDM Vol. 3A §11.12.9).
    fn send_ipi(destination: u64, vector: usize) {
        wrmsr(X2APIC_ICR, (destination << 32) | vector as u64);
    }

    /// Both vCPUs: x2APIC on, then wait for each other. vCPU 1 then answers each IPI
    /// from vCPU 0 with one back, `ROUNDS` times, halted in between, and halts for good.
    fn ipi_partners(index: u32) {
        enable_x2apic();
        READY.fetch_add(1, Ordering::SeqCst);
        while READY.load(Ordering::SeqCst) < 2 {
            core::hint::spin_loop();
        }
        if index == 1 {
            for round in 1..=ROUNDS {
                halt_until(&IPIS[1], round);
                send_ipi(0, IPI_VECTOR);
            }
            rt::halt_forever()
        }
    }

    /// vCPU 0's side of `ROUNDS` IPI round trips: the mean in TSC ticks, if all arrived.
    fn ipi_round_trips() -> Option<u64> {
        let start = rt::rdtsc();
        for round in 1..=ROUNDS {
            send_ipi(1, IPI_VECTOR);
            halt_until(&IPIS[0], round);
        }
        let mean = (rt::rdtsc() - start) / ROUNDS;
        let (to_1, to_0) = (IPIS[1].load(Ordering::SeqCst), IPIS[0].load(Ordering::SeqCst));
        println!("apic: ipi: {to_1} to vcpu 1, {to_0} back, mean round trip {mean} TSC ticks");
        ((to_1, to_0) == (ROUNDS, ROUNDS)).then_some(mean)
    }

    fn ipi(index: u32) -> bool {
        if !has_x2apic() {
            return false;
        }
        ipi_partners(index);
        ipi_round_trips().is_some()
    }

    const EOI_ITERS: u64 = 1000;
    const LATENCY_ITERS: u64 = 20;

    fn bench(index: u32) -> bool {
        if !has_x2apic() {
            return false;
        }
        ipi_partners(index);
        let start = rt::rdtsc();
        for _ in 0..EOI_ITERS {
            wrmsr(X2APIC_EOI, 0);
        }
        let eoi = (rt::rdtsc() - start) / EOI_ITERS;
        let [tsc_khz, _, _, _] = rt::cpuid_regs(cpuid::TIMING_LEAF);
        TICKS.store(0, Ordering::SeqCst);
        wrmsr(X2APIC_LVT_TIMER, TSC_DEADLINE | TIMER_VECTOR as u64);
        let mut latency = 0;
        for n in 1..=LATENCY_ITERS {
            // 100 us ahead: the vCPU halts before it expires.
            let deadline = rt::rdtsc() + u64::from(tsc_khz) / 10;
            wrmsr(IA32_TSC_DEADLINE, deadline);
            halt_until_ticks(n);
            latency += TICK_TSC.load(Ordering::SeqCst).saturating_sub(deadline);
        }
        let Some(round_trip) = ipi_round_trips() else { return false };
        println!("apic: bench irq_latency={} ipi_round_trip={round_trip} eoi={eoi}", latency / LATENCY_ITERS);
        true
    }

    /// ICR delivery modes (bits 10:8) INIT and start-up, and level assert (bit 14).
    const ICR_INIT_ASSERT: u64 = (0b101 << 8) | (1 << 14);
    const ICR_STARTUP: u64 = 0b110 << 8;
    /// The AP's start: page 8 (0x8000), the stub's marker and CS at 0x7000.
    const SIPI_VECTOR: u8 = 0x08;
    const MARKER_GPA: u64 = 0x7000;
    const MARKER: u16 = 0x1234;
    /// mov ax, 0x1234; mov [0x7000], ax; mov ax, cs; mov [0x7002], ax; cli; hlt; jmp cli.
    const AP_STUB: [u8; 16] =
        [0xB8, 0x34, 0x12, 0xA3, 0x00, 0x70, 0x8C, 0xC8, 0xA3, 0x02, 0x70, 0xFA, 0xF4, 0xEB, 0xFC, 0x90];

    fn init_sipi() -> bool {
        if !has_x2apic() {
            return false;
        }
        enable_x2apic();
        let stub = (u64::from(SIPI_VECTOR) << 12) as *mut u8;
        let marker = MARKER_GPA as *mut u16;
        // SAFETY: 0x7000 and 0x8000 are guest RAM below the image, outside the boot
        // information (0x1000-0x3FFF), identity-mapped, used by nothing else; vCPU 1 does
        // not run before the start-up IPI.
        unsafe {
            core::ptr::copy_nonoverlapping(AP_STUB.as_ptr(), stub, AP_STUB.len());
            marker.write_volatile(0);
            marker.add(1).write_volatile(0);
        }
        wrmsr(X2APIC_ICR, (1 << 32) | ICR_INIT_ASSERT);
        for _ in 0..2 {
            wrmsr(X2APIC_ICR, (1 << 32) | ICR_STARTUP | u64::from(SIPI_VECTOR));
        }
        let [tsc_khz, _, _, _] = rt::cpuid_regs(cpuid::TIMING_LEAF);
        let start = rt::rdtsc();
        // SAFETY: as above; vCPU 1 writes the marker.
        while unsafe { marker.read_volatile() } != MARKER && rt::rdtsc() - start < 5_000 * u64::from(tsc_khz)
        {
            core::hint::spin_loop();
        }
        // SAFETY: as above.
        let (seen, cs) = unsafe { (marker.read_volatile(), marker.add(1).read_volatile()) };
        println!("apic: initsipi: marker {seen:#x}, AP CS {cs:#x}");
        seen == MARKER && cs == u16::from(SIPI_VECTOR) << 8
    }

    fn nmi() -> bool {
        if !has_x2apic() {
            return false;
        }
        enable_x2apic();
        let [tsc_khz, _, _, _] = rt::cpuid_regs(cpuid::TIMING_LEAF);
        wrmsr(X2APIC_ICR, ICR_NMI_TO_0);
        let start = rt::rdtsc();
        while NMIS.load(Ordering::SeqCst) < 2 && rt::rdtsc() - start < 5_000 * u64::from(tsc_khz) {
            core::hint::spin_loop();
        }
        let (nmis, nested) = (NMIS.load(Ordering::SeqCst), NESTED_NMIS.load(Ordering::SeqCst));
        println!("apic: nmi: {nmis} NMIs, {nested} inside the handler");
        (nmis, nested) == (2, 0)
    }

    fn halt_with_if0(index: u32) -> bool {
        if !has_x2apic() {
            return false;
        }
        enable_x2apic();
        if index == 1 {
            READY.store(1, Ordering::SeqCst);
            loop {
                // SAFETY: CLI; HLT: halted with interrupts off; a return from HLT is
                // counted (nothing may cause one here).
                unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
                WOKE.fetch_add(1, Ordering::SeqCst);
            }
        }
        while READY.load(Ordering::SeqCst) == 0 {
            core::hint::spin_loop();
        }
        let [tsc_khz, _, _, _] = rt::cpuid_regs(cpuid::TIMING_LEAF);
        for _ in 0..3 {
            send_ipi(1, IPI_VECTOR);
            let start = rt::rdtsc();
            while rt::rdtsc() - start < 20 * u64::from(tsc_khz) {
                core::hint::spin_loop();
            }
        }
        let woke = WOKE.load(Ordering::SeqCst);
        println!("apic: haltif0: vcpu 1 woke {woke} times from cli; hlt");
        woke == 0 && IPIS[1].load(Ordering::SeqCst) == 0
    }

    fn timer(start_tsc: u64) -> bool {
        if !has_x2apic() {
            return false;
        }
        let [tsc_khz, bus_khz, _, _] = rt::cpuid_regs(cpuid::TIMING_LEAF);
        let tsc_per_ms = u64::from(tsc_khz);
        let bus_per_ms = u64::from(bus_khz);
        println!("apic: TSC {tsc_khz} kHz, bus {bus_khz} kHz, TSC at entry {start_tsc}");
        // The guest TSC counts from the VM's start: far less than a minute at entry.
        if tsc_per_ms == 0 || bus_per_ms == 0 || start_tsc > 60_000 * tsc_per_ms {
            println!("apic: FAILED: timing leaf or TSC origin wrong");
            return false;
        }
        enable_x2apic();
        wrmsr(X2APIC_TIMER_DIVIDE, DIVIDE_BY_1);
        let period_tsc = PERIOD_MS * tsc_per_ms;

        // One-shot.
        wrmsr(X2APIC_LVT_TIMER, ONE_SHOT | TIMER_VECTOR as u64);
        let armed = rt::rdtsc();
        wrmsr(X2APIC_TIMER_INITIAL, PERIOD_MS * bus_per_ms);
        halt_until_ticks(1);
        let fired = TICK_TSC.load(Ordering::SeqCst) - armed;
        let current = rdmsr(X2APIC_TIMER_CURRENT);
        println!(
            "apic: one-shot fired after {fired} TSC ticks (period {period_tsc}), current count {current}"
        );
        if fired < period_tsc || current != 0 {
            println!("apic: FAILED: one-shot early or still counting");
            return false;
        }

        // Periodic.
        TICKS.store(0, Ordering::SeqCst);
        wrmsr(X2APIC_LVT_TIMER, PERIODIC | TIMER_VECTOR as u64);
        let armed = rt::rdtsc();
        wrmsr(X2APIC_TIMER_INITIAL, PERIOD_MS * bus_per_ms);
        halt_until_ticks(PERIODIC_TICKS);
        let elapsed = TICK_TSC.load(Ordering::SeqCst) - armed;
        wrmsr(X2APIC_TIMER_INITIAL, 0);
        println!(
            "apic: periodic: {PERIODIC_TICKS} ticks in {elapsed} TSC ticks, {} periods",
            elapsed / period_tsc
        );
        if !periodic_ticks_plausible(PERIODIC_TICKS, elapsed, period_tsc) {
            println!("apic: FAILED: periodic tick count does not match the elapsed time");
            return false;
        }

        // TSC deadline.
        TICKS.store(0, Ordering::SeqCst);
        wrmsr(X2APIC_LVT_TIMER, TSC_DEADLINE | TIMER_VECTOR as u64);
        for n in 1..=DEADLINES {
            let deadline = rt::rdtsc() + period_tsc;
            wrmsr(IA32_TSC_DEADLINE, deadline);
            halt_until_ticks(n);
            let at = TICK_TSC.load(Ordering::SeqCst);
            let left = rdmsr(IA32_TSC_DEADLINE);
            if at < deadline || left != 0 {
                println!("apic: FAILED: deadline {deadline} fired at {at}, MSR reads {left}");
                return false;
            }
        }
        println!("apic: tsc-deadline: {DEADLINES} deadlines, none early");
        masked_tick(period_tsc, bus_per_ms)
    }

    /// TSC-deadline expiries while the guest spins with interrupts on: each must reach its
    /// handler within `RUNNING_LIMIT_MS` of its deadline.
    fn running() -> bool {
        if !has_x2apic() {
            return false;
        }
        let tsc_per_ms = u64::from(rt::cpuid_regs(cpuid::TIMING_LEAF)[0]);
        if tsc_per_ms == 0 {
            println!("apic: FAILED: no TSC frequency in the timing leaf");
            return false;
        }
        enable_x2apic();
        wrmsr(X2APIC_LVT_TIMER, TSC_DEADLINE | TIMER_VECTOR as u64);
        TICKS.store(0, Ordering::SeqCst);
        // SAFETY: STI only opens interrupts; the handlers are installed.
        unsafe { asm!("sti", options(nomem, nostack)) };
        let (mut worst, mut total) = (0, 0);
        for n in 1..=SAMPLES {
            let deadline = rt::rdtsc() + RUNNING_AHEAD_MS * tsc_per_ms;
            wrmsr(IA32_TSC_DEADLINE, deadline);
            while TICKS.load(Ordering::SeqCst) < n {
                if rt::rdtsc().saturating_sub(deadline) > RUNNING_GIVE_UP_MS * tsc_per_ms {
                    println!("apic: FAILED: deadline {n} never fired while the guest spun");
                    return false;
                }
                core::hint::spin_loop();
            }
            let latency = TICK_TSC.load(Ordering::SeqCst).saturating_sub(deadline);
            worst = worst.max(latency);
            total += latency;
        }
        println!(
            "apic: running: latency mean={} max={} TSC ticks ({tsc_per_ms} per ms) over {SAMPLES} deadlines",
            total / SAMPLES,
            worst
        );
        if worst >= RUNNING_LIMIT_MS * tsc_per_ms {
            println!("apic: FAILED: a timer fired {worst} TSC ticks late while the vCPU ran");
            return false;
        }
        true
    }

    /// A one-shot that expires while interrupts are masked is taken right after STI.
    fn masked_tick(period_tsc: u64, bus_per_ms: u64) -> bool {
        TICKS.store(0, Ordering::SeqCst);
        wrmsr(X2APIC_LVT_TIMER, ONE_SHOT | TIMER_VECTOR as u64);
        // SAFETY: CLI only masks interrupts.
        unsafe { asm!("cli", options(nomem, nostack)) };
        let armed = rt::rdtsc();
        wrmsr(X2APIC_TIMER_INITIAL, PERIOD_MS * bus_per_ms);
        while rt::rdtsc() - armed < 3 * period_tsc {
            core::hint::spin_loop();
        }
        let before = TICKS.load(Ordering::SeqCst);
        // SAFETY: STI; NOP opens interrupts for one instruction after the shadow.
        unsafe { asm!("sti", "nop", "cli", options(nomem, nostack)) };
        let after = TICKS.load(Ordering::SeqCst);
        // SAFETY: as above.
        unsafe { asm!("sti", options(nomem, nostack)) };
        println!("apic: masked one-shot: {before} ticks with IF=0, {after} after STI");
        if (before, after) != (0, 1) {
            println!("apic: FAILED: the masked tick was not delivered at STI");
            return false;
        }
        true
    }

    /// Writes I/O APIC register `index` through IOREGSEL and IOWIN on the emulated page.
    fn ioapic_write(index: u32, value: u32) {
        // SAFETY: IOREGSEL and IOWIN of the I/O APIC page (identity-mapped, a device the
        // host emulates); the write changes interrupt routing only.
        unsafe {
            asm!(
                "mov dword ptr [{page}], {index:e}",
                "mov dword ptr [{page} + {iowin}], {value:e}",
                page = in(reg) IOAPIC,
                iowin = const IOWIN_OFFSET,
                index = in(reg) index,
                value = in(reg) value,
                options(nostack),
            );
        }
    }

    /// Routes I/O APIC `pin` to `vector` on vCPU 0 (APIC ID 0): fixed, physical,
    /// active-high, edge; or masks it.
    fn ioapic_route(pin: u32, vector: usize, masked: bool) {
        ioapic_write(IOAPIC_REDIR + 2 * pin + 1, 0);
        ioapic_write(IOAPIC_REDIR + 2 * pin, vector as u32 | if masked { REDIR_MASKED } else { 0 });
    }

    /// The x2APIC on, the 8259 pair masked (the PC's legacy path closed, as Linux does).
    fn apic_mode_platform() -> bool {
        if !has_x2apic() {
            return false;
        }
        enable_x2apic();
        rt::outb(PIC_MASTER_DATA, 0xFF);
        rt::outb(PIC_SLAVE_DATA, 0xFF);
        true
    }

    /// Programs PIT channel 0 with `command` and `count`; returns the TSC just before the
    /// count's last byte (when the counter starts).
    fn pit_start(command: u8, count: u16) -> u64 {
        let [low, high] = count.to_le_bytes();
        rt::outb(PIT_COMMAND, command);
        rt::outb(PIT_CHANNEL0, low);
        let armed = rt::rdtsc();
        rt::outb(PIT_CHANNEL0, high);
        armed
    }

    fn pit() -> bool {
        if !apic_mode_platform() {
            return false;
        }
        let [tsc_khz, _, _, _] = rt::cpuid_regs(cpuid::TIMING_LEAF);
        // TSC ticks per PIT period, rounded up: a tick never counts as early.
        let period_tsc = (u64::from(PIT_COUNT) * u64::from(tsc_khz) * 1000).div_ceil(PIT_HZ);
        ioapic_route(PIT_PIN, TIMER_VECTOR, false);

        TICKS.store(0, Ordering::SeqCst);
        let armed = pit_start(PIT_CH0_MODE2, PIT_COUNT);
        halt_until_ticks(PIT_TICKS);
        let elapsed = TICK_TSC.load(Ordering::SeqCst) - armed;
        println!("apic: pit: {PIT_TICKS} ticks in {elapsed} TSC ticks, {} periods", elapsed / period_tsc);
        if !periodic_ticks_plausible(PIT_TICKS, elapsed, period_tsc) {
            println!("apic: FAILED: PIT tick count does not match the elapsed time");
            return false;
        }

        // Mode 0: OUT falls at the command, rises once when the count runs out and stays
        // high. A mode 2 tick from before the command may still be pending: STI; NOP
        // takes it before counting starts.
        // SAFETY: CLI only masks interrupts.
        unsafe { asm!("cli", options(nomem, nostack)) };
        let armed = pit_start(PIT_CH0_MODE0, PIT_COUNT);
        // SAFETY: STI; NOP opens interrupts for one instruction after the shadow.
        unsafe { asm!("sti", "nop", "cli", options(nomem, nostack)) };
        TICKS.store(0, Ordering::SeqCst);
        halt_until_ticks(1);
        let fired = TICK_TSC.load(Ordering::SeqCst) - armed;
        while rt::rdtsc() - armed < 5 * period_tsc {
            core::hint::spin_loop();
        }
        let ticks = TICKS.load(Ordering::SeqCst);
        ioapic_route(PIT_PIN, TIMER_VECTOR, true);
        println!("apic: pit one-shot: {ticks} interrupts in 5 periods, the first after {fired} TSC ticks");
        if ticks != 1 || fired < period_tsc {
            println!("apic: FAILED: mode 0 must interrupt once, after its count");
            return false;
        }
        true
    }

    fn rtc_write(index: u8, value: u8) {
        rt::outb(RTC_INDEX, index);
        rt::outb(RTC_DATA, value);
    }

    fn rtc_read(index: u8) -> u8 {
        rt::outb(RTC_INDEX, index);
        rt::inb(RTC_DATA)
    }

    fn rtc() -> bool {
        if !apic_mode_platform() {
            return false;
        }
        let [tsc_khz, _, _, _] = rt::cpuid_regs(cpuid::TIMING_LEAF);
        let period_tsc = (RTC_PERIOD_CLOCKS * u64::from(tsc_khz) * 1000).div_ceil(RTC_HZ);
        ioapic_route(RTC_PIN, RTC_VECTOR, false);
        rtc_write(RTC_REG_A, RTC_A_64HZ);
        rtc_read(RTC_REG_C);
        TICKS.store(0, Ordering::SeqCst);
        let armed = rt::rdtsc();
        rtc_write(RTC_REG_B, rtc_read(RTC_REG_B) | RTC_B_PIE);
        halt_until_ticks(RTC_TICKS);
        let elapsed = TICK_TSC.load(Ordering::SeqCst) - armed;
        rtc_write(RTC_REG_B, rtc_read(RTC_REG_B) & !RTC_B_PIE);
        ioapic_route(RTC_PIN, RTC_VECTOR, true);
        println!("apic: rtc: {RTC_TICKS} ticks in {elapsed} TSC ticks, {} periods", elapsed / period_tsc);
        // The first tick comes within a period of PIE (its phase is the RTC's), every
        // later one a period after the previous: the last is at least RTC_TICKS - 1
        // periods after arming.
        if !periodic_ticks_plausible(RTC_TICKS - 1, elapsed, period_tsc) {
            println!("apic: FAILED: RTC tick count does not match the elapsed time");
            return false;
        }
        true
    }
}

#[cfg(target_os = "none")]
use guest::guest;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "apic is a bare-metal guest: cargo build -p guest-images --target x86_64-unknown-none --release"
    );
}
