//! An MC146818-style CMOS real-time clock with its 128 bytes of CMOS RAM: index port 0x70
//! (bit 7 masks NMI), data port 0x71. The date and time come from the host (the VM's
//! creation time plus elapsed host time); the periodic, alarm and update-ended interrupts
//! drive ISA IRQ 8.
//!
//! Registers: Motorola MC146818A data sheet, "Address Map" (Figure 3: time, alarm and
//! calendar bytes 0x00-0x09, registers A-D at 0x0A-0x0D), "Register A" (UIP, DV, RS with
//! Table 5 "Periodic Interrupt Rate"), "Register B" (SET, PIE, AIE, UIE, SQWE, DM, 24/12,
//! DSE), "Register C" (IRQF, PF, AF, UF, cleared by reading), "Register D" (VRT); the IBM
//! PC/AT century byte at 0x32. Not modelled: the divider (DV is kept, but the clock always
//! runs at 32.768 kHz), daylight saving (DSE is kept, no effect), the square-wave output
//! (SQWE kept). The day of week is computed from the date; a written one is not kept.
//!
//! Time: the guest's clock is host time plus an offset, `guest_ns = now_ns + offset`,
//! set at creation from the host's unix time and moved when the guest sets the clock
//! (writing the time bytes under SET, or directly: the sub-second phase is kept, as the
//! divider chain keeps running). A second update happens when `guest_ns` crosses a whole
//! second; UIP reads 1 for the 244 us before it. Periodic interrupts happen when the
//! guest clock's 32.768 kHz count crosses a multiple of the period, so they are
//! phase-locked to the seconds as on the chip.
//!
//! How the VM drives it:
//! - Create it with [`Rtc::new`] (the host's unix time and the host `now_ns` at that
//!   moment); put the firmware-style bytes in with [`Rtc::set_cmos_byte`] (QEMU's layout:
//!   memory above 1 MiB in KiB at 0x30/0x31, above 16 MiB in 64 KiB units at 0x34/0x35,
//!   above 4 GiB in 64 KiB units at 0x5B-0x5D; the port bus writes them at creation).
//! - Port exits for 0x70/0x71 call [`Rtc::read`] / [`Rtc::write`] (byte accesses) with
//!   the host time; [`Rtc::nmi_masked`] is the NMI mask bit the guest last wrote to 0x70.
//! - The scheduler arms a host timer for [`Rtc::next_deadline`] and calls [`Rtc::tick`]
//!   when it fires. After every tick and every port access, the VM sets ISA IRQ 8 to
//!   [`Rtc::irq_line`] (IRQF: high until the guest reads register C or disables the
//!   interrupt in register B).

/// The ports (IBM PC/AT: index at 0x70 with the NMI mask in bit 7, data at 0x71).
pub mod port {
    pub const INDEX: u16 = 0x70;
    pub const DATA: u16 = 0x71;

    /// Whether the RTC answers `port`.
    #[must_use]
    pub const fn is_rtc(port: u16) -> bool {
        matches!(port, INDEX | DATA)
    }
}

/// CMOS bytes: 14 clock bytes and 114 of storage (MC146818A "Address Map", extended to
/// 128 as on PC chipsets).
pub const CMOS_BYTES: usize = 128;

/// Register indices (MC146818A "Address Map"; century: IBM PC/AT).
mod reg {
    pub const SECONDS: u8 = 0x00;
    pub const SECONDS_ALARM: u8 = 0x01;
    pub const MINUTES: u8 = 0x02;
    pub const MINUTES_ALARM: u8 = 0x03;
    pub const HOURS: u8 = 0x04;
    pub const HOURS_ALARM: u8 = 0x05;
    pub const DAY_OF_WEEK: u8 = 0x06;
    pub const DAY_OF_MONTH: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    pub const YEAR: u8 = 0x09;
    pub const A: u8 = 0x0A;
    pub const B: u8 = 0x0B;
    pub const C: u8 = 0x0C;
    pub const D: u8 = 0x0D;
    pub const CENTURY: u8 = 0x32;
}

