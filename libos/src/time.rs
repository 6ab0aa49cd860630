//! Time: the TSC, calibrated once against the PIT, gives a monotonic nanosecond clock.
//! The local APIC timer (see `arch::x86_64::apic`) is calibrated against the TSC.
//! Wall-clock time is the host's CMOS RTC, read once at boot, plus the monotonic clock.

use crate::arch::x86_64::{pit, rtc, tsc};
use core::sync::atomic::{AtomicI64, AtomicU64, Ordering};

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);
/// The RTC's Unix time at boot and [`now_ns`] when it was read.
static RTC_AT_BOOT: AtomicI64 = AtomicI64::new(0);
static NS_AT_RTC_READ: AtomicU64 = AtomicU64::new(0);

/// Calibrates the TSC (boot CPU, interrupts off). Takes about 10 ms of guest time.
pub(crate) fn init() {
    TSC_AT_BOOT.store(tsc::read(), Ordering::Relaxed);
    let hz = pit::measure_tsc_hz();
    TSC_HZ.store(hz, Ordering::Relaxed);
    RTC_AT_BOOT.store(rtc::read_unix_seconds(), Ordering::Relaxed);
    NS_AT_RTC_READ.store(now_ns(), Ordering::Relaxed);
}

/// Seconds since the Unix epoch (UTC) now: the host RTC at boot plus the monotonic time
/// since (0-based before `init`).
pub fn unix_seconds_now() -> i64 {
    let elapsed_ns = now_ns().saturating_sub(NS_AT_RTC_READ.load(Ordering::Relaxed));
    RTC_AT_BOOT.load(Ordering::Relaxed) + (elapsed_ns / 1_000_000_000) as i64
}

/// The raw TSC of this CPU. In QEMU with `-icount shift=0` and in Bochs it counts
/// instructions, which is what boot measurements there report.
pub fn tsc() -> u64 {
    tsc::read()
}

/// TSC ticks per second (0 before calibration).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Nanoseconds since boot (0 before calibration).
pub fn now_ns() -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    let ticks = tsc::read().saturating_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    (ticks as u128 * 1_000_000_000 / hz as u128) as u64
}

/// Busy-waits for `us` microseconds.
pub fn delay_us(us: u64) {
    let hz = tsc_hz().max(1_000_000);
    let end = tsc::read() + (us as u128 * hz as u128 / 1_000_000) as u64;
    while tsc::read() < end {
        core::hint::spin_loop();
    }
}
