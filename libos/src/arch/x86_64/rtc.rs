//! The host's own CMOS real-time clock (MC146818 at ports 0x70/0x71), read once at boot
//! for the wall-clock time: `time::unix_seconds_now` adds the monotonic clock to it.
//!
//! Protocol (MC146818A data sheet, "Register A" UIP and "Register B" DM and 24/12): wait
//! until update-in-progress is clear, read the time and date bytes, and read them again
//! until two reads agree (an update may start between the UIP check and the reads).
//! `crate::wall_clock` turns the bytes into Unix time under register B's format. The time
//! is UTC, as firmware of servers and emulators keeps it.

use x86_64::instructions::port::Port;

const INDEX_PORT: u16 = 0x70;
const DATA_PORT: u16 = 0x71;
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
/// Reads of register A before giving up on UIP clearing (an update takes < 2 ms).
const UIP_SPINS: u32 = 10_000_000;

fn read_register(index: u8) -> u8 {
    let mut select: Port<u8> = Port::new(INDEX_PORT);
    let mut data: Port<u8> = Port::new(DATA_PORT);
    // SAFETY: ports 0x70/0x71 are the PC's CMOS RTC, owned by libos; selecting a register
    // (bit 7 clear, so NMIs stay unmasked) and reading it has no effect beyond the RTC
    // (register C, which clears flags on read, is never read here). Boot runs this on one
    // CPU before anything else uses the RTC.
    unsafe {
        select.write(index);
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
    crate::wall_clock::unix_seconds(raw, read_register(REG_B))
}
