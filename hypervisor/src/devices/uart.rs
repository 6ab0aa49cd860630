//! A 16550A UART register file, enough for Linux's 8250 driver (including its loopback
//! probe) and for simple polled drivers. Transmission is instant: the transmitter is
//! always empty, so LSR always reports THRE and TEMT, and every byte written to THR goes
//! straight to the caller (the VM's console ring). No interrupt line is wired yet; the
//! interrupt identification register still behaves as on hardware.
//!
//! Register map: National Semiconductor PC16550D data sheet, Table II "Summary of
//! Registers" (offsets from the base port, DLAB = LCR bit 7).

/// Register offsets from the base port.
mod reg {
    /// DLAB=0: receiver buffer (read) / transmitter holding (write). DLAB=1: divisor low.
    pub const DATA: u16 = 0;
    /// DLAB=0: interrupt enable. DLAB=1: divisor high.
    pub const IER: u16 = 1;
    /// Interrupt identification (read) / FIFO control (write).
    pub const IIR_FCR: u16 = 2;
    pub const LCR: u16 = 3;
    pub const MCR: u16 = 4;
    pub const LSR: u16 = 5;
    pub const MSR: u16 = 6;
    pub const SCR: u16 = 7;
}

/// IER bits 0-3 exist; bit 1 enables the THR-empty interrupt.
const IER_MASK: u8 = 0x0F;
const IER_THRI: u8 = 1 << 1;
/// IIR: bit 0 set = no interrupt pending; 0x02 = THR empty; bits 6-7 = FIFOs enabled.
const IIR_NO_INTERRUPT: u8 = 0x01;
const IIR_THRI: u8 = 0x02;
const IIR_FIFO_ENABLED: u8 = 0xC0;
/// FCR bit 0 enables the FIFOs; bits 1-2 clear them (self-clearing).
const FCR_ENABLE: u8 = 1 << 0;
/// LCR bit 7: divisor latch access.
const LCR_DLAB: u8 = 1 << 7;
/// MCR bits 0-4 exist: DTR, RTS, OUT1, OUT2, LOOP.
const MCR_MASK: u8 = 0x1F;
const MCR_DTR: u8 = 1 << 0;
const MCR_RTS: u8 = 1 << 1;
const MCR_OUT1: u8 = 1 << 2;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOP: u8 = 1 << 4;
/// LSR: data ready, THR empty, transmitter empty.
const LSR_DR: u8 = 1 << 0;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;
/// MSR status bits: CTS, DSR, RI, DCD.
const MSR_CTS: u8 = 1 << 4;
const MSR_DSR: u8 = 1 << 5;
const MSR_RI: u8 = 1 << 6;
const MSR_DCD: u8 = 1 << 7;

/// The UART's state.
#[derive(Clone, Debug)]
pub struct Uart16550 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    fifo_enabled: bool,
    /// A THR-empty interrupt is pending (set when THR empties, cleared by reading IIR
    /// while it is the reported source, or by writing THR).
    thr_interrupt: bool,
    /// The byte received in loopback mode, if not read yet.
    rbr: Option<u8>,
}

impl Default for Uart16550 {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart16550 {
    /// The state after a hardware reset (divisor 12: 9600 baud).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            divisor: 12,
            fifo_enabled: false,
            thr_interrupt: false,
            rbr: None,
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    /// The divisor latch, as the guest programmed it.
    #[must_use]
    pub fn divisor(&self) -> u16 {
        self.divisor
    }

    /// Line control (word length, stop bits, parity, DLAB), as the guest programmed it.
    #[must_use]
    pub fn line_control(&self) -> u8 {
        self.lcr
    }

    /// Whether the UART would raise its interrupt line (nothing is wired to it yet).
    #[must_use]
    pub fn is_interrupt_pending(&self) -> bool {
        self.thr_interrupt && self.ier & IER_THRI != 0
    }

    /// A read of register `offset` (0-7).
    pub fn read(&mut self, offset: u16) -> u8 {
        match offset {
            reg::DATA if self.dlab() => self.divisor as u8,
            reg::DATA => self.rbr.take().unwrap_or(0),
            reg::IER if self.dlab() => (self.divisor >> 8) as u8,
            reg::IER => self.ier,
            reg::IIR_FCR => {
                let fifo = if self.fifo_enabled { IIR_FIFO_ENABLED } else { 0 };
                if self.is_interrupt_pending() {
                    // Reading IIR while it reports THR empty acknowledges that interrupt.
                    self.thr_interrupt = false;
                    fifo | IIR_THRI
                } else {
                    fifo | IIR_NO_INTERRUPT
                }
            }
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => LSR_THRE | LSR_TEMT | if self.rbr.is_some() { LSR_DR } else { 0 },
            reg::MSR => {
                if self.loopback() {
                    // Loopback wires RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD (Linux's
                    // 8250 probe writes MCR = LOOP|OUT2|RTS and expects CTS|DCD).
                    let bit = |mcr_bit: u8, msr_bit: u8| if self.mcr & mcr_bit != 0 { msr_bit } else { 0 };
                    bit(MCR_RTS, MSR_CTS)
                        | bit(MCR_DTR, MSR_DSR)
                        | bit(MCR_OUT1, MSR_RI)
                        | bit(MCR_OUT2, MSR_DCD)
                } else {
                    MSR_DCD | MSR_DSR | MSR_CTS
                }
            }
            reg::SCR => self.scr,
            _ => 0xFF,
        }
    }

