//! The host's own CMOS real-time clock (MC146818 at ports 0x70/0x71), read once at boot
//! for the wall-clock time: `time::unix_seconds_now` adds the monotonic clock to it.
//!
//! Protocol (MC146818A data sheet, "Register A" UIP and "Register B" DM and 24/12): wait
//! until update-in-progress is clear, read the time and date bytes, and read them again
//! until two reads agree (an update may start between the UIP check and the reads).
//! Register B says whether the bytes are BCD or binary and whether the hours are 12-hour
//! (bit 7 of the hours byte is PM). The century byte 0x32 (IBM PC/AT) is used when it
//! holds 19-21, else the year is taken as 20xx. The time is UTC, as firmware of servers
//! and emulators keeps it.

use x86_64::instructions::port::Port;

const INDEX_PORT: u16 = 0x70;
const DATA_PORT: u16 = 0x71;
/// NMI stays masked while we select registers (bit 7 of the index), as firmware leaves it.
const NMI_DISABLE: u8 = 0x80;
const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0A;
const REG_B: u8 = 0x0B;
const REG_CENTURY: u8 = 0x32;
const A_UIP: u8 = 1 << 7;
const B_24_HOUR: u8 = 1 << 1;
const B_BINARY: u8 = 1 << 2;
const HOUR_PM: u8 = 1 << 7;
/// Reads of register A before giving up on UIP clearing (an update takes < 2 ms).
const UIP_SPINS: u32 = 10_000_000;

fn read_register(index: u8) -> u8 {
    let mut select: Port<u8> = Port::new(INDEX_PORT);
    let mut data: Port<u8> = Port::new(DATA_PORT);
    // SAFETY: ports 0x70/0x71 are the PC's CMOS RTC, owned by libos; selecting a register
    // and reading it has no effect beyond the RTC (register C, which clears flags on read,
    // is never read here). Boot runs this on one CPU before anything else uses the RTC.
    unsafe {
        select.write(NMI_DISABLE | index);
        data.read()
    }
}

/// The raw clock bytes: seconds, minutes, hours, day, month, year, century.
fn read_raw() -> [u8; 7] {
    let mut spins = 0;
    while read_register(REG_A) & A_UIP != 0 && spins < UIP_SPINS {
        spins += 1;
        core::hint::spin_loop();
    }
    [REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY, REG_MONTH, REG_YEAR, REG_CENTURY].map(read_register)
}

fn from_bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0x0F)
}

/// The clock bytes as a civil date and time under register B's format.
fn decode(raw: [u8; 7], status_b: u8) -> (i64, u8, u8, u8, u8, u8) {
    let binary = status_b & B_BINARY != 0;
    let value = |v: u8| if binary { v } else { from_bcd(v) };
    let [sec, min, hour_raw, day, month, year, century] = raw;
    let pm = hour_raw & HOUR_PM != 0;
    let mut hour = value(hour_raw & !HOUR_PM);
    if status_b & B_24_HOUR == 0 {
        // 12-hour: 12 AM is 0 h, 12 PM is 12 h.
        hour = (hour % 12) + if pm { 12 } else { 0 };
    }
    let century = match value(century) {
        c @ 19..=21 => i64::from(c),
        _ => 20,
    };
    (century * 100 + i64::from(value(year)), value(month), value(day), hour, value(min), value(sec))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The host's RTC now, as seconds since the Unix epoch (UTC).
pub fn read_unix_seconds() -> i64 {
    let mut raw = read_raw();
    // Two equal reads in a row: no update happened in between.
    for _ in 0..8 {
        let again = read_raw();
        if again == raw {
            break;
        }
        raw = again;
    }
    let (year, month, day, hour, min, sec) = decode(raw, read_register(REG_B));
    days_from_civil(year, month, day) * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec)
}
