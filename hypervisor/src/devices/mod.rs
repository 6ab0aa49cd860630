//! The device model of one VM: its port-I/O bus, with a 16550 UART at 0x3F8 whose output
//! goes to the VM's console ring, the exit port 0xF4, the debug port 0x80 that timestamps
//! writes into the VM's event log, and all other ports reading as all-ones and counted.
//! The ports are defined once, in `taproot_guest_abi::port`.
//!
//! The bus is plain data (`&mut self`); a VM keeps it behind one lock, which every port
//! exit takes briefly. Nothing here blocks or allocates per access, except a new line in
//! the event log.
//!
//! The PC platform's models (issue 10) live beside the bus, each plain data with
//! `read`/`write` and, where it keeps time, `tick(now_ns)` and `next_deadline()`:
//! [`lapic`] (one per vCPU), [`ioapic`], [`pic`] (the 8259A pair), [`pit`], [`rtc`], and
//! [`irq`], the interrupt messages they exchange. They are host-tested but not yet on the
//! bus or the vCPU entry path: each module's doc says how the VM is to drive it.

pub mod acpi_pm;
pub mod console;
pub mod events;
pub mod fw_cfg;
pub mod i8042;
pub mod ioapic;
pub mod irq;
pub mod lapic;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod uart;

use alloc::string::String;
use alloc::vec::Vec;

pub use console::{CONSOLE_RING_BYTES, ConsoleRead, ConsoleRing, LineSplitter};
pub use events::{EVENT_LOG_LEN, Event, EventKind, EventLog};
use taproot_guest_abi::port;
pub use uart::Uart16550;

/// Width of a port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoSize {
    Byte = 1,
    Word = 2,
    Dword = 4,
}

impl IoSize {
    /// The size of a 1-, 2- or 4-byte access.
    #[must_use]
    pub const fn from_bytes(bytes: u8) -> Option<Self> {
        match bytes {
            1 => Some(Self::Byte),
            2 => Some(Self::Word),
            4 => Some(Self::Dword),
            _ => None,
        }
    }

    #[must_use]
    pub const fn bytes(self) -> u8 {
        self as u8
    }

    /// The bits of `eax` the access uses.
    #[must_use]
    pub const fn mask(self) -> u32 {
        match self {
            Self::Byte => 0xFF,
            Self::Word => 0xFFFF,
            Self::Dword => 0xFFFF_FFFF,
        }
    }
}

/// IN or OUT (with the value written, already masked to the access size by the bus).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDirection {
    In,
    Out(u32),
}

/// What a port access did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoResult {
    /// For IN: the value read (masked to the access size; the backend merges it into
    /// `rax`). For OUT: 0.
    pub value: u32,
    /// The access ended the VM with this status (a write to the exit port).
    pub exit_status: Option<u32>,
}

/// Reads and writes of one port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCount {
    pub reads: u64,
    pub writes: u64,
}

/// Most distinct unknown ports counted one by one; the rest share one counter.
pub const MAX_TRACKED_PORTS: usize = 32;

/// Accesses to ports no device answers: per port for the first [`MAX_TRACKED_PORTS`]
/// ports seen, in one shared counter after that (so a guest probing every port costs a
/// bounded amount of memory).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnknownPorts {
    ports: Vec<(u16, PortCount)>,
    other: PortCount,
}

impl UnknownPorts {
    fn count(&mut self, port: u16, is_write: bool) {
        let slot = match self.ports.iter().position(|&(p, _)| p == port) {
            Some(i) => &mut self.ports[i].1,
            None if self.ports.len() < MAX_TRACKED_PORTS => {
                self.ports.push((port, PortCount::default()));
                &mut self.ports.last_mut().expect("just pushed").1
            }
            None => &mut self.other,
        };
        if is_write {
            slot.writes += 1;
        } else {
            slot.reads += 1;
        }
    }

    /// The ports counted one by one, in the order they were first accessed.
    #[must_use]
    pub fn ports(&self) -> &[(u16, PortCount)] {
        &self.ports
    }

    /// Accesses to ports beyond the first [`MAX_TRACKED_PORTS`].
    #[must_use]
    pub fn other(&self) -> PortCount {
        self.other
    }

    /// All unknown-port accesses.
    #[must_use]
    pub fn total(&self) -> PortCount {
        self.ports.iter().fold(self.other, |sum, (_, c)| PortCount {
            reads: sum.reads + c.reads,
            writes: sum.writes + c.writes,
        })
    }
}

