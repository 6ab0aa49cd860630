//! The platform's interrupt paths end to end, through the port bus as a guest drives them:
//! a device line -> the 8259 pair or the I/O APIC -> a local APIC -> what the entry path
//! injects. Time is passed in, never read: the tests step the VM's clock to the deadlines
//! the bus names, as a halted vCPU's sleep would.

use super::irq::InterruptMessage;
use super::irqchip::{EntryEvents, Injection, Openings, VcpuMask};
use super::lapic::LapicConfig;
use super::{PlatformConfig, PortBus, acpi_pm};

const CONFIG: PlatformConfig = PlatformConfig {
    vcpus: 2,
    ram_bytes: 64 << 20,
    unix_seconds: 1_700_000_000,
    now_ns: 0,
    lapic: LapicConfig { bus_hz: 1_000_000_000, tsc_hz: 1_000_000_000, tsc_origin_ns: 0, has_x2apic: true },
};
const OPEN: Openings = Openings { interrupt: true, nmi: true };
const CLOSED: Openings = Openings { interrupt: false, nmi: false };
const MS: u64 = 1_000_000;

// xAPIC page offsets (SDM vol. 3A Table 11-1).
const LAPIC_EOI: u32 = 0xB0;
const LAPIC_SVR: u32 = 0xF0;
const LAPIC_ICR_LOW: u32 = 0x300;
const LAPIC_ICR_HIGH: u32 = 0x310;
const LAPIC_LVT_TIMER: u32 = 0x320;
const LAPIC_LVT_LINT0: u32 = 0x350;
const LAPIC_INITIAL_COUNT: u32 = 0x380;
const LAPIC_DIVIDE: u32 = 0x3E0;
const IA32_APIC_BASE: u32 = 0x1B;
// I/O APIC (82093AA datasheet 3.0): IOREGSEL, IOWIN, redirection entry n at 0x10 + 2n.
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_REMOTE_IRR: u64 = 1 << 14;
// 8259: ICW1 (edge, cascade, ICW4), OCW2 non-specific EOI, ICW4 8086 mode and auto-EOI.
const ICW1: u32 = 0x11;
const ICW4_8086: u32 = 0x01;
const ICW4_AUTO_EOI: u32 = 0x02;
const OCW2_EOI: u32 = 0x20;
// PIT: channel 0, lobyte/hibyte, mode 2, binary; a count of 1193 is a 999.85 us period.
const PIT_CONTROL_CH0_MODE2: u32 = 0x34;
const PIT_COUNT: u32 = 1193;
const PIT_PERIOD_NS: u64 = 999_847;

fn bus() -> PortBus {
    PortBus::new(&CONFIG)
}

fn out(bus: &mut PortBus, port: u16, value: u32, now_ns: u64) -> VcpuMask {
    bus.write(port, 1, value, now_ns).wake
}

fn inb(bus: &mut PortBus, port: u16, now_ns: u64) -> u32 {
    bus.read(port, 1, now_ns).value
}

/// SVR: software-enabled, spurious vector 0xFF.
fn enable_lapics(bus: &mut PortBus) {
    for v in 0..u32::from(CONFIG.vcpus) {
        let _ = bus.irqchip_mut().lapic_mmio_write(v, LAPIC_SVR, 0x1FF, 0);
    }
}

/// The 8259 pair masked, as a guest that uses the I/O APIC leaves it.
fn mask_pic(bus: &mut PortBus) {
    out(bus, 0x21, 0xFF, 0);
    out(bus, 0xA1, 0xFF, 0);
}

/// The BIOS's ICW sequence (vectors 0x20 and 0x28, slave on IR2), then the masks.
fn init_pic(bus: &mut PortBus, icw4: u32, master_mask: u32) {
    for (command, data, base, icw3, mask) in [(0x20, 0x21, 0x20, 4, master_mask), (0xA0, 0xA1, 0x28, 2, 0xFF)]
    {
        for (port, value) in [(command, ICW1), (data, base), (data, icw3), (data, icw4), (data, mask)] {
            out(bus, port, value, 0);
        }
    }
}

