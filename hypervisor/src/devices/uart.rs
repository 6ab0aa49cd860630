//! A 16550A UART register file, enough for Linux's 8250 driver (including its loopback
//! probe) and for simple polled or interrupt-driven drivers. Transmission is instant: the
//! transmitter is always empty, so LSR always reports THRE and TEMT, and every byte written
//! to THR goes straight to the caller (the VM's console ring). Reception: a 16-byte
//! receive FIFO (one byte, the RBR, while the FIFOs are disabled, as on a 16450) fed by the
//! control plane through [`Uart16550::receive`], or by THR writes in loopback mode.
//!
//! Register map: National Semiconductor PC16550D data sheet, Table II "Summary of
//! Registers" (offsets from the base port, DLAB = LCR bit 7), Table IV "Interrupt Control
//! Functions" (the IIR priorities), "FIFO Interrupt Mode Operation".
//!
//! Interrupts, highest priority first (IIR): receiver line status (an overrun, IER bit 2;
//! cleared by reading LSR), received data available (IER bit 0; the FIFO at or above its
//! trigger level, or any data with the FIFOs off; cleared by reading RBR below it), the
//! character timeout (IER bit 0; data below the trigger level: there are no character
//! times here, so it is reported at once, which drivers treat like data available), THR
//! empty (IER bit 1; cleared by reading IIR while it is reported, or by writing THR).
//! Modem status interrupts never happen (the modem lines never change).
//!
//! # How the VM drives it
//! Port exits call [`Uart16550::read`] / [`Uart16550::write`]; console input goes to
//! [`Uart16550::receive`]. After each of these, ISA IRQ 4 is set to
//! [`Uart16550::irq_line`]: the interrupt gated by OUT2 (MCR bit 3), as a PC wires the
//! 16550's INTR pin through a buffer OUT2 enables (in loopback mode OUT2 is forced
//! inactive, so the line stays low).

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

/// IER bits 0-3 exist: received data available, THR empty, receiver line status.
const IER_MASK: u8 = 0x0F;
const IER_RDI: u8 = 1 << 0;
const IER_THRI: u8 = 1 << 1;
const IER_RLSI: u8 = 1 << 2;
/// IIR: bit 0 set = no interrupt pending; the interrupt IDs of Table IV; bits 6-7 =
/// FIFOs enabled.
const IIR_NO_INTERRUPT: u8 = 0x01;
const IIR_RLSI: u8 = 0x06;
const IIR_RDI: u8 = 0x04;
const IIR_RX_TIMEOUT: u8 = 0x0C;
const IIR_THRI: u8 = 0x02;
const IIR_FIFO_ENABLED: u8 = 0xC0;
/// FCR bit 0 enables the FIFOs; bits 1-2 clear them (self-clearing); bits 6-7 select the
/// receiver trigger level (1, 4, 8 or 14 bytes).
const FCR_ENABLE: u8 = 1 << 0;
const FCR_CLEAR_RX: u8 = 1 << 1;
const FCR_TRIGGER_SHIFT: u8 = 6;
const RX_TRIGGER_LEVELS: [u8; 4] = [1, 4, 8, 14];
/// The receive FIFO's depth (16550A).
pub const RX_FIFO_BYTES: usize = 16;
/// LCR bit 7: divisor latch access.
const LCR_DLAB: u8 = 1 << 7;
/// MCR bits 0-4 exist: DTR, RTS, OUT1, OUT2, LOOP.
const MCR_MASK: u8 = 0x1F;
const MCR_DTR: u8 = 1 << 0;
const MCR_RTS: u8 = 1 << 1;
const MCR_OUT1: u8 = 1 << 2;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOP: u8 = 1 << 4;
/// LSR: data ready, overrun error, THR empty, transmitter empty.
const LSR_DR: u8 = 1 << 0;
const LSR_OE: u8 = 1 << 1;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;
/// MSR status bits: CTS, DSR, RI, DCD.
const MSR_CTS: u8 = 1 << 4;
const MSR_DSR: u8 = 1 << 5;
const MSR_RI: u8 = 1 << 6;
const MSR_DCD: u8 = 1 << 7;

/// The receiver: a FIFO of [`RX_FIFO_BYTES`] (a ring), of which only the first byte is
/// used while the FIFOs are off.
#[derive(Clone, Debug)]
struct RxFifo {
    bytes: [u8; RX_FIFO_BYTES],
    head: usize,
    len: usize,
}

impl RxFifo {
    const fn new() -> Self {
        Self { bytes: [0; RX_FIFO_BYTES], head: 0, len: 0 }
    }

    fn push(&mut self, byte: u8) {
        self.bytes[(self.head + self.len) % RX_FIFO_BYTES] = byte;
        self.len += 1;
    }

    fn pop(&mut self) -> Option<u8> {
        (self.len > 0).then(|| {
            let byte = self.bytes[self.head];
            self.head = (self.head + 1) % RX_FIFO_BYTES;
            self.len -= 1;
            byte
        })
    }
}

