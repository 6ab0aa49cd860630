//! The local APIC of one vCPU (Intel SDM vol. 3A chapter 11): one register file behind
//! both interfaces, the xAPIC MMIO page and the x2APIC MSRs, switched through
//! IA32_APIC_BASE; interrupt acceptance, priority (TPR/PPR), EOI, IPIs from the ICR, and
//! the timer in one-shot, periodic and TSC-deadline modes (`timer.rs`, which states the
//! time arithmetic and its rounding).
//!
//! # How the VM drives it
//! One `Lapic` per vCPU, created with [`Lapic::new`] (its APIC ID, whether it is the boot
//! processor, the bus and TSC frequencies). Every method takes `now_ns` (host
//! nanoseconds) where time matters; the model never reads a clock.
//! - **MMIO exits** in `[DEFAULT_APIC_BASE, +0x1000)`: while [`Lapic::mode`] is
//!   [`ApicMode::XApic`], [`Lapic::read_mmio`] / [`Lapic::write_mmio`] with the page
//!   offset of a 32-bit access (a narrower read takes its bytes from the aligned dword).
//!   In the other modes the page is not the APIC's (SDM 11.12.2): treat it as unbacked.
//! - **MSR exits**: [`X2APIC_MSRS`] -> [`Lapic::read_msr`] / [`Lapic::write_msr`];
//!   [`IA32_APIC_BASE`] -> [`Lapic::apic_base`] / [`Lapic::set_apic_base`];
//!   [`IA32_TSC_DEADLINE`] -> [`Lapic::read_tsc_deadline`] / [`Lapic::write_tsc_deadline`].
//!   `Err(Gp)` means: inject #GP(0), the register is unchanged.
//! - **What a write asks for** ([`LapicEffect`]): `Ipi(message)` -> offer it to every
//!   vCPU's LAPIC (this one included) whose [`Lapic::matches_destination`] holds
//!   (`is_self` = the LAPIC that sent it) and [`Lapic::accept`] it there (lowest
//!   priority: at one matching LAPIC only, any), then kick the targets. `Eoi { vector,
//!   level: true }` -> broadcast the EOI to the I/O APIC (it clears remote IRR).
//! - **Interrupt messages** from the I/O APIC or an MSI: the same routing with
//!   `Shorthand::None` and `is_self = false`. The 8259's INTR line arrives through
//!   [`Lapic::local_interrupt`]`(Lvt::Lint0)` (call it whenever the 8259 has an
//!   unacknowledged request, also after an acknowledge that leaves one; while
//!   [`Lapic::accepts_pic_interrupts`] the pending ExtINT should follow INTR, which is
//!   what the irqchip does), the NMI pin through `Lvt::Lint1`.
//! - **Entry path**: [`Lapic::take_init`] -> INIT the vCPU and call [`Lapic::reset`] (the
//!   vCPU waits for SIPI unless it is the BSP); in wait-for-SIPI, [`Lapic::take_sipi`]
//!   starts it at the vector (discard SIPIs taken in any other state). When NMIs are
//!   unblocked, [`Lapic::take_nmi`]. When the guest can take an interrupt (IF, no
//!   shadow, nothing in flight): [`Lapic::take_ext_int`] -> the 8259's INTA gives the
//!   vector to inject; else [`Lapic::pending_vector`] -> inject it and
//!   [`Lapic::acknowledge`] it. If one is pending but the guest cannot take it, ask for an
//!   interrupt window. An injection the CPU did not complete (IDT-vectoring information)
//!   is re-injected by the backend as it was, without asking the LAPIC again. A halted
//!   vCPU wakes when any of these is pending.
//! - **Time**: arm the host timer for [`Lapic::next_deadline`] (re-read after every
//!   access: writes change it) and call [`Lapic::tick`] when it has passed; a late tick
//!   loses nothing (periodic expiries coalesce into the one IRR bit, and are counted).
//!
//! Choices: the APIC base is fixed at [`DEFAULT_APIC_BASE`] (writes of another base are
//! taken but the base stays); no CMCI entry and no directed EOI (the version register
//! says so); SMIs are dropped (there is no SMM); the arbitration priority reads 0. An xAPIC
//! LAPIC looks at the low 8 bits of a destination; an x2APIC one at all 32 (an 8-bit
//! 0xFF from an I/O APIC is not a broadcast to x2APIC LAPICs).

