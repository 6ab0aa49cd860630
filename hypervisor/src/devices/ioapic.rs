//! An 82093AA-style I/O APIC with 24 pins and version 0x20 (so it has the EOI register
//! of later I/O APICs): turns device interrupt lines into [`InterruptMessage`]s for the
//! local APICs.
//!
//! Register map: Intel 82093AA I/O APIC datasheet, 3.0 "Register Description": two
//! memory-mapped registers, IOREGSEL (offset 0x00) selecting an indirect register and
//! IOWIN (0x10) reading or writing it; the EOI register (0x40) of version 0x20 parts
//! (ICH/PIIX4-era and later I/O APICs; KVM and QEMU model it too). Indirect registers:
//! ID (0x00), version (0x01), arbitration (0x02), redirection table (0x10 + 2n low
//! dword, 0x11 + 2n high dword, for pins n = 0..23).
//!
//! How the VM drives it:
//! - A guest access to the page at [`IOAPIC_BASE`] (a nested page fault outside every
//!   slot, decoded by the instruction emulator) calls [`IoApic::read`] or
//!   [`IoApic::write`] with the offset in the page and a 32-bit value (the registers are
//!   32-bit; the emulator narrows or widens other access sizes). A write can return a
//!   message: deliver it to the local APICs it names.
//! - A device model that changes its interrupt line calls [`IoApic::set_irq`] with the
//!   line's electrical level (ISA devices are active high; an active-low line, such as a
//!   PCI INTx, idles high: the VM drives such a pin high at creation); a returned message
//!   is delivered the same way.
//! - When a local APIC takes an EOI for a vector it had accepted level-triggered (its TMR
//!   bit was set), the VM broadcasts it here with [`IoApic::end_of_interrupt`], as the
//!   local APICs' EOI message does on hardware; the guest may also write the vector to the
//!   EOI register itself.
//!
//! Delivery is instant: the delivery status bit always reads 0 (idle). Pins sharing one
//! vector should share a destination: an EOI redelivers every still-asserted pin with
//! that vector, reported as the message of the lowest such pin (the local APIC would
//! merge them into one IRR bit anyway).

use crate::devices::irq::{DeliveryMode, DestinationMode, InterruptMessage, Shorthand, Trigger};

/// Guest-physical base of the I/O APIC's register page (the PC default, 82093AA
/// datasheet 3.0; the MADT names it).
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Size of the register page.
pub const IOAPIC_MMIO_SIZE: u64 = 0x1000;
/// Input pins (82093AA: 24, IRQ0-23).
pub const IOAPIC_PINS: usize = 24;

/// Offsets in the register page (82093AA datasheet 3.0, Table 1; EOI: version 0x20).
mod offset {
    pub const IOREGSEL: u64 = 0x00;
    pub const IOWIN: u64 = 0x10;
    pub const EOI: u64 = 0x40;
}

/// Indirect register indices (82093AA datasheet 3.0, Table 2).
mod index {
    pub const ID: u8 = 0x00;
    pub const VERSION: u8 = 0x01;
    pub const ARBITRATION: u8 = 0x02;
    pub const REDIRECTION_FIRST: u8 = 0x10;
}

/// IOAPICID bits 27:24 hold the ID (82093AA datasheet 3.2.1).
const ID_SHIFT: u32 = 24;
const ID_MASK: u32 = 0x0F;
/// IOAPICVER: version in bits 7:0, maximum redirection entry in bits 23:16 (3.2.2).
const VERSION: u32 = 0x20;
const MAX_REDIRECTION_SHIFT: u32 = 16;