fn redirect(bus: &mut PortBus, pin: u8, entry: u64) {
    let chip = bus.irqchip_mut();
    let index = 0x10 + 2 * u32::from(pin);
    let _ = chip.ioapic_mmio_write(IOREGSEL, index + 1);
    let _ = chip.ioapic_mmio_write(IOWIN, (entry >> 32) as u32);
    let _ = chip.ioapic_mmio_write(IOREGSEL, index);
    let _ = chip.ioapic_mmio_write(IOWIN, entry as u32);
}

fn redirection_entry(bus: &mut PortBus, pin: u8) -> u64 {
    let chip = bus.irqchip_mut();
    let _ = chip.ioapic_mmio_write(IOREGSEL, 0x10 + 2 * u32::from(pin));
    u64::from(chip.ioapic_mmio_read(IOWIN))
}

/// A fixed, physical-destination redirection entry.
fn fixed_to(vector: u8, apic_id: u8) -> u64 {
    u64::from(vector) | u64::from(apic_id) << 56
}

fn inject(bus: &mut PortBus, vcpu: u32) -> Option<Injection> {
    bus.irqchip_mut().entry_events(vcpu, OPEN).inject
}

fn start_pit(bus: &mut PortBus, now_ns: u64) {
    out(bus, 0x43, PIT_CONTROL_CH0_MODE2, now_ns);
    out(bus, 0x40, PIT_COUNT & 0xFF, now_ns);
    out(bus, 0x40, PIT_COUNT >> 8, now_ns);
}

/// Runs the VM's clock from 0 to `end_ns` along the deadlines of `vcpu`, as its sleep
/// would; `on_tick` sees each tick's time and wake set, and plays the guest. Returns the
/// number of ticks.
fn run_until(
    bus: &mut PortBus,
    vcpu: u32,
    end_ns: u64,
    mut on_tick: impl FnMut(&mut PortBus, u64, VcpuMask),
) -> u64 {
    let (mut now, mut ticks) = (0, 0);
    while let Some(deadline) = bus.next_deadline(vcpu).filter(|&d| d <= end_ns) {
        assert!(deadline > now || ticks == 0, "deadline {deadline} not after the last tick at {now}");
        now = deadline;
        let wake = bus.tick(now);
        on_tick(bus, now, wake);
        ticks += 1;
        assert!(ticks < 100_000, "runaway deadlines");
    }
    ticks
}

/// Interrupts a periodic source with `period_ns` may give in `elapsed_ns`: the periods
/// that fit, give or take one for the phase.
fn expected_counts(elapsed_ns: u64, period_ns: u64) -> core::ops::RangeInclusive<u64> {
    (elapsed_ns / period_ns).saturating_sub(1)..=elapsed_ns / period_ns + 1
}

#[test]
fn pit_mode2_reaches_the_vcpu_named_by_ioapic_pin2_once_per_period() {
    let mut bus = bus();
    enable_lapics(&mut bus);
    mask_pic(&mut bus);
    redirect(&mut bus, 2, fixed_to(0x30, 1));
    start_pit(&mut bus, 0);
    assert_eq!(bus.next_deadline(1), None, "vCPU 1's sleep does not cover the PIT");
    let mut injected = 0;
    run_until(&mut bus, 0, 100 * MS, |bus, now, wake| {
        assert_eq!(wake, VcpuMask::one(1), "at {now}");
        assert_eq!(inject(bus, 0), None, "vCPU 0 is not the destination");
        assert_eq!(inject(bus, 1), Some(Injection::Interrupt(0x30)));
        let _ = bus.irqchip_mut().lapic_mmio_write(1, LAPIC_EOI, 0, now);
        injected += 1;
    });
    assert!(expected_counts(100 * MS, PIT_PERIOD_NS).contains(&injected), "{injected} interrupts in 100 ms");
    let stats = bus.irqchip().snapshot();
    assert_eq!((stats.ioapic, stats.pit_expiries, stats.pic_ext_int), (injected, injected, 0));
}

