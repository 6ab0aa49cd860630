//! The device model of one VM: its port-I/O bus. On the bus ([`PortBus::device_at`] says
//! which port goes where):
//! - a 16550 UART at 0x3F8 whose output goes to the VM's console ring, the exit port 0xF4,
//!   and the debug port 0x80 that timestamps writes into the VM's event log (these ports
//!   are defined once, in `taproot_guest_abi::port`);
//! - the PC platform (issue 10): the 8259A pair with its ELCR ([`pic`]), the 8254 PIT and
//!   port 0x61 ([`pit`]), the CMOS RTC with the RAM size in CMOS ([`rtc`]), the ACPI PM registers and the reset
//!   register 0xCF9 ([`acpi_pm`]), the i8042 ([`i8042`]) and fw_cfg ([`fw_cfg`]);
//! - every other port reads as all-ones and is counted.
//!
//! An access may ask the VM to end or reset ([`IoEffect`]), and may make an interrupt
//! pending ([`IoResult::wake`]).
//!
//! # Interrupts and time
//! The bus owns the VM's [`Irqchip`] (local APICs, I/O APIC, 8259 pair; the 8259's ports
//! go to it). The device lines reach it as on a PC (`irq_lines`): the PIT's channel 0 on
//! IRQ 0, COM1 on IRQ 4, the RTC on IRQ 8, the ACPI SCI on IRQ 9. A line is re-evaluated
//! after every access to its device and at every [`PortBus::tick`]; only changes go on.
//!
//! What the VM calls, besides the port exits:
//! - [`PortBus::tick`] when a deadline has passed (or whenever convenient): the LAPIC
//!   timers, the PIT, the RTC and the PM timer's SCI catch up with `now_ns`.
//! - [`PortBus::next_deadline`] for the host timer (or a halted vCPU's sleep) of each
//!   vCPU: its LAPIC timer, and for vCPU 0 also the platform devices' deadlines. vCPU 0 is
//!   the one whose sleep covers the platform timers (it always exists); the tick it runs
//!   delivers to whichever vCPUs the routing names, and returns them to wake.
//! - [`PortBus::console_input`] for bytes typed at the VM's console (COM1's receiver).
//!
//! Every call that can make an interrupt pending returns the vCPUs to wake (if halted)
//! or kick (if in the guest), as a [`VcpuMask`]; the caller does that after dropping the
//! device lock.
//!
//! The bus is plain data (`&mut self`); a VM keeps it behind one lock, which every port
//! exit takes briefly. Nothing here blocks or allocates per access, except a new line in
//! the event log. Time (`now_ns`) is the VM's clock, a monotonic host nanosecond count.

pub mod acpi_pm;
pub mod console;
pub mod events;
pub mod fw_cfg;
pub mod i8042;
#[cfg(test)]
mod interrupt_tests;
pub mod ioapic;
pub mod irq;
pub mod irq_lines;
pub mod irqchip;
pub mod lapic;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod uart;

use alloc::string::String;
use alloc::vec::Vec;

use acpi_pm::{AcpiPm, PmEffect};
pub use console::{CONSOLE_RING_BYTES, ConsoleRead, ConsoleRing, LineSplitter};
pub use events::{EVENT_LOG_LEN, Event, EventKind, EventLog};
use fw_cfg::FwCfg;
use i8042::I8042;
use irq_lines::{IrqLines, IsaLine};
use irqchip::{Irqchip, VcpuMask};
use lapic::LapicConfig;
use pit::Pit;
use rtc::Rtc;
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

/// What a port write asks of the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEffect {
    /// The exit port: end the VM, state `exited` with this status.
    Exit(u32),
    /// ACPI S5 through PM1a_CNT: end the VM, state `exited` with status 0.
    PowerOff,
    /// The reset register 0xCF9 or the i8042's reset line: reset the platform.
    Reset,
}

