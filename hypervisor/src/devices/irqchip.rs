//! The VM's interrupt controllers together: one local APIC per vCPU and the I/O APIC, and
//! the routing between them (ARCHITECTURE.md, "One interrupt path"). Plain data, behind
//! the VM's device lock with the port devices (`PortBus` owns one); host-tested.
//!
//! # What the VM calls
//! - **Entry path**, before each entry of vCPU `v`: [`Irqchip::entry_events`] with what
//!   the guest can take now ([`Openings`], read from the backend). It picks at most one
//!   event to inject, takes it out of the LAPIC (IRR -> ISR, or the NMI latch), and says
//!   whether an interrupt or NMI window is still wanted. An event the backend had in
//!   flight at the last exit is re-injected by the backend's `EventQueue` and never asks
//!   here again (so the caller passes closed [`Openings`] while one is in flight).
//! - **HLT**: the vCPU sleeps until [`Irqchip::wakes_from_halt`] holds, or until
//!   [`Irqchip::next_deadline`] passes (then [`Irqchip::tick`]), or until it is woken.
//! - **Exits that reach a controller**: LAPIC MSRs ([`Irqchip::msr_read`] /
//!   [`Irqchip::msr_write`]: IA32_APIC_BASE, IA32_TSC_DEADLINE, the x2APIC range), the
//!   xAPIC page ([`Irqchip::lapic_mmio_read`] / [`Irqchip::lapic_mmio_write`]), the I/O
//!   APIC page ([`Irqchip::ioapic_mmio_read`] / [`Irqchip::ioapic_mmio_write`]).
//! - **Device lines**: [`Irqchip::set_irq`].
//!
//! Everything that can make an interrupt pending on some vCPU returns a [`VcpuMask`]: the
//! vCPUs to wake (if halted) or kick (if in the guest), so that the new interrupt is seen
//! without waiting for the next host tick. The caller does that after dropping the lock.

use super::ioapic::IoApic;
use super::irq::InterruptMessage;
use super::lapic::{
    ApicMode, DEFAULT_APIC_BASE, Gp, IA32_APIC_BASE, IA32_TSC_DEADLINE, Lapic, LapicConfig, LapicEffect,
    X2APIC_MSRS, XAPIC_PAGE_BYTES,
};
use alloc::vec::Vec;

/// The most vCPUs a VM has (`vm::MAX_VCPUS`): one bit each in a [`VcpuMask`].
pub const MAX_VCPUS: usize = 64;

/// A set of vCPU indices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuMask(u64);

impl VcpuMask {
    pub const EMPTY: Self = Self(0);

    #[must_use]
    pub const fn one(vcpu: u32) -> Self {
        Self(1 << vcpu)
    }

    #[must_use]
    pub const fn contains(self, vcpu: u32) -> bool {
        vcpu < MAX_VCPUS as u32 && self.0 & (1 << vcpu) != 0
    }

    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn insert(&mut self, vcpu: u32) {
        self.0 |= 1 << vcpu;
    }

    /// The indices, ascending.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..MAX_VCPUS as u32).filter(move |&v| self.contains(v))
    }
}

/// What the guest on a vCPU can take at the next entry, as the backend reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Openings {
    /// RFLAGS.IF set, no STI/MOV SS shadow, no event in flight.
    pub interrupt: bool,
    /// NMIs not blocked (no NMI handler running), no shadow, no event in flight.
    pub nmi: bool,
}

/// The event one entry injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    Nmi,
    /// An external interrupt with this vector (from the LAPIC, or the 8259's INTA).
    Interrupt(u8),
}

/// The entry path's answer for one entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryEvents {
    pub inject: Option<Injection>,
    /// An interrupt is pending that the guest cannot take now: ask for an exit when it can
    /// (VMX interrupt-window exiting, SVM VINTR).
    pub interrupt_window: bool,
    /// An NMI is pending while NMIs are blocked.
    pub nmi_window: bool,
}

/// The VM's local APICs and I/O APIC.
#[derive(Clone, Debug)]
pub struct Irqchip {
    lapics: Vec<Lapic>,
    ioapic: IoApic,
    config: LapicConfig,
}