#[test]
fn pit_through_the_8259_is_an_extint_with_the_lapic_disabled() {
    let mut bus = bus();
    let chip = bus.irqchip_mut();
    assert_eq!(chip.msr_write(0, IA32_APIC_BASE, 0, 0), Ok(VcpuMask::EMPTY), "globally disabled");
    init_pic(&mut bus, ICW4_8086, 0xFE);
    start_pit(&mut bus, 0);
    let mut injected = 0;
    run_until(&mut bus, 0, 50 * MS, |bus, now, wake| {
        assert_eq!(wake, VcpuMask::one(0), "the 8259 drives vCPU 0's LINT0");
        assert!(bus.irqchip().wakes_from_halt(0, true) && !bus.irqchip().wakes_from_halt(0, false));
        let closed = bus.irqchip_mut().entry_events(0, CLOSED);
        assert_eq!(closed, EntryEvents { inject: None, interrupt_window: true, nmi_window: false });
        assert_eq!(inject(bus, 0), Some(Injection::Interrupt(0x20)), "IRQ 0 at the ICW2 base");
        assert_eq!(inject(bus, 0), None, "acknowledged once");
        out(bus, 0x20, OCW2_EOI, now);
        injected += 1;
    });
    assert!(expected_counts(50 * MS, PIT_PERIOD_NS).contains(&injected), "{injected} interrupts in 50 ms");
    let stats = bus.irqchip().snapshot();
    assert_eq!((stats.pic_ext_int, stats.ioapic, stats.spurious_inta), (injected, 0, 0));
}

#[test]
fn pit_through_the_8259_follows_lint0_in_extint_mode() {
    let mut bus = bus();
    enable_lapics(&mut bus);
    init_pic(&mut bus, ICW4_8086, 0xFE);
    start_pit(&mut bus, 0);
    // vCPU 0's LINT0 comes out of reset in ExtINT mode (virtual wire), as firmware leaves it.
    let now = bus.next_deadline(0).unwrap();
    assert_eq!(bus.tick(now), VcpuMask::one(0));
    assert_eq!(inject(&mut bus, 0), Some(Injection::Interrupt(0x20)));
    out(&mut bus, 0x20, OCW2_EOI, now);
    // Masked LINT0: the 8259's requests wait in its IRR.
    let _ = bus.irqchip_mut().lapic_mmio_write(0, LAPIC_LVT_LINT0, 1 << 16 | 0x700, now);
    let now = bus.next_deadline(0).unwrap();
    assert_eq!(bus.tick(now), VcpuMask::EMPTY);
    assert_eq!(inject(&mut bus, 0), None);
    assert!(!bus.irqchip().wakes_from_halt(0, true));
    // Programmed ExtINT again: the request still latched in the 8259 arrives.
    assert_eq!(bus.irqchip_mut().lapic_mmio_write(0, LAPIC_LVT_LINT0, 0x700, now), VcpuMask::one(0));
    assert_eq!(inject(&mut bus, 0), Some(Injection::Interrupt(0x20)));
    assert_eq!(inject(&mut bus, 1), None, "only vCPU 0's LINT0 is wired");
}

#[test]
fn auto_eoi_lets_the_next_edge_in_without_an_eoi() {
    for (icw4, second) in [(ICW4_8086, None), (ICW4_8086 | ICW4_AUTO_EOI, Some(Injection::Interrupt(0x20)))] {
        let mut bus = bus();
        init_pic(&mut bus, icw4, 0xFE);
        start_pit(&mut bus, 0);
        let now = bus.next_deadline(0).unwrap();
        bus.tick(now);
        assert_eq!(inject(&mut bus, 0), Some(Injection::Interrupt(0x20)));
        let now = bus.next_deadline(0).unwrap();
        bus.tick(now);
        assert_eq!(inject(&mut bus, 0), second, "ICW4 {icw4:#x}: no EOI written");
    }
}