/// What a port access did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoResult {
    /// For IN: the value read (masked to the access size; the backend merges it into
    /// `rax`). For OUT: 0.
    pub value: u32,
    /// What the VM must do besides continuing the guest.
    pub effect: Option<IoEffect>,
    /// The vCPUs the access made an interrupt pending for (an 8259 unmask with a request
    /// latched, an RTC register write that raises IRQ 8, ...), and vCPU 0 when a write
    /// moved the platform's timers earlier: wake or kick them.
    pub wake: VcpuMask,
}

/// What console input did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleInput {
    /// Bytes COM1's receiver took (the caller keeps the rest for later).
    pub taken: usize,
    /// The vCPUs to wake or kick (the receive interrupt).
    pub wake: VcpuMask,
}

/// Which device answers a port (the bus's routing, one place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortDevice {
    DebugExit,
    DebugEvent,
    Uart,
    Pic,
    Pit,
    Rtc,
    AcpiPm,
    I8042,
    FwCfg,
    Unknown,
}

impl PortDevice {
    /// Byte-wide devices: a wider access reaches consecutive ports, one byte each, as the
    /// ISA bus splits it.
    const fn is_byte_wide(self) -> bool {
        matches!(self, Self::Uart | Self::Pic | Self::Pit | Self::Rtc)
    }
}

/// What the platform devices are built from at VM creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlatformConfig {
    /// fw_cfg's CPU count.
    pub vcpus: u16,
    /// fw_cfg's RAM size.
    pub ram_bytes: u64,
    /// The host's wall-clock time (Unix seconds, UTC) at `now_ns`: the RTC starts there.
    pub unix_seconds: i64,
    pub now_ns: u64,
    /// The local APICs' clock and features (`irqchip`).
    pub lapic: LapicConfig,
}

/// The PC platform's port devices, reset together by a guest-requested reset (the 8259
/// pair is in the irqchip).
#[derive(Clone, Debug)]
struct Platform {
    pit: Pit,
    rtc: Rtc,
    acpi_pm: AcpiPm,
    i8042: I8042,
    fw_cfg: FwCfg,
}

/// The RAM size in the CMOS bytes firmware leaves for the OS (QEMU `pc_cmos_init`): base
/// memory in KiB (at most 640) at 0x15/0x16, memory above 1 MiB in KiB (at most 65535) at
/// 0x17/0x18 and 0x30/0x31, memory from 16 MiB to 4 GiB in 64 KiB units at 0x34/0x35,
/// and above 4 GiB in 64 KiB units at 0x5B-0x5D. Guest RAM is one range from 0.
fn cmos_memory_bytes(ram_bytes: u64) -> [(u8, u8); 11] {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    let below_4g = ram_bytes.min(4096 * MIB);
    let base = (below_4g / KIB).min(640);
    let extended = (below_4g.saturating_sub(MIB) / KIB).min(0xFFFF);
    let above_16m = (below_4g.saturating_sub(16 * MIB) / (64 * KIB)).min(0xFFFF);
    let above_4g = (ram_bytes - below_4g) / (64 * KIB);
    let byte = |v: u64, shift: u32| (v >> shift) as u8;
    [
        (0x15, byte(base, 0)),
        (0x16, byte(base, 8)),
        (0x17, byte(extended, 0)),
        (0x18, byte(extended, 8)),
        (0x30, byte(extended, 0)),
        (0x31, byte(extended, 8)),
        (0x34, byte(above_16m, 0)),
        (0x35, byte(above_16m, 8)),
        (0x5B, byte(above_4g, 0)),
        (0x5C, byte(above_4g, 8)),
        (0x5D, byte(above_4g, 16)),
    ]
}