/// Redirection table entry fields (82093AA datasheet 3.2.4).
mod rte {
    pub const VECTOR: u64 = 0xFF;
    pub const DELIVERY_MODE_SHIFT: u32 = 8;
    pub const DESTINATION_MODE_LOGICAL: u64 = 1 << 11;
    // Bit 12, delivery status (read-only), always reads 0: delivery is instant.
    pub const POLARITY_LOW: u64 = 1 << 13;
    /// Read-only: a level interrupt was accepted and its EOI has not come back.
    pub const REMOTE_IRR: u64 = 1 << 14;
    pub const TRIGGER_LEVEL: u64 = 1 << 15;
    pub const MASK: u64 = 1 << 16;
    pub const DESTINATION_SHIFT: u32 = 56;
    /// The bits a guest can write: vector, delivery mode, destination mode, polarity,
    /// trigger, mask and destination (bits 17-55 are reserved and read as 0).
    pub const WRITABLE: u64 = 0xFF00_0000_0001_AFFF;
    /// An entry after reset: masked, everything else 0 (82093AA datasheet 3.2.4).
    pub const RESET: u64 = MASK;
    const _: () = assert!(WRITABLE & (REMOTE_IRR | 1 << 12) == 0, "read-only bits");
}

/// The I/O APIC's state.
#[derive(Clone, Debug)]
pub struct IoApic {
    id: u8,
    ioregsel: u8,
    redirection: [u64; IOAPIC_PINS],
    /// The electrical level of each input pin (bit n: pin n high).
    wires: u32,
}

impl Default for IoApic {
    fn default() -> Self {
        Self::new()
    }
}

impl IoApic {
    /// The state after reset: ID 0, every pin masked and low.
    #[must_use]
    pub const fn new() -> Self {
        Self { id: 0, ioregsel: 0, redirection: [rte::RESET; IOAPIC_PINS], wires: 0 }
    }

    /// The I/O APIC's ID (as the guest programmed it; the MADT should name the same).
    #[must_use]
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The 64-bit redirection entry of `pin`, as the guest reads it (`None` past pin 23).
    #[must_use]
    pub fn redirection_entry(&self, pin: usize) -> Option<u64> {
        self.redirection.get(pin).copied()
    }