mod access;
mod regs;
mod timer;

#[cfg(test)]
mod tests;

use regs::*;
pub use regs::{
    APIC_BASE_BSP, APIC_BASE_EN, DEFAULT_APIC_BASE, IA32_APIC_BASE, IA32_TSC_DEADLINE, Lvt, X2APIC_MSRS,
    XAPIC_PAGE_BYTES,
};
use timer::{Timer, TimerClock, TimerMode};

use super::irq::{DeliveryMode, DestinationMode, InterruptMessage, Shorthand, Trigger};

/// The guest gets a #GP(0) for this MSR access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gp;

/// The LAPIC's place in IA32_APIC_BASE (SDM vol. 3A 11.12.5, Figure 11-27).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// EN = 0: no interrupts through the APIC; LINT0/LINT1 are the CPU's INTR and NMI.
    Disabled,
    /// EN = 1, EXTD = 0: the MMIO page.
    XApic,
    /// EN = 1, EXTD = 1: the MSRs.
    X2Apic,
}

/// What a register write asks the VM to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum LapicEffect {
    None,
    /// An ICR or SELF IPI write sent this; route it (this LAPIC may be among the targets).
    Ipi(InterruptMessage),
    /// An EOI retired `vector`; `level`: it was level triggered (TMR), so the I/O APIC
    /// must hear of it.
    Eoi {
        vector: u8,
        level: bool,
    },
}

/// The platform facts a LAPIC is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LapicConfig {
    /// Timer input frequency before the divider (KVM uses 1 GHz).
    pub bus_hz: u64,
    /// Guest TSC frequency.
    pub tsc_hz: u64,
    /// Host nanoseconds at which the guest TSC read 0 (the VM's start).
    pub tsc_origin_ns: u64,
    /// CPUID offers x2APIC (otherwise EXTD is a reserved bit).
    pub has_x2apic: bool,
}

/// The events that are not vectors in IRR: latched until the vCPU takes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingEvents {
    pub nmi: bool,
    pub init: bool,
    /// The vector of the last start-up IPI.
    pub sipi: Option<u8>,
    /// An ExtINT: the interrupt's vector comes from the 8259's acknowledge cycle.
    pub ext_int: bool,
}

/// One 256-bit register (ISR, TMR or IRR), as the eight 32-bit registers it reads as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct VectorBits([u32; 8]);

impl VectorBits {
    fn set(&mut self, vector: u8, on: bool) {
        let (word, bit) = (usize::from(vector / 32), 1 << (vector % 32));
        if on { self.0[word] |= bit } else { self.0[word] &= !bit }
    }

    fn get(&self, vector: u8) -> bool {
        self.0[usize::from(vector / 32)] & (1 << (vector % 32)) != 0
    }

    fn highest(&self) -> Option<u8> {
        (0..8)
            .rev()
            .find(|&w| self.0[w] != 0)
            .map(|w| (w * 32 + 31 - self.0[w].leading_zeros() as usize) as u8)
    }
}

