//! The VM's interrupt controllers together: one local APIC per vCPU, the I/O APIC and the
//! 8259A pair, and the routing between them (ARCHITECTURE.md, "One interrupt path").
//! Plain data, behind the VM's device lock with the port devices (`PortBus` owns one);
//! host-tested.
//!
//! # The wiring (as on a PC, and as QEMU and KVM wire their models)
//! - An ISA line ([`Irqchip::set_irq`], IRQ 0-15) drives both the 8259 pair and the I/O
//!   APIC: IRQ 0 (the PIT) reaches I/O APIC pin 2 (the MADT's interrupt source override),
//!   IRQ 2 (the cascade) no pin, every other ISA IRQ the pin of its number. Lines 16-23
//!   are I/O APIC pins only.
//! - The 8259 pair's INTR drives LINT0 of vCPU 0's LAPIC. While that LAPIC takes it as
//!   an ExtINT ([`Lapic::accepts_pic_interrupts`]: globally disabled, or LINT0 unmasked in
//!   ExtINT mode, which is how vCPU 0's LAPIC comes out of reset, as firmware leaves it),
//!   its pending ExtINT follows INTR (level-sensitive, as KVM's `kvm_cpu_has_extint`);
//!   in another LINT0 mode a rising INTR is one LINT0 interrupt. The entry path takes an
//!   ExtINT before LAPIC vectors (KVM's `kvm_cpu_get_interrupt`) and gets its vector
//!   from the pair's INTA cycle.
//! - A LAPIC's EOI of a level-triggered vector is broadcast to the I/O APIC (remote IRR).
//!
//! # What the VM calls
//! - **Entry path**, before each entry of vCPU `v`: [`Irqchip::entry_events`] with what
//!   the guest can take now ([`Openings`], read from the backend). It picks at most one
//!   event to inject, takes it out of the LAPIC (IRR -> ISR, or the NMI latch), and says
//!   whether an interrupt or NMI window is still wanted. An event the backend had in
//!   flight at the last exit is re-injected by the backend's `EventQueue` and never asks
//!   here again (so the caller passes closed [`Openings`] while one is in flight).
//! - **HLT**: the vCPU sleeps until [`Irqchip::wakes_from_halt`] holds, or until its
//!   next deadline passes (then a tick), or until it is woken. The VM takes the deadline
//!   and the tick from the port bus (`PortBus::next_deadline`, `PortBus::tick`), which
//!   add the platform timers to [`Irqchip::next_deadline`] and [`Irqchip::tick`].
//! - **Exits that reach a controller**: LAPIC MSRs ([`Irqchip::msr_read`] /
//!   [`Irqchip::msr_write`]: IA32_APIC_BASE, IA32_TSC_DEADLINE, the x2APIC range), the
//!   xAPIC page ([`Irqchip::lapic_mmio_read`] / [`Irqchip::lapic_mmio_write`]), the I/O
//!   APIC page ([`Irqchip::ioapic_mmio_read`] / [`Irqchip::ioapic_mmio_write`]).
//! - **Device lines** (the port bus drives them): [`Irqchip::set_irq`] with each level change (an edge-triggered
//!   source such as the PIT raises and lowers its line); [`Irqchip::pit_expired`] for the
//!   PIT's edges. The 8259 ports: [`Irqchip::pic_read`] / [`Irqchip::pic_write`].
//! - **Statistics**: [`Irqchip::snapshot`] (kept across a platform reset).
//!
//! Everything that can make an interrupt pending on some vCPU returns a [`VcpuMask`]: the
//! vCPUs to wake (if halted) or kick (if in the guest), so that the new interrupt is seen
//! without waiting for the next host tick. The caller does that after dropping the lock.

use super::ioapic::IoApic;
use super::irq::InterruptMessage;
use super::lapic::{
    ApicMode, DEFAULT_APIC_BASE, Gp, IA32_APIC_BASE, IA32_TSC_DEADLINE, Lapic, LapicConfig, LapicEffect, Lvt,
    X2APIC_MSRS, XAPIC_PAGE_BYTES,
};
use super::pic::Pic8259Pair;
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

    /// How many vCPUs the set holds.
    #[must_use]
    pub const fn len(self) -> u32 {
        self.0.count_ones()
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

/// The VM's interrupt statistics: interrupts delivered, by source, and timer expiries.
/// A message counts once per LAPIC that accepted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IrqStats {
    /// Vectors the 8259 pair answered in INTA cycles that the entry path injected.
    pub pic_ext_int: u64,
    /// I/O APIC messages (device lines, unmasking, EOI redelivery).
    pub ioapic: u64,
    /// Inter-processor interrupts (ICR and SELF IPI writes).
    pub ipi: u64,
    /// LAPIC timer interrupts (an unmasked LVT timer entry; expiries coalesce into one).
    pub lapic_timer: u64,
    /// LAPIC LINT0/LINT1 (other than ExtINT) and error interrupts.
    pub lapic_local: u64,
    /// LAPIC timer expiries, masked ones included.
    pub lapic_timer_expiries: u64,
    /// Rising edges of the PIT's channel 0 output (ISA IRQ 0).
    pub pit_expiries: u64,
    /// INTA cycles that found nothing requesting (spurious IRQ 7 or 15).
    pub spurious_inta: u64,
}

