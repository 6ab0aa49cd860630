//! The local APIC in xAPIC (MMIO) mode: enable, EOI, IPIs (INIT, SIPI, fixed) and the
//! timer (Intel SDM Vol. 3A chapter 11 "Advanced Programmable Interrupt Controller").

use super::vectors;
use crate::time;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::registers::model_specific::Msr;

/// IA32_APIC_BASE (SDM Vol. 3A §11.4.4): bit 11 global enable, bits 12+ the base.
const IA32_APIC_BASE: u32 = 0x1B;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_MASK: u64 = 0x000F_FFFF_FFFF_F000;

// Register offsets (SDM Vol. 3A Table 11-1).
const REG_ID: usize = 0x20;
const REG_EOI: usize = 0xB0;
const REG_SVR: usize = 0xF0;
const REG_ICR_LOW: usize = 0x300;
const REG_ICR_HIGH: usize = 0x310;
const REG_LVT_TIMER: usize = 0x320;
const REG_TIMER_INITIAL: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3E0;

const SVR_ENABLE: u32 = 1 << 8;
// ICR fields (SDM Vol. 3A §11.6.1).
const ICR_DELIVERY_FIXED: u32 = 0 << 8;
const ICR_DELIVERY_INIT: u32 = 5 << 8;
const ICR_DELIVERY_STARTUP: u32 = 6 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_SEND_PENDING: u32 = 1 << 12;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
const LVT_MASKED: u32 = 1 << 16;
const TIMER_DIVIDE_BY_16: u32 = 0b0011;

/// Host timer ticks per second (time slicing for child guests builds on this).
pub const TIMER_HZ: u64 = 100;

static BASE: AtomicU64 = AtomicU64::new(0);
static TIMER_COUNTS_PER_SEC: AtomicU64 = AtomicU64::new(0);

fn reg(offset: usize) -> *mut u32 {
    (BASE.load(Ordering::Relaxed) as usize + offset) as *mut u32
}

fn read(offset: usize) -> u32 {
    // SAFETY: `BASE` is the local APIC page (identity mapped, set by `init_cpu` before any
    // access) and `offset` is one of the architectural registers above.
    unsafe { reg(offset).read_volatile() }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`.
    unsafe { reg(offset).write_volatile(value) }
}

/// Enables this CPU's local APIC in xAPIC mode with the spurious vector set.
pub fn init_cpu() {
    let mut msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; we only set the enable bit and
    // keep the firmware's base.
    let base = unsafe {
        let value = msr.read();
        msr.write(value | APIC_BASE_ENABLE);
        value & APIC_BASE_MASK
    };
    BASE.store(base, Ordering::Relaxed);
    write(REG_SVR, SVR_ENABLE | vectors::APIC_SPURIOUS as u32);
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

pub fn eoi() {
    write(REG_EOI, 0);
}

fn send_icr(apic_id: u32, low: u32) {
    write(REG_ICR_HIGH, apic_id << 24);
    write(REG_ICR_LOW, low);
    while read(REG_ICR_LOW) & ICR_SEND_PENDING != 0 {
        core::hint::spin_loop();
    }
}

/// INIT IPI (SDM Vol. 3A §9.4.4.1, "Typical BSP Initialization Sequence").
pub fn send_init(apic_id: u32) {
    send_icr(apic_id, ICR_DELIVERY_INIT | ICR_LEVEL_ASSERT);
}

/// Start-up IPI: the AP starts in real mode at `page * 4096`.
pub fn send_startup(apic_id: u32, page: u8) {
    send_icr(apic_id, ICR_DELIVERY_STARTUP | ICR_LEVEL_ASSERT | page as u32);
}

/// A fixed interrupt to one CPU.
pub fn send_ipi(apic_id: u32, vector: u8) {
    send_icr(apic_id, ICR_DELIVERY_FIXED | ICR_LEVEL_ASSERT | vector as u32);
}

/// Measures the APIC timer against the TSC (boot CPU, once).
pub fn calibrate_timer() {
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
    write(REG_LVT_TIMER, LVT_MASKED | vectors::TIMER as u32);
    write(REG_TIMER_INITIAL, u32::MAX);
    time::delay_us(10_000);
    let elapsed = u32::MAX - read(REG_TIMER_CURRENT);
    write(REG_TIMER_INITIAL, 0);
    TIMER_COUNTS_PER_SEC.store(elapsed as u64 * 100, Ordering::Relaxed);
}

/// APIC timer counts per second (after the divider), as calibrated.
pub fn timer_hz() -> u64 {
    TIMER_COUNTS_PER_SEC.load(Ordering::Relaxed)
}

/// Makes this CPU's timer fire once, `ns` from now (the periodic tick stops until
/// [`start_periodic_timer`]).
pub fn start_one_shot_timer(ns: u64) {
    let counts = (ns as u128 * timer_hz() as u128 / 1_000_000_000).clamp(1, u32::MAX as u128) as u32;
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
    write(REG_LVT_TIMER, vectors::TIMER as u32);
    write(REG_TIMER_INITIAL, counts);
}

/// Starts this CPU's periodic timer at [`TIMER_HZ`].
pub fn start_periodic_timer() {
    let initial = (timer_hz() / TIMER_HZ).clamp(1, u32::MAX as u64) as u32;
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
    write(REG_LVT_TIMER, LVT_TIMER_PERIODIC | vectors::TIMER as u32);
    write(REG_TIMER_INITIAL, initial);
}