/// The port-I/O bus of one VM.
#[derive(Clone, Debug)]
pub struct PortBus {
    uart: Uart16550,
    console: ConsoleRing,
    lines: LineSplitter,
    events: EventLog,
    unknown: UnknownPorts,
}

impl Default for PortBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PortBus {
    /// A bus with a [`CONSOLE_RING_BYTES`] console and an [`EVENT_LOG_LEN`] event log.
    #[must_use]
    pub fn new() -> Self {
        Self::with_capacity(CONSOLE_RING_BYTES, EVENT_LOG_LEN)
    }

    #[must_use]
    pub fn with_capacity(console_bytes: usize, events: usize) -> Self {
        Self {
            uart: Uart16550::new(),
            console: ConsoleRing::new(console_bytes),
            lines: LineSplitter::new(),
            events: EventLog::new(events),
            unknown: UnknownPorts::default(),
        }
    }

    /// One port access. `now_ns` timestamps debug-port writes.
    pub fn io(&mut self, port: u16, size: IoSize, direction: IoDirection, now_ns: u64) -> IoResult {
        let mask = size.mask();
        let mut result = IoResult { value: 0, exit_status: None };
        match (port, direction) {
            (port::DEBUG_EXIT, IoDirection::Out(value)) => result.exit_status = Some(value & mask),
            (port::DEBUG_EVENT, IoDirection::Out(value)) => {
                self.events.push(now_ns, EventKind::DebugPort { value: value & mask });
            }
            // Reads of the two write-only ports float, as on a PC, and are not unknown.
            (port::DEBUG_EXIT | port::DEBUG_EVENT, IoDirection::In) => result.value = mask,
            (p, _) if port::is_com1(p) => result.value = self.uart_access(port, size, direction),
            (p, IoDirection::In) => {
                self.unknown.count(p, false);
                result.value = mask;
            }
            (p, IoDirection::Out(_)) => self.unknown.count(p, true),
        }
        result
    }

    /// An IN of `size` bytes (1, 2 or 4; anything else is taken as 4).
    pub fn read(&mut self, port: u16, size: u8, now_ns: u64) -> IoResult {
        self.io(port, IoSize::from_bytes(size).unwrap_or(IoSize::Dword), IoDirection::In, now_ns)
    }

    /// An OUT of `size` bytes (1, 2 or 4; anything else is taken as 4).
    pub fn write(&mut self, port: u16, size: u8, value: u32, now_ns: u64) -> IoResult {
        self.io(port, IoSize::from_bytes(size).unwrap_or(IoSize::Dword), IoDirection::Out(value), now_ns)
    }

    /// The UART is an 8-bit device: a wider access reaches consecutive registers, one
    /// byte each, as the ISA bus splits it (a byte that falls past the UART is unknown).
    fn uart_access(&mut self, port: u16, size: IoSize, direction: IoDirection) -> u32 {
        let mut value = 0u32;
        for i in 0..u16::from(size.bytes()) {
            let Some(p) = port.checked_add(i) else { break };
            let shift = 8 * u32::from(i);
            if !port::is_com1(p) {
                self.unknown.count(p, matches!(direction, IoDirection::Out(_)));
                value |= 0xFF << shift;
                continue;
            }
            let offset = p - port::COM1_BASE;
            match direction {
                IoDirection::In => value |= u32::from(self.uart.read(offset)) << shift,
                IoDirection::Out(v) => {
                    if let Some(byte) = self.uart.write(offset, (v >> shift) as u8) {
                        self.console.push(&[byte]);
                    }
                }
            }
        }
        if matches!(direction, IoDirection::In) { value & size.mask() } else { 0 }
    }

    #[must_use]
    pub fn uart(&self) -> &Uart16550 {
        &self.uart
    }

    /// Every byte the guest sent to its console (the last [`ConsoleRing::capacity`]).
    #[must_use]
    pub fn console(&self) -> &ConsoleRing {
        &self.console
    }

    /// The next complete console line not yet handed out (for the `[vm <id>] ` printer).
    pub fn next_console_line(&mut self) -> Option<String> {
        self.lines.next_line(&self.console)
    }

    /// The next console line including an unfinished last one: for when the VM has
    /// ended (call until `None`).
    pub fn take_partial_console_line(&mut self) -> Option<String> {
        self.lines.next_line(&self.console).or_else(|| self.lines.take_partial())
    }