impl Platform {
    fn new(config: &PlatformConfig) -> Self {
        let mut rtc = Rtc::new(config.unix_seconds, config.now_ns);
        for (index, value) in cmos_memory_bytes(config.ram_bytes) {
            rtc.set_cmos_byte(index, value);
        }
        Self {
            pit: Pit::new(),
            rtc,
            acpi_pm: AcpiPm::new(),
            i8042: I8042::new(),
            fw_cfg: FwCfg::new(config.vcpus, config.ram_bytes),
        }
    }
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
    platform: Platform,
    irqchip: Irqchip,
    irq_lines: IrqLines,
    /// When the SCI was last evaluated (the PM timer's deadline is relative to it).
    sci_evaluated_ns: u64,
    console: ConsoleRing,
    lines: LineSplitter,
    events: EventLog,
    unknown: UnknownPorts,
}

impl PortBus {
    /// A bus with the default console ring and event log, for tests (the VM uses the
    /// fallible [`PortBus::with_capacity`]).
    #[cfg(test)]
    #[must_use]
    pub fn new(platform: &PlatformConfig) -> Self {
        Self::with_capacity(platform, CONSOLE_RING_BYTES, EVENT_LOG_LEN)
            .expect("a test's heap holds a console ring")
    }

    /// A bus with a console ring of `console_bytes` and an event log of `events`; `None`
    /// when the heap has no room for the ring (the one large allocation: the event log
    /// grows as events come, bounded by `events`).
    #[must_use]
    pub fn with_capacity(platform: &PlatformConfig, console_bytes: usize, events: usize) -> Option<Self> {
        Some(Self {
            uart: Uart16550::new(),
            platform: Platform::new(platform),
            irqchip: Irqchip::new(u32::from(platform.vcpus), platform.lapic),
            irq_lines: IrqLines::default(),
            sci_evaluated_ns: platform.now_ns,
            console: ConsoleRing::try_new(console_bytes)?,
            lines: LineSplitter::new(),
            events: EventLog::new(events),
            unknown: UnknownPorts::default(),
        })
    }

    /// The device that answers `port`.
    #[must_use]
    pub const fn device_at(port: u16) -> PortDevice {
        match port {
            port::DEBUG_EXIT => PortDevice::DebugExit,
            port::DEBUG_EVENT => PortDevice::DebugEvent,
            p if port::is_com1(p) => PortDevice::Uart,
            p if pic::port::is_pic(p) => PortDevice::Pic,
            p if pit::port::is_pit(p) => PortDevice::Pit,
            p if rtc::port::is_rtc(p) => PortDevice::Rtc,
            p if acpi_pm::is_acpi_pm_port(p) => PortDevice::AcpiPm,
            p if i8042::is_i8042_port(p) => PortDevice::I8042,
            p if fw_cfg::is_fw_cfg_port(p) => PortDevice::FwCfg,
            _ => PortDevice::Unknown,
        }
    }

    /// One port access at the VM's time `now_ns`.
    pub fn io(&mut self, port: u16, size: IoSize, direction: IoDirection, now_ns: u64) -> IoResult {
        let mask = size.mask();
        let direction = match direction {
            IoDirection::Out(value) => IoDirection::Out(value & mask),
            IoDirection::In => IoDirection::In,
        };
        let mut result = IoResult { value: 0, effect: None, wake: VcpuMask::EMPTY };
        let device = Self::device_at(port);
        // The platform's timers run on vCPU 0's deadline, which it computed before its
        // last entry or sleep: a write from another vCPU that moves them earlier must
        // reach it now (a kick or a wake), not at its next exit or its old deadline.
        let moves_timers = matches!(direction, IoDirection::Out(_))
            && matches!(device, PortDevice::Pit | PortDevice::Rtc | PortDevice::AcpiPm);
        let timers_before = if moves_timers { self.platform_deadline() } else { None };
        if device.is_byte_wide() {
            (result.value, result.wake) = self.byte_access(port, size, direction, now_ns);
        } else {
            self.word_access(device, port, size, direction, now_ns, &mut result);
        }
        if moves_timers && self.platform_deadline().unwrap_or(u64::MAX) < timers_before.unwrap_or(u64::MAX) {
            result.wake.insert(0);
        }
        result.value &= mask;
        result
    }