/// Port 0x70: bit 7 masks NMI, bits 6-0 select the CMOS byte.
const INDEX_NMI_MASK: u8 = 1 << 7;
const INDEX_MASK: u8 = 0x7F;
/// Register A: UIP (read-only) in bit 7, DV in bits 6-4, RS in bits 3-0.
const A_UIP: u8 = 1 << 7;
const A_RATE: u8 = 0x0F;
/// Register A after the BIOS: 32.768 kHz time base, 1024 Hz rate.
const A_RESET: u8 = 0x26;
/// Register B bits.
const B_SET: u8 = 1 << 7;
const B_PIE: u8 = 1 << 6;
const B_AIE: u8 = 1 << 5;
const B_UIE: u8 = 1 << 4;
const B_BINARY: u8 = 1 << 2;
const B_24_HOUR: u8 = 1 << 1;
/// Register B after the BIOS: BCD, 24-hour, no interrupts.
const B_RESET: u8 = B_24_HOUR;
/// Register C: the flags; IRQF = (PF & PIE) | (AF & AIE) | (UF & UIE).
const C_IRQF: u8 = 1 << 7;
const C_PF: u8 = 1 << 6;
const C_AF: u8 = 1 << 5;
const C_UF: u8 = 1 << 4;
// `raise` relies on each flag sitting at its enable's bit.
const _: () = assert!(C_PF == B_PIE && C_AF == B_AIE && C_UF == B_UIE);
/// Register D: VRT, the battery is good.
const D_VRT: u8 = 1 << 7;
/// The hours byte's PM flag in 12-hour mode.
const HOURS_PM: u8 = 1 << 7;
/// An alarm byte with both top bits set matches every value ("don't care").
const ALARM_DONT_CARE: u8 = 0xC0;
/// UIP rises this long before each update (MC146818A, "Update Cycle": t_BUC).
const UIP_LEAD_NS: i128 = 244_000;
/// The time base (32.768 kHz): periodic rates divide it.
const TIME_BASE_HZ: i128 = 32_768;
const NS_PER_SEC: i128 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
/// Days from 0000-03-01 to 1970-01-01 in the proleptic Gregorian calendar.
const UNIX_EPOCH_DAYS: i64 = 719_468;
const DAYS_PER_400_YEARS: i64 = 146_097;

/// The civil date (year, month 1-12, day 1-31) of a day counted from 1970-01-01: the
/// proleptic Gregorian calendar in 400-year eras counted from a March 1st, so the leap
/// day ends each computed year.
#[must_use]
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let days = days + UNIX_EPOCH_DAYS;
    let era = days.div_euclid(DAYS_PER_400_YEARS);
    let day_of_era = days.rem_euclid(DAYS_PER_400_YEARS); // 0..=146_096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / (DAYS_PER_400_YEARS - 1)) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // from March 1st
    let month_from_march = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u8, day as u8)
}

/// The day (counted from 1970-01-01) of a civil date; the inverse of
/// [`civil_from_days`]. Out-of-range months and days count on arithmetically (day 32 of
/// January is February 1st), so any register contents give some day.
#[must_use]
pub fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let month = i64::from(month);
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_400_YEARS + day_of_era - UNIX_EPOCH_DAYS
}

/// The broken-down time of one second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 0 = Sunday.
    weekday: u8,
}

impl DateTime {
    fn from_unix(seconds: i64) -> Self {
        let days = seconds.div_euclid(SECONDS_PER_DAY);
        let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: (second_of_day / 3600) as u8,
            minute: (second_of_day / 60 % 60) as u8,
            second: (second_of_day % 60) as u8,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as u8,
        }
    }

    fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * SECONDS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

/// The RTC and its CMOS RAM.
#[derive(Clone, Debug)]
pub struct Rtc {
    cmos: [u8; CMOS_BYTES],
    index: u8,
    nmi_masked: bool,
    /// Guest clock minus host time, in nanoseconds (unix epoch based).
    offset_ns: i128,
    /// Host time up to which the flags in register C are evaluated.
    evaluated_ns: u64,
}

impl Rtc {
    /// An RTC showing `unix_seconds` at host time `now_ns` (registers as a BIOS leaves
    /// them: BCD, 24-hour, 1024 Hz rate, no interrupts enabled).
    #[must_use]
    pub fn new(unix_seconds: i64, now_ns: u64) -> Self {
        let mut cmos = [0; CMOS_BYTES];
        cmos[usize::from(reg::A)] = A_RESET;
        cmos[usize::from(reg::B)] = B_RESET;
        cmos[usize::from(reg::D)] = D_VRT;
        let mut rtc = Self {
            cmos,
            index: 0,
            nmi_masked: false,
            offset_ns: i128::from(unix_seconds) * NS_PER_SEC - i128::from(now_ns),
            evaluated_ns: now_ns,
        };
        rtc.show_time(now_ns);
        rtc
    }

    /// Whether the guest masked NMI (bit 7 of its last write to port 0x70).
    #[must_use]
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    /// ISA IRQ 8's level: register C's IRQF.
    #[must_use]
    pub fn irq_line(&self) -> bool {
        self.cmos[usize::from(reg::C)] & C_IRQF != 0
    }