    /// The VM's event log (debug-port writes; the VM adds hypercall events and notes).
    #[must_use]
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    pub fn events_mut(&mut self) -> &mut EventLog {
        &mut self.events
    }

    #[must_use]
    pub fn unknown_ports(&self) -> &UnknownPorts {
        &self.unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(bus: &mut PortBus, port: u16, value: u32) -> IoResult {
        bus.io(port, IoSize::Byte, IoDirection::Out(value), 0)
    }

    #[test]
    fn uart_output_reaches_the_console_lines() {
        let mut bus = PortBus::new();
        for &b in b"hello from taproot guest\n" {
            assert_eq!(out(&mut bus, 0x3F8, u32::from(b)), IoResult { value: 0, exit_status: None });
        }
        assert_eq!(bus.console().end_offset(), 25);
        assert_eq!(bus.next_console_line().as_deref(), Some("hello from taproot guest"));
        assert_eq!(bus.next_console_line(), None);
        // LSR through the bus: THR empty and transmitter empty.
        assert_eq!(bus.read(0x3FD, 1, 0).value & 0x60, 0x60);
        out(&mut bus, 0x3F8, u32::from(b'x'));
        assert_eq!(bus.take_partial_console_line().as_deref(), Some("x"));
    }

    #[test]
    fn exit_port_ends_the_vm_with_the_written_value() {
        let mut bus = PortBus::new();
        assert_eq!(out(&mut bus, 0xF4, 0x1_03).exit_status, Some(3), "masked to the access size");
        assert_eq!(bus.write(0xF4, 4, 0x1_03, 0).exit_status, Some(0x103));
        assert_eq!(bus.read(0xF4, 1, 0), IoResult { value: 0xFF, exit_status: None });
        assert_eq!(bus.unknown_ports().total(), PortCount::default());
    }

    #[test]
    fn debug_port_writes_are_timestamped_events() {
        let mut bus = PortBus::with_capacity(64, 2);
        for (t, v) in [(10, 1), (20, 2), (30, 3)] {
            bus.io(0x80, IoSize::Byte, IoDirection::Out(v), t);
        }
        let kept: Vec<_> = bus.events().iter().map(|e| (e.time_ns, e.kind.clone())).collect();
        assert_eq!(kept, [(20, EventKind::DebugPort { value: 2 }), (30, EventKind::DebugPort { value: 3 })]);
        assert_eq!(bus.events().dropped(), 1);
    }

    #[test]
    fn unknown_ports_read_all_ones_and_are_counted_in_bounded_memory() {
        let mut bus = PortBus::new();
        assert_eq!(bus.read(0x60, 1, 0).value, 0xFF);
        assert_eq!(bus.read(0x60, 2, 0).value, 0xFFFF);
        assert_eq!(bus.read(0xCFC, 4, 0).value, 0xFFFF_FFFF);
        bus.write(0x60, 1, 0, 0);
        assert_eq!(bus.unknown_ports().ports()[0], (0x60, PortCount { reads: 2, writes: 1 }));
        // Every port of the I/O space: memory stays bounded, nothing is lost from the
        // totals.
        for p in 0..=u16::MAX {
            bus.write(p, 1, 0, 0);
        }
        assert_eq!(bus.unknown_ports().ports().len(), MAX_TRACKED_PORTS);
        let expected_writes = 1 + 65536 - 8 - 2; // not the UART's 8 ports, 0x80 and 0xF4
        assert_eq!(bus.unknown_ports().total(), PortCount { reads: 3, writes: expected_writes });
        assert!(bus.unknown_ports().other().writes > 0);
    }

    #[test]
    fn wide_uart_accesses_touch_consecutive_registers() {
        let mut bus = PortBus::new();
        // outw 0x3FE: MSR (read-only) then SCR.
        bus.write(0x3FE, 2, 0xAB_00, 0);
        assert_eq!(bus.read(0x3FF, 1, 0).value, 0xAB);
        // inw 0x3FF: SCR, then port 0x400 which nothing answers.
        assert_eq!(bus.read(0x3FF, 2, 0).value, 0xFF_AB);
        assert_eq!(bus.unknown_ports().ports(), &[(0x400, PortCount { reads: 1, writes: 0 })]);
        // outw 0x3F8 with DLAB clear: the low byte goes to THR, the high one to IER.
        bus.write(0x3F8, 2, 0x0305, 0);
        assert_eq!(bus.take_partial_console_line().as_deref(), Some("\\x05"));
        assert_eq!(bus.read(0x3F9, 1, 0).value, 0x03);
    }
}
