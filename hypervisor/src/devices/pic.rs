//! The PC's pair of 8259A programmable interrupt controllers: the master at ports
//! 0x20/0x21 (IRQ 0-7), the slave at 0xA0/0xA1 (IRQ 8-15) cascaded on the master's IR2,
//! and the PIIX edge/level control registers (ELCR) at 0x4D0/0x4D1.
//!
//! Semantics: Intel 8259A data sheet ("Programming the 8259A": ICW1-ICW4, OCW1-OCW3,
//! "Interrupt Sequence", "Fully Nested Mode", "Special Mask Mode", "Poll Command"), and the
//! Intel 82371AB (PIIX4) data sheet 3.2.4 for the ELCR. On a PC the ELCR, not ICW1's LTIM
//! bit, selects edge or level per line: LTIM is ignored here. Supported: edge and level
//! lines, auto-EOI (with rotation), non-specific and specific EOI, rotation and set
//! priority, reading IRR or ISR, poll mode, special mask mode, special fully nested mode
//! (master only), spurious IRQ 7/15. Not modelled: single mode (ICW1 SNGL is accepted
//! and the slave stays cascaded), 8080/8085 mode, buffered mode (ICW4 bits are ignored).
//!
//! How it is driven (the irqchip, `irqchip.rs`, owns the pair and does all of this):
//! - Port exits for 0x20, 0x21, 0xA0, 0xA1, 0x4D0 and 0x4D1 call [`Pic8259Pair::read`] /
//!   [`Pic8259Pair::write`] (byte accesses).
//! - Device lines reach [`Pic8259Pair::set_irq`] with their ISA line level (IRQ 2 is the
//!   cascade and cannot be raised from outside: on a PC, ISA IRQ 2 is wired to IRQ 9).
//! - [`Pic8259Pair::output`] is the INTR line, wired to the boot vCPU's LINT0 (an ExtINT
//!   source when LINT0's LVT says so, or the CPU's INTR pin when its local APIC is
//!   disabled), checked after each access or `set_irq`; when the vCPU can take an
//!   external interrupt, the entry path runs the INTA cycle ([`Pic8259Pair::inta`]) and
//!   injects the vector it returns.

/// The ports of the pair (8259A data sheet, A0 = port bit 0; PIIX4 data sheet 3.2.4 for
/// the ELCR).
pub mod port {
    pub const MASTER_COMMAND: u16 = 0x20;
    pub const MASTER_DATA: u16 = 0x21;
    pub const SLAVE_COMMAND: u16 = 0xA0;
    pub const SLAVE_DATA: u16 = 0xA1;
    pub const ELCR_MASTER: u16 = 0x4D0;
    pub const ELCR_SLAVE: u16 = 0x4D1;

    /// Whether the pair answers `port`.
    #[must_use]
    pub const fn is_pic(port: u16) -> bool {
        matches!(port, MASTER_COMMAND | MASTER_DATA | SLAVE_COMMAND | SLAVE_DATA | ELCR_MASTER | ELCR_SLAVE)
    }
}

/// The master's input the slave's INT output drives (PC/AT wiring).
const CASCADE_IRQ: u8 = 2;
/// ELCR bits that can be set to level: IRQ 0, 1, 2 (master) and 8, 13 (slave) are
/// always edge (PIIX4 data sheet 3.2.4).
const ELCR_MASTER_WRITABLE: u8 = 0xF8;
const ELCR_SLAVE_WRITABLE: u8 = 0xDE;
/// The lowest priority IR, reported when the INTA cycle finds nothing (8259A data sheet,
/// "Interrupt Sequence": a spurious interrupt acknowledges IR7 without setting ISR).
const SPURIOUS_IRQ: u8 = 7;

