//! The local APIC timer (SDM vol. 3A 11.5.4): one-shot, periodic and TSC-deadline modes,
//! as deadlines in host time. Nothing counts down; the counter is computed from the time
//! it was armed, so reading it and firing it are both exact and O(1) however late the
//! caller is.
//!
//! Arithmetic (all in 128 bits, saturating at `u64::MAX`):
//! - The counter decrements once per `divisor` bus clocks. After `elapsed` ns it has
//!   counted `floor(elapsed * bus_hz / (1e9 * divisor))` ticks (rounded down, so a read
//!   never shows a tick that has not fully elapsed).
//! - A count of `T` ticks therefore runs out at the first nanosecond at or after
//!   `T * divisor / bus_hz` seconds: `ceil(T * divisor * 1e9 / bus_hz)` ns after arming
//!   (rounded up; the same instant at which the counter reads 0).
//! - Periodic expiries are counted from the arming time (`first + k * initial` ticks for
//!   the k-th reload), never from the previous expiry, so periods do not drift. A new
//!   divide configuration moves the arming time to the write, with `first` = the count
//!   then (the count goes on from where it was, at the new rate).
//! - A frequency of 0 is taken as 1 Hz.
//! - The guest TSC is `floor((now - tsc_origin) * tsc_hz / 1e9)` (0 at the VM's start,
//!   running at `tsc_hz`); a deadline `D` is reached at `tsc_origin + ceil(D * 1e9 /
//!   tsc_hz)` ns, the first nanosecond at which that TSC reads at least `D`.

use super::regs::{DIVIDE_CONFIG_WRITABLE, LVT_TIMER_MODE_MASK, LVT_TIMER_MODE_SHIFT};

const NS_PER_S: u128 = 1_000_000_000;

/// What the LVT timer's bits 18:17 select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

impl TimerMode {
    /// The mode of an LVT timer entry; the reserved encoding 11 counts as one-shot.
    #[must_use]
    pub const fn of_lvt(lvt: u32) -> Self {
        match (lvt & LVT_TIMER_MODE_MASK) >> LVT_TIMER_MODE_SHIFT {
            0b01 => Self::Periodic,
            0b10 => Self::TscDeadline,
            _ => Self::OneShot,
        }
    }
}

/// The clocks the timer converts between (from the LAPIC's configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerClock {
    /// APIC bus (timer input) frequency, before the divider.
    pub bus_hz: u64,
    /// Guest TSC frequency.
    pub tsc_hz: u64,
    /// Host nanoseconds at which the guest TSC read 0.
    pub tsc_origin_ns: u64,
}

impl TimerClock {
    fn ticks_in(&self, elapsed_ns: u64, divisor: u32) -> u64 {
        let ticks =
            u128::from(elapsed_ns) * u128::from(self.bus_hz.max(1)) / (NS_PER_S * u128::from(divisor));
        saturate(ticks)
    }

    fn ns_for(&self, ticks: u128, divisor: u32) -> u64 {
        let scaled = ticks.saturating_mul(u128::from(divisor) * NS_PER_S);
        saturate(scaled.div_ceil(u128::from(self.bus_hz.max(1))))
    }

    /// The guest TSC at host time `now_ns`.
    #[must_use]
    pub fn tsc_at(&self, now_ns: u64) -> u64 {
        let elapsed = now_ns.saturating_sub(self.tsc_origin_ns);
        saturate(u128::from(elapsed) * u128::from(self.tsc_hz.max(1)) / NS_PER_S)
    }

    /// The first host nanosecond at which the guest TSC reads at least `tsc`.
    #[must_use]
    pub fn ns_at_tsc(&self, tsc: u64) -> u64 {
        let after_origin = (u128::from(tsc) * NS_PER_S).div_ceil(u128::from(self.tsc_hz.max(1)));
        saturate(u128::from(self.tsc_origin_ns) + after_origin)
    }
}

fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// The divisor a divide configuration selects (SDM vol. 3A 11.5.4, Figure 11-10): bits
/// 3,1:0 = 000 -> 2, 001 -> 4, ..., 110 -> 128, 111 -> 1.
#[must_use]
pub const fn divisor(divide_config: u32) -> u32 {
    let code = (divide_config & 0b11) | ((divide_config >> 1) & 0b100);
    1 << ((code + 1) & 0b111)
}

/// A running count: its first expiry `first_ticks` after `anchor_ns`, then one every
/// `initial_count` ticks (periodic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Countdown {
    anchor_ns: u64,
    first_ticks: u64,
    /// Expiries already delivered since `anchor_ns`.
    expiries: u64,
}

/// The timer's registers and its running count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    initial_count: u32,
    divide_config: u32,
    countdown: Option<Countdown>,
    /// IA32_TSC_DEADLINE; 0 = disarmed.
    tsc_deadline: u64,
}

impl Timer {
    /// Stopped, divide by 2, no deadline (SDM vol. 3A 11.4.7.1).
    #[must_use]
    pub const fn new() -> Self {
        Self { initial_count: 0, divide_config: 0, countdown: None, tsc_deadline: 0 }
    }

    fn divisor(&self) -> u32 {
        divisor(self.divide_config)
    }

    /// The reload value in ticks (never 0: a running count has a nonzero initial count).
    fn period(&self) -> u128 {
        u128::from(self.initial_count.max(1))
    }