#[test]
fn level_sci_holds_remote_irr_until_the_lapic_eoi_broadcast() {
    let mut bus = bus();
    enable_lapics(&mut bus);
    mask_pic(&mut bus);
    redirect(&mut bus, 9, fixed_to(0x41, 0) | RTE_LEVEL);
    // TMR_EN: the SCI rises when the PM timer's top bit changes (about 600 s in).
    bus.write(acpi_pm::PM1A_EVT_BLK + 2, 2, 1, 0);
    let deadline = bus.next_deadline(0).expect("the PM timer's SCI is a platform deadline");
    assert!(deadline > 500_000 * MS);
    assert_eq!(bus.tick(deadline), VcpuMask::one(0));
    assert_eq!(inject(&mut bus, 0), Some(Injection::Interrupt(0x41)));
    assert_ne!(redirection_entry(&mut bus, 9) & RTE_REMOTE_IRR, 0);
    assert_eq!(bus.next_deadline(0), None, "the SCI is high until the guest clears TMR_STS");
    assert_eq!(bus.tick(deadline + MS), VcpuMask::EMPTY, "remote IRR holds the asserted line");
    // EOI with the line still high: remote IRR clears and the pin delivers again.
    assert_eq!(bus.irqchip_mut().lapic_mmio_write(0, LAPIC_EOI, 0, deadline + MS), VcpuMask::one(0));
    assert_eq!(inject(&mut bus, 0), Some(Injection::Interrupt(0x41)));
    // The handler clears TMR_STS (the line falls), then EOIs: nothing more is pending, but
    // the SCI's next deadline is back, so vCPU 0 (whose deadline covers it) is named.
    assert_eq!(bus.write(acpi_pm::PM1A_EVT_BLK, 2, 1, deadline + 2 * MS).wake, VcpuMask::one(0));
    assert_eq!(bus.irqchip_mut().lapic_mmio_write(0, LAPIC_EOI, 0, deadline + 2 * MS), VcpuMask::EMPTY);
    assert_eq!(redirection_entry(&mut bus, 9) & RTE_REMOTE_IRR, 0);
    assert_eq!(inject(&mut bus, 0), None);
}

#[test]
fn rtc_periodic_interrupt_on_irq8_waits_for_register_c() {
    let mut bus = bus();
    enable_lapics(&mut bus);
    mask_pic(&mut bus);
    redirect(&mut bus, 8, fixed_to(0x28, 0));
    // Register B: PIE, 24-hour; register A keeps the BIOS's 1024 Hz rate.
    out(&mut bus, 0x70, 0x0B, 0);
    // Nothing pending yet; vCPU 0 is named because its deadline now has the RTC's.
    assert_eq!(out(&mut bus, 0x71, 0x42, 0), VcpuMask::one(0));
    let mut injected = 0;
    run_until(&mut bus, 0, 20 * MS, |bus, now, wake| {
        assert_eq!(wake, VcpuMask::one(0));
        assert_eq!(inject(bus, 0), Some(Injection::Interrupt(0x28)));
        let _ = bus.irqchip_mut().lapic_mmio_write(0, LAPIC_EOI, 0, now);
        assert_eq!(bus.next_deadline(0), None, "IRQ 8 stays high until register C is read");
        out(bus, 0x70, 0x0C, now);
        assert_eq!(inb(bus, 0x71, now) & 0xC0, 0xC0, "IRQF and PF, cleared by the read");
        injected += 1;
    });
    assert!(expected_counts(20 * MS, 1_000_000_000 / 1024).contains(&injected), "{injected} in 20 ms");
    // An update flag already set when UIE is enabled raises IRQ 8 from the register write.
    let now = 1_500 * MS;
    out(&mut bus, 0x70, 0x0C, now);
    assert_eq!(inb(&mut bus, 0x71, now) & 0x10, 0x10, "UF: a second passed");
    out(&mut bus, 0x70, 0x0B, now);
    out(&mut bus, 0x71, 0x02, now);
    bus.tick(now + 600 * MS);
    out(&mut bus, 0x70, 0x0B, now + 600 * MS);
    assert_eq!(out(&mut bus, 0x71, 0x12, now + 600 * MS), VcpuMask::one(0), "UIE with UF set");
}