    /// The ports that are not byte-wide devices: `result` gets the value, effect and wakes.
    fn word_access(
        &mut self,
        device: PortDevice,
        port: u16,
        size: IoSize,
        direction: IoDirection,
        now_ns: u64,
        result: &mut IoResult,
    ) {
        let mask = size.mask();
        let p = &mut self.platform;
        match (device, direction) {
            (PortDevice::DebugExit, IoDirection::Out(value)) => result.effect = Some(IoEffect::Exit(value)),
            (PortDevice::DebugEvent, IoDirection::Out(value)) => {
                self.events.push(now_ns, EventKind::DebugPort { value });
            }
            // Reads of the two write-only ports float, as on a PC, and are not unknown.
            (PortDevice::DebugExit | PortDevice::DebugEvent, IoDirection::In) => result.value = mask,
            (PortDevice::AcpiPm, IoDirection::In) => result.value = p.acpi_pm.read(port, size, now_ns),
            (PortDevice::AcpiPm, IoDirection::Out(v)) => {
                result.effect = Self::pm_effect(p.acpi_pm.write(port, size, v, now_ns));
            }
            (PortDevice::I8042, IoDirection::In) => result.value = p.i8042.read(port, size),
            (PortDevice::I8042, IoDirection::Out(v)) => {
                result.effect = Self::pm_effect(p.i8042.write(port, size, v))
            }
            (PortDevice::FwCfg, IoDirection::In) => result.value = p.fw_cfg.read(port, size),
            (PortDevice::FwCfg, IoDirection::Out(v)) => p.fw_cfg.write(port, size, v),
            (_, IoDirection::In) => {
                self.unknown.count(port, false);
                result.value = mask;
            }
            (_, IoDirection::Out(_)) => self.unknown.count(port, true),
        }
        if device == PortDevice::AcpiPm {
            result.wake = self.update_sci(now_ns);
        }
    }

    /// Passes the SCI's level at `now_ns` on.
    fn update_sci(&mut self, now_ns: u64) -> VcpuMask {
        self.sci_evaluated_ns = now_ns;
        let level = self.platform.acpi_pm.sci_level(now_ns);
        self.irq_lines.set(&mut self.irqchip, IsaLine::Sci, level)
    }

    fn update_uart_line(&mut self) -> VcpuMask {
        self.irq_lines.set(&mut self.irqchip, IsaLine::Uart, self.uart.irq_line())
    }

    fn update_rtc_line(&mut self) -> VcpuMask {
        self.irq_lines.set(&mut self.irqchip, IsaLine::Rtc, self.platform.rtc.irq_line())
    }

    /// Passes the PIT channel 0's edges up to `now_ns` on (ISA IRQ 0).
    fn update_pit(&mut self, now_ns: u64) -> VcpuMask {
        let edges = self.platform.pit.tick(now_ns);
        self.irqchip.pit_expired(edges)
    }

    /// Brings every timer up to `now_ns` (the LAPIC timers, the PIT, the RTC, the PM
    /// timer's SCI) and delivers what expired; returns the vCPUs to wake or kick.
    pub fn tick(&mut self, now_ns: u64) -> VcpuMask {
        let mut wake = self.irqchip.tick(now_ns);
        wake = wake.union(self.update_pit(now_ns));
        self.platform.rtc.tick(now_ns);
        wake = wake.union(self.update_rtc_line());
        wake.union(self.update_sci(now_ns))
    }

    /// The earliest host time at which [`PortBus::tick`] has something for `vcpu`: its
    /// LAPIC timer and, for vCPU 0 only, the PIT, the RTC and the PM timer (see the module
    /// doc: vCPU 0's sleep covers the platform timers).
    #[must_use]
    pub fn next_deadline(&self, vcpu: u32) -> Option<u64> {
        let lapic = self.irqchip.next_deadline(vcpu);
        if vcpu != 0 {
            return lapic;
        }
        [lapic, self.platform_deadline()].into_iter().flatten().min()
    }