    /// A 32-bit read at `offset` in the register page. Offsets other than IOREGSEL and
    /// IOWIN (including the write-only EOI register) read as 0.
    #[must_use]
    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            offset::IOREGSEL => u32::from(self.ioregsel),
            offset::IOWIN => self.read_indirect(self.ioregsel),
            _ => 0,
        }
    }

    /// A 32-bit write of `value` at `offset` in the register page. Returns the message to
    /// deliver if the write made a pin deliver (unmasking an asserted level pin, or an EOI
    /// that found its line still asserted).
    pub fn write(&mut self, offset: u64, value: u32) -> Option<InterruptMessage> {
        match offset {
            offset::IOREGSEL => {
                self.ioregsel = value as u8;
                None
            }
            offset::IOWIN => self.write_indirect(self.ioregsel, value),
            offset::EOI => self.end_of_interrupt(value as u8),
            _ => None,
        }
    }

    /// Sets the electrical level of input `pin` (pins past 23 are ignored). An
    /// edge-triggered unmasked pin delivers on its rising (asserting) edge; a
    /// level-triggered unmasked pin delivers while asserted unless its Remote IRR is set,
    /// and sets Remote IRR. Active-low polarity inverts the level. Edges and levels on a
    /// masked pin are ignored (82093AA datasheet 3.2.4, bit 16).
    pub fn set_irq(&mut self, pin: usize, level: bool) -> Option<InterruptMessage> {
        if pin >= IOAPIC_PINS {
            return None;
        }
        let was_asserted = self.asserted(pin);
        let bit = 1u32 << pin;
        if level {
            self.wires |= bit;
        } else {
            self.wires &= !bit;
        }
        let entry = self.redirection[pin];
        if is_level(entry) {
            self.deliver_level(pin)
        } else if !was_asserted && self.asserted(pin) && entry & rte::MASK == 0 {
            message(entry)
        } else {
            None
        }
    }

    /// The EOI for `vector` from the local APICs (or a write to the EOI register): clears
    /// Remote IRR of every level-triggered entry with that vector, and redelivers those
    /// whose line is still asserted (see the module doc for pins sharing a vector).
    pub fn end_of_interrupt(&mut self, vector: u8) -> Option<InterruptMessage> {
        let mut delivered = None;
        for pin in 0..IOAPIC_PINS {
            let entry = self.redirection[pin];
            if entry & rte::VECTOR == u64::from(vector) && entry & rte::REMOTE_IRR != 0 {
                self.redirection[pin] &= !rte::REMOTE_IRR;
                let message = self.deliver_level(pin);
                delivered = delivered.or(message);
            }
        }
        delivered
    }

    /// Whether `pin`'s line is asserted: its level, inverted for active-low polarity.
    fn asserted(&self, pin: usize) -> bool {
        let high = self.wires & (1 << pin) != 0;
        high != (self.redirection[pin] & rte::POLARITY_LOW != 0)
    }

    /// A level-triggered pin delivers when asserted, unmasked and not waiting for an EOI.
    fn deliver_level(&mut self, pin: usize) -> Option<InterruptMessage> {
        let entry = self.redirection[pin];
        if !is_level(entry) || entry & (rte::MASK | rte::REMOTE_IRR) != 0 || !self.asserted(pin) {
            return None;
        }
        let message = message(entry)?;
        self.redirection[pin] |= rte::REMOTE_IRR;
        Some(message)
    }

    fn read_indirect(&self, index: u8) -> u32 {
        match index {
            index::ID => (u32::from(self.id) & ID_MASK) << ID_SHIFT,
            index::VERSION => VERSION | ((IOAPIC_PINS as u32 - 1) << MAX_REDIRECTION_SHIFT),
            // The arbitration ID is loaded from the ID register (datasheet 3.2.3).
            index::ARBITRATION => (u32::from(self.id) & ID_MASK) << ID_SHIFT,
            _ => match redirection_slot(index) {
                Some((pin, false)) => self.redirection[pin] as u32,
                Some((pin, true)) => (self.redirection[pin] >> 32) as u32,
                None => 0,
            },
        }
    }

    fn write_indirect(&mut self, index: u8, value: u32) -> Option<InterruptMessage> {
        match index {
            index::ID => {
                self.id = ((value >> ID_SHIFT) & ID_MASK) as u8;
                None
            }
            _ => {
                // Version and arbitration are read-only; other indices are reserved.
                let (pin, high) = redirection_slot(index)?;
                let old = self.redirection[pin];
                let written = if high {
                    (old & 0xFFFF_FFFF) | (u64::from(value) << 32)
                } else {
                    (old & !0xFFFF_FFFF) | u64::from(value)
                };
                let mut entry = (written & rte::WRITABLE) | (old & rte::REMOTE_IRR);
                if !is_level(entry) {
                    // Remote IRR is undefined for edge entries; clear it as KVM does, which
                    // is what guests rely on when they switch a stuck level pin to edge and
                    // back to clear it.
                    entry &= !rte::REMOTE_IRR;
                }
                self.redirection[pin] = entry;
                // Unmasking (or reprogramming) an asserted level pin delivers at once.
                self.deliver_level(pin)
            }
        }
    }
}

/// The pin and half (`true`: bits 63:32) an indirect index names, if it is a redirection
/// register.
fn redirection_slot(index: u8) -> Option<(usize, bool)> {
    let slot = usize::from(index.checked_sub(index::REDIRECTION_FIRST)?);
    (slot < 2 * IOAPIC_PINS).then_some((slot / 2, slot % 2 == 1))
}

/// Whether an entry is level-triggered: its trigger bit says so and its delivery mode is
/// fixed or lowest priority (the other modes are always edge, 82093AA datasheet 3.2.4).
fn is_level(entry: u64) -> bool {
    entry & rte::TRIGGER_LEVEL != 0 && (entry >> rte::DELIVERY_MODE_SHIFT) & 0b110 == 0
}