/// The UART's state.
#[derive(Clone, Debug)]
pub struct Uart16550 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    fifo_enabled: bool,
    rx_trigger: u8,
    /// A THR-empty interrupt is pending (set when THR empties, cleared by reading IIR
    /// while it is the reported source, or by writing THR).
    thr_interrupt: bool,
    rx: RxFifo,
    /// LSR OE: a byte arrived with the receiver full (cleared by reading LSR).
    overrun: bool,
    overruns: u64,
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
            rx_trigger: 1,
            thr_interrupt: false,
            rx: RxFifo::new(),
            overrun: false,
            overruns: 0,
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

    /// The receiver's capacity: the FIFO, or the single RBR while the FIFOs are off.
    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled { RX_FIFO_BYTES } else { 1 }
    }

    /// Bytes received and not read yet.
    #[must_use]
    pub fn rx_len(&self) -> usize {
        self.rx.len
    }

    /// Bytes lost because the receiver was full (loopback transmissions; console input
    /// never overruns, see [`Uart16550::receive`]).
    #[must_use]
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// Console input: takes as many of `bytes` as the receiver has room for (none in
    /// loopback mode, where the serial input is disconnected) and returns how many; the
    /// caller keeps the rest for later, so input from the control plane is never lost.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        if self.loopback() {
            return 0;
        }
        let taken = bytes.len().min(self.rx_capacity() - self.rx.len);
        for &byte in &bytes[..taken] {
            self.rx.push(byte);
        }
        taken
    }

    /// A byte arriving at the receiver from the line (loopback): a full receiver overruns
    /// (the FIFO keeps its bytes and loses this one; without FIFOs it replaces the RBR).
    fn receive_from_line(&mut self, byte: u8) {
        if self.rx.len < self.rx_capacity() {
            self.rx.push(byte);
            return;
        }
        self.overrun = true;
        self.overruns += 1;
        if !self.fifo_enabled {
            self.rx = RxFifo::new();
            self.rx.push(byte);
        }
    }

    /// The highest-priority pending interrupt's IIR identification (Table IV), if any.
    fn interrupt_id(&self) -> Option<u8> {
        if self.ier & IER_RLSI != 0 && self.overrun {
            Some(IIR_RLSI)
        } else if self.ier & IER_RDI != 0 && self.rx.len > 0 {
            let below_trigger = self.fifo_enabled && self.rx.len < usize::from(self.rx_trigger);
            Some(if below_trigger { IIR_RX_TIMEOUT } else { IIR_RDI })
        } else if self.ier & IER_THRI != 0 && self.thr_interrupt {
            Some(IIR_THRI)
        } else {
            None
        }
    }

    /// Whether the UART's INTR output is active (an enabled interrupt is pending).
    #[must_use]
    pub fn is_interrupt_pending(&self) -> bool {
        self.interrupt_id().is_some()
    }

    /// ISA IRQ 4's level on a PC: INTR, gated by OUT2 (forced inactive in loopback mode).
    #[must_use]
    pub fn irq_line(&self) -> bool {
        self.is_interrupt_pending() && self.mcr & MCR_OUT2 != 0 && !self.loopback()
    }

    /// A read of register `offset` (0-7).
    pub fn read(&mut self, offset: u16) -> u8 {
        match offset {
            reg::DATA if self.dlab() => self.divisor as u8,
            reg::DATA => self.rx.pop().unwrap_or(0),
            reg::IER if self.dlab() => (self.divisor >> 8) as u8,
            reg::IER => self.ier,
            reg::IIR_FCR => {
                let fifo = if self.fifo_enabled { IIR_FIFO_ENABLED } else { 0 };
                match self.interrupt_id() {
                    Some(IIR_THRI) => {
                        // Reading IIR while it reports THR empty acknowledges that interrupt.
                        self.thr_interrupt = false;
                        fifo | IIR_THRI
                    }
                    Some(id) => fifo | id,
                    None => fifo | IIR_NO_INTERRUPT,
                }
            }
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => {
                let data_ready = if self.rx.len > 0 { LSR_DR } else { 0 };
                let overrun = if core::mem::take(&mut self.overrun) { LSR_OE } else { 0 };
                LSR_THRE | LSR_TEMT | data_ready | overrun
            }
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
                    self.receive_from_line(value);
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
            reg::IIR_FCR => self.write_fcr(value),
            reg::LCR => self.lcr = value,
            reg::MCR => self.mcr = value & MCR_MASK,
            reg::SCR => self.scr = value,
            // LSR and MSR are read-only (writes are for factory testing only).
            _ => {}
        }
        None
    }

    /// FCR: changing the enable bit clears the FIFOs (data sheet, FCR bit 0), as does
    /// bit 1 for the receiver; the trigger level applies from now on.
    fn write_fcr(&mut self, value: u8) {
        let enable = value & FCR_ENABLE != 0;
        if enable != self.fifo_enabled || value & FCR_CLEAR_RX != 0 {
            self.rx = RxFifo::new();
        }
        self.fifo_enabled = enable;
        if enable {
            self.rx_trigger = RX_TRIGGER_LEVELS[usize::from(value >> FCR_TRIGGER_SHIFT)];
        }
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

    #[test]
    fn received_bytes_fill_the_fifo_in_order_and_the_rest_stays_with_the_caller() {
        let mut uart = Uart16550::new();
        assert_eq!(uart.receive(b"ab"), 1, "FIFOs off: the RBR holds one byte");
        uart.write(reg::IIR_FCR, FCR_ENABLE);
        assert_eq!(uart.rx_len(), 0, "enabling the FIFOs clears them");
        let input: [u8; 20] = core::array::from_fn(|i| i as u8);
        assert_eq!(uart.receive(&input), RX_FIFO_BYTES);
        assert_eq!(uart.receive(&input), 0, "full");
        assert_eq!(uart.overruns(), 0, "console input never overruns");
        for expected in 0..RX_FIFO_BYTES as u8 {
            assert_eq!(uart.read(reg::LSR) & LSR_DR, LSR_DR);
            assert_eq!(uart.read(reg::DATA), expected);
        }
        assert_eq!(uart.read(reg::LSR) & LSR_DR, 0);
        assert_eq!(uart.receive(&input[16..]), 4, "room again");
        assert_eq!(uart.read(reg::DATA), 16);
        uart.write(reg::IIR_FCR, FCR_ENABLE | FCR_CLEAR_RX);
        assert_eq!(uart.read(reg::LSR) & LSR_DR, 0, "FCR bit 1 cleared the receiver");
    }

    #[test]
    fn received_data_interrupts_by_trigger_level_and_out2_gates_the_line() {
        let mut uart = Uart16550::new();
        // FIFOs with a trigger level of 4 bytes, the receive interrupt enabled.
        uart.write(reg::IIR_FCR, FCR_ENABLE | 1 << FCR_TRIGGER_SHIFT);
        uart.write(reg::IER, IER_RDI);
        assert!(!uart.is_interrupt_pending());
        uart.receive(b"xy");
        assert_eq!(uart.read(reg::IIR_FCR), IIR_FIFO_ENABLED | IIR_RX_TIMEOUT, "below the trigger level");
        assert!(uart.is_interrupt_pending());
        assert!(!uart.irq_line(), "OUT2 clear: the PC's IRQ buffer is off");
        uart.write(reg::MCR, MCR_OUT2);
        assert!(uart.irq_line());
        uart.receive(b"zw");
        assert_eq!(uart.read(reg::IIR_FCR), IIR_FIFO_ENABLED | IIR_RDI, "at the trigger level");
        assert_eq!(uart.read(reg::IIR_FCR), IIR_FIFO_ENABLED | IIR_RDI, "reading IIR does not clear it");
        for _ in 0..4 {
            uart.read(reg::DATA);
        }
        assert!(!uart.irq_line(), "reading the data cleared it");
        // The THR interrupt ranks below received data.
        uart.write(reg::IER, IER_RDI | IER_THRI);
        uart.receive(b"q");
        assert_eq!(uart.read(reg::IIR_FCR), IIR_FIFO_ENABLED | IIR_RX_TIMEOUT);
        uart.read(reg::DATA);
        assert_eq!(uart.read(reg::IIR_FCR), IIR_FIFO_ENABLED | IIR_THRI);
        assert!(!uart.irq_line());
        uart.write(reg::IER, 0);
        uart.receive(b"r");
        assert!(!uart.irq_line(), "IER bit 0 clear");
    }

    #[test]
    fn loopback_overrun_sets_oe_and_the_line_status_interrupt() {
        let mut uart = Uart16550::new();
        uart.write(reg::MCR, MCR_LOOP | MCR_OUT2);
        uart.write(reg::IER, IER_RLSI);
        assert_eq!(uart.receive(b"a"), 0, "loopback disconnects the serial input");
        uart.write(reg::DATA, 1);
        uart.write(reg::DATA, 2);
        assert_eq!(uart.overruns(), 1);
        assert_eq!(uart.read(reg::IIR_FCR), IIR_RLSI);
        assert!(!uart.irq_line(), "loopback forces OUT2 inactive");
        assert_eq!(uart.read(reg::LSR) & (LSR_OE | LSR_DR), LSR_OE | LSR_DR);
        assert_eq!(uart.read(reg::LSR) & LSR_OE, 0, "reading LSR cleared OE");
        assert_eq!(uart.read(reg::IIR_FCR), IIR_NO_INTERRUPT);
        assert_eq!(uart.read(reg::DATA), 2, "without FIFOs the newer byte replaced the RBR");
    }
}