    #[must_use]
    pub fn initial_count(&self) -> u32 {
        self.initial_count
    }

    #[must_use]
    pub fn divide_config(&self) -> u32 {
        self.divide_config
    }

    /// The tick (counted from the anchor) of the next expiry not yet delivered.
    fn next_expiry_tick(&self, countdown: &Countdown) -> u128 {
        u128::from(countdown.first_ticks) + u128::from(countdown.expiries) * self.period()
    }

    /// A write of the initial-count register: 0 stops the timer, anything else (re)starts
    /// the count from `now_ns`. Ignored in TSC-deadline mode (SDM vol. 3A 11.5.4.1).
    pub fn set_initial_count(&mut self, mode: TimerMode, count: u32, now_ns: u64) {
        if mode == TimerMode::TscDeadline {
            return;
        }
        self.initial_count = count;
        self.countdown = (count != 0).then_some(Countdown {
            anchor_ns: now_ns,
            first_ticks: u64::from(count),
            expiries: 0,
        });
    }

    /// The current-count register at `now_ns` (0 when stopped or in TSC-deadline mode).
    #[must_use]
    pub fn current_count(&self, mode: TimerMode, clock: &TimerClock, now_ns: u64) -> u32 {
        let Some(countdown) = self.countdown.filter(|_| mode != TimerMode::TscDeadline) else { return 0 };
        let ticks = u128::from(clock.ticks_in(now_ns.saturating_sub(countdown.anchor_ns), self.divisor()));
        let next = self.next_expiry_tick(&countdown);
        let count = if ticks < next {
            next - ticks
        } else if mode == TimerMode::Periodic {
            // Expiries not delivered yet (the caller is late): the counter has reloaded.
            self.period() - (ticks - u128::from(countdown.first_ticks)) % self.period()
        } else {
            0
        };
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// A write of the divide configuration: a running count continues from its current
    /// value at the new rate (the caller delivers due expiries first).
    pub fn set_divide_config(&mut self, mode: TimerMode, value: u32, clock: &TimerClock, now_ns: u64) {
        let remaining = self.current_count(mode, clock, now_ns);
        self.divide_config = value & DIVIDE_CONFIG_WRITABLE;
        if let Some(countdown) = &mut self.countdown {
            *countdown = Countdown { anchor_ns: now_ns, first_ticks: u64::from(remaining), expiries: 0 };
        }
    }

    /// The LVT timer's mode changed: entering or leaving TSC-deadline mode disarms the
    /// timer (SDM vol. 3A 11.5.4.1); one-shot <-> periodic keeps the count running.
    pub fn change_mode(&mut self, old: TimerMode, new: TimerMode) {
        if (old == TimerMode::TscDeadline) != (new == TimerMode::TscDeadline) {
            *self = Self { divide_config: self.divide_config, ..Self::new() };
        }
    }

    /// IA32_TSC_DEADLINE at `now_ns`: reads 0 outside TSC-deadline mode, and once the
    /// deadline has passed (whether or not the expiry has been delivered yet).
    #[must_use]
    pub fn tsc_deadline(&self, mode: TimerMode, clock: &TimerClock, now_ns: u64) -> u64 {
        let armed = mode == TimerMode::TscDeadline && clock.tsc_at(now_ns) < self.tsc_deadline;
        if armed { self.tsc_deadline } else { 0 }
    }

    /// A write of IA32_TSC_DEADLINE: arms (0 disarms); ignored outside TSC-deadline mode.
    pub fn set_tsc_deadline(&mut self, mode: TimerMode, tsc: u64) {
        if mode == TimerMode::TscDeadline {
            self.tsc_deadline = tsc;
        }
    }

    /// The host time of the next expiry, if armed.
    #[must_use]
    pub fn next_deadline(&self, mode: TimerMode, clock: &TimerClock) -> Option<u64> {
        if mode == TimerMode::TscDeadline {
            return (self.tsc_deadline != 0).then(|| clock.ns_at_tsc(self.tsc_deadline));
        }
        let countdown = self.countdown?;
        let after_anchor = clock.ns_for(self.next_expiry_tick(&countdown), self.divisor());
        Some(countdown.anchor_ns.saturating_add(after_anchor))
    }

    /// Consumes the expiries due at `now_ns` and returns how many there were (periodic
    /// expiries a late caller missed are all counted; a one-shot or TSC-deadline timer
    /// expires once and disarms).
    pub fn expire(&mut self, mode: TimerMode, clock: &TimerClock, now_ns: u64) -> u64 {
        if mode == TimerMode::TscDeadline {
            if self.tsc_deadline == 0 || clock.tsc_at(now_ns) < self.tsc_deadline {
                return 0;
            }
            self.tsc_deadline = 0;
            return 1;
        }
        let Some(mut countdown) = self.countdown else { return 0 };
        let ticks = u128::from(clock.ticks_in(now_ns.saturating_sub(countdown.anchor_ns), self.divisor()));
        if ticks < self.next_expiry_tick(&countdown) {
            return 0;
        }
        if mode == TimerMode::OneShot {
            self.countdown = None;
            return 1;
        }
        let due = 1 + (ticks - u128::from(countdown.first_ticks)) / self.period();
        let new = saturate(due - u128::from(countdown.expiries));
        countdown.expiries = saturate(due);
        self.countdown = Some(countdown);
        new
    }
}

impl Default for Timer {
    fn default() -> Self {
        Self::new()
    }
}