/// The local APIC's state.
#[derive(Clone, Debug)]
pub struct Lapic {
    clock: TimerClock,
    has_x2apic: bool,
    /// The hardware (initial, x2APIC) APIC ID.
    initial_id: u32,
    /// BSP, EXTD and EN bits of IA32_APIC_BASE.
    base_flags: u64,
    /// The xAPIC ID register's field (writable in xAPIC mode).
    xapic_id: u8,
    tpr: u8,
    /// xAPIC LDR (bits 31:24); x2APIC derives its LDR from the ID.
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: VectorBits,
    tmr: VectorBits,
    irr: VectorBits,
    /// ESR as last latched, and the errors seen since (a write to ESR latches them).
    esr: u32,
    esr_pending: u32,
    icr_low: u32,
    /// xAPIC: the destination in bits 31:24; x2APIC: the 32-bit destination.
    icr_high: u32,
    lvt: [u32; LVT_COUNT],
    timer: Timer,
    timer_expiries: u64,
    /// Interrupts the LVT delivered, for statistics: the timer's, and LINT0/LINT1/error
    /// (not ExtINT, which the 8259's acknowledge delivers).
    timer_interrupts: u64,
    lint_error_interrupts: u64,
    events: PendingEvents,
}

impl Lapic {
    /// The power-on state (SDM vol. 3A 11.4.7.1): enabled in xAPIC mode, software
    /// disabled, every LVT masked, ID `apic_id`.
    #[must_use]
    pub fn new(apic_id: u32, is_bsp: bool, config: LapicConfig) -> Self {
        let mut lapic = Self {
            clock: TimerClock {
                bus_hz: config.bus_hz,
                tsc_hz: config.tsc_hz,
                tsc_origin_ns: config.tsc_origin_ns,
            },
            has_x2apic: config.has_x2apic,
            initial_id: apic_id,
            base_flags: APIC_BASE_EN | if is_bsp { APIC_BASE_BSP } else { 0 },
            xapic_id: apic_id as u8,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: VectorBits::default(),
            tmr: VectorBits::default(),
            irr: VectorBits::default(),
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [0; LVT_COUNT],
            timer: Timer::new(),
            timer_expiries: 0,
            timer_interrupts: 0,
            lint_error_interrupts: 0,
            events: PendingEvents::default(),
        };
        lapic.reset_registers();
        lapic
    }