    /// The guest clock in unix seconds at host time `now_ns`.
    #[must_use]
    pub fn unix_time(&self, now_ns: u64) -> i64 {
        self.guest_ns(now_ns).div_euclid(NS_PER_SEC) as i64
    }

    /// Stores a firmware byte in CMOS RAM (indices 0x0E-0x7F; the clock's own registers
    /// and anything past 127 are ignored).
    pub fn set_cmos_byte(&mut self, index: u8, value: u8) {
        if index > reg::D && usize::from(index) < CMOS_BYTES {
            self.cmos[usize::from(index)] = value;
        }
    }

    /// A byte read of `port` at host time `now_ns` (0xFF for a port that is not the
    /// RTC's and for the write-only index port).
    pub fn read(&mut self, port: u16, now_ns: u64) -> u8 {
        if port != port::DATA {
            return 0xFF;
        }
        self.evaluate(now_ns);
        match self.index {
            reg::SECONDS..=reg::YEAR | reg::CENTURY => {
                if !self.set() {
                    self.show_time(now_ns);
                }
                self.cmos[usize::from(self.index)]
            }
            reg::A => {
                self.cmos[usize::from(reg::A)] | if self.update_in_progress(now_ns) { A_UIP } else { 0 }
            }
            reg::C => core::mem::take(&mut self.cmos[usize::from(reg::C)]),
            index => self.cmos[usize::from(index)],
        }
    }

    /// A byte write of `value` to `port` at host time `now_ns` (ignored for a port that
    /// is not the RTC's).
    pub fn write(&mut self, port: u16, value: u8, now_ns: u64) {
        match port {
            port::INDEX => {
                self.index = value & INDEX_MASK;
                self.nmi_masked = value & INDEX_NMI_MASK != 0;
            }
            port::DATA => {
                self.evaluate(now_ns);
                self.write_register(self.index, value, now_ns);
            }
            _ => {}
        }
    }

    /// Brings the flags in register C up to `now_ns`; returns [`Rtc::irq_line`].
    pub fn tick(&mut self, now_ns: u64) -> bool {
        self.evaluate(now_ns);
        self.irq_line()
    }

    /// The host time at which IRQ 8 may next rise (`None` while it is already high, until
    /// the guest reads register C, and when no interrupt is enabled). Alarms are checked
    /// at every second update.
    #[must_use]
    pub fn next_deadline(&self) -> Option<u64> {
        if self.irq_line() {
            return None;
        }
        let b = self.cmos[usize::from(reg::B)];
        let guest_now = self.guest_ns(self.evaluated_ns);
        let periodic = (b & B_PIE != 0).then(|| self.periodic_ticks()).flatten().map(|period| {
            let next_tick =
                (guest_now * TIME_BASE_HZ).div_euclid(NS_PER_SEC).div_euclid(period) * period + period;
            ceil_div(next_tick * NS_PER_SEC, TIME_BASE_HZ)
        });
        let update = (b & (B_UIE | B_AIE) != 0 && b & B_SET == 0)
            .then(|| (guest_now.div_euclid(NS_PER_SEC) + 1) * NS_PER_SEC);
        let guest_deadline = match (periodic, update) {
            (Some(p), Some(u)) => p.min(u),
            (p, u) => p.or(u)?,
        };
        let host = (guest_deadline - self.offset_ns).clamp(0, i128::from(u64::MAX));
        Some(host as u64)
    }

    fn guest_ns(&self, now_ns: u64) -> i128 {
        i128::from(now_ns) + self.offset_ns
    }

    fn set(&self) -> bool {
        self.cmos[usize::from(reg::B)] & B_SET != 0
    }

    fn binary(&self) -> bool {
        self.cmos[usize::from(reg::B)] & B_BINARY != 0
    }

    /// UIP: the 244 us before a second update (never while SET holds updates off).
    fn update_in_progress(&self, now_ns: u64) -> bool {
        !self.set() && self.guest_ns(now_ns).rem_euclid(NS_PER_SEC) >= NS_PER_SEC - UIP_LEAD_NS
    }

    /// The periodic interrupt's period in 32.768 kHz ticks (MC146818A Table 5: RS 1 and
    /// 2 repeat rates 8 and 9; RS 0 is off).
    fn periodic_ticks(&self) -> Option<i128> {
        match self.cmos[usize::from(reg::A)] & A_RATE {
            0 => None,
            rate @ 1..=2 => Some(1 << (rate + 6)),
            rate => Some(1 << (rate - 1)),
        }
    }