impl Irqchip {
    /// `vcpus` local APICs (APIC ID = vCPU index, vCPU 0 the BSP) and the I/O APIC, at
    /// power-on.
    #[must_use]
    pub fn new(vcpus: u32, config: LapicConfig) -> Self {
        let vcpus = vcpus.min(MAX_VCPUS as u32);
        Self {
            lapics: (0..vcpus).map(|v| Lapic::new(v, v == 0, config)).collect(),
            ioapic: IoApic::new(),
            config,
        }
    }

    /// A platform reset: every controller at power-on.
    pub fn reset(&mut self) {
        *self = Self::new(self.lapics.len() as u32, self.config);
    }

    #[must_use]
    pub fn vcpus(&self) -> u32 {
        self.lapics.len() as u32
    }

    /// vCPU `vcpu`'s LAPIC (for stats and tests). Panics on an index out of range: vCPU
    /// indices come from the VM, never from the guest.
    #[must_use]
    pub fn lapic(&self, vcpu: u32) -> &Lapic {
        &self.lapics[vcpu as usize]
    }

    /// Offers `message` to every LAPIC it names (`source`: the vCPU whose ICR sent it, for
    /// the shorthands; `None` for the I/O APIC and MSIs). Lowest priority goes to one
    /// matching LAPIC: the lowest-numbered (any one is allowed, SDM vol. 3A 11.6.2.4).
    pub fn deliver(&mut self, message: &InterruptMessage, source: Option<u32>) -> VcpuMask {
        let mut targets = VcpuMask::EMPTY;
        for (v, lapic) in self.lapics.iter_mut().enumerate() {
            let is_self = source == Some(v as u32);
            if lapic.matches_destination(
                message.destination,
                message.destination_mode,
                message.shorthand,
                is_self,
            ) {
                lapic.accept(message);
                targets.insert(v as u32);
                if message.delivery == super::irq::DeliveryMode::LowestPriority {
                    break;
                }
            }
        }
        targets
    }

    fn apply(&mut self, vcpu: u32, effect: LapicEffect) -> VcpuMask {
        match effect {
            LapicEffect::None => VcpuMask::EMPTY,
            LapicEffect::Ipi(message) => self.deliver(&message, Some(vcpu)),
            LapicEffect::Eoi { vector, level } => match level.then(|| self.ioapic.end_of_interrupt(vector)) {
                Some(Some(message)) => self.deliver(&message, None),
                _ => VcpuMask::EMPTY,
            },
        }
    }

    /// Whether `msr` is one of the LAPIC's (the caller sends the access here).
    #[must_use]
    pub fn is_lapic_msr(msr: u32) -> bool {
        msr == IA32_APIC_BASE || msr == IA32_TSC_DEADLINE || X2APIC_MSRS.contains(&msr)
    }

    /// RDMSR of a LAPIC MSR on `vcpu`. `Err(Gp)`: inject #GP(0).
    pub fn msr_read(&mut self, vcpu: u32, msr: u32, now_ns: u64) -> Result<u64, Gp> {
        let lapic = &self.lapics[vcpu as usize];
        match msr {
            IA32_APIC_BASE => Ok(lapic.apic_base()),
            IA32_TSC_DEADLINE => Ok(lapic.read_tsc_deadline(now_ns)),
            _ => lapic.read_msr(msr, now_ns),
        }
    }

    /// WRMSR of a LAPIC MSR on `vcpu`. `Err(Gp)`: inject #GP(0), nothing changed.
    pub fn msr_write(&mut self, vcpu: u32, msr: u32, value: u64, now_ns: u64) -> Result<VcpuMask, Gp> {
        let lapic = &mut self.lapics[vcpu as usize];
        let effect = match msr {
            IA32_APIC_BASE => lapic.set_apic_base(value).map(|()| LapicEffect::None)?,
            IA32_TSC_DEADLINE => {
                lapic.write_tsc_deadline(value, now_ns);
                LapicEffect::None
            }
            _ => lapic.write_msr(msr, value, now_ns)?,
        };
        Ok(self.apply(vcpu, effect))
    }