/// ICW1 (A0 = 0, D4 = 1): D0 IC4 (ICW4 needed), D1 SNGL (single, no ICW3).
const ICW1: u8 = 1 << 4;
const ICW1_IC4: u8 = 1 << 0;
const ICW1_SINGLE: u8 = 1 << 1;
/// ICW2: the vector base is T7-T3 (x86 mode).
const ICW2_VECTOR_BASE: u8 = 0xF8;
/// ICW4: D1 AEOI, D4 SFNM.
const ICW4_AUTO_EOI: u8 = 1 << 1;
const ICW4_SPECIAL_FULLY_NESTED: u8 = 1 << 4;
/// OCW3 (A0 = 0, D4 = 0, D3 = 1): D0 RIS, D1 RR, D2 P (poll), D5 SMM, D6 ESMM.
const OCW3: u8 = 1 << 3;
const OCW3_READ_ISR: u8 = 1 << 0;
const OCW3_READ_REGISTER: u8 = 1 << 1;
const OCW3_POLL: u8 = 1 << 2;
const OCW3_SPECIAL_MASK: u8 = 1 << 5;
const OCW3_SET_SPECIAL_MASK: u8 = 1 << 6;
/// OCW2 (A0 = 0, D4 = 0, D3 = 0): the command in D7-D5 (R, SL, EOI), the level in D2-D0.
mod ocw2 {
    pub const ROTATE_AUTO_EOI_CLEAR: u8 = 0b000;
    pub const NON_SPECIFIC_EOI: u8 = 0b001;
    pub const SPECIFIC_EOI: u8 = 0b011;
    pub const ROTATE_AUTO_EOI_SET: u8 = 0b100;
    pub const ROTATE_NON_SPECIFIC_EOI: u8 = 0b101;
    pub const SET_PRIORITY: u8 = 0b110;
    pub const ROTATE_SPECIFIC_EOI: u8 = 0b111;
}
/// The poll word: D7 set when an interrupt is pending, its level in D2-D0.
const POLL_PENDING: u8 = 0x80;

/// Which initialization word a data-port write is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Init {
    Done,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Clone, Debug)]
struct Pic {
    irr: u8,
    isr: u8,
    imr: u8,
    /// Input levels, for edge detection.
    lines: u8,
    elcr: u8,
    elcr_writable: u8,
    /// The IR with the highest priority (rotation moves it).
    highest_priority: u8,
    vector_base: u8,
    init: Init,
    icw4_needed: bool,
    single: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    special_mask: bool,
    read_isr: bool,
    poll: bool,
    is_master: bool,
}

impl Pic {
    const fn new(is_master: bool, elcr_writable: u8) -> Self {
        Self {
            irr: 0,
            isr: 0,
            imr: 0,
            lines: 0,
            elcr: 0,
            elcr_writable,
            highest_priority: 0,
            vector_base: 0,
            init: Init::Done,
            icw4_needed: false,
            single: false,
            auto_eoi: false,
            rotate_on_auto_eoi: false,
            special_fully_nested: false,
            special_mask: false,
            read_isr: false,
            poll: false,
            is_master,
        }
    }