    /// Sets the flags of register C for what happened between the last evaluation and
    /// `now_ns`: periodic ticks, second updates, alarm matches.
    fn evaluate(&mut self, now_ns: u64) {
        if now_ns <= self.evaluated_ns {
            return;
        }
        let before = self.guest_ns(self.evaluated_ns);
        let after = self.guest_ns(now_ns);
        self.evaluated_ns = now_ns;
        let mut flags = 0;
        if let Some(period) = self.periodic_ticks() {
            let ticks = |ns: i128| (ns * TIME_BASE_HZ).div_euclid(NS_PER_SEC).div_euclid(period);
            if ticks(after) > ticks(before) {
                flags |= C_PF;
            }
        }
        if !self.set() {
            let (first, last) = (before.div_euclid(NS_PER_SEC) + 1, after.div_euclid(NS_PER_SEC));
            if last >= first {
                flags |= C_UF;
                if self.alarm_matches_between(first as i64, last as i64) {
                    flags |= C_AF;
                }
            }
        }
        self.raise(flags);
    }

    /// Whether an update in seconds `first..=last` matched the alarm (at most a day of
    /// updates is checked: the alarm repeats daily).
    fn alarm_matches_between(&self, first: i64, last: i64) -> bool {
        let first = first.max(last.saturating_sub(SECONDS_PER_DAY - 1));
        let alarm = [reg::HOURS_ALARM, reg::MINUTES_ALARM, reg::SECONDS_ALARM]
            .map(|index| self.cmos[usize::from(index)]);
        (first..=last).rev().any(|second| {
            let time = DateTime::from_unix(second);
            let shown = [self.encode_hour(time.hour), self.encode(time.minute), self.encode(time.second)];
            alarm.iter().zip(shown).all(|(&a, s)| a & ALARM_DONT_CARE == ALARM_DONT_CARE || a == s)
        })
    }

    /// Sets flags in register C and recomputes IRQF from the flags and the enables in
    /// register B (so enabling an interrupt whose flag is set raises IRQ 8 at once, and
    /// disabling it lowers the line, as QEMU does).
    fn raise(&mut self, flags: u8) {
        let enables = self.cmos[usize::from(reg::B)] & (B_PIE | B_AIE | B_UIE);
        let c = &mut self.cmos[usize::from(reg::C)];
        *c |= flags;
        // The flags sit at the same bit positions as their enables (PF/PIE 6, AF/AIE 5,
        // UF/UIE 4).
        if *c & enables != 0 {
            *c |= C_IRQF;
        } else {
            *c &= !C_IRQF;
        }
    }

    fn write_register(&mut self, index: u8, value: u8, now_ns: u64) {
        match index {
            reg::SECONDS | reg::MINUTES | reg::HOURS | reg::DAY_OF_WEEK..=reg::YEAR | reg::CENTURY => {
                if self.set() {
                    self.cmos[usize::from(index)] = value;
                } else {
                    // The counting registers themselves: the clock moves at once.
                    self.show_time(now_ns);
                    self.cmos[usize::from(index)] = value;
                    self.take_time(now_ns);
                }
            }
            reg::A => self.cmos[usize::from(reg::A)] = value & !A_UIP,
            reg::B => {
                let was_set = self.set();
                let mut value = value;
                if value & B_SET != 0 {
                    // Setting SET clears UIE (MC146818A, "Register B").
                    value &= !B_UIE;
                    if !was_set {
                        self.show_time(now_ns);
                    }
                }
                self.cmos[usize::from(reg::B)] = value;
                if was_set && value & B_SET == 0 {
                    self.take_time(now_ns);
                }
                self.raise(0);
            }
            // C and D are read-only.
            reg::C | reg::D => {}
            index => self.cmos[usize::from(index)] = value,
        }
    }

    /// Writes the guest clock's time at `now_ns` into the time and calendar bytes, in the
    /// format register B selects.
    fn show_time(&mut self, now_ns: u64) {
        let time = DateTime::from_unix(self.unix_time(now_ns));
        let fields = [
            (reg::SECONDS, self.encode(time.second)),
            (reg::MINUTES, self.encode(time.minute)),
            (reg::HOURS, self.encode_hour(time.hour)),
            (reg::DAY_OF_WEEK, self.encode(time.weekday + 1)),
            (reg::DAY_OF_MONTH, self.encode(time.day)),
            (reg::MONTH, self.encode(time.month)),
            (reg::YEAR, self.encode(time.year.rem_euclid(100) as u8)),
            (reg::CENTURY, self.encode(time.year.div_euclid(100).rem_euclid(100) as u8)),
        ];
        for (index, value) in fields {
            self.cmos[usize::from(index)] = value;
        }
    }