    /// Whether `gpa` is on vCPU `vcpu`'s xAPIC page (only while its LAPIC is in xAPIC mode:
    /// otherwise the page is not the APIC's, SDM vol. 3A 11.12.2).
    #[must_use]
    pub fn is_lapic_mmio(&self, vcpu: u32, gpa: u64) -> bool {
        self.lapics[vcpu as usize].mode() == ApicMode::XApic
            && (DEFAULT_APIC_BASE..DEFAULT_APIC_BASE + u64::from(XAPIC_PAGE_BYTES)).contains(&gpa)
    }

    /// A 32-bit read at `offset` in vCPU `vcpu`'s xAPIC page.
    pub fn lapic_mmio_read(&mut self, vcpu: u32, offset: u32, now_ns: u64) -> u32 {
        self.lapics[vcpu as usize].read_mmio(offset, now_ns)
    }

    /// A 32-bit write at `offset` in vCPU `vcpu`'s xAPIC page.
    pub fn lapic_mmio_write(&mut self, vcpu: u32, offset: u32, value: u32, now_ns: u64) -> VcpuMask {
        let effect = self.lapics[vcpu as usize].write_mmio(offset, value, now_ns);
        self.apply(vcpu, effect)
    }

    /// Whether `gpa` is on the I/O APIC's page.
    #[must_use]
    pub fn is_ioapic_mmio(gpa: u64) -> bool {
        use super::ioapic::{IOAPIC_BASE, IOAPIC_MMIO_SIZE};
        (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_MMIO_SIZE).contains(&gpa)
    }

    /// A 32-bit read at `offset` in the I/O APIC's page.
    pub fn ioapic_mmio_read(&mut self, offset: u64) -> u32 {
        self.ioapic.read(offset)
    }

    /// A 32-bit write at `offset` in the I/O APIC's page.
    pub fn ioapic_mmio_write(&mut self, offset: u64, value: u32) -> VcpuMask {
        match self.ioapic.write(offset, value) {
            Some(message) => self.deliver(&message, None),
            None => VcpuMask::EMPTY,
        }
    }

    /// ISA/GSI line `irq` is now at `level`.
    pub fn set_irq(&mut self, irq: u8, level: bool) -> VcpuMask {
        match self.ioapic.set_irq(usize::from(irq), level) {
            Some(message) => self.deliver(&message, None),
            None => VcpuMask::EMPTY,
        }
    }

    /// Delivers every timer expiry due at `now_ns`.
    pub fn tick(&mut self, now_ns: u64) -> VcpuMask {
        let mut targets = VcpuMask::EMPTY;
        for (v, lapic) in self.lapics.iter_mut().enumerate() {
            if lapic.next_deadline().is_some_and(|deadline| deadline <= now_ns) && lapic.tick(now_ns) > 0 {
                targets.insert(v as u32);
            }
        }
        targets
    }

    /// The earliest host time at which [`Irqchip::tick`] has something for `vcpu`.
    #[must_use]
    pub fn next_deadline(&self, vcpu: u32) -> Option<u64> {
        self.lapics[vcpu as usize].next_deadline()
    }

    /// What the next entry of `vcpu` injects, given what the guest can take; the injected
    /// event leaves the LAPIC.
    pub fn entry_events(&mut self, vcpu: u32, open: Openings) -> EntryEvents {
        let lapic = &mut self.lapics[vcpu as usize];
        let mut events = EntryEvents::default();
        if lapic.pending_events().nmi {
            if open.nmi {
                lapic.take_nmi();
                events.inject = Some(Injection::Nmi);
                return events;
            }
            events.nmi_window = true;
        }
        if let Some(vector) = lapic.pending_vector() {
            if open.interrupt && events.inject.is_none() {
                lapic.acknowledge(vector);
                events.inject = Some(Injection::Interrupt(vector));
            } else {
                events.interrupt_window = true;
            }
        }
        events
    }

    /// An INIT for `vcpu` was pending (and is taken): the VM puts the vCPU in its INIT
    /// state (the BSP restarts at its entry, an AP waits for a SIPI) and the LAPIC resets.
    pub fn take_init(&mut self, vcpu: u32) -> bool {
        let lapic = &mut self.lapics[vcpu as usize];
        let init = lapic.take_init();
        if init {
            lapic.reset();
        }
        init
    }

