//! The 8254 programmable interval timer (ports 0x40-0x43) and the PC's port 0x61 (system
//! control port B: channel 2's gate and output, the speaker enable and the refresh
//! toggle). Channel 0's output is ISA IRQ 0; channel 2's gate and output are what Linux's
//! TSC calibration (`pit_calibrate_tsc`, `quick_pit_calibrate`) uses.
//!
//! Semantics: Intel 8254 data sheet ("Control Word Format", "Read Operations": counter
//! latch and read-back commands, "Modes"; Figure "Gate Pin Operations Summary"), and the
//! PC/AT port 0x61 layout. All six modes are modelled (6 and 7 are 2 and 3), in binary
//! and BCD counting. Not modelled: the load cycle (a count is in the counting element as soon as it is
//! written, so mode 0's OUT rises after N clocks, not N+1); a new count written in mode 2
//! or 3 takes effect at once, not at the end of the current period (as in KVM and QEMU).
//! A count of 1 in mode 2 or 3 (illegal on the chip) behaves as the formulas give.
//!
//! Time: the counters run at [`PIT_HZ`] from host time passed in (`now_ns`, any
//! monotonic nanosecond clock). A counter programmed at `t0` has counted
//! `floor((now - t0) * PIT_HZ / 1e9)` clocks at `now` (exact in 128-bit arithmetic, never
//! drifting); a deadline is the first nanosecond at which a clock count is reached,
//! `t0 + ceil(clocks * 1e9 / PIT_HZ)`.
//!
//! How the VM drives it:
//! - Port exits for 0x40-0x43 and 0x61 call [`Pit::read`] / [`Pit::write`] (byte
//!   accesses) with the current host time.
//! - The scheduler arms a host timer for [`Pit::next_deadline`] (re-read after every port
//!   write and every tick); when it fires, or whenever the VM runs, [`Pit::tick`] returns
//!   how many rising edges channel 0's OUT made since the last tick: for each, raise and
//!   lower ISA IRQ 0 (8259 IRQ 0 and I/O APIC pin 2 with the usual override). A periodic
//!   deadline is never sooner than [`MIN_PERIODIC_DEADLINE_NS`] after the last tick, so a
//!   guest programming a tiny period costs bounded host timer interrupts; the edges are
//!   counted, not lost.

/// The counters' input clock: 14.31818 MHz / 12 (the value Linux calls PIT_TICK_RATE).
pub const PIT_HZ: u64 = 1_193_182;
/// Periodic deadlines are at least this far after the last [`Pit::tick`] (KVM clamps the
/// period itself, to 200 us by default; here only the host timer is limited).
pub const MIN_PERIODIC_DEADLINE_NS: u64 = 100_000;
const NS_PER_SEC: u64 = 1_000_000_000;

/// The ports (8254 data sheet: A1 A0 select counter 0-2 or the control word register).
pub mod port {
    pub const CHANNEL0: u16 = 0x40;
    pub const CHANNEL1: u16 = 0x41;
    pub const CHANNEL2: u16 = 0x42;
    pub const CONTROL: u16 = 0x43;
    /// PC/AT system control port B.
    pub const SYSTEM_CONTROL_B: u16 = 0x61;

    /// Whether the PIT answers `port`.
    #[must_use]
    pub const fn is_pit(port: u16) -> bool {
        matches!(port, CHANNEL0 | CHANNEL1 | CHANNEL2 | CONTROL | SYSTEM_CONTROL_B)
    }
}

/// Control word (8254 data sheet, "Control Word Format"): SC1-SC0 in bits 7-6 (3:
/// read-back), RW1-RW0 in bits 5-4 (0: counter latch), M2-M0 in bits 3-1, BCD in bit 0.
const CONTROL_SELECT_SHIFT: u8 = 6;
const CONTROL_ACCESS_SHIFT: u8 = 4;
const CONTROL_MODE_SHIFT: u8 = 1;
const CONTROL_BCD: u8 = 1 << 0;
const SELECT_READ_BACK: u8 = 3;
/// Read-back command: bit 5 low latches the counts, bit 4 low the status; bits 1-3 select
/// counters 0-2.
const READ_BACK_NO_COUNT: u8 = 1 << 5;
const READ_BACK_NO_STATUS: u8 = 1 << 4;
const READ_BACK_CHANNEL_SHIFT: u8 = 1;
/// Status byte: OUT in bit 7, null count in bit 6, then the control word's bits 5-0.
const STATUS_OUT: u8 = 1 << 7;
const STATUS_NULL_COUNT: u8 = 1 << 6;
/// Port 0x61 (PC/AT technical reference, "System Control Port B"): bit 0 timer 2 gate,
/// bit 1 speaker data, bits 2-3 parity and channel check enables (kept), bit 4 the
/// refresh request toggle, bit 5 timer 2 output; bits 6-7 (check status) read 0.
const PORT61_GATE2: u8 = 1 << 0;
const PORT61_WRITABLE: u8 = 0x0F;
const PORT61_REFRESH: u8 = 1 << 4;
const PORT61_OUT2: u8 = 1 << 5;
/// The refresh toggle flips every 15.085 us (the AT's DRAM refresh, counter 1 at 18).
const REFRESH_TOGGLE_NS: u64 = 15_085;