    /// Sets the guest clock from the time and calendar bytes, keeping the sub-second
    /// phase.
    fn take_time(&mut self, now_ns: u64) {
        let byte = |index: u8| self.decode(self.cmos[usize::from(index)]);
        let hours = self.cmos[usize::from(reg::HOURS)];
        let hour = if self.cmos[usize::from(reg::B)] & B_24_HOUR != 0 {
            byte(reg::HOURS)
        } else {
            // 12-hour: 12 AM is 0, 12 PM is 12.
            self.decode(hours & !HOURS_PM) % 12 + if hours & HOURS_PM != 0 { 12 } else { 0 }
        };
        let time = DateTime {
            year: i64::from(byte(reg::CENTURY)) * 100 + i64::from(byte(reg::YEAR)),
            month: byte(reg::MONTH),
            day: byte(reg::DAY_OF_MONTH),
            hour,
            minute: byte(reg::MINUTES),
            second: byte(reg::SECONDS),
            weekday: 0,
        };
        let phase = self.guest_ns(now_ns).rem_euclid(NS_PER_SEC);
        self.offset_ns = i128::from(time.to_unix()) * NS_PER_SEC + phase - i128::from(now_ns);
    }

    /// A value 0-99 in the register format (BCD unless DM selects binary).
    fn encode(&self, value: u8) -> u8 {
        if self.binary() { value } else { ((value / 10) << 4) | (value % 10) }
    }

    fn decode(&self, value: u8) -> u8 {
        if self.binary() { value } else { (value >> 4).wrapping_mul(10).wrapping_add(value & 0x0F) }
    }

    /// An hour 0-23 in the register format, 12-hour with the PM flag unless 24/12 is set.
    fn encode_hour(&self, hour: u8) -> u8 {
        if self.cmos[usize::from(reg::B)] & B_24_HOUR != 0 {
            return self.encode(hour);
        }
        let twelve = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(twelve) | if hour >= 12 { HOURS_PM } else { 0 }
    }
}