    /// The earliest deadline of the PIT, the RTC and the PM timer's SCI (vCPU 0's).
    fn platform_deadline(&self) -> Option<u64> {
        let p = &self.platform;
        // While the SCI is high it cannot rise again until the guest clears its status.
        let sci = if self.irq_lines.is_high(IsaLine::Sci) {
            None
        } else {
            p.acpi_pm.next_deadline(self.sci_evaluated_ns)
        };
        [p.pit.next_deadline(), p.rtc.next_deadline(), sci].into_iter().flatten().min()
    }

    /// Bytes typed at the VM's console, for COM1's receiver: it takes what fits (16 bytes
    /// with its FIFOs on, 1 without; none in loopback mode) and may raise IRQ 4.
    pub fn console_input(&mut self, bytes: &[u8]) -> ConsoleInput {
        let taken = self.uart.receive(bytes);
        ConsoleInput { taken, wake: self.update_uart_line() }
    }

    const fn pm_effect(effect: PmEffect) -> Option<IoEffect> {
        match effect {
            PmEffect::None => None,
            PmEffect::PowerOff => Some(IoEffect::PowerOff),
            PmEffect::Reset => Some(IoEffect::Reset),
        }
    }

    /// An IN of `size` bytes (1, 2 or 4; anything else is taken as 4).
    pub fn read(&mut self, port: u16, size: u8, now_ns: u64) -> IoResult {
        self.io(port, IoSize::from_bytes(size).unwrap_or(IoSize::Dword), IoDirection::In, now_ns)
    }

    /// An OUT of `size` bytes (1, 2 or 4; anything else is taken as 4).
    pub fn write(&mut self, port: u16, size: u8, value: u32, now_ns: u64) -> IoResult {
        self.io(port, IoSize::from_bytes(size).unwrap_or(IoSize::Dword), IoDirection::Out(value), now_ns)
    }

    /// A guest-requested platform reset: the interrupt controllers (LAPICs, I/O APIC,
    /// 8259 pair), PIT, ACPI PM registers and i8042 return to their power-on state; the
    /// RTC keeps its time and CMOS (battery-backed), fw_cfg its items, and the console,
    /// event log and counters are the VM's, not the guest's. The lines of the devices that
    /// keep their state (the UART, the RTC) are passed to the new controllers as they are.
    pub fn reset_platform(&mut self) {
        let p = &mut self.platform;
        p.pit = Pit::new();
        p.acpi_pm = AcpiPm::new();
        p.i8042 = I8042::new();
        self.irqchip.reset();
        self.irq_lines = IrqLines::default();
        // No wake set: the VM restarts and kicks every vCPU after a reset anyway.
        let _ = self.update_uart_line().union(self.update_rtc_line());
        let _ = self.update_sci(self.sci_evaluated_ns);
    }

    /// The local APICs and the I/O APIC.
    #[must_use]
    pub fn irqchip(&self) -> &Irqchip {
        &self.irqchip
    }

    pub fn irqchip_mut(&mut self) -> &mut Irqchip {
        &mut self.irqchip
    }

    /// An access to the byte-wide devices, one byte per port from `port` up (a byte that
    /// falls on a port no byte-wide device answers is unknown). Returns the value read
    /// and the vCPUs to wake.
    fn byte_access(
        &mut self,
        port: u16,
        size: IoSize,
        direction: IoDirection,
        now_ns: u64,
    ) -> (u32, VcpuMask) {
        let mut value = 0u32;
        let mut wake = VcpuMask::EMPTY;
        for i in 0..u16::from(size.bytes()) {
            let Some(p) = port.checked_add(i) else { break };
            let shift = 8 * u32::from(i);
            let device = Self::device_at(p);
            if !device.is_byte_wide() {
                self.unknown.count(p, matches!(direction, IoDirection::Out(_)));
                value |= 0xFF << shift;
                continue;
            }
            let byte_wake = match direction {
                IoDirection::In => {
                    let (byte, byte_wake) = self.byte_read(device, p, now_ns);
                    value |= u32::from(byte) << shift;
                    byte_wake
                }
                IoDirection::Out(v) => self.byte_write(device, p, (v >> shift) as u8, now_ns),
            };
            wake = wake.union(byte_wake);
        }
        (if matches!(direction, IoDirection::In) { value & size.mask() } else { 0 }, wake)
    }