    /// Every register but the ID to its power-on value (SDM vol. 3A 11.4.7.1).
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = !0;
        self.svr = SVR_RESET;
        self.isr = VectorBits::default();
        self.tmr = VectorBits::default();
        self.irr = VectorBits::default();
        self.esr = 0;
        self.esr_pending = 0;
        self.icr_low = 0;
        self.icr_high = 0;
        self.lvt = [LVT_MASKED; LVT_COUNT];
        self.timer = Timer::new();
    }

    /// INIT (SDM vol. 3A 11.4.7.3): the power-on state except the APIC ID and the mode
    /// (IA32_APIC_BASE is unchanged, 11.12.5.1). Pending NMI and ExtINT are dropped; a
    /// start-up IPI that arrived with the INIT stays for [`Lapic::take_sipi`].
    pub fn reset(&mut self) {
        self.reset_registers();
        self.events = PendingEvents { sipi: self.events.sipi, ..PendingEvents::default() };
    }

    #[must_use]
    pub fn mode(&self) -> ApicMode {
        match (self.base_flags & APIC_BASE_EN != 0, self.base_flags & APIC_BASE_EXTD != 0) {
            (false, _) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        }
    }

    fn is_enabled(&self) -> bool {
        self.mode() != ApicMode::Disabled
    }

    fn is_software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// The APIC ID the current mode uses for physical destinations.
    #[must_use]
    pub fn id(&self) -> u32 {
        if self.mode() == ApicMode::X2Apic { self.initial_id } else { u32::from(self.xapic_id) }
    }

    fn x2apic_ldr(&self) -> u32 {
        // SDM vol. 3A 11.12.10.2: cluster = ID[19:4], bit ID[3:0] within it.
        (self.initial_id >> 4) << 16 | 1 << (self.initial_id & 0xF)
    }

    /// IA32_APIC_BASE.
    #[must_use]
    pub fn apic_base(&self) -> u64 {
        DEFAULT_APIC_BASE | self.base_flags
    }

    /// A WRMSR of IA32_APIC_BASE. The transitions of SDM vol. 3A 11.12.5 (Figure 11-27):
    /// EN=0 with EXTD=1, x2APIC -> xAPIC and disabled -> x2APIC are #GP, as are reserved
    /// bits (EXTD without x2APIC support among them). Disabling resets every register but
    /// the ID; entering x2APIC mode switches to the 32-bit ID and its derived LDR.
    pub fn set_apic_base(&mut self, value: u64) -> Result<(), Gp> {
        let reserved = APIC_BASE_RESERVED | if self.has_x2apic { 0 } else { APIC_BASE_EXTD };
        if value & reserved != 0 {
            return Err(Gp);
        }
        let new = match (value & APIC_BASE_EN != 0, value & APIC_BASE_EXTD != 0) {
            (false, true) => return Err(Gp),
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        };
        let old = self.mode();
        if matches!((old, new), (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic))
        {
            return Err(Gp);
        }
        self.base_flags = value & (APIC_BASE_BSP | APIC_BASE_EXTD | APIC_BASE_EN);
        if new == ApicMode::Disabled && old != ApicMode::Disabled {
            self.reset_registers();
        }
        Ok(())
    }

    /// The task priority (CR8 is its bits 7:4), for a backend that syncs CR8.
    #[must_use]
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
    }

    /// PPR (SDM vol. 3A 11.8.3.1): the TPR if its class is at least the highest in-service
    /// class, else that class.
    #[must_use]
    pub fn ppr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 { self.tpr } else { isrv & 0xF0 }
    }

    /// The vector to inject next: the highest in IRR whose priority class is above PPR's
    /// (SDM vol. 3A 11.8.3). IRR is held while software disabled, and still delivered.
    #[must_use]
    pub fn pending_vector(&self) -> Option<u8> {
        let vector = self.irr.highest().filter(|_| self.is_enabled())?;
        (vector >> 4 > self.ppr() >> 4).then_some(vector)
    }

    /// The backend injected `vector` (from [`Lapic::pending_vector`]): IRR -> ISR.
    pub fn acknowledge(&mut self, vector: u8) {
        if self.irr.get(vector) {
            self.irr.set(vector, false);
            self.isr.set(vector, true);
        }
    }

    /// NMI, INIT, SIPI and ExtINT waiting for the vCPU.
    #[must_use]
    pub fn pending_events(&self) -> PendingEvents {
        self.events
    }

    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.events.nmi)
    }

    pub fn take_init(&mut self) -> bool {
        core::mem::take(&mut self.events.init)
    }

    pub fn take_sipi(&mut self) -> Option<u8> {
        self.events.sipi.take()
    }

    pub fn take_ext_int(&mut self) -> bool {
        core::mem::take(&mut self.events.ext_int)
    }

    /// Whether a message for `destination` reaches this LAPIC (SDM vol. 3A 11.6.2;
    /// x2APIC 11.12.10). `is_self`: this LAPIC sent it (for the ICR shorthands). A
    /// globally disabled LAPIC takes no messages.
    #[must_use]
    pub fn matches_destination(
        &self,
        destination: u32,
        mode: DestinationMode,
        shorthand: Shorthand,
        is_self: bool,
    ) -> bool {
        let x2apic = match self.mode() {
            ApicMode::Disabled => return false,
            ApicMode::XApic => false,
            ApicMode::X2Apic => true,
        };
        match (shorthand, mode) {
            (Shorthand::ToSelf, _) => is_self,
            (Shorthand::AllIncludingSelf, _) => true,
            (Shorthand::AllExcludingSelf, _) => !is_self,
            (Shorthand::None, DestinationMode::Physical) if x2apic => {
                destination == X2APIC_BROADCAST || destination == self.initial_id
            }
            (Shorthand::None, DestinationMode::Physical) => {
                let destination = destination & 0xFF;
                destination == XAPIC_BROADCAST || destination == u32::from(self.xapic_id)
            }
            (Shorthand::None, DestinationMode::Logical) if x2apic => {
                // Cluster in bits 31:16, a bit per member in 15:0 (SDM 11.12.10.2).
                let ldr = self.x2apic_ldr();
                destination == X2APIC_BROADCAST
                    || (destination >> 16 == ldr >> 16 && destination & ldr & 0xFFFF != 0)
            }
            (Shorthand::None, DestinationMode::Logical) => {
                let (destination, ldr) = (destination & 0xFF, self.ldr >> XAPIC_ID_SHIFT);
                match self.dfr >> DFR_MODEL_SHIFT {
                    _ if destination == XAPIC_BROADCAST => true,
                    DFR_MODEL_FLAT => destination & ldr != 0,
                    DFR_MODEL_CLUSTER => destination >> 4 == ldr >> 4 && destination & ldr & 0xF != 0,
                    _ => false,
                }
            }
        }
    }

    /// An interrupt message for this LAPIC (the caller checked the destination): fixed
    /// and lowest priority set IRR (and TMR when level triggered; dropped while software
    /// disabled, SDM 11.4.7.2), NMI/INIT/SIPI/ExtINT become pending events, an INIT
    /// de-assert and SMIs are ignored.
    pub fn accept(&mut self, message: &InterruptMessage) {
        if self.is_enabled() && message.assert {
            self.deliver(message.delivery, message.vector, message.trigger);
        }
    }

    fn deliver(&mut self, delivery: DeliveryMode, vector: u8, trigger: Trigger) {
        match delivery {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => self.accept_fixed(vector, trigger),
            DeliveryMode::Nmi => self.events.nmi = true,
            DeliveryMode::Init => self.events.init = true,
            DeliveryMode::StartUp => self.events.sipi = Some(vector),
            DeliveryMode::ExtInt => self.events.ext_int = true,
            DeliveryMode::Smi => {}
        }
    }

    fn accept_fixed(&mut self, vector: u8, trigger: Trigger) {
        if !self.is_software_enabled() {
            return;
        }
        if vector < FIRST_LEGAL_VECTOR {
            self.record_error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        self.irr.set(vector, true);
        self.tmr.set(vector, trigger == Trigger::Level);
    }

    /// A local interrupt source fired: LINT0 (the 8259's INTR), LINT1 (NMI), or another
    /// LVT entry. Delivered as its LVT entry says, unless masked; with the LAPIC globally
    /// disabled, LINT0 is an ExtINT and LINT1 an NMI (SDM vol. 3A 11.4.3).
    pub fn local_interrupt(&mut self, source: Lvt) {
        if !self.is_enabled() {
            match source {
                Lvt::Lint0 => self.events.ext_int = true,
                Lvt::Lint1 => {
                    self.events.nmi = true;
                    self.lint_error_interrupts += 1;
                }
                _ => {}
            }
            return;
        }
        let entry = self.lvt[source.index()];
        if entry & LVT_MASKED != 0 {
            return;
        }
        // The timer and error entries have no delivery mode field: fixed.
        let delivery = DeliveryMode::from_bits(((entry & source.writable() & DELIVERY_MODE_MASK) >> 8) as u8);
        let trigger =
            if entry & source.writable() & LVT_LEVEL_TRIGGERED != 0 { Trigger::Level } else { Trigger::Edge };
        if let Some(delivery) = delivery {
            self.deliver(delivery, entry as u8, trigger);
            match (source, delivery) {
                (_, DeliveryMode::ExtInt) => {}
                (Lvt::Timer, _) => self.timer_interrupts += 1,
                _ => self.lint_error_interrupts += 1,
            }
        }
    }

    /// Whether the 8259's INTR reaches this LAPIC as an ExtINT (KVM's
    /// `kvm_apic_accept_pic_intr`): the LAPIC globally disabled (LINT0 is the CPU's INTR
    /// pin), or LINT0 unmasked in ExtINT mode. ExtINT is level-sensitive (SDM vol. 3A
    /// 11.5.1: its trigger mode is always level), so while this holds the pending ExtINT
    /// follows INTR.
    #[must_use]
    pub fn accepts_pic_interrupts(&self) -> bool {
        let lint0 = self.lvt[Lvt::Lint0.index()];
        !self.is_enabled()
            || (lint0 & LVT_MASKED == 0
                && DeliveryMode::from_bits(((lint0 & DELIVERY_MODE_MASK) >> 8) as u8)
                    == Some(DeliveryMode::ExtInt))
    }

    /// Programs LINT0 as PC firmware leaves the boot processor's LAPIC: ExtINT, unmasked
    /// ("virtual wire mode", MP specification 1.4 section 3.6.2.2), so that the 8259 reaches
    /// a guest that never touches its LAPIC. QEMU (`apic_reset_common`) and KVM
    /// (`KVM_X86_QUIRK_LINT0_REENABLED`) do the same at reset of the BSP.
    pub fn set_virtual_wire(&mut self) {
        self.lvt[Lvt::Lint0.index()] =
            u32::from(DeliveryMode::ExtInt.bits()) << DELIVERY_MODE_MASK.trailing_zeros();
    }

    /// The timer's and LINT0/LINT1/error interrupts this LAPIC delivered (for statistics).
    #[must_use]
    pub fn local_interrupt_counts(&self) -> (u64, u64) {
        (self.timer_interrupts, self.lint_error_interrupts)
    }

    /// An error (SDM vol. 3A 11.5.3): kept for the next ESR write; a new one raises the
    /// LVT error interrupt.
    fn record_error(&mut self, bits: u32) {
        let new = bits & !self.esr_pending;
        self.esr_pending |= bits;
        if new != 0 {
            self.local_interrupt(Lvt::Error);
        }
    }

    fn timer_mode(&self) -> TimerMode {
        TimerMode::of_lvt(self.lvt[Lvt::Timer.index()])
    }

    /// Delivers the timer expiries due at `now_ns` (an interrupt unless the LVT timer is
    /// masked; a periodic timer reloads either way) and returns how many there were.
    pub fn tick(&mut self, now_ns: u64) -> u64 {
        let expiries = self.timer.expire(self.timer_mode(), &self.clock, now_ns);
        if expiries > 0 {
            self.timer_expiries = self.timer_expiries.saturating_add(expiries);
            self.local_interrupt(Lvt::Timer);
        }
        expiries
    }

    /// When [`Lapic::tick`] has something to deliver (host ns), if anything: `None` while
    /// the timer is stopped, disarmed or masked (a masked count still runs and reloads,
    /// and is brought up to date when the LVT changes).
    #[must_use]
    pub fn next_deadline(&self) -> Option<u64> {
        if self.lvt[Lvt::Timer.index()] & LVT_MASKED != 0 {
            return None;
        }
        self.timer.next_deadline(self.timer_mode(), &self.clock)
    }

    /// Timer expiries since creation (masked ones included), for statistics.
    #[must_use]
    pub fn timer_expiries(&self) -> u64 {
        self.timer_expiries
    }

    /// RDMSR of IA32_TSC_DEADLINE: the armed deadline; 0 once passed or outside
    /// TSC-deadline mode.
    #[must_use]
    pub fn read_tsc_deadline(&self, now_ns: u64) -> u64 {
        self.timer.tsc_deadline(self.timer_mode(), &self.clock, now_ns)
    }

    /// WRMSR of IA32_TSC_DEADLINE, a guest TSC value (converted to host time as `timer.rs`
    /// states; 0 disarms). Ignored outside TSC-deadline mode (SDM vol. 3A 11.5.4.1).
    pub fn write_tsc_deadline(&mut self, tsc: u64, now_ns: u64) {
        self.tick(now_ns);
        self.timer.set_tsc_deadline(self.timer_mode(), tsc);
    }
}