/// `numerator / denominator` rounded towards positive infinity (`denominator` > 0).
fn ceil_div(numerator: i128, denominator: i128) -> i128 {
    -((-numerator).div_euclid(denominator))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;
    /// 2000-02-29 23:59:59 UTC, a Tuesday.
    const LEAP_DAY_END: i64 = 951_868_799;

    fn read_register(rtc: &mut Rtc, index: u8, now_ns: u64) -> u8 {
        rtc.write(port::INDEX, index, now_ns);
        rtc.read(port::DATA, now_ns)
    }

    fn write_register(rtc: &mut Rtc, index: u8, value: u8, now_ns: u64) {
        rtc.write(port::INDEX, index, now_ns);
        rtc.write(port::DATA, value, now_ns);
    }

    /// Year (with century), month, day, hour, minute, second, day of week as read.
    fn read_clock(rtc: &mut Rtc, now_ns: u64) -> [u8; 8] {
        [
            reg::CENTURY,
            reg::YEAR,
            reg::MONTH,
            reg::DAY_OF_MONTH,
            reg::HOURS,
            reg::MINUTES,
            reg::SECONDS,
            reg::DAY_OF_WEEK,
        ]
        .map(|index| read_register(rtc, index, now_ns))
    }

    #[test]
    fn civil_dates_from_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(
            civil_from_days(days_from_civil(2100, 2, 28) + 1),
            (2100, 3, 1),
            "2100 is not a leap year"
        );
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 28) + 1), (2024, 2, 29));
        assert_eq!(civil_from_days(days_from_civil(1900, 2, 28) + 1), (1900, 3, 1));
        assert_eq!(days_from_civil(2000, 1, 1) - days_from_civil(1999, 1, 1), 365);
        assert_eq!(days_from_civil(2001, 1, 1) - days_from_civil(2000, 1, 1), 366);
        // Every day of 0001-01-01..9999-12-31 round-trips, and the days follow each other
        // with the right month lengths.
        let (start, end) = (days_from_civil(1, 1, 1), days_from_civil(9999, 12, 31));
        let mut previous = civil_from_days(start - 1);
        for days in start..=end {
            let date = civil_from_days(days);
            assert_eq!(days_from_civil(date.0, date.1, date.2), days);
            let (y, m, d) = previous;
            let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
            let month_len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let expected = if d < month_len {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!(date, expected);
            previous = date;
        }
    }

    #[test]
    fn out_of_range_dates_count_on() {
        assert_eq!(civil_from_days(days_from_civil(2021, 1, 32)), (2021, 2, 1));
        let _ = days_from_civil(i64::from(u8::MAX) * 100, u8::MAX, u8::MAX);
    }

    #[test]
    fn reads_the_host_time_in_bcd_24_hour() {
        let t0 = 7 * SECOND;
        let mut rtc = Rtc::new(LEAP_DAY_END, t0);
        assert_eq!(read_clock(&mut rtc, t0), [0x20, 0x00, 0x02, 0x29, 0x23, 0x59, 0x59, 3]);
        // One second later: 2000-03-01 00:00:00, a Wednesday.
        assert_eq!(read_clock(&mut rtc, t0 + SECOND), [0x20, 0x00, 0x03, 0x01, 0x00, 0x00, 0x00, 4]);
        assert_eq!(rtc.unix_time(t0 + SECOND), LEAP_DAY_END + 1);
    }

    #[test]
    fn year_and_century_roll_over() {
        let mut rtc = Rtc::new(946_684_799, 0); // 1999-12-31 23:59:59, a Friday
        assert_eq!(read_clock(&mut rtc, 0), [0x19, 0x99, 0x12, 0x31, 0x23, 0x59, 0x59, 6]);
        assert_eq!(read_clock(&mut rtc, SECOND), [0x20, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 7]);
        let mut rtc = Rtc::new(1_798_761_599, 0); // 2026-12-31 23:59:59
        assert_eq!(read_clock(&mut rtc, SECOND), [0x20, 0x27, 0x01, 0x01, 0x00, 0x00, 0x00, 6]);
        let mut rtc = Rtc::new(4_107_542_399, 0); // 2100-02-28 23:59:59, a Sunday
        assert_eq!(read_clock(&mut rtc, SECOND), [0x21, 0x00, 0x03, 0x01, 0x00, 0x00, 0x00, 2]);
    }

    #[test]
    fn binary_and_12_hour_formats() {
        let mut rtc = Rtc::new(LEAP_DAY_END, 0);
        write_register(&mut rtc, reg::B, B_BINARY, 0); // binary, 12-hour
        assert_eq!(read_clock(&mut rtc, 0), [20, 0, 2, 29, 11 | HOURS_PM, 59, 59, 3]);
        assert_eq!(read_register(&mut rtc, reg::HOURS, SECOND), 12, "midnight is 12 AM");
        write_register(&mut rtc, reg::B, 0, SECOND); // BCD, 12-hour
        assert_eq!(read_register(&mut rtc, reg::HOURS, SECOND + 12 * 3600 * SECOND), 0x12 | HOURS_PM);
        assert_eq!(read_register(&mut rtc, reg::HOURS, SECOND + 23 * 3600 * SECOND), 0x11 | HOURS_PM);
        assert_eq!(read_register(&mut rtc, reg::HOURS, SECOND + 3600 * SECOND), 0x01);
    }

    #[test]
    fn guest_sets_the_clock_under_set() {
        let mut rtc = Rtc::new(LEAP_DAY_END, 0);
        let t = SECOND / 4;
        write_register(&mut rtc, reg::B, B_SET | B_24_HOUR | B_UIE, t);
        assert_eq!(read_register(&mut rtc, reg::B, t), B_SET | B_24_HOUR, "SET clears UIE");
        // 2024-02-29 12:00:00: the bytes hold while SET, however long it takes.
        for (index, value) in [
            (reg::CENTURY, 0x20),
            (reg::YEAR, 0x24),
            (reg::MONTH, 0x02),
            (reg::DAY_OF_MONTH, 0x29),
            (reg::HOURS, 0x12),
            (reg::MINUTES, 0x00),
            (reg::SECONDS, 0x00),
        ] {
            write_register(&mut rtc, index, value, t);
        }
        assert_eq!(read_register(&mut rtc, reg::SECONDS, t + 5 * SECOND), 0x00);
        assert_eq!(read_register(&mut rtc, reg::A, t + 5 * SECOND - 1) & A_UIP, 0, "no updates under SET");
        let resume = t + 5 * SECOND;
        write_register(&mut rtc, reg::B, B_24_HOUR, resume);
        assert_eq!(rtc.unix_time(resume), 1_709_208_000);
        // The divider kept its phase: the next update is at a whole host second.
        assert_eq!(rtc.unix_time(6 * SECOND - 1), 1_709_208_000);
        assert_eq!(read_clock(&mut rtc, 6 * SECOND), [0x20, 0x24, 0x02, 0x29, 0x12, 0x00, 0x01, 5]);
    }

    #[test]
    fn writing_a_time_byte_without_set_moves_the_clock() {
        let mut rtc = Rtc::new(LEAP_DAY_END, 0);
        write_register(&mut rtc, reg::MINUTES, 0x30, 0);
        assert_eq!(rtc.unix_time(0), LEAP_DAY_END - 29 * 60);
        assert_eq!(read_register(&mut rtc, reg::SECONDS, SECOND), 0x00);
        assert_eq!(read_register(&mut rtc, reg::MINUTES, SECOND), 0x31);
    }

    #[test]
    fn uip_is_high_for_244_us_before_each_update() {
        let mut rtc = Rtc::new(LEAP_DAY_END, 0);
        let uip = |rtc: &mut Rtc, ns: u64| read_register(rtc, reg::A, ns) & A_UIP != 0;
        assert!(!uip(&mut rtc, 0));
        assert!(!uip(&mut rtc, SECOND - 244_001));
        assert!(uip(&mut rtc, SECOND - 244_000));
        assert!(uip(&mut rtc, SECOND - 1));
        assert!(!uip(&mut rtc, SECOND));
        assert_eq!(read_register(&mut rtc, reg::A, SECOND), A_RESET);
        write_register(&mut rtc, reg::A, 0xFF, SECOND);
        assert_eq!(read_register(&mut rtc, reg::A, SECOND), 0x7F, "UIP is read-only");
    }

    #[test]
    fn periodic_interrupt_at_the_register_a_rate() {
        let mut rtc = Rtc::new(LEAP_DAY_END, 0);
        assert_eq!(rtc.next_deadline(), None, "no interrupt enabled");
        write_register(&mut rtc, reg::B, B_PIE | B_24_HOUR, 0);
        // 1024 Hz: 32 ticks of 32.768 kHz = 976_562.5 ns.
        assert_eq!(rtc.next_deadline(), Some(976_563));
        assert!(!rtc.tick(976_562));
        assert!(rtc.tick(976_563));
        assert!(rtc.irq_line());
        assert_eq!(rtc.next_deadline(), None, "the line stays high until C is read");
        assert_eq!(read_register(&mut rtc, reg::C, 976_563), C_IRQF | C_PF);
        assert!(!rtc.irq_line());
        assert_eq!(read_register(&mut rtc, reg::C, 976_563), 0, "reading C cleared it");
        assert_eq!(rtc.next_deadline(), Some(1_953_125));
        // 2 Hz (RS 15) and 256 Hz (RS 1, the same as RS 8).
        write_register(&mut rtc, reg::A, 0x2F, 976_563);
        assert_eq!(rtc.next_deadline(), Some(SECOND / 2));
        write_register(&mut rtc, reg::A, 0x21, 976_563);
        assert_eq!(rtc.next_deadline(), Some(3_906_250));
        write_register(&mut rtc, reg::A, 0x20, 976_563);
        assert_eq!(rtc.next_deadline(), None, "RS 0: off");
    }

    #[test]
    fn periodic_flag_is_set_even_when_disabled() {
        let mut rtc = Rtc::new(LEAP_DAY_END, 0);
        assert!(!rtc.tick(SECOND / 100));
        assert_eq!(read_register(&mut rtc, reg::C, SECOND / 100), C_PF, "no update yet, PIE off");
        write_register(&mut rtc, reg::B, B_PIE | B_24_HOUR, SECOND / 50);
        assert!(rtc.irq_line(), "enabling PIE with PF set raises IRQF");
        write_register(&mut rtc, reg::B, B_24_HOUR, SECOND / 50);
        assert!(!rtc.irq_line(), "disabling it lowers IRQF again");
        assert_eq!(read_register(&mut rtc, reg::C, SECOND / 50), C_PF);
    }

    #[test]
    fn update_ended_interrupt_each_second() {
        let t0 = SECOND / 3;
        let mut rtc = Rtc::new(LEAP_DAY_END, t0);
        write_register(&mut rtc, reg::B, B_UIE | B_24_HOUR, t0);
        // The guest's seconds start at its creation.
        assert_eq!(rtc.next_deadline(), Some(t0 + SECOND));
        assert!(!rtc.tick(t0 + SECOND - 1));
        assert!(rtc.tick(t0 + SECOND));
        assert_eq!(read_register(&mut rtc, reg::C, t0 + SECOND) & (C_IRQF | C_UF), C_IRQF | C_UF);
        assert_eq!(rtc.next_deadline(), Some(t0 + 2 * SECOND));
    }

    #[test]
    fn alarm_interrupt_matches_time_and_dont_care() {
        let mut rtc = Rtc::new(LEAP_DAY_END, 0); // 23:59:59
        write_register(&mut rtc, reg::HOURS_ALARM, 0x00, 0);
        write_register(&mut rtc, reg::MINUTES_ALARM, 0x00, 0);
        write_register(&mut rtc, reg::SECONDS_ALARM, 0x05, 0);
        write_register(&mut rtc, reg::B, B_AIE | B_24_HOUR, 0);
        for second in 1..=6 {
            assert_eq!(rtc.tick(second * SECOND), second == 6, "00:00:{:02}", second - 1);
        }
        assert_eq!(
            read_register(&mut rtc, reg::C, 6 * SECOND),
            C_IRQF | C_PF | C_AF | C_UF,
            "PF runs at 1024 Hz"
        );
        // Seconds don't-care: every second of 00:00, which ends at 61 s.
        write_register(&mut rtc, reg::SECONDS_ALARM, 0xC0, 6 * SECOND);
        assert!(rtc.tick(7 * SECOND));
        assert!(rtc.tick(60 * SECOND), "00:00:59");
        let _ = read_register(&mut rtc, reg::C, 60 * SECOND);
        assert!(!rtc.tick(61 * SECOND), "00:01:00 is past the alarm minute");
        let _ = read_register(&mut rtc, reg::C, 61 * SECOND);
        // A missed stretch of updates still finds a match inside it.
        write_register(&mut rtc, reg::MINUTES_ALARM, 0x30, 61 * SECOND);
        write_register(&mut rtc, reg::HOURS_ALARM, 0xC0, 61 * SECOND);
        assert!(rtc.tick(3 * 3600 * SECOND));
    }

    #[test]
    fn nmi_mask_bit_is_kept_apart_from_the_index() {
        let mut rtc = Rtc::new(0, 0);
        rtc.write(port::INDEX, INDEX_NMI_MASK | reg::D, 0);
        assert!(rtc.nmi_masked());
        assert_eq!(rtc.read(port::DATA, 0), D_VRT, "index 0x0D despite bit 7");
        rtc.write(port::INDEX, reg::D, 0);
        assert!(!rtc.nmi_masked());
        assert_eq!(rtc.read(port::INDEX, 0), 0xFF, "write-only");
    }

    #[test]
    fn cmos_storage_and_read_only_registers() {
        let mut rtc = Rtc::new(0, 0);
        rtc.set_cmos_byte(0x34, 0x12);
        rtc.set_cmos_byte(0x5B, 0x01);
        rtc.set_cmos_byte(reg::SECONDS, 0x42);
        rtc.set_cmos_byte(200, 0x42);
        assert_eq!(read_register(&mut rtc, 0x34, 0), 0x12);
        assert_eq!(read_register(&mut rtc, 0x5B, 0), 0x01);
        assert_eq!(read_register(&mut rtc, reg::SECONDS, 0), 0x00, "the clock's byte is computed");
        write_register(&mut rtc, 0x7F, 0xA5, 0);
        assert_eq!(read_register(&mut rtc, 0x7F, 0), 0xA5);
        write_register(&mut rtc, reg::D, 0, 0);
        write_register(&mut rtc, reg::C, 0xFF, 0);
        assert_eq!((read_register(&mut rtc, reg::D, 0), read_register(&mut rtc, reg::C, 0)), (D_VRT, 0));
        assert_eq!(rtc.read(0x72, 0), 0xFF);
    }

    #[test]
    fn any_guest_access_is_handled() {
        let mut rtc = Rtc::new(LEAP_DAY_END, 0);
        let mut now = 0u64;
        for index in 0..=u8::MAX {
            for value in (0..=u8::MAX).step_by(3) {
                now += 40_000_000;
                rtc.write(port::INDEX, index, now);
                rtc.write(port::DATA, value, now);
                let _ = rtc.read(port::DATA, now);
                let _ = rtc.read(port::INDEX, now);
                let _ = rtc.tick(now);
                let _ = rtc.next_deadline();
            }
            // Every register with garbage while SET, then SET cleared.
            write_register(&mut rtc, reg::B, B_SET | index, now);
            for i in 0..CMOS_BYTES as u8 {
                write_register(&mut rtc, i, index, now);
            }
            write_register(&mut rtc, reg::B, index & !B_SET, now);
            let _ = read_clock(&mut rtc, now);
        }
        // Extreme times and base values.
        for base in [i64::MIN / 2, -1, 0, i64::MAX / 2] {
            let mut rtc = Rtc::new(base, u64::MAX);
            write_register(&mut rtc, reg::B, B_PIE | B_AIE | B_UIE, u64::MAX);
            let _ = rtc.tick(0);
            let _ = rtc.tick(u64::MAX);
            let _ = read_clock(&mut rtc, u64::MAX);
            let _ = rtc.next_deadline();
        }
    }
}