/// The message a redirection entry sends; `None` for the reserved delivery modes (0b011
/// and 0b110: StartUp is not an I/O APIC mode).
fn message(entry: u64) -> Option<InterruptMessage> {
    let delivery = DeliveryMode::from_bits((entry >> rte::DELIVERY_MODE_SHIFT) as u8 & 0b111)?;
    if delivery == DeliveryMode::StartUp {
        return None;
    }
    let trigger = if is_level(entry) { Trigger::Level } else { Trigger::Edge };
    Some(InterruptMessage {
        vector: (entry & rte::VECTOR) as u8,
        delivery,
        destination_mode: if entry & rte::DESTINATION_MODE_LOGICAL != 0 {
            DestinationMode::Logical
        } else {
            DestinationMode::Physical
        },
        destination: (entry >> rte::DESTINATION_SHIFT) as u32,
        shorthand: Shorthand::None,
        trigger,
        assert: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select_write(ioapic: &mut IoApic, index: u8, value: u32) -> Option<InterruptMessage> {
        ioapic.write(offset::IOREGSEL, u32::from(index));
        ioapic.write(offset::IOWIN, value)
    }

    fn select_read(ioapic: &mut IoApic, index: u8) -> u32 {
        ioapic.write(offset::IOREGSEL, u32::from(index));
        ioapic.read(offset::IOWIN)
    }

    /// Programs `pin` with a 64-bit entry, high dword first (as Linux does, so the entry
    /// is complete when the low dword unmasks it).
    fn program(ioapic: &mut IoApic, pin: u8, entry: u64) -> Option<InterruptMessage> {
        select_write(ioapic, index::REDIRECTION_FIRST + 2 * pin + 1, (entry >> 32) as u32);
        select_write(ioapic, index::REDIRECTION_FIRST + 2 * pin, entry as u32)
    }

    fn level_entry(vector: u8, destination: u8) -> u64 {
        u64::from(vector) | rte::TRIGGER_LEVEL | (u64::from(destination) << rte::DESTINATION_SHIFT)
    }

    #[test]
    fn id_version_and_arbitration_registers() {
        let mut ioapic = IoApic::new();
        assert_eq!(select_read(&mut ioapic, index::VERSION), 0x0017_0020, "24 entries, version 0x20");
        select_write(&mut ioapic, index::ID, 0xFFFF_FFFF);
        assert_eq!(select_read(&mut ioapic, index::ID), 0x0F00_0000, "only bits 27:24 exist");
        assert_eq!(ioapic.id(), 0xF);
        assert_eq!(select_read(&mut ioapic, index::ARBITRATION), 0x0F00_0000);
        select_write(&mut ioapic, index::VERSION, 0);
        assert_eq!(select_read(&mut ioapic, index::VERSION), 0x0017_0020, "read-only");
        assert_eq!(ioapic.read(offset::IOREGSEL), u32::from(index::VERSION));
    }

    #[test]
    fn redirection_entries_reset_masked_and_keep_only_their_defined_bits() {
        let mut ioapic = IoApic::new();
        for pin in 0..IOAPIC_PINS as u8 {
            assert_eq!(select_read(&mut ioapic, index::REDIRECTION_FIRST + 2 * pin), 1 << 16);
            assert_eq!(select_read(&mut ioapic, index::REDIRECTION_FIRST + 2 * pin + 1), 0);
        }
        select_write(&mut ioapic, 0x12, 0xFFFF_FFFF);
        select_write(&mut ioapic, 0x13, 0xFFFF_FFFF);
        // Delivery status and Remote IRR read-only (0), bits 17-55 reserved.
        assert_eq!(select_read(&mut ioapic, 0x12), 0x0001_AFFF);
        assert_eq!(select_read(&mut ioapic, 0x13), 0xFF00_0000);
        assert_eq!(ioapic.redirection_entry(1), Some(0xFF00_0000_0001_AFFF));
        assert_eq!(ioapic.redirection_entry(24), None);
    }

    #[test]
    fn unknown_indices_and_offsets_read_zero() {
        let mut ioapic = IoApic::new();
        for index in [0x03, 0x0F, 0x40, 0x41, 0xFF] {
            assert_eq!(select_read(&mut ioapic, index), 0, "index {index:#x}");
            assert_eq!(select_write(&mut ioapic, index, 0xFFFF_FFFF), None);
        }
        assert_eq!(ioapic.read(offset::EOI), 0);
        assert_eq!(ioapic.read(0x20), 0);
    }

    #[test]
    fn edge_pin_delivers_on_the_rising_edge_only() {
        let mut ioapic = IoApic::new();
        assert_eq!(program(&mut ioapic, 2, 0x0300_0000_0000_0030), None);
        let expected = InterruptMessage::fixed(0x30, 3);
        assert_eq!(ioapic.set_irq(2, true), Some(expected));
        assert_eq!(ioapic.set_irq(2, true), None, "no edge while held high");
        assert_eq!(ioapic.set_irq(2, false), None);
        assert_eq!(ioapic.set_irq(2, true), Some(expected));
    }

    #[test]
    fn masked_pins_ignore_edges() {
        let mut ioapic = IoApic::new();
        program(&mut ioapic, 4, 0x31 | rte::MASK);
        assert_eq!(ioapic.set_irq(4, true), None);
        assert_eq!(ioapic.set_irq(4, false), None);
        assert_eq!(program(&mut ioapic, 4, 0x31), None, "an edge on a masked pin is not held");
        assert_eq!(ioapic.set_irq(4, true), Some(InterruptMessage::fixed(0x31, 0)));
    }

    #[test]
    fn level_pin_sets_remote_irr_and_waits_for_the_eoi() {
        let mut ioapic = IoApic::new();
        program(&mut ioapic, 9, level_entry(0x41, 1));
        let message = ioapic.set_irq(9, true).expect("asserted level pin delivers");
        assert_eq!((message.vector, message.trigger, message.destination), (0x41, Trigger::Level, 1));
        assert_ne!(select_read(&mut ioapic, 0x10 + 18) & (1 << 14), 0, "Remote IRR set");
        assert_eq!(ioapic.set_irq(9, true), None, "Remote IRR holds further deliveries");
        // EOI for another vector changes nothing; for this one it redelivers (still high).
        assert_eq!(ioapic.end_of_interrupt(0x42), None);
        assert_eq!(ioapic.end_of_interrupt(0x41), Some(message));
        // The device lowers its line; the next EOI just clears Remote IRR.
        assert_eq!(ioapic.set_irq(9, false), None);
        assert_eq!(ioapic.end_of_interrupt(0x41), None);
        assert_eq!(select_read(&mut ioapic, 0x10 + 18) & (1 << 14), 0, "Remote IRR clear");
        assert_eq!(ioapic.set_irq(9, true), Some(message));
    }

    #[test]
    fn eoi_redelivers_every_asserted_pin_sharing_the_vector() {
        let mut ioapic = IoApic::new();
        program(&mut ioapic, 9, level_entry(0x41, 1));
        program(&mut ioapic, 10, level_entry(0x41, 1));
        assert!(ioapic.set_irq(9, true).is_some());
        assert!(ioapic.set_irq(10, true).is_some());
        let message = ioapic.end_of_interrupt(0x41);
        assert_eq!(message.map(|m| (m.vector, m.destination)), Some((0x41, 1)));
        for pin in [9, 10] {
            assert_ne!(ioapic.redirection_entry(pin).unwrap() & rte::REMOTE_IRR, 0, "pin {pin} redelivered");
        }
    }

    #[test]
    fn eoi_register_acts_like_the_broadcast_eoi() {
        let mut ioapic = IoApic::new();
        program(&mut ioapic, 10, level_entry(0x50, 0));
        let message = ioapic.set_irq(10, true);
        assert!(message.is_some());
        assert_eq!(ioapic.write(offset::EOI, 0x50), message);
        ioapic.set_irq(10, false);
        assert_eq!(ioapic.write(offset::EOI, 0x50), None);
    }

    #[test]
    fn unmasking_an_asserted_level_pin_delivers() {
        let mut ioapic = IoApic::new();
        program(&mut ioapic, 11, level_entry(0x60, 2) | rte::MASK);
        assert_eq!(ioapic.set_irq(11, true), None, "masked");
        let message = program(&mut ioapic, 11, level_entry(0x60, 2));
        assert_eq!(message.map(|m| m.vector), Some(0x60));
        // Masking after acceptance does not take it back; Remote IRR stays until the EOI.
        program(&mut ioapic, 11, level_entry(0x60, 2) | rte::MASK);
        assert_ne!(ioapic.redirection_entry(11).unwrap() & rte::REMOTE_IRR, 0);
        assert_eq!(ioapic.end_of_interrupt(0x60), None, "masked: no redelivery");
    }

    #[test]
    fn active_low_polarity_inverts_the_line() {
        let mut ioapic = IoApic::new();
        ioapic.set_irq(16, true); // a PCI INTx line idles high
        assert_eq!(program(&mut ioapic, 16, level_entry(0x70, 0) | rte::POLARITY_LOW), None);
        assert_eq!(ioapic.set_irq(16, false).map(|m| m.vector), Some(0x70), "driven low: asserted");
        assert_eq!(ioapic.set_irq(16, true), None);
        assert_eq!(ioapic.end_of_interrupt(0x70), None, "deasserted by the time of the EOI");
        // Edge-triggered active-low: the falling edge of the wire is the asserting edge.
        program(&mut ioapic, 17, 0x71 | rte::POLARITY_LOW);
        ioapic.set_irq(17, true);
        assert_eq!(ioapic.set_irq(17, false).map(|m| m.vector), Some(0x71));
        assert_eq!(ioapic.set_irq(17, true), None);
    }

    #[test]
    fn switching_to_edge_clears_remote_irr() {
        let mut ioapic = IoApic::new();
        program(&mut ioapic, 5, level_entry(0x35, 0));
        assert!(ioapic.set_irq(5, true).is_some());
        program(&mut ioapic, 5, 0x35);
        assert_eq!(ioapic.redirection_entry(5).unwrap() & rte::REMOTE_IRR, 0);
        ioapic.set_irq(5, false);
        // Back to level with the line low: nothing pending, the next assertion delivers.
        assert_eq!(program(&mut ioapic, 5, level_entry(0x35, 0)), None);
        assert!(ioapic.set_irq(5, true).is_some());
    }

    #[test]
    fn messages_carry_delivery_and_destination_modes() {
        let mut ioapic = IoApic::new();
        let entry = 0x22 | (0b001 << 8) | rte::DESTINATION_MODE_LOGICAL | (0x0F << 56);
        program(&mut ioapic, 1, entry);
        let message = ioapic.set_irq(1, true).unwrap();
        assert_eq!(message.delivery, DeliveryMode::LowestPriority);
        assert_eq!(message.destination_mode, DestinationMode::Logical);
        assert_eq!((message.destination, message.shorthand, message.assert), (0x0F, Shorthand::None, true));
        // NMI is edge-triggered even if the entry says level: no Remote IRR.
        program(&mut ioapic, 3, (0b100 << 8) | rte::TRIGGER_LEVEL);
        let nmi = ioapic.set_irq(3, true).unwrap();
        assert_eq!((nmi.delivery, nmi.trigger), (DeliveryMode::Nmi, Trigger::Edge));
        assert_eq!(ioapic.redirection_entry(3).unwrap() & rte::REMOTE_IRR, 0);
        // The reserved delivery modes send nothing.
        program(&mut ioapic, 6, 0x40 | (0b011 << 8));
        assert_eq!(ioapic.set_irq(6, true), None);
        program(&mut ioapic, 7, 0x40 | (0b110 << 8) | rte::TRIGGER_LEVEL);
        assert_eq!(ioapic.set_irq(7, true), None);
        assert_eq!(ioapic.redirection_entry(7).unwrap() & rte::REMOTE_IRR, 0);
    }

    #[test]
    fn pins_past_23_are_ignored() {
        let mut ioapic = IoApic::new();
        assert_eq!(ioapic.set_irq(24, true), None);
        assert_eq!(ioapic.set_irq(usize::MAX, true), None);
    }

    #[test]
    fn any_guest_access_is_handled() {
        let mut ioapic = IoApic::new();
        let values = [0, 1, 0x10, 0x3F, 0x40, 0xFF, 0x1_0000, 0x8000_0000, 0xFFFF_FFFF, 0xDEAD_BEEF];
        for offset in (0..IOAPIC_MMIO_SIZE).step_by(4) {
            for &value in &values {
                let _ = ioapic.write(offset, value);
                let _ = ioapic.read(offset);
            }
        }
        for index in 0..=u8::MAX {
            for &value in &values {
                let _ = select_write(&mut ioapic, index, value);
                let _ = select_read(&mut ioapic, index);
                for pin in [0, 23, 24] {
                    let _ = ioapic.set_irq(pin, value & 1 != 0);
                }
                let _ = ioapic.end_of_interrupt(value as u8);
            }
        }
    }
}