impl IrqStats {
    fn plus(self, other: Self) -> Self {
        Self {
            pic_ext_int: self.pic_ext_int + other.pic_ext_int,
            ioapic: self.ioapic + other.ioapic,
            ipi: self.ipi + other.ipi,
            lapic_timer: self.lapic_timer + other.lapic_timer,
            lapic_local: self.lapic_local + other.lapic_local,
            lapic_timer_expiries: self.lapic_timer_expiries + other.lapic_timer_expiries,
            pit_expiries: self.pit_expiries + other.pit_expiries,
            spurious_inta: self.spurious_inta + other.spurious_inta,
        }
    }
}

/// The ISA IRQ of the PIT's channel 0.
const PIT_IRQ: u8 = 0;
/// The I/O APIC pin ISA IRQ 0 reaches (the MADT's interrupt source override,
/// `firmware::acpi`).
const PIT_GSI: usize = 2;
/// The 8259 pair's ISA lines: IRQ 0-15.
const ISA_IRQS: u8 = 16;
/// The cascade input: no device drives ISA IRQ 2, and GSI 2 is IRQ 0's.
const CASCADE_IRQ: u8 = 2;

/// The I/O APIC pin an ISA IRQ or GSI reaches (QEMU's `kvm_pc_setup_irq_routing`).
fn ioapic_pin(irq: u8) -> Option<usize> {
    match irq {
        PIT_IRQ => Some(PIT_GSI),
        CASCADE_IRQ => None,
        irq => Some(usize::from(irq)),
    }
}

/// Which counter a delivered message adds to.
#[derive(Clone, Copy)]
enum Source {
    IoApic,
    Ipi,
}

/// The VM's local APICs, I/O APIC and 8259 pair.
#[derive(Clone, Debug)]
pub struct Irqchip {
    lapics: Vec<Lapic>,
    ioapic: IoApic,
    pic: Pic8259Pair,
    /// The pair's INTR as last seen, for its rising edges.
    pic_output: bool,
    config: LapicConfig,
    /// Counters kept here (the LAPICs count their own local interrupts and expiries);
    /// after a reset, also everything counted before it.
    stats: IrqStats,
}

impl Irqchip {
    /// `vcpus` local APICs (APIC ID = vCPU index, vCPU 0 the BSP), the I/O APIC and the
    /// 8259 pair, at power-on; vCPU 0's LINT0 as firmware leaves it (virtual wire).
    #[must_use]
    pub fn new(vcpus: u32, config: LapicConfig) -> Self {
        let vcpus = vcpus.min(MAX_VCPUS as u32);
        let mut chip = Self {
            lapics: (0..vcpus).map(|v| Lapic::new(v, v == 0, config)).collect(),
            ioapic: IoApic::new(),
            pic: Pic8259Pair::new(),
            pic_output: false,
            config,
            stats: IrqStats::default(),
        };
        if let Some(bsp) = chip.lapics.first_mut() {
            bsp.set_virtual_wire();
        }
        chip
    }

    /// A platform reset: every controller at power-on (the statistics go on).
    pub fn reset(&mut self) {
        let stats = self.snapshot();
        *self = Self::new(self.lapics.len() as u32, self.config);
        self.stats = stats;
    }