#[test]
fn uart_receive_interrupt_on_irq4() {
    let mut bus = bus();
    enable_lapics(&mut bus);
    mask_pic(&mut bus);
    redirect(&mut bus, 4, fixed_to(0x24, 1));
    out(&mut bus, 0x3FA, 0x01, 0); // FCR: FIFOs on, trigger level 1
    out(&mut bus, 0x3F9, 0x01, 0); // IER: received data available
    assert_eq!(bus.console_input(b"h").wake, VcpuMask::EMPTY, "OUT2 clear: the line is gated off");
    assert_eq!(out(&mut bus, 0x3FC, 0x08, 0), VcpuMask::one(1), "OUT2 set: the pending interrupt goes out");
    assert_eq!(inject(&mut bus, 1), Some(Injection::Interrupt(0x24)));
    assert_eq!(inb(&mut bus, 0x3FA, 0) & 0x0F, 0x04, "IIR: received data available");
    assert_eq!(inb(&mut bus, 0x3F8, 0), u32::from(b'h'));
    let _ = bus.irqchip_mut().lapic_mmio_write(1, LAPIC_EOI, 0, 0);
    let input = bus.console_input(b"ello, world");
    assert_eq!((input.taken, input.wake), (11, VcpuMask::one(1)));
    assert_eq!(inject(&mut bus, 1), Some(Injection::Interrupt(0x24)));
    let echoed: alloc::vec::Vec<u8> = (0..11).map(|_| inb(&mut bus, 0x3F8, 0) as u8).collect();
    assert_eq!(echoed, b"ello, world");
    assert_eq!(inb(&mut bus, 0x3FD, 0) & 1, 0, "LSR: no data");
}

#[test]
fn a_masked_line_delivers_nothing_until_unmasked() {
    let mut bus = bus();
    enable_lapics(&mut bus);
    init_pic(&mut bus, ICW4_8086, 0xFF);
    start_pit(&mut bus, 0);
    // The I/O APIC's pin 2 is masked from reset, the 8259's IRQ 0 by the guest.
    let ticks = run_until(&mut bus, 0, 10 * MS, |bus, _, wake| {
        assert_eq!(wake, VcpuMask::EMPTY);
        assert_eq!(inject(bus, 0), None);
        assert_eq!(inject(bus, 1), None);
    });
    assert!(ticks >= 9);
    assert!(bus.irqchip().snapshot().pit_expiries >= 9, "expiries are counted even so");
    // Unmasking IRQ 0 with its request latched in IRR: the port write wakes vCPU 0.
    assert_eq!(out(&mut bus, 0x21, 0xFE, 10 * MS), VcpuMask::one(0));
    assert_eq!(inject(&mut bus, 0), Some(Injection::Interrupt(0x20)));
}

#[test]
fn a_vanished_slave_request_is_a_counted_spurious_irq15() {
    let mut bus = bus();
    init_pic(&mut bus, ICW4_8086, 0xFB);
    out(&mut bus, 0xA1, 0xFD, 0); // slave: IRQ 9 only
    out(&mut bus, 0x4D1, 0x02, 0); // ELCR: IRQ 9 level-triggered
    let chip = bus.irqchip_mut();
    assert_eq!(chip.set_irq(9, true), VcpuMask::one(0));
    assert_eq!(chip.set_irq(9, false), VcpuMask::EMPTY, "the master latched its IR2 edge");
    assert_eq!(inject(&mut bus, 0), Some(Injection::Interrupt(0x2F)));
    assert_eq!(bus.irqchip().snapshot().spurious_inta, 1);
}

#[test]
fn a_platform_reset_resets_the_controllers_and_keeps_the_lines_and_counts() {
    let mut bus = bus();
    enable_lapics(&mut bus);
    mask_pic(&mut bus);
    redirect(&mut bus, 2, fixed_to(0x30, 0));
    start_pit(&mut bus, 0);
    let now = bus.next_deadline(0).unwrap();
    bus.tick(now);
    assert_eq!(inject(&mut bus, 0), Some(Injection::Interrupt(0x30)));
    // The RTC (not reset) holds IRQ 8 high: update-ended interrupt, register C unread.
    out(&mut bus, 0x70, 0x0B, now);
    out(&mut bus, 0x71, 0x12, now);
    bus.tick(1_100 * MS);
    let before = bus.irqchip().snapshot();
    bus.reset_platform();
    assert_eq!(redirection_entry(&mut bus, 2), 1 << 16, "masked, as at power-on");
    assert_eq!(bus.next_deadline(0), None, "the PIT stopped and the RTC still waits for register C");
    assert_eq!(bus.irqchip().snapshot(), before, "the counts go on");
    assert_eq!(bus.irqchip().lapic(0).pending_vector(), None);
    // The new I/O APIC sees IRQ 8 high: a level entry delivers as soon as it is unmasked.
    enable_lapics(&mut bus);
    let chip = bus.irqchip_mut();
    let _ = chip.ioapic_mmio_write(IOREGSEL, 0x10 + 2 * 8);
    assert_eq!(chip.ioapic_mmio_write(IOWIN, 0x28 | RTE_LEVEL as u32), VcpuMask::one(0));
}