    fn byte_read(&mut self, device: PortDevice, port: u16, now_ns: u64) -> (u8, VcpuMask) {
        let p = &mut self.platform;
        match device {
            PortDevice::Uart => {
                let byte = self.uart.read(port - port::COM1_BASE);
                (byte, self.update_uart_line())
            }
            PortDevice::Pic => self.irqchip.pic_read(port),
            PortDevice::Pit => {
                let byte = p.pit.read(port, now_ns);
                (byte, self.update_pit(now_ns))
            }
            PortDevice::Rtc => {
                let byte = p.rtc.read(port, now_ns);
                (byte, self.update_rtc_line())
            }
            _ => (0xFF, VcpuMask::EMPTY),
        }
    }

    fn byte_write(&mut self, device: PortDevice, port: u16, byte: u8, now_ns: u64) -> VcpuMask {
        let p = &mut self.platform;
        match device {
            PortDevice::Uart => {
                if let Some(byte) = self.uart.write(port - port::COM1_BASE, byte) {
                    self.console.push(&[byte]);
                }
                self.update_uart_line()
            }
            PortDevice::Pic => self.irqchip.pic_write(port, byte),
            PortDevice::Pit => {
                p.pit.write(port, byte, now_ns);
                self.update_pit(now_ns)
            }
            PortDevice::Rtc => {
                p.rtc.write(port, byte, now_ns);
                self.update_rtc_line()
            }
            _ => VcpuMask::EMPTY,
        }
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

    const CONFIG: PlatformConfig = PlatformConfig {
        vcpus: 3,
        ram_bytes: 64 << 20,
        unix_seconds: 1_700_000_000,
        now_ns: 0,
        lapic: LapicConfig {
            bus_hz: 1_000_000_000,
            tsc_hz: 1_000_000_000,
            tsc_origin_ns: 0,
            has_x2apic: true,
        },
    };

    fn bus() -> PortBus {
        PortBus::with_capacity(&CONFIG, CONSOLE_RING_BYTES, EVENT_LOG_LEN).unwrap()
    }

    fn out(bus: &mut PortBus, port: u16, value: u32) -> IoResult {
        bus.io(port, IoSize::Byte, IoDirection::Out(value), 0)
    }

    #[test]
    fn uart_output_reaches_the_console_lines() {
        let mut bus = bus();
        for &b in b"hello from taproot guest\n" {
            assert_eq!(
                out(&mut bus, 0x3F8, u32::from(b)),
                IoResult { value: 0, effect: None, wake: VcpuMask::EMPTY }
            );
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
        let mut bus = bus();
        assert_eq!(out(&mut bus, 0xF4, 0x1_03).effect, Some(IoEffect::Exit(3)), "masked to the access size");
        assert_eq!(bus.write(0xF4, 4, 0x1_03, 0).effect, Some(IoEffect::Exit(0x103)));
        assert_eq!(bus.read(0xF4, 1, 0), IoResult { value: 0xFF, effect: None, wake: VcpuMask::EMPTY });
        assert_eq!(bus.unknown_ports().total(), PortCount::default());
    }

    #[test]
    fn debug_port_writes_are_timestamped_events() {
        let mut bus = PortBus::with_capacity(&CONFIG, 64, 2).unwrap();
        for (t, v) in [(10, 1), (20, 2), (30, 3)] {
            bus.io(0x80, IoSize::Byte, IoDirection::Out(v), t);
        }
        let kept: Vec<_> = bus.events().iter().map(|e| (e.time_ns, e.kind.clone())).collect();
        assert_eq!(kept, [(20, EventKind::DebugPort { value: 2 }), (30, EventKind::DebugPort { value: 3 })]);
        assert_eq!(bus.events().dropped(), 1);
    }

    #[test]
    fn unknown_ports_read_all_ones_and_are_counted_in_bounded_memory() {
        let mut bus = bus();
        assert_eq!(bus.read(0x2F8, 1, 0).value, 0xFF);
        assert_eq!(bus.read(0x2F8, 2, 0).value, 0xFFFF);
        assert_eq!(bus.read(0xCFC, 4, 0).value, 0xFFFF_FFFF);
        bus.write(0x2F8, 1, 0, 0);
        assert_eq!(bus.unknown_ports().ports()[0], (0x2F8, PortCount { reads: 2, writes: 1 }));
        // Every port of the I/O space: memory stays bounded, nothing is lost from the
        // totals.
        for p in 0..=u16::MAX {
            bus.write(p, 1, 0, 0);
        }
        assert_eq!(bus.unknown_ports().ports().len(), MAX_TRACKED_PORTS);
        // Not the UART's 8 ports, 0x80 and 0xF4, nor the platform's: the 8259s with their
        // ELCR (6), the PIT with 0x61 (5), the RTC (2), the ACPI PM block with 0xCF9 (13),
        // the i8042 (2) and fw_cfg (2).
        let expected_writes = 1 + 65536 - 8 - 2 - 6 - 5 - 2 - 13 - 2 - 2;
        assert_eq!(bus.unknown_ports().total(), PortCount { reads: 3, writes: expected_writes });
        assert!(bus.unknown_ports().other().writes > 0);
    }

    #[test]
    fn wide_uart_accesses_touch_consecutive_registers() {
        let mut bus = bus();
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

    #[test]
    fn each_platform_port_goes_to_its_device() {
        use PortDevice::*;
        let table: &[(&[u16], PortDevice)] = &[
            (&[0xF4], DebugExit),
            (&[0x80], DebugEvent),
            (&[0x3F8, 0x3F9, 0x3FA, 0x3FB, 0x3FC, 0x3FD, 0x3FE, 0x3FF], Uart),
            (&[0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1], Pic),
            (&[0x40, 0x41, 0x42, 0x43, 0x61], Pit),
            (&[0x70, 0x71], Rtc),
            (&[0x600, 0x601, 0x602, 0x603, 0x604, 0x605, 0x608, 0x609, 0x60A, 0x60B, 0xCF9], AcpiPm),
            (&[0x60, 0x64], I8042),
            (&[0x510, 0x511], FwCfg),
            (&[0x22, 0x44, 0x62, 0x72, 0x2F8, 0x514, 0x60C, 0xCF8, 0xCFC], Unknown),
        ];
        for (ports, device) in table {
            for &port in *ports {
                assert_eq!(PortBus::device_at(port), *device, "port {port:#x}");
            }
        }
    }

    #[test]
    fn platform_devices_answer_through_the_bus() {
        let mut bus = bus();
        // fw_cfg: signature "QEMU", then the CPU count (u16 LE) of the config.
        bus.write(0x510, 2, u32::from(fw_cfg::FW_CFG_SIGNATURE), 0);
        let signature: Vec<u8> = (0..4).map(|_| bus.read(0x511, 1, 0).value as u8).collect();
        assert_eq!(signature, b"QEMU");
        bus.write(0x510, 2, u32::from(fw_cfg::FW_CFG_NB_CPUS), 0);
        assert_eq!(bus.read(0x511, 1, 0).value | bus.read(0x511, 1, 0).value << 8, 3);
        // RTC: the config's time (2023-11-14 22:13:20 UTC) in BCD: year 0x23, month 0x11.
        bus.write(0x70, 1, 0x09, 0);
        assert_eq!(bus.read(0x71, 1, 0).value, 0x23);
        bus.write(0x70, 1, 0x08, 0);
        assert_eq!(bus.read(0x71, 1, 0).value, 0x11);
        // PIC: ICW1-4 on the master, then the mask reads back (not all-ones).
        for (port, value) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFB)] {
            bus.write(port, 1, value, 0);
        }
        assert_eq!(bus.read(0x21, 1, 0).value, 0xFB);
        // The i8042 status: nothing to read, ready for a command.
        assert_eq!(bus.read(0x64, 1, 0).value & 0b11, 0);
        // The PM timer counts from the VM's time.
        assert_eq!(bus.read(0x608, 4, 1_000_000_000).value, acpi_pm::PM_TIMER_HZ as u32);
        assert_eq!(bus.unknown_ports().total(), PortCount::default());
    }

    #[test]
    fn power_off_and_reset_writes_are_effects() {
        let mut bus = bus();
        let s5 = u32::from(acpi_pm::S5_SLP_TYP) << 10 | 1 << 13;
        assert_eq!(bus.write(0x604, 2, s5, 0).effect, Some(IoEffect::PowerOff));
        assert_eq!(bus.write(0x604, 2, 0, 0).effect, None, "SLP_EN clear: no sleep");
        assert_eq!(bus.write(0xCF9, 1, 0x06, 0).effect, Some(IoEffect::Reset));
        assert_eq!(bus.write(0xCF9, 1, 0x02, 0).effect, None, "SYS_RST alone does not reset");
        assert_eq!(bus.write(0x64, 1, 0xFE, 0).effect, Some(IoEffect::Reset));
        assert_eq!(bus.write(0x64, 1, 0xFF, 0).effect, None, "a pulse that spares the reset line");
        assert_eq!(bus.write(0xF4, 1, 9, 0).effect, Some(IoEffect::Exit(9)));
    }

    #[test]
    fn a_platform_reset_clears_the_pic_and_keeps_the_clock_and_console() {
        let mut bus = bus();
        bus.write(0x21, 1, 0x5A, 0);
        out(&mut bus, 0x3F8, u32::from(b'x'));
        bus.write(0x70, 1, 0x09, 0);
        let year = bus.read(0x71, 1, 0).value;
        bus.reset_platform();
        assert_eq!(bus.read(0x21, 1, 0).value, 0, "the mask is back to its power-on value");
        bus.write(0x70, 1, 0x09, 0);
        assert_eq!(bus.read(0x71, 1, 0).value, year);
        assert_eq!(bus.console().end_offset(), 1);
    }

    #[test]
    fn cmos_holds_the_ram_size_as_qemu_leaves_it() {
        let mut bus = bus(); // 64 MiB
        let mut cmos = |index: u32| {
            bus.write(0x70, 1, index, 0);
            bus.read(0x71, 1, 0).value
        };
        assert_eq!((cmos(0x15), cmos(0x16)), (0x80, 0x02), "640 KiB");
        assert_eq!((cmos(0x30), cmos(0x31)), (0x00, 0xFC), "63 MiB above 1 MiB, in KiB");
        assert_eq!((cmos(0x17), cmos(0x18)), (0x00, 0xFC));
        assert_eq!((cmos(0x34), cmos(0x35)), (0x00, 0x03), "48 MiB above 16 MiB, in 64 KiB");
        assert_eq!(cmos(0x5B), 0);
        let big = cmos_memory_bytes(6 << 30);
        assert_eq!(big[4..8], [(0x30, 0xFF), (0x31, 0xFF), (0x34, 0x00), (0x35, 0xFF)], "capped");
        assert_eq!(big[8..], [(0x5B, 0x00), (0x5C, 0x80), (0x5D, 0x00)], "2 GiB above 4 GiB: 0x8000 units");
    }
}