    /// The vector of a start-up IPI pending for `vcpu` (taken): an AP waiting for SIPI
    /// starts in real mode at `vector << 12`; in any other state the caller discards it.
    pub fn take_sipi(&mut self, vcpu: u32) -> Option<u8> {
        self.lapics[vcpu as usize].take_sipi()
    }

    /// Whether `vcpu`, halted, wakes now: an NMI, INIT or SIPI is pending, or an interrupt
    /// the guest would take (`interrupts_enabled`: its RFLAGS.IF).
    #[must_use]
    pub fn wakes_from_halt(&self, vcpu: u32, interrupts_enabled: bool) -> bool {
        let lapic = &self.lapics[vcpu as usize];
        let events = lapic.pending_events();
        events.nmi
            || events.init
            || events.sipi.is_some()
            || (interrupts_enabled && (lapic.pending_vector().is_some() || events.ext_int))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::irq::InterruptMessage;

    const CONFIG: LapicConfig =
        LapicConfig { bus_hz: 1_000_000_000, tsc_hz: 1_000_000_000, tsc_origin_ns: 0, has_x2apic: true };

    /// SVR with the APIC software-enabled (bit 8) and spurious vector 0xFF.
    const SVR_ENABLED: u32 = 0x1FF;
    const SVR_OFFSET: u32 = 0xF0;
    const X2APIC_SVR: u32 = 0x80F;

    fn chip(vcpus: u32) -> Irqchip {
        let mut chip = Irqchip::new(vcpus, CONFIG);
        for v in 0..vcpus {
            let _ = chip.lapic_mmio_write(v, SVR_OFFSET, SVR_ENABLED, 0);
        }
        chip
    }

    #[test]
    fn a_fixed_message_reaches_only_its_destination_and_is_injected_once() {
        let mut chip = chip(2);
        let targets = chip.deliver(&InterruptMessage::fixed(0x40, 1), None);
        assert_eq!(targets, VcpuMask::one(1));
        let open = Openings { interrupt: true, nmi: true };
        assert_eq!(chip.entry_events(0, open).inject, None);
        assert_eq!(chip.entry_events(1, open).inject, Some(Injection::Interrupt(0x40)));
        assert_eq!(chip.entry_events(1, open).inject, None, "in service now, not pending again");
    }

    #[test]
    fn a_closed_guest_asks_for_a_window_and_keeps_the_interrupt() {
        let mut chip = chip(1);
        let _ = chip.deliver(&InterruptMessage::fixed(0x40, 0), None);
        let closed = chip.entry_events(0, Openings::default());
        assert_eq!(closed, EntryEvents { inject: None, interrupt_window: true, nmi_window: false });
        assert!(!chip.wakes_from_halt(0, false), "HLT with IF=0 stays halted");
        assert!(chip.wakes_from_halt(0, true));
        let open = chip.entry_events(0, Openings { interrupt: true, nmi: true });
        assert_eq!(open.inject, Some(Injection::Interrupt(0x40)));
    }

    #[test]
    fn x2apic_msrs_reach_the_lapic_and_apic_base_switches_modes() {
        let mut chip = Irqchip::new(2, CONFIG);
        let base = chip.msr_read(0, IA32_APIC_BASE, 0).unwrap();
        assert_eq!(base & !0xFFF, DEFAULT_APIC_BASE);
        assert!(chip.is_lapic_mmio(0, DEFAULT_APIC_BASE + 0x20));
        const EXTD: u64 = 1 << 10;
        chip.msr_write(0, IA32_APIC_BASE, base | EXTD, 0).unwrap();
        assert!(!chip.is_lapic_mmio(0, DEFAULT_APIC_BASE + 0x20), "x2APIC mode: the page is not the APIC's");
        chip.msr_write(0, X2APIC_SVR, u64::from(SVR_ENABLED), 0).unwrap();
        assert_eq!(chip.msr_read(0, X2APIC_SVR, 0), Ok(u64::from(SVR_ENABLED)));
        assert_eq!(chip.msr_read(1, X2APIC_SVR, 0), Err(Gp), "vCPU 1 is still in xAPIC mode");
    }
}