    fn set_irq(&mut self, irq: u8, level: bool) {
        let bit = 1 << irq;
        let rising = level && self.lines & bit == 0;
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        if self.elcr & bit != 0 {
            // Level: IRR follows the line.
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if rising {
            self.irr |= bit;
        }
    }

    /// The priority rank (0 highest) of the highest-priority IR set in `bits`, or 8.
    fn best_rank(&self, bits: u8) -> u8 {
        (0..8).find(|rank| bits & (1 << ((rank + self.highest_priority) & 7)) != 0).unwrap_or(8)
    }

    fn irq_of_rank(&self, rank: u8) -> u8 {
        (rank + self.highest_priority) & 7
    }

    /// The IR this chip would signal on INT: the best unmasked request that outranks
    /// every in-service level (special mask mode: only unmasked in-service levels count;
    /// special fully nested: the cascade input may interrupt its own service).
    fn pending(&self) -> Option<u8> {
        let request = self.best_rank(self.irr & !self.imr);
        if request == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.special_fully_nested && self.is_master {
            in_service &= !(1 << CASCADE_IRQ);
        }
        (request < self.best_rank(in_service)).then(|| self.irq_of_rank(request))
    }

    /// The INTA cycle's effect on `irq`: into ISR (or, in auto-EOI, straight out again),
    /// and an edge request is consumed.
    fn acknowledge(&mut self, irq: u8) {
        let bit = 1 << irq;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.highest_priority = (irq + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
        if self.elcr & bit == 0 {
            self.irr &= !bit;
        }
    }

    /// A poll read: the pending level, acknowledged as by INTA, or 0.
    fn poll_read(&mut self) -> u8 {
        self.poll = false;
        match self.pending() {
            Some(irq) => {
                self.acknowledge(irq);
                POLL_PENDING | irq
            }
            None => 0,
        }
    }

    fn read(&mut self, data_port: bool) -> u8 {
        if self.poll {
            self.poll_read()
        } else if data_port {
            self.imr
        } else if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }

    fn write(&mut self, data_port: bool, value: u8) {
        if !data_port {
            if value & ICW1 != 0 {
                self.start_init(value);
            } else if value & OCW3 != 0 {
                self.write_ocw3(value);
            } else {
                self.write_ocw2(value);
            }
            return;
        }
        match self.init {
            Init::Done => self.imr = value,
            Init::Icw2 => {
                self.vector_base = value & ICW2_VECTOR_BASE;
                self.init = if !self.single {
                    Init::Icw3
                } else if self.icw4_needed {
                    Init::Icw4
                } else {
                    Init::Done
                };
            }
            // The cascade wiring is fixed (slave on master IR2): ICW3's value is not used.
            Init::Icw3 => self.init = if self.icw4_needed { Init::Icw4 } else { Init::Done },
            Init::Icw4 => {
                self.auto_eoi = value & ICW4_AUTO_EOI != 0;
                self.special_fully_nested = value & ICW4_SPECIAL_FULLY_NESTED != 0;
                self.init = Init::Done;
            }
        }
    }

    /// ICW1 restarts initialization: IMR, ISR and edge state cleared, IR7 lowest
    /// priority, special mask mode off, IRR selected for reading (8259A data sheet,
    /// "Initialization Command Words"). Level requests still asserted stay in IRR.
    fn start_init(&mut self, icw1: u8) {
        let (is_master, elcr, elcr_writable, lines) =
            (self.is_master, self.elcr, self.elcr_writable, self.lines);
        *self = Self::new(is_master, elcr_writable);
        self.elcr = elcr;
        // Edge detection restarts: a line already high needs a new rising edge.
        self.lines = lines;
        self.irr = lines & elcr;
        self.icw4_needed = icw1 & ICW1_IC4 != 0;
        self.single = icw1 & ICW1_SINGLE != 0;
        self.init = Init::Icw2;
    }

    fn write_ocw2(&mut self, value: u8) {
        let level = value & 7;
        match value >> 5 {
            ocw2::ROTATE_AUTO_EOI_CLEAR => self.rotate_on_auto_eoi = false,
            ocw2::ROTATE_AUTO_EOI_SET => self.rotate_on_auto_eoi = true,
            command @ (ocw2::NON_SPECIFIC_EOI | ocw2::ROTATE_NON_SPECIFIC_EOI) => {
                let rank = self.best_rank(self.isr);
                if rank < 8 {
                    let irq = self.irq_of_rank(rank);
                    self.isr &= !(1 << irq);
                    if command == ocw2::ROTATE_NON_SPECIFIC_EOI {
                        self.highest_priority = (irq + 1) & 7;
                    }
                }
            }
            ocw2::SPECIFIC_EOI => self.isr &= !(1 << level),
            ocw2::ROTATE_SPECIFIC_EOI => {
                self.isr &= !(1 << level);
                self.highest_priority = (level + 1) & 7;
            }
            ocw2::SET_PRIORITY => self.highest_priority = (level + 1) & 7,
            // 0b010: no operation.
            _ => {}
        }
    }

    fn write_ocw3(&mut self, value: u8) {
        if value & OCW3_POLL != 0 {
            self.poll = true;
        }
        if value & OCW3_READ_REGISTER != 0 {
            self.read_isr = value & OCW3_READ_ISR != 0;
        }
        if value & OCW3_SET_SPECIAL_MASK != 0 {
            self.special_mask = value & OCW3_SPECIAL_MASK != 0;
        }
    }
}

/// What an INTA cycle answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inta {
    pub vector: u8,
    /// Nothing was requesting: the vector is the chip's IRQ 7 and nothing went in service.
    pub is_spurious: bool,
}

/// The master and slave 8259A with their ELCRs.
#[derive(Clone, Debug)]
pub struct Pic8259Pair {
    master: Pic,
    slave: Pic,
}

impl Default for Pic8259Pair {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic8259Pair {
    /// The pair at power-up: not initialized, vector base 0, nothing masked, all lines
    /// edge-triggered and low (a BIOS, or the guest, runs the ICW sequence).
    #[must_use]
    pub const fn new() -> Self {
        Self { master: Pic::new(true, ELCR_MASTER_WRITABLE), slave: Pic::new(false, ELCR_SLAVE_WRITABLE) }
    }