    /// The interrupt statistics so far.
    #[must_use]
    pub fn snapshot(&self) -> IrqStats {
        self.lapics.iter().fold(self.stats, |sum, lapic| {
            let (timer, local) = lapic.local_interrupt_counts();
            sum.plus(IrqStats {
                lapic_timer: timer,
                lapic_local: local,
                lapic_timer_expiries: lapic.timer_expiries(),
                ..IrqStats::default()
            })
        })
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

    /// [`Irqchip::deliver`], counted.
    fn deliver_counted(
        &mut self,
        message: Option<InterruptMessage>,
        source: Option<u32>,
        kind: Source,
    ) -> VcpuMask {
        let Some(message) = message else { return VcpuMask::EMPTY };
        let targets = self.deliver(&message, source);
        let counter = match kind {
            Source::IoApic => &mut self.stats.ioapic,
            Source::Ipi => &mut self.stats.ipi,
        };
        *counter += u64::from(targets.len());
        targets
    }

    /// What a register write of `vcpu`'s LAPIC asks for; a write to vCPU 0's LAPIC may
    /// also change whether it takes the 8259's INTR (LINT0, APIC_BASE, SVR).
    fn apply(&mut self, vcpu: u32, effect: LapicEffect) -> VcpuMask {
        let targets = match effect {
            LapicEffect::None => VcpuMask::EMPTY,
            LapicEffect::Ipi(message) => self.deliver_counted(Some(message), Some(vcpu), Source::Ipi),
            LapicEffect::Eoi { vector, level } => {
                let message = if level { self.ioapic.end_of_interrupt(vector) } else { None };
                self.deliver_counted(message, None, Source::IoApic)
            }
        };
        if vcpu == 0 { targets.union(self.sync_pic()) } else { targets }
    }

    /// Passes the 8259 pair's INTR on to vCPU 0's LINT0 (see the module doc): a pending
    /// ExtINT that follows INTR while the LAPIC takes ExtINTs, one LINT0 interrupt per
    /// rising edge otherwise. Returns vCPU 0 when something became pending there.
    fn sync_pic(&mut self) -> VcpuMask {
        let output = self.pic.output();
        let rising = output && !self.pic_output;
        self.pic_output = output;
        let Some(bsp) = self.lapics.first_mut() else { return VcpuMask::EMPTY };
        let latched = bsp.pending_events().ext_int;
        if bsp.accepts_pic_interrupts() {
            if output && !latched {
                bsp.local_interrupt(Lvt::Lint0);
                return VcpuMask::one(0);
            }
            if !output && latched {
                bsp.take_ext_int();
            }
            return VcpuMask::EMPTY;
        }
        if latched {
            // Latched while LINT0 took ExtINTs, which it no longer does.
            bsp.take_ext_int();
        }
        if !rising {
            return VcpuMask::EMPTY;
        }
        // Fixed or NMI mode, or masked: wake vCPU 0 only if something became pending.
        let before = (bsp.pending_events(), bsp.pending_vector());
        bsp.local_interrupt(Lvt::Lint0);
        if (bsp.pending_events(), bsp.pending_vector()) == before {
            VcpuMask::EMPTY
        } else {
            VcpuMask::one(0)
        }
    }

    /// A byte read of an 8259 port (0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1); a poll read
    /// acknowledges. Returns the byte and the vCPUs to wake.
    pub fn pic_read(&mut self, port: u16) -> (u8, VcpuMask) {
        let value = self.pic.read(port);
        (value, self.sync_pic())
    }

    /// A byte write to an 8259 port; returns the vCPUs to wake (an unmask with a request
    /// latched, for one).
    pub fn pic_write(&mut self, port: u16, value: u8) -> VcpuMask {
        self.pic.write(port, value);
        self.sync_pic()
    }

    /// The PIT's channel 0 output rose `edges` times since the last call: one pulse on ISA
    /// IRQ 0 (more would only set the same IRR bits again: the requests coalesce, as on
    /// hardware when the guest is slower than the timer), all of them counted.
    pub fn pit_expired(&mut self, edges: u64) -> VcpuMask {
        if edges == 0 {
            return VcpuMask::EMPTY;
        }
        self.stats.pit_expiries += edges;
        let raised = self.set_irq(PIT_IRQ, true);
        raised.union(self.set_irq(PIT_IRQ, false))
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
        let message = self.ioapic.write(offset, value);
        self.deliver_counted(message, None, Source::IoApic)
    }

    /// ISA/GSI line `irq` is now at `level` (its electrical level: call it on changes;
    /// an edge-triggered source raises and lowers it). ISA IRQs 0-15 reach the 8259 pair
    /// and the I/O APIC, GSIs 16-23 the I/O APIC; see the module doc for the pins.
    pub fn set_irq(&mut self, irq: u8, level: bool) -> VcpuMask {
        let mut targets = VcpuMask::EMPTY;
        if irq < ISA_IRQS {
            self.pic.set_irq(irq, level);
            targets = self.sync_pic();
        }
        let message = ioapic_pin(irq).and_then(|pin| self.ioapic.set_irq(pin, level));
        targets.union(self.deliver_counted(message, None, Source::IoApic))
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
    /// event leaves the LAPIC. Priority: NMI, then an ExtINT (its vector from the 8259
    /// pair's INTA cycle), then the LAPIC's highest deliverable vector.
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
        if lapic.pending_events().ext_int {
            if !open.interrupt {
                events.interrupt_window = true;
                return events;
            }
            lapic.take_ext_int();
            let inta = self.pic.inta();
            if inta.is_spurious {
                self.stats.spurious_inta += 1;
            }
            self.stats.pic_ext_int += 1;
            // INTR may still be high (another request): LINT0 sees it again.
            let _ = self.sync_pic();
            events.inject = Some(Injection::Interrupt(inta.vector));
            return events;
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
            if vcpu == 0 {
                // As at reset (KVM's LINT0 quirk applies at INIT of the BSP too); the vCPU
                // is about to enter, so nobody needs waking.
                lapic.set_virtual_wire();
                let _ = self.sync_pic();
            }
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