    /// A write of `value` to register `offset` (0-7). Returns the byte to transmit, if
    /// this write sent one.
    pub fn write(&mut self, offset: u16, value: u8) -> Option<u8> {
        match offset {
            reg::DATA if self.dlab() => self.divisor = (self.divisor & 0xFF00) | u16::from(value),
            reg::DATA => {
                // Transmission is instant, so THR is empty again at once.
                self.thr_interrupt = true;
                if self.loopback() {
                    self.rbr = Some(value);
                } else {
                    return Some(value);
                }
            }
            reg::IER if self.dlab() => self.divisor = (self.divisor & 0x00FF) | (u16::from(value) << 8),
            reg::IER => {
                let enabling_thri = value & IER_THRI != 0 && self.ier & IER_THRI == 0;
                self.ier = value & IER_MASK;
                if enabling_thri {
                    // THR is empty, so enabling its interrupt raises it at once.
                    self.thr_interrupt = true;
                }
            }
            reg::IIR_FCR => self.fifo_enabled = value & FCR_ENABLE != 0,
            reg::LCR => self.lcr = value,
            reg::MCR => self.mcr = value & MCR_MASK,
            reg::SCR => self.scr = value,
            // LSR and MSR are read-only (writes are for factory testing only).
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thr_writes_are_transmitted_and_lsr_always_reports_empty() {
        let mut uart = Uart16550::new();
        assert_eq!(uart.write(reg::DATA, b'h'), Some(b'h'));
        assert_eq!(uart.read(reg::LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        assert_eq!(uart.read(reg::LSR) & LSR_DR, 0);
    }

    #[test]
    fn dlab_selects_the_divisor_latch() {
        let mut uart = Uart16550::new();
        uart.write(reg::LCR, LCR_DLAB | 0x03);
        assert_eq!(uart.write(reg::DATA, 0x01), None, "DLL write is not a byte to send");
        uart.write(reg::IER, 0x00);
        assert_eq!(uart.divisor(), 1);
        assert_eq!((uart.read(reg::DATA), uart.read(reg::IER)), (1, 0));
        uart.write(reg::LCR, 0x03);
        assert_eq!(uart.line_control(), 0x03);
        assert_eq!(uart.read(reg::IER), 0, "IER untouched by the divisor writes");
        assert_eq!(uart.write(reg::DATA, b'x'), Some(b'x'));
    }

    #[test]
    fn scratch_ier_mcr_keep_their_bits() {
        let mut uart = Uart16550::new();
        uart.write(reg::SCR, 0x5A);
        uart.write(reg::IER, 0xFF);
        uart.write(reg::MCR, 0xFF);
        assert_eq!((uart.read(reg::SCR), uart.read(reg::IER), uart.read(reg::MCR)), (0x5A, 0x0F, 0x1F));
    }

    #[test]
    fn iir_reports_fifos_and_the_thr_empty_interrupt_once() {
        let mut uart = Uart16550::new();
        assert_eq!(uart.read(reg::IIR_FCR), IIR_NO_INTERRUPT);
        uart.write(reg::IIR_FCR, FCR_ENABLE | 0x06);
        assert_eq!(uart.read(reg::IIR_FCR), IIR_FIFO_ENABLED | IIR_NO_INTERRUPT, "a 16550A, not a 16450");
        uart.write(reg::IER, IER_THRI);
        assert!(uart.is_interrupt_pending());
        assert_eq!(uart.read(reg::IIR_FCR), IIR_FIFO_ENABLED | IIR_THRI);
        assert_eq!(uart.read(reg::IIR_FCR), IIR_FIFO_ENABLED | IIR_NO_INTERRUPT, "acknowledged by the read");
        uart.write(reg::DATA, b'a');
        assert_eq!(uart.read(reg::IIR_FCR), IIR_FIFO_ENABLED | IIR_THRI);
    }

    #[test]
    fn loopback_passes_linux_8250_probe() {
        let mut uart = Uart16550::new();
        uart.write(reg::MCR, MCR_LOOP | 0x0A);
        assert_eq!(uart.read(reg::MSR) & 0xF0, 0x90);
        // A byte sent in loopback comes back instead of going out.
        assert_eq!(uart.write(reg::DATA, 0x55), None);
        assert_eq!(uart.read(reg::LSR) & LSR_DR, LSR_DR);
        assert_eq!(uart.read(reg::DATA), 0x55);
        assert_eq!(uart.read(reg::LSR) & LSR_DR, 0);
        uart.write(reg::MCR, 0x0B);
        assert_eq!(uart.read(reg::MSR) & 0xF0, MSR_DCD | MSR_DSR | MSR_CTS);
    }
}
