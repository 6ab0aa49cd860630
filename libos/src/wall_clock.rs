//! The CMOS RTC's clock bytes as Unix time: plain arithmetic, host-tested
//! (`arch::x86_64::rtc` reads the bytes).
//!
//! MC146818A data sheet, "Register B": DM (bit 2) set means binary, clear means BCD;
//! 24/12 (bit 1) clear means 12-hour, with bit 7 of the hours byte for PM. The century
//! byte 0x32 (IBM PC/AT) is used when it holds 19-21, else the year is taken as 20xx.

const B_24_HOUR: u8 = 1 << 1;
const B_BINARY: u8 = 1 << 2;
const HOUR_PM: u8 = 1 << 7;

fn from_bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0x0F)
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

/// Unix seconds of the clock bytes `[seconds, minutes, hours, day, month, year, century]`
/// under register B's format `status_b`.
#[must_use]
pub fn unix_seconds(raw: [u8; 7], status_b: u8) -> i64 {
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
    let year = century * 100 + i64::from(value(year));
    days_from_civil(year, value(month), value(day)) * 86_400
        + i64::from(hour) * 3600
        + i64::from(value(min)) * 60
        + i64::from(value(sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-01 04:17:56 UTC.
    const EXPECTED: i64 = 1_796_098_676;

    #[test]
    fn bcd_24_hour() {
        assert_eq!(unix_seconds([0x56, 0x17, 0x04, 0x01, 0x12, 0x26, 0x20], 0x02), EXPECTED);
    }

    #[test]
    fn binary_12_hour_am_and_pm() {
        assert_eq!(unix_seconds([56, 17, 4, 1, 12, 26, 20], 0x04), EXPECTED);
        // 12 AM is midnight, 4 PM is 16 h.
        assert_eq!(unix_seconds([56, 17, 12, 1, 12, 26, 20], 0x04), EXPECTED - 4 * 3600);
        assert_eq!(unix_seconds([56, 17, 0x80 | 4, 1, 12, 26, 20], 0x04), EXPECTED + 12 * 3600);
    }

    #[test]
    fn a_century_byte_out_of_range_means_20xx_and_dates_start_at_the_epoch() {
        assert_eq!(unix_seconds([0x56, 0x17, 0x04, 0x01, 0x12, 0x26, 0x00], 0x02), EXPECTED);
        assert_eq!(unix_seconds([0, 0, 0, 1, 1, 70, 19], 0x06), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }
}