    /// A byte read of `port` (0xFF for a port that is not the pair's).
    pub fn read(&mut self, port: u16) -> u8 {
        let value = match port {
            port::MASTER_COMMAND | port::MASTER_DATA => self.master.read(port == port::MASTER_DATA),
            port::SLAVE_COMMAND | port::SLAVE_DATA => self.slave.read(port == port::SLAVE_DATA),
            port::ELCR_MASTER => self.master.elcr,
            port::ELCR_SLAVE => self.slave.elcr,
            _ => return 0xFF,
        };
        // A poll read acknowledges like INTA.
        self.update_cascade();
        value
    }

    /// A byte write of `value` to `port` (ignored for a port that is not the pair's).
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            port::MASTER_COMMAND | port::MASTER_DATA => self.master.write(port == port::MASTER_DATA, value),
            port::SLAVE_COMMAND | port::SLAVE_DATA => self.slave.write(port == port::SLAVE_DATA, value),
            port::ELCR_MASTER => self.master.elcr = value & self.master.elcr_writable,
            port::ELCR_SLAVE => self.slave.elcr = value & self.slave.elcr_writable,
            _ => return,
        }
        self.update_cascade();
    }

    /// Sets the level of ISA line `irq` (0-15; 2 and anything above 15 are ignored). An
    /// edge-triggered line requests on its rising edge, a level-triggered one (ELCR) while
    /// high.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            CASCADE_IRQ => return,
            0..8 => self.master.set_irq(irq, level),
            8..16 => self.slave.set_irq(irq - 8, level),
            _ => return,
        }
        self.update_cascade();
    }

    /// The INTR line: the master has a request to signal.
    #[must_use]
    pub fn output(&self) -> bool {
        self.master.pending().is_some()
    }

    /// The INTA cycle: the vector of the highest-priority request, which moves from IRR
    /// to ISR (on the slave too for a cascaded request). With nothing to signal (the line
    /// fell before the cycle) it answers the spurious IRQ 7 vector without touching ISR;
    /// a slave with nothing answers IRQ 15's vector, with the master's IR2 in service.
    pub fn acknowledge(&mut self) -> u8 {
        self.inta().vector
    }

    /// [`Pic8259Pair::acknowledge`], also saying whether the answer was a spurious IRQ 7 or
    /// 15 (for statistics: a guest sees such a vector with nothing in service on that
    /// chip).
    pub fn inta(&mut self) -> Inta {
        let (vector, is_spurious) = match self.master.pending() {
            Some(CASCADE_IRQ) => {
                let slave_irq = self.slave.pending();
                if let Some(irq) = slave_irq {
                    self.slave.acknowledge(irq);
                }
                self.master.acknowledge(CASCADE_IRQ);
                (self.slave.vector_base | slave_irq.unwrap_or(SPURIOUS_IRQ), slave_irq.is_none())
            }
            Some(irq) => {
                self.master.acknowledge(irq);
                (self.master.vector_base | irq, false)
            }
            None => (self.master.vector_base | SPURIOUS_IRQ, true),
        };
        self.update_cascade();
        Inta { vector, is_spurious }
    }

    /// The slave's INT output drives the master's IR2 (an edge-triggered input).
    fn update_cascade(&mut self) {
        let slave_int = self.slave.pending().is_some();
        self.master.set_irq(CASCADE_IRQ, slave_int);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The BIOS's initialization: edge, cascade, ICW4; vectors 0x08 and 0x70; slave on
    /// IR2; 8086 mode.
    fn bios_init() -> Pic8259Pair {
        let mut pic = Pic8259Pair::new();
        for (command, data, vector_base, icw3) in [
            (port::MASTER_COMMAND, port::MASTER_DATA, 0x08, 4),
            (port::SLAVE_COMMAND, port::SLAVE_DATA, 0x70, 2),
        ] {
            pic.write(command, 0x11);
            pic.write(data, vector_base);
            pic.write(data, icw3);
            pic.write(data, 0x01);
        }
        pic
    }

    fn eoi(pic: &mut Pic8259Pair, command_port: u16) {
        pic.write(command_port, 0x20);
    }

    fn read_isr(pic: &mut Pic8259Pair, command_port: u16) -> u8 {
        pic.write(command_port, 0x0B);
        let isr = pic.read(command_port);
        pic.write(command_port, 0x0A);
        isr
    }

    #[test]
    fn bios_init_then_irq0_gives_vector_8() {
        let mut pic = bios_init();
        assert_eq!((pic.read(port::MASTER_DATA), pic.read(port::SLAVE_DATA)), (0, 0), "ICW1 cleared IMR");
        assert!(!pic.output());
        pic.set_irq(0, true);
        assert!(pic.output());
        assert_eq!(pic.read(port::MASTER_COMMAND), 0x01, "IRR (OCW3 default)");
        assert_eq!(pic.acknowledge(), 0x08);
        assert!(!pic.output());
        assert_eq!(read_isr(&mut pic, port::MASTER_COMMAND), 0x01);
        assert_eq!(pic.read(port::MASTER_COMMAND), 0x00, "edge request consumed");
        eoi(&mut pic, port::MASTER_COMMAND);
        assert_eq!(read_isr(&mut pic, port::MASTER_COMMAND), 0x00);
    }

    #[test]
    fn masked_lines_wait_in_irr() {
        let mut pic = bios_init();
        pic.write(port::MASTER_DATA, 0x02);
        pic.set_irq(1, true);
        assert!(!pic.output());
        assert_eq!(pic.read(port::MASTER_COMMAND), 0x02);
        pic.write(port::MASTER_DATA, 0x00);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x09);
    }

    #[test]
    fn lower_numbers_have_priority_and_in_service_blocks_lower_ones() {
        let mut pic = bios_init();
        pic.set_irq(4, true);
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x0B);
        assert!(!pic.output(), "IRQ 4 waits for IRQ 3's EOI");
        pic.set_irq(1, true);
        assert!(pic.output(), "a higher priority interrupts IRQ 3's service");
        assert_eq!(pic.acknowledge(), 0x09);
        // The non-specific EOI ends the highest in service: IRQ 1, then IRQ 3.
        eoi(&mut pic, port::MASTER_COMMAND);
        assert_eq!(read_isr(&mut pic, port::MASTER_COMMAND), 0x08);
        assert!(!pic.output());
        eoi(&mut pic, port::MASTER_COMMAND);
        assert_eq!(pic.acknowledge(), 0x0C);
    }

    #[test]
    fn specific_eoi_and_rotation() {
        let mut pic = bios_init();
        pic.set_irq(5, true);
        pic.set_irq(6, true);
        assert_eq!(pic.acknowledge(), 0x0D);
        pic.write(port::MASTER_COMMAND, 0x60 | 5); // specific EOI for IRQ 5
        assert_eq!(read_isr(&mut pic, port::MASTER_COMMAND), 0);
        assert_eq!(pic.acknowledge(), 0x0E);
        pic.write(port::MASTER_COMMAND, 0xA0); // rotate on non-specific EOI: IRQ 6 lowest
        pic.set_irq(6, false);
        pic.set_irq(6, true);
        pic.set_irq(1, false);
        pic.set_irq(1, true);
        assert_eq!(pic.acknowledge(), 0x08 | 1, "IRQ 7 is now highest, then 0, 1, ...");
        pic.write(port::MASTER_COMMAND, 0xC0 | 3); // set priority: IRQ 3 lowest, IRQ 4 highest
        pic.write(port::MASTER_COMMAND, 0x60 | 1);
        pic.set_irq(4, true);
        assert_eq!(pic.acknowledge(), 0x0C, "IRQ 4 before IRQ 6");
    }

    #[test]
    fn cascade_irq8_gives_vector_0x70_and_needs_both_eois() {
        let mut pic = bios_init();
        pic.set_irq(8, true);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x70);
        assert_eq!(read_isr(&mut pic, port::MASTER_COMMAND), 0x04, "master IR2 in service");
        assert_eq!(read_isr(&mut pic, port::SLAVE_COMMAND), 0x01);
        pic.set_irq(12, false);
        pic.set_irq(12, true);
        assert!(!pic.output(), "the cascade is in service");
        eoi(&mut pic, port::SLAVE_COMMAND);
        assert!(!pic.output(), "master IR2 still in service");
        eoi(&mut pic, port::MASTER_COMMAND);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x74);
    }

    #[test]
    fn slave_mask_holds_the_cascade() {
        let mut pic = bios_init();
        pic.write(port::SLAVE_DATA, 0x01);
        pic.set_irq(8, true);
        assert!(!pic.output());
        pic.write(port::MASTER_DATA, 0x04);
        pic.write(port::SLAVE_DATA, 0x00);
        assert!(!pic.output(), "master IR2 masked");
        pic.write(port::MASTER_DATA, 0x00);
        assert_eq!(pic.acknowledge(), 0x70);
    }

    #[test]
    fn edge_lines_request_once_per_rising_edge() {
        let mut pic = bios_init();
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x0B);
        eoi(&mut pic, port::MASTER_COMMAND);
        pic.set_irq(3, true);
        assert!(!pic.output(), "still high: no new edge");
        pic.set_irq(3, false);
        pic.set_irq(3, true);
        assert!(pic.output());
    }

    #[test]
    fn level_lines_per_elcr_request_while_high() {
        let mut pic = bios_init();
        pic.write(port::ELCR_MASTER, 0xFF);
        pic.write(port::ELCR_SLAVE, 0xFF);
        assert_eq!(pic.read(port::ELCR_MASTER), 0xF8, "IRQ 0-2 are always edge");
        assert_eq!(pic.read(port::ELCR_SLAVE), 0xDE, "IRQ 8 and 13 are always edge");
        pic.set_irq(11, true);
        assert_eq!(pic.acknowledge(), 0x73);
        eoi(&mut pic, port::SLAVE_COMMAND);
        eoi(&mut pic, port::MASTER_COMMAND);
        assert!(pic.output(), "a level line still high requests again without an edge");
        assert_eq!(pic.acknowledge(), 0x73);
        pic.set_irq(11, false);
        eoi(&mut pic, port::SLAVE_COMMAND);
        eoi(&mut pic, port::MASTER_COMMAND);
        assert!(!pic.output(), "the handler made the device lower its line");
        // A level line that falls before INTA leaves a spurious interrupt.
        pic.set_irq(5, true);
        assert!(pic.output());
        pic.set_irq(5, false);
        assert_eq!(pic.acknowledge(), 0x0F);
        assert_eq!(read_isr(&mut pic, port::MASTER_COMMAND), 0, "spurious IRQ 7 sets no ISR bit");
    }

    #[test]
    fn spurious_slave_interrupt_is_irq15_with_the_cascade_in_service() {
        let mut pic = bios_init();
        pic.write(port::ELCR_SLAVE, 0x02);
        pic.set_irq(9, true);
        assert!(pic.output());
        // The slave's request disappears, but the master already latched its IR2 edge.
        pic.set_irq(9, false);
        assert!(pic.output());
        assert_eq!(pic.inta(), Inta { vector: 0x77, is_spurious: true });
        assert_eq!(read_isr(&mut pic, port::SLAVE_COMMAND), 0);
        assert_eq!(read_isr(&mut pic, port::MASTER_COMMAND), 0x04);
    }

    #[test]
    fn auto_eoi_leaves_isr_clear() {
        let mut pic = Pic8259Pair::new();
        for value in [0x11, 0x20, 0x04, 0x03] {
            let data = value != 0x11;
            pic.write(if data { port::MASTER_DATA } else { port::MASTER_COMMAND }, value);
        }
        pic.set_irq(0, true);
        assert_eq!(pic.acknowledge(), 0x20);
        assert_eq!(read_isr(&mut pic, port::MASTER_COMMAND), 0);
        pic.set_irq(1, true);
        assert!(pic.output(), "no EOI needed");
        assert_eq!(pic.acknowledge(), 0x21);
    }

    #[test]
    fn poll_mode_reads_the_pending_level() {
        let mut pic = bios_init();
        pic.write(port::MASTER_COMMAND, 0x0C);
        assert_eq!(pic.read(port::MASTER_COMMAND), 0, "nothing pending");
        pic.set_irq(6, true);
        pic.write(port::MASTER_COMMAND, 0x0C);
        assert_eq!(pic.read(port::MASTER_COMMAND), 0x86);
        assert_eq!(read_isr(&mut pic, port::MASTER_COMMAND), 0x40, "polled like an INTA");
        assert!(!pic.output());
        assert_eq!(pic.read(port::MASTER_COMMAND), 0, "poll is one read; IRR again");
    }

    #[test]
    fn special_mask_mode_lets_lower_levels_in() {
        let mut pic = bios_init();
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x0B);
        pic.set_irq(5, true);
        assert!(!pic.output());
        pic.write(port::MASTER_DATA, 0x08); // mask the level in service
        pic.write(port::MASTER_COMMAND, 0x68); // set special mask mode
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x0D);
        pic.write(port::MASTER_COMMAND, 0x48); // reset special mask mode
        pic.set_irq(4, true);
        assert!(!pic.output(), "IRQ 3 in service again blocks IRQ 4");
    }

    #[test]
    fn special_fully_nested_mode_lets_a_higher_slave_irq_through() {
        let mut pic = bios_init();
        pic.write(port::MASTER_COMMAND, 0x11);
        pic.write(port::MASTER_DATA, 0x08);
        pic.write(port::MASTER_DATA, 0x04);
        pic.write(port::MASTER_DATA, 0x11); // SFNM
        pic.set_irq(10, true);
        assert_eq!(pic.acknowledge(), 0x72);
        pic.set_irq(8, true);
        assert!(pic.output(), "IRQ 8 outranks IRQ 10 inside the slave");
        assert_eq!(pic.acknowledge(), 0x70);
    }

    #[test]
    fn initialization_resets_masks_and_state() {
        let mut pic = bios_init();
        pic.write(port::MASTER_DATA, 0xFF);
        pic.set_irq(3, true);
        pic.write(port::MASTER_COMMAND, 0x11);
        pic.write(port::MASTER_DATA, 0x08);
        pic.write(port::MASTER_DATA, 0x04);
        pic.write(port::MASTER_DATA, 0x01);
        assert_eq!(pic.read(port::MASTER_DATA), 0);
        assert!(!pic.output(), "an edge request from before ICW1 is dropped");
        // Single mode without ICW4: two words, then OCW1.
        pic.write(port::MASTER_COMMAND, 0x12);
        pic.write(port::MASTER_DATA, 0x40);
        pic.write(port::MASTER_DATA, 0xFE);
        assert_eq!(pic.read(port::MASTER_DATA), 0xFE);
    }

    #[test]
    fn irq2_and_lines_past_15_are_ignored() {
        let mut pic = bios_init();
        pic.set_irq(2, true);
        pic.set_irq(16, true);
        pic.set_irq(u8::MAX, true);
        assert!(!pic.output());
        assert_eq!(pic.read(0x22), 0xFF);
    }

    #[test]
    fn any_guest_access_is_handled() {
        let mut pic = bios_init();
        let ports = [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x22, 0x00];
        for &p in &ports {
            for value in 0..=u8::MAX {
                pic.write(p, value);
                for &q in &ports {
                    let _ = pic.read(q);
                }
                pic.set_irq(value & 0x0F, value & 0x10 != 0);
                if pic.output() {
                    let _ = pic.acknowledge();
                }
                let _ = pic.acknowledge();
            }
        }
    }
}