#[test]
fn lapic_timers_tick_through_the_bus_and_each_source_is_counted() {
    let mut bus = bus();
    enable_lapics(&mut bus);
    let chip = bus.irqchip_mut();
    // vCPU 1: one-shot, vector 0xEF, divide by 1, 1 ms at the 1 GHz bus.
    let _ = chip.lapic_mmio_write(1, LAPIC_DIVIDE, 0b1011, 0);
    let _ = chip.lapic_mmio_write(1, LAPIC_LVT_TIMER, 0xEF, 0);
    let _ = chip.lapic_mmio_write(1, LAPIC_INITIAL_COUNT, 1_000_000, 0);
    assert_eq!((bus.next_deadline(1), bus.next_deadline(0)), (Some(MS), None), "each vCPU its own LAPIC");
    assert_eq!(bus.tick(MS), VcpuMask::one(1));
    assert_eq!(inject(&mut bus, 1), Some(Injection::Interrupt(0xEF)));
    // An IPI from vCPU 0 to vCPU 1, fixed vector 0x50.
    let chip = bus.irqchip_mut();
    let _ = chip.lapic_mmio_write(0, LAPIC_ICR_HIGH, 1 << 24, MS);
    assert_eq!(chip.lapic_mmio_write(0, LAPIC_ICR_LOW, 0x50, MS), VcpuMask::one(1));
    let stats = bus.irqchip().snapshot();
    assert_eq!((stats.lapic_timer, stats.lapic_timer_expiries, stats.ipi, stats.ioapic), (1, 1, 1, 0));
}

#[test]
fn an_extint_is_injected_before_lapic_vectors() {
    let mut bus = bus();
    enable_lapics(&mut bus);
    init_pic(&mut bus, ICW4_8086, 0xFE);
    let _ = bus.irqchip_mut().deliver(&InterruptMessage::fixed(0xF0, 0), None);
    start_pit(&mut bus, 0);
    let now = bus.next_deadline(0).unwrap();
    bus.tick(now);
    assert_eq!(inject(&mut bus, 0), Some(Injection::Interrupt(0x20)), "as KVM's kvm_cpu_get_interrupt");
    assert_eq!(inject(&mut bus, 0), Some(Injection::Interrupt(0xF0)));
}

/// The platform's timers run on vCPU 0's deadline: a port write (from any vCPU) that moves
/// it earlier names vCPU 0 to wake; accesses that do not (a PM timer read, a PIT command
/// that arms nothing yet) cost vCPU 0 no kick.
#[test]
fn a_port_write_that_moves_the_platform_timers_earlier_wakes_vcpu_0() {
    let mut bus = bus();
    assert!(!out(&mut bus, 0x43, PIT_CONTROL_CH0_MODE2, 1_000).contains(0), "a mode command arms nothing");
    assert!(!out(&mut bus, 0x40, PIT_COUNT & 0xFF, 1_000).contains(0), "half a count arms nothing");
    assert_eq!(bus.next_deadline(0), None);
    assert!(out(&mut bus, 0x40, PIT_COUNT >> 8, 1_000).contains(0), "the full count arms channel 0");
    assert!(bus.next_deadline(0).is_some());
    assert!(!bus.read(0x608, 4, 2_000).wake.contains(0), "a PM timer read moves no timer");

    // The RTC's periodic interrupt on a bus without the PIT: rate 6 (1024 Hz) in register
    // A, then PIE in register B arms it.
    let mut bus = self::bus();
    let _ = out(&mut bus, 0x70, 0x0A, 0);
    assert!(!out(&mut bus, 0x71, 0x26, 0).contains(0), "a rate without PIE arms nothing");
    let _ = out(&mut bus, 0x70, 0x0B, 0);
    assert!(out(&mut bus, 0x71, 0x42, 0).contains(0), "PIE arms the periodic interrupt");
}