/// The counts the counting element wraps at: 16 binary bits, or four BCD decades (a
/// written 0 is this many clocks).
const BINARY_MODULUS: u32 = 0x1_0000;
const BCD_MODULUS: u32 = 10_000;

/// Four BCD digits as a number (nibbles above 9 count as their value, as the chip's
/// decades would just count on from them).
fn from_bcd(value: u16) -> u32 {
    (0..4).rev().fold(0, |sum, digit| sum * 10 + u32::from((value >> (4 * digit)) & 0xF))
}

/// A number below 10 000 as four BCD digits.
fn to_bcd(value: u32) -> u16 {
    (0..4).fold(0, |bcd, digit| bcd | (((value / 10u32.pow(digit)) % 10) as u16) << (4 * digit))
}

/// How a counter's bytes are read and written (the control word's RW field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    LowByte = 1,
    HighByte = 2,
    /// Low byte then high byte.
    Word = 3,
}

/// Clocks of [`PIT_HZ`] in `ns` nanoseconds, rounded down.
fn clocks_in(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(PIT_HZ) / u128::from(NS_PER_SEC)) as u64
}

/// The nanoseconds until `clocks` clocks have passed, rounded up.
fn ns_for(clocks: u64) -> u64 {
    let ns = (u128::from(clocks) * u128::from(NS_PER_SEC)).div_ceil(u128::from(PIT_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// One counter.
#[derive(Clone, Debug)]
struct Channel {
    /// 0-5 (6 and 7 are stored as 2 and 3).
    mode: u8,
    access: Access,
    bcd: bool,
    /// The initial count in clocks, at least 1 (a written 0 is the modulus).
    reload: u32,
    /// A count has been written since the last control word (null count clear).
    loaded: bool,
    /// Modes 1 and 5: a gate rising edge has started the count.
    triggered: bool,
    /// The counting element is decrementing now.
    running: bool,
    gate: bool,
    /// Clocks counted before `start_ns` (kept across a gate pause in modes 0 and 4).
    clocks_before: u64,
    start_ns: u64,
    /// Rising edges of OUT since the count started that were already reported.
    edges_reported: u64,
    /// The low byte of a word write, waiting for the high byte.
    pending_low: Option<u8>,
    /// The next unlatched word read returns the high byte.
    read_high_next: bool,
    latched_count: Option<u16>,
    latch_high_next: bool,
    latched_status: Option<u8>,
}

impl Channel {
    const fn new(gate: bool) -> Self {
        Self {
            mode: 0,
            access: Access::Word,
            bcd: false,
            reload: BINARY_MODULUS,
            loaded: false,
            triggered: false,
            running: false,
            gate,
            clocks_before: 0,
            start_ns: 0,
            edges_reported: 0,
            pending_low: None,
            read_high_next: false,
            latched_count: None,
            latch_high_next: false,
            latched_status: None,
        }
    }

    /// Clocks counted at `now_ns` since the count started.
    fn clocks(&self, now_ns: u64) -> u64 {
        let running = if self.running { clocks_in(now_ns.saturating_sub(self.start_ns)) } else { 0 };
        self.clocks_before + running
    }

    /// Starts counting from the initial count at `now_ns`.
    fn restart(&mut self, now_ns: u64) {
        self.clocks_before = 0;
        self.start_ns = now_ns;
        self.edges_reported = 0;
    }

    fn periodic(&self) -> bool {
        matches!(self.mode, 2 | 3)
    }

    fn modulus(&self) -> u32 {
        if self.bcd { BCD_MODULUS } else { BINARY_MODULUS }
    }

    /// The counting element's value after `clocks` clocks, as the guest reads it.
    fn count(&self, clocks: u64) -> u16 {
        let n = u64::from(self.reload);
        let modulus = u64::from(self.modulus());
        let value = match self.mode {
            _ if !self.loaded => n,
            2 => n - clocks % n,
            // Decrements by two: each half period runs from N down (exact for even N).
            3 => n - (2 * clocks) % n,
            // The one-shot modes count on through 0 and wrap.
            _ => (n % modulus + modulus - clocks % modulus) % modulus,
        };
        if self.bcd { to_bcd((value % modulus) as u32) } else { value as u16 }
    }

    /// OUT after `clocks` clocks (8254 data sheet, "Modes").
    fn out(&self, clocks: u64) -> bool {
        let n = u64::from(self.reload);
        if !self.loaded {
            // A control word sets OUT low in mode 0, high in the others.
            return self.mode != 0;
        }
        match self.mode {
            0 => clocks >= n,
            1 => !self.triggered || clocks >= n,
            // Gate low forces OUT high in modes 2 and 3.
            2 => !self.gate || clocks % n != n - 1,
            3 => !self.gate || clocks % n < n.div_ceil(2),
            4 => clocks != n,
            _ => !self.triggered || clocks != n,
        }
    }

    /// Rising edges of OUT in the first `clocks` clocks of the count.
    fn rising_edges(&self, clocks: u64) -> u64 {
        let n = u64::from(self.reload);
        if !self.loaded {
            return 0;
        }
        match self.mode {
            0 => u64::from(clocks >= n),
            1 => u64::from(self.triggered && clocks >= n),
            2 | 3 => clocks / n,
            4 => u64::from(clocks > n),
            _ => u64::from(self.triggered && clocks > n),
        }
    }

    /// The clock count of the next rising edge of OUT, if another one will come.
    fn next_edge_clocks(&self) -> Option<u64> {
        let n = u64::from(self.reload);
        if !self.loaded || !self.running {
            return None;
        }
        let first = self.edges_reported == 0;
        match self.mode {
            0 | 1 if first => Some(n),
            2 | 3 => Some((self.edges_reported + 1) * n),
            4 | 5 if first => Some(n + 1),
            _ => None,
        }
    }

    /// New edges since the last call, counted at `now_ns`.
    fn take_edges(&mut self, now_ns: u64) -> u64 {
        let edges = self.rising_edges(self.clocks(now_ns));
        let new = edges.saturating_sub(self.edges_reported);
        self.edges_reported = edges;
        new
    }

    fn status(&self, now_ns: u64) -> u8 {
        let out = if self.out(self.clocks(now_ns)) { STATUS_OUT } else { 0 };
        let null_count = if self.loaded { 0 } else { STATUS_NULL_COUNT };
        out | null_count
            | (self.access as u8) << CONTROL_ACCESS_SHIFT
            | self.mode << CONTROL_MODE_SHIFT
            | u8::from(self.bcd)
    }

    fn latch_count(&mut self, now_ns: u64) {
        // A second latch before the first is read is ignored (8254 data sheet).
        if self.latched_count.is_none() {
            self.latched_count = Some(self.count(self.clocks(now_ns)));
            self.latch_high_next = false;
        }
    }

    fn latch_status(&mut self, now_ns: u64) {
        if self.latched_status.is_none() {
            self.latched_status = Some(self.status(now_ns));
        }
    }

    /// A control word with RW != 0: new mode and access, counting stops until a count is
    /// written.
    fn program(&mut self, control: u8) {
        let access = match (control >> CONTROL_ACCESS_SHIFT) & 3 {
            1 => Access::LowByte,
            2 => Access::HighByte,
            _ => Access::Word,
        };
        let mode = (control >> CONTROL_MODE_SHIFT) & 7;
        self.mode = if mode >= 6 { mode - 4 } else { mode };
        self.access = access;
        self.bcd = control & CONTROL_BCD != 0;
        self.loaded = false;
        self.triggered = false;
        self.running = false;
        self.clocks_before = 0;
        self.edges_reported = 0;
        self.pending_low = None;
        self.read_high_next = false;
        self.latched_count = None;
        self.latched_status = None;
    }

    /// A count write completes: the counting element takes it now.
    fn load(&mut self, count: u16, now_ns: u64) {
        let count = if self.bcd { from_bcd(count) } else { u32::from(count) };
        self.reload = if count == 0 { self.modulus() } else { count };
        self.loaded = true;
        self.restart(now_ns);
        if matches!(self.mode, 1 | 5) {
            // Hardware-triggered modes wait for a gate rising edge.
            self.triggered = false;
            self.running = false;
        } else {
            self.running = self.gate;
        }
    }

    fn write(&mut self, value: u8, now_ns: u64) {
        match self.access {
            Access::LowByte => self.load(u16::from(value), now_ns),
            Access::HighByte => self.load(u16::from(value) << 8, now_ns),
            Access::Word => match self.pending_low.take() {
                Some(low) => self.load(u16::from(low) | u16::from(value) << 8, now_ns),
                None => {
                    self.pending_low = Some(value);
                    if self.mode == 0 {
                        // Mode 0: writing the first byte stops the count, OUT goes low.
                        self.loaded = false;
                        self.running = false;
                        self.edges_reported = 0;
                    }
                }
            },
        }
    }

    fn read(&mut self, now_ns: u64) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        let (value, high) = match self.latched_count {
            Some(latched) => {
                let high = match self.access {
                    Access::LowByte => false,
                    Access::HighByte => true,
                    Access::Word => self.latch_high_next,
                };
                if self.access == Access::Word && !high {
                    self.latch_high_next = true;
                } else {
                    self.latched_count = None;
                    self.latch_high_next = false;
                }
                (latched, high)
            }
            None => {
                let high = match self.access {
                    Access::LowByte => false,
                    Access::HighByte => true,
                    Access::Word => {
                        self.read_high_next = !self.read_high_next;
                        !self.read_high_next
                    }
                };
                (self.count(self.clocks(now_ns)), high)
            }
        };
        if high { (value >> 8) as u8 } else { value as u8 }
    }

    /// The gate input changes (8254 data sheet, "Gate Pin Operations Summary").
    fn set_gate(&mut self, gate: bool, now_ns: u64) {
        if gate == self.gate {
            return;
        }
        self.gate = gate;
        match self.mode {
            // Modes 0 and 4: the gate enables counting; low pauses it.
            0 | 4 => {
                if gate {
                    self.start_ns = now_ns;
                    self.running = self.loaded;
                } else {
                    self.clocks_before = self.clocks(now_ns);
                    self.running = false;
                }
            }
            // Modes 2 and 3: low stops counting (OUT high), the rising edge reloads.
            2 | 3 => {
                if gate {
                    self.restart(now_ns);
                    self.running = self.loaded;
                } else {
                    self.clocks_before = self.clocks(now_ns);
                    self.running = false;
                }
            }
            // Modes 1 and 5: the rising edge (re)starts the count.
            _ => {
                if gate && self.loaded {
                    self.restart(now_ns);
                    self.triggered = true;
                    self.running = true;
                }
            }
        }
    }
}

/// The PIT's three counters and port 0x61.
#[derive(Clone, Debug)]
pub struct Pit {
    channels: [Channel; 3],
    /// Port 0x61 bits 1-3 (bit 0 is channel 2's gate).
    port61: u8,
    /// Channel 0 rising edges counted but not yet returned by `tick`.
    pending_edges: u64,
    last_tick_ns: u64,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    /// The PIT at power-up: no counter programmed (nothing counts until the guest writes a
    /// control word and a count), channels 0 and 1 gated on, channel 2's gate off.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            port61: 0,
            pending_edges: 0,
            last_tick_ns: 0,
        }
    }

    /// A byte read of `port` at host time `now_ns` (0xFF for a port that is not the PIT's;
    /// the write-only control register reads 0).
    pub fn read(&mut self, port: u16, now_ns: u64) -> u8 {
        match port {
            port::CHANNEL0..=port::CHANNEL2 => self.channels[usize::from(port - port::CHANNEL0)].read(now_ns),
            port::CONTROL => 0,
            port::SYSTEM_CONTROL_B => {
                let channel2 = &self.channels[2];
                let gate = if channel2.gate { PORT61_GATE2 } else { 0 };
                let out = if channel2.out(channel2.clocks(now_ns)) { PORT61_OUT2 } else { 0 };
                let refresh = if (now_ns / REFRESH_TOGGLE_NS) % 2 == 1 { PORT61_REFRESH } else { 0 };
                self.port61 | gate | out | refresh
            }
            _ => 0xFF,
        }
    }

    /// A byte write of `value` to `port` at host time `now_ns` (ignored for a port that
    /// is not the PIT's).
    pub fn write(&mut self, port: u16, value: u8, now_ns: u64) {
        // Channel 0's edges up to now belong to the old programming.
        self.settle(now_ns);
        match port {
            port::CHANNEL0..=port::CHANNEL2 => {
                self.channels[usize::from(port - port::CHANNEL0)].write(value, now_ns);
            }
            port::CONTROL => self.write_control(value, now_ns),
            port::SYSTEM_CONTROL_B => {
                self.port61 = value & PORT61_WRITABLE & !PORT61_GATE2;
                self.channels[2].set_gate(value & PORT61_GATE2 != 0, now_ns);
            }
            _ => {}
        }
    }

    /// The rising edges of channel 0's OUT (ISA IRQ 0) since the last call.
    pub fn tick(&mut self, now_ns: u64) -> u64 {
        self.settle(now_ns);
        self.last_tick_ns = now_ns;
        core::mem::take(&mut self.pending_edges)
    }

    /// The host time of channel 0's next rising edge (`None`: none will come without a
    /// new programming). Periodic modes: not sooner than [`MIN_PERIODIC_DEADLINE_NS`]
    /// after the last tick. When a port write already counted edges that no tick has
    /// returned yet, the time of the last tick (already past: tick now).
    #[must_use]
    pub fn next_deadline(&self) -> Option<u64> {
        if self.pending_edges > 0 {
            return Some(self.last_tick_ns);
        }
        let channel = &self.channels[0];
        let clocks = channel.next_edge_clocks()?;
        let deadline = channel.start_ns.saturating_add(ns_for(clocks.saturating_sub(channel.clocks_before)));
        Some(if channel.periodic() {
            deadline.max(self.last_tick_ns.saturating_add(MIN_PERIODIC_DEADLINE_NS))
        } else {
            deadline
        })
    }

    fn settle(&mut self, now_ns: u64) {
        self.pending_edges = self.pending_edges.saturating_add(self.channels[0].take_edges(now_ns));
    }

    fn write_control(&mut self, value: u8, now_ns: u64) {
        let select = value >> CONTROL_SELECT_SHIFT;
        if select == SELECT_READ_BACK {
            for (i, channel) in self.channels.iter_mut().enumerate() {
                if value & (1 << (READ_BACK_CHANNEL_SHIFT + i as u8)) == 0 {
                    continue;
                }
                if value & READ_BACK_NO_STATUS == 0 {
                    channel.latch_status(now_ns);
                }
                if value & READ_BACK_NO_COUNT == 0 {
                    channel.latch_count(now_ns);
                }
            }
            return;
        }
        let channel = &mut self.channels[usize::from(select)];
        if (value >> CONTROL_ACCESS_SHIFT) & 3 == 0 {
            channel.latch_count(now_ns);
        } else {
            channel.program(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Programs channel `channel` with a control word and a 16-bit count (low, high).
    fn program(pit: &mut Pit, control: u8, count: u16, now_ns: u64) {
        let channel_port = port::CHANNEL0 + u16::from(control >> 6);
        pit.write(port::CONTROL, control, now_ns);
        pit.write(channel_port, count as u8, now_ns);
        pit.write(channel_port, (count >> 8) as u8, now_ns);
    }

    fn read_word(pit: &mut Pit, channel_port: u16, now_ns: u64) -> u16 {
        let low = pit.read(channel_port, now_ns);
        u16::from(low) | u16::from(pit.read(channel_port, now_ns)) << 8
    }

    #[test]
    fn clock_conversions_round_as_documented() {
        // 1193 clocks = 999_847.47 ns.
        assert_eq!(ns_for(1193), 999_848);
        assert_eq!(clocks_in(999_847), 1192);
        assert_eq!(clocks_in(999_848), 1193);
        assert_eq!(clocks_in(NS_PER_SEC), PIT_HZ);
        assert_eq!(clocks_in(u64::MAX), (u128::from(u64::MAX) * 1_193_182 / 1_000_000_000) as u64);
    }

    #[test]
    fn mode2_rate_generator_fires_once_per_period() {
        let mut pit = Pit::new();
        let t0 = 5_000_000;
        program(&mut pit, 0x34, 1193, t0); // channel 0, lobyte/hibyte, mode 2
        assert_eq!(pit.next_deadline(), Some(t0 + 999_848));
        assert_eq!(pit.tick(t0 + 999_847), 0);
        assert_eq!(pit.tick(t0 + 999_848), 1);
        assert_eq!(pit.next_deadline(), Some(t0 + ns_for(2 * 1193)));
        // A late tick reports every period that elapsed, none twice.
        assert_eq!(pit.tick(t0 + ns_for(10 * 1193)), 9);
        assert_eq!(pit.tick(t0 + ns_for(10 * 1193) + 1), 0);
        // 1000 periods of 1193 clocks: exactly 1000 edges, no drift.
        assert_eq!(pit.tick(t0 + ns_for(1000 * 1193)), 990);
        // The counter runs N..1: 1193 at a period start, 1 just before the next.
        pit.write(port::CONTROL, 0x00, t0 + ns_for(1000 * 1193));
        assert_eq!(read_word(&mut pit, port::CHANNEL0, t0), 1193);
        pit.write(port::CONTROL, 0x00, t0 + ns_for(1001 * 1193) - 1);
        assert_eq!(read_word(&mut pit, port::CHANNEL0, t0), 1);
    }

    #[test]
    fn mode0_fires_once_on_terminal_count_then_wraps() {
        let mut pit = Pit::new();
        program(&mut pit, 0x30, 100, 0); // channel 0, lobyte/hibyte, mode 0
        let terminal = ns_for(100);
        assert_eq!(pit.next_deadline(), Some(terminal));
        assert_eq!(pit.tick(terminal - 1), 0);
        assert_eq!(pit.tick(terminal), 1);
        assert_eq!(pit.next_deadline(), None, "one-shot");
        assert_eq!(pit.tick(terminal + NS_PER_SEC), 0);
        // The count keeps decrementing through 0 to 0xFFFF.
        assert_eq!(read_word(&mut pit, port::CHANNEL0, ns_for(101)), 0xFFFF);
        // Writing a new count starts another one-shot.
        program(&mut pit, 0x30, 50, NS_PER_SEC);
        assert_eq!(pit.tick(NS_PER_SEC + ns_for(50)), 1);
    }

    #[test]
    fn mode0_first_byte_stops_the_count() {
        let mut pit = Pit::new();
        program(&mut pit, 0x30, 100, 0);
        pit.write(port::CHANNEL0, 0x10, ns_for(50));
        assert_eq!(pit.next_deadline(), None);
        assert_eq!(pit.tick(ns_for(200)), 0, "stopped before the terminal count");
        pit.write(port::CHANNEL0, 0x00, ns_for(200));
        assert_eq!(pit.next_deadline(), Some(ns_for(200) + ns_for(0x10)));
    }

    #[test]
    fn mode3_square_wave_is_high_half_the_period() {
        let mut pit = Pit::new();
        // Channel 2 with its gate on, so its OUT is visible in port 0x61 bit 5.
        pit.write(port::SYSTEM_CONTROL_B, 0x01, 0);
        program(&mut pit, 0xB6, 1000, 0); // channel 2, lobyte/hibyte, mode 3
        let out = |pit: &mut Pit, clocks: u64| pit.read(port::SYSTEM_CONTROL_B, ns_for(clocks)) & 0x20 != 0;
        assert!(out(&mut pit, 0));
        assert!(out(&mut pit, 499));
        assert!(!out(&mut pit, 500));
        assert!(!out(&mut pit, 999));
        assert!(out(&mut pit, 1000));
        // Decrements by two in each half.
        pit.write(port::CONTROL, 0x80, ns_for(10));
        assert_eq!(read_word(&mut pit, port::CHANNEL2, 0), 980);
        // On channel 0 it raises IRQ 0 once per period.
        program(&mut pit, 0x36, 1000, 0);
        assert_eq!(pit.tick(ns_for(5000)), 5);
    }

    #[test]
    fn latched_count_is_read_later_and_latches_do_not_stack() {
        let mut pit = Pit::new();
        program(&mut pit, 0x34, 0x1000, 0);
        pit.write(port::CONTROL, 0x00, ns_for(0x100));
        pit.write(port::CONTROL, 0x00, ns_for(0x200));
        assert_eq!(read_word(&mut pit, port::CHANNEL0, ns_for(0x800)), 0x0F00, "the first latch holds");
        assert_eq!(read_word(&mut pit, port::CHANNEL0, ns_for(0x800)), 0x0800, "live again");
    }

    #[test]
    fn low_byte_high_byte_and_word_access_modes() {
        let mut pit = Pit::new();
        pit.write(port::CONTROL, 0x14, 0); // channel 0, low byte only, mode 2
        pit.write(port::CHANNEL0, 0x50, 0);
        assert_eq!(pit.read(port::CHANNEL0, 0), 0x50);
        assert_eq!(pit.read(port::CHANNEL0, 0), 0x50, "every read is the low byte");
        assert_eq!(pit.next_deadline(), Some(ns_for(0x50).max(MIN_PERIODIC_DEADLINE_NS)));
        pit.write(port::CONTROL, 0x24, 0); // high byte only
        pit.write(port::CHANNEL0, 0x12, 0);
        assert_eq!(pit.read(port::CHANNEL0, 0), 0x12);
        assert_eq!(pit.next_deadline(), Some(ns_for(0x1200)));
        pit.write(port::CONTROL, 0x34, 0); // word: low then high
        pit.write(port::CHANNEL0, 0x34, 0);
        assert_eq!(pit.next_deadline(), None, "half a count is no count");
        pit.write(port::CHANNEL0, 0x12, 0);
        assert_eq!((pit.read(port::CHANNEL0, 0), pit.read(port::CHANNEL0, 0)), (0x34, 0x12));
        // A count of 0 is 0x10000.
        program(&mut pit, 0x34, 0, 0);
        assert_eq!(pit.next_deadline(), Some(ns_for(0x1_0000)));
    }

    #[test]
    fn bcd_counts_in_decimal_decades() {
        let mut pit = Pit::new();
        program(&mut pit, 0x35, 0x1000, 0); // channel 0, word, mode 2, BCD: 1000 clocks
        assert_eq!(pit.next_deadline(), Some(ns_for(1000)));
        pit.write(port::CONTROL, 0x00, ns_for(1));
        assert_eq!(read_word(&mut pit, port::CHANNEL0, 0), 0x0999);
        // Mode 0 with 0: 10 000 clocks, then on through 0 to 9999.
        program(&mut pit, 0x31, 0, 0);
        assert_eq!(pit.next_deadline(), Some(ns_for(10_000)));
        pit.write(port::CONTROL, 0x00, ns_for(10_001));
        assert_eq!(read_word(&mut pit, port::CHANNEL0, 0), 0x9999);
        assert_eq!((from_bcd(0x1234), to_bcd(1234), from_bcd(0xFFFF)), (1234, 0x1234, 16_665));
    }

    #[test]
    fn read_back_latches_status_then_count() {
        let mut pit = Pit::new();
        program(&mut pit, 0x34, 0x2000, 0);
        pit.write(port::CONTROL, 0b1100_0010, ns_for(0x10)); // count and status of channel 0
        assert_eq!(pit.read(port::CHANNEL0, 0), 0x80 | 0x34, "OUT high, count loaded, word, mode 2");
        assert_eq!(read_word(&mut pit, port::CHANNEL0, 0), 0x1FF0);
        // Status only, after a control word without a count: null count, mode 0 OUT low.
        pit.write(port::CONTROL, 0xB1, 0); // channel 2, word, mode 0, BCD
        pit.write(port::CONTROL, 0b1110_1000, 0);
        assert_eq!(pit.read(port::CHANNEL2, 0), 0x40 | 0x31);
        // The control register is write-only.
        assert_eq!(pit.read(port::CONTROL, 0), 0);
    }

    #[test]
    fn channel2_calibration_as_linux_does_it() {
        let mut pit = Pit::new();
        let t0 = 1_000_000_000;
        // pit_calibrate_tsc: gate high, speaker off; mode 0; 10 ms latch; poll bit 5.
        let port61 = pit.read(port::SYSTEM_CONTROL_B, t0);
        pit.write(port::SYSTEM_CONTROL_B, (port61 & !0x02) | 0x01, t0);
        pit.write(port::CONTROL, 0xB0, t0);
        let latch = (PIT_HZ / 100) as u16;
        pit.write(port::CHANNEL2, latch as u8, t0);
        pit.write(port::CHANNEL2, (latch >> 8) as u8, t0);
        let terminal = t0 + ns_for(u64::from(latch));
        assert_eq!(pit.read(port::SYSTEM_CONTROL_B, terminal - 1) & 0x20, 0);
        assert_eq!(pit.read(port::SYSTEM_CONTROL_B, terminal) & 0x21, 0x21);
        assert!((terminal - t0).abs_diff(10_000_000) < 1_000, "10 ms");
        // Channel 2 never raises IRQ 0.
        assert_eq!(pit.tick(terminal), 0);
        // quick_pit_calibrate: 0xFFFF, the MSB read unlatched, decrements as time passes.
        pit.write(port::CONTROL, 0xB0, t0);
        pit.write(port::CHANNEL2, 0xFF, t0);
        pit.write(port::CHANNEL2, 0xFF, t0);
        let msb = |pit: &mut Pit, ns: u64| read_word(pit, port::CHANNEL2, ns) >> 8;
        assert_eq!(msb(&mut pit, t0), 0xFF);
        assert_eq!(msb(&mut pit, t0 + ns_for(256)), 0xFE);
        assert_eq!(msb(&mut pit, t0 + ns_for(10 * 256)), 0xF5);
    }

    #[test]
    fn channel2_gate_low_pauses_mode0() {
        let mut pit = Pit::new();
        pit.write(port::SYSTEM_CONTROL_B, 0x01, 0);
        program(&mut pit, 0xB0, 1000, 0);
        pit.write(port::SYSTEM_CONTROL_B, 0x00, ns_for(400));
        assert_eq!(pit.read(port::SYSTEM_CONTROL_B, ns_for(5000)) & 0x21, 0, "paused at 600");
        pit.write(port::SYSTEM_CONTROL_B, 0x01, ns_for(5000));
        let resume = ns_for(5000);
        assert_eq!(pit.read(port::SYSTEM_CONTROL_B, resume + ns_for(599)) & 0x20, 0);
        assert_eq!(pit.read(port::SYSTEM_CONTROL_B, resume + ns_for(600)) & 0x20, 0x20);
    }

    #[test]
    fn mode1_and_mode5_wait_for_the_gate() {
        let mut pit = Pit::new();
        program(&mut pit, 0xB2, 100, 0); // channel 2, mode 1
        let out = |pit: &mut Pit, ns: u64| pit.read(port::SYSTEM_CONTROL_B, ns) & 0x20 != 0;
        assert!(out(&mut pit, ns_for(500)), "OUT high until triggered");
        let trigger = ns_for(500);
        pit.write(port::SYSTEM_CONTROL_B, 0x01, trigger);
        assert!(!out(&mut pit, trigger + ns_for(99)));
        assert!(out(&mut pit, trigger + ns_for(100)));
        pit.write(port::SYSTEM_CONTROL_B, 0x00, ns_for(700));
        program(&mut pit, 0xBA, 100, ns_for(700)); // mode 5
        let trigger = ns_for(800);
        pit.write(port::SYSTEM_CONTROL_B, 0x01, trigger);
        assert!(out(&mut pit, trigger + ns_for(99)));
        assert!(!out(&mut pit, trigger + ns_for(100)), "one clock low at terminal count");
        assert!(out(&mut pit, trigger + ns_for(101)));
    }

    #[test]
    fn mode4_strobes_once() {
        let mut pit = Pit::new();
        program(&mut pit, 0x38, 10, 0); // channel 0, mode 4
        assert_eq!(pit.next_deadline(), Some(ns_for(11)));
        assert_eq!(pit.tick(ns_for(10)), 0);
        assert_eq!(pit.tick(ns_for(11)), 1);
        assert_eq!(pit.next_deadline(), None);
    }

    #[test]
    fn reprogramming_keeps_edges_already_due() {
        let mut pit = Pit::new();
        program(&mut pit, 0x34, 100, 0);
        // Three periods pass without a tick, then the guest reprograms.
        program(&mut pit, 0x34, 1000, ns_for(300));
        assert_eq!(pit.next_deadline(), Some(0), "edges are waiting");
        assert_eq!(pit.tick(ns_for(300)), 3);
        assert_eq!(pit.tick(ns_for(300) + ns_for(1000)), 1);
    }

    #[test]
    fn tiny_periods_are_counted_with_a_bounded_timer_rate() {
        let mut pit = Pit::new();
        program(&mut pit, 0x34, 2, 0);
        assert_eq!(pit.tick(1_000), 0);
        assert_eq!(pit.next_deadline(), Some(1_000 + MIN_PERIODIC_DEADLINE_NS));
        assert_eq!(pit.tick(1_000 + MIN_PERIODIC_DEADLINE_NS), clocks_in(101_000) / 2);
    }

    #[test]
    fn port61_keeps_its_bits_and_toggles_refresh() {
        let mut pit = Pit::new();
        pit.write(port::SYSTEM_CONTROL_B, 0xFE, 0);
        assert_eq!(pit.read(port::SYSTEM_CONTROL_B, 0), 0x0E, "bits 1-3 kept, status bits read 0");
        assert_eq!(pit.read(port::SYSTEM_CONTROL_B, REFRESH_TOGGLE_NS) & 0x10, 0x10);
        assert_eq!(pit.read(port::SYSTEM_CONTROL_B, 2 * REFRESH_TOGGLE_NS) & 0x10, 0);
        assert_eq!(pit.read(0x44, 0), 0xFF);
    }

    #[test]
    fn any_guest_access_is_handled() {
        let mut pit = Pit::new();
        let ports = [0x40, 0x41, 0x42, 0x43, 0x61, 0x44];
        let mut now = 0u64;
        for &p in &ports {
            for value in 0..=u8::MAX {
                for &t in &[0, 1, 838, 1_000_000, u64::MAX / 2] {
                    now = now.wrapping_add(t) % (u64::MAX / 2);
                    pit.write(p, value, now);
                    for &q in &ports {
                        let _ = pit.read(q, now);
                    }
                    let _ = pit.tick(now);
                    let _ = pit.next_deadline();
                }
            }
        }
        // Time that goes backwards (a caller bug) is not a panic either.
        program(&mut pit, 0x34, 3, u64::MAX);
        let _ = pit.tick(0);
        let _ = pit.read(port::CHANNEL0, 0);
        let _ = pit.next_deadline();
    }
}
