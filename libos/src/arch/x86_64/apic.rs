//! The local APIC: enable, EOI, IPIs (INIT, SIPI, fixed) and the timer (Intel SDM Vol. 3A
//! chapter 11 "Advanced Programmable Interrupt Controller"), in x2APIC or xAPIC mode.
//!
//! Protocol: the boot CPU's first [`init_cpu`] picks the mode for the whole machine
//! ([`ApicMode::choose`]), before any AP starts; every AP's [`init_cpu`] then puts its own
//! APIC into that mode. The registers are the same in both modes (Table 11-6 maps each
//! MMIO offset to an MSR); only the accessor differs, one `impl` on [`ApicMode`]: MMIO at
//! the APIC base with 8-bit IDs, or MSRs 0x800+ with 32-bit IDs (SDM §11.12).

use super::vectors;
use crate::apic_mode::{ApicMode, IA32_APIC_BASE};
use crate::time;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Once;
use x86_64::registers::model_specific::Msr;
/// x2APIC registers are MSRs 0x800 + (xAPIC offset >> 4) (SDM §11.12.1.2, Table 11-6).
const X2APIC_MSR_BASE: u32 = 0x800;

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
const ICR_DELIVERY_NMI: u32 = 4 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
/// Delivery status (xAPIC only: the x2APIC ICR has no such bit, SDM §11.12.9).
const ICR_SEND_PENDING: u32 = 1 << 12;
/// xAPIC ID register and ICR destination: bits 31:24 (SDM §11.4.6, §11.6.1).
const XAPIC_ID_SHIFT: u32 = 24;
/// The largest APIC ID xAPIC mode can address.
pub const XAPIC_MAX_ID: u32 = 0xFF;
const LVT_MASKED: u32 = 1 << 16;
const TIMER_DIVIDE_BY_16: u32 = 0b0011;

/// Scheduler ticks per second (time slicing for child guests builds on this; see
/// `host_timer`).
pub const TIMER_HZ: u64 = 100;

static MODE: Once<ApicMode> = Once::new();
static TIMER_COUNTS_PER_SEC: AtomicU64 = AtomicU64::new(0);

/// The register accessor of each mode.
impl ApicMode {
    fn read(self, offset: usize) -> u32 {
        match self {
            // SAFETY: `base` is this machine's local APIC page (identity mapped) and
            // `offset` one of the architectural registers above.
            ApicMode::XApic { base } => unsafe { ((base as usize + offset) as *const u32).read_volatile() },
            // SAFETY: in x2APIC mode (set by `init_cpu` before any access) the MSR of an
            // architectural register exists; reads have no side effects.
            ApicMode::X2Apic => unsafe { Msr::new(x2apic_msr(offset)).read() as u32 },
        }
    }

    fn write(self, offset: usize, value: u32) {
        match self {
            // SAFETY: as in `read`.
            ApicMode::XApic { base } => unsafe {
                ((base as usize + offset) as *mut u32).write_volatile(value)
            },
            // SAFETY: as in `read`; the callers write only architecturally valid values
            // (EOI 0, reserved bits clear).
            ApicMode::X2Apic => unsafe { Msr::new(x2apic_msr(offset)).write(value as u64) },
        }
    }

    /// This CPU's APIC ID: 8 bits in xAPIC mode, 32 in x2APIC mode.
    fn id(self) -> u32 {
        match self {
            ApicMode::XApic { .. } => self.read(REG_ID) >> XAPIC_ID_SHIFT,
            ApicMode::X2Apic => self.read(REG_ID),
        }
    }

    /// Sends the IPI `low` (vector, delivery mode, level) to `apic_id`.
    fn send_icr(self, apic_id: u32, low: u32) {
        match self {
            ApicMode::XApic { .. } => {
                self.write(REG_ICR_HIGH, apic_id << XAPIC_ID_SHIFT);
                self.write(REG_ICR_LOW, low);
                while self.read(REG_ICR_LOW) & ICR_SEND_PENDING != 0 {
                    core::hint::spin_loop();
                }
            }
            ApicMode::X2Apic => {
                let icr = (apic_id as u64) << 32 | low as u64;
                // SAFETY: the x2APIC ICR is one 64-bit MSR, written once (SDM §11.12.9).
                // A WRMSR to an x2APIC register is not serializing: MFENCE; LFENCE first
                // makes the stores the IPI announces (queued work) globally visible
                // before it is sent (SDM §11.12.3).
                unsafe {
                    core::arch::asm!("mfence", "lfence", options(nostack, preserves_flags));
                    Msr::new(x2apic_msr(REG_ICR_LOW)).write(icr);
                }
            }
        }
    }
}

/// The x2APIC MSR of the register at xAPIC offset `offset`.
const fn x2apic_msr(offset: usize) -> u32 {
    X2APIC_MSR_BASE + (offset >> 4) as u32
}

fn access() -> ApicMode {
    *MODE.get().expect("apic::init_cpu runs on the boot CPU before any APIC access")
}

/// Whether the machine drives its local APICs in x2APIC mode.
pub fn is_x2apic() -> bool {
    access() == ApicMode::X2Apic
}

/// The mode's name for the boot log: `x2apic` or `xapic`.
pub fn mode_name() -> &'static str {
    access().name()
}

/// Enables this CPU's local APIC in the machine's mode (chosen by the first call, on the
/// boot CPU) with the spurious vector set.
pub fn init_cpu() {
    let mut msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; `enable_writes` keeps the
    // firmware's base and takes only transitions SDM §11.12.5 allows (x2APIC only where
    // CPUID offers it or the firmware already set it).
    unsafe {
        let value = msr.read();
        let cpuid_1_ecx = core::arch::x86_64::__cpuid(1).ecx;
        let mode = *MODE.call_once(|| ApicMode::choose(value, cpuid_1_ecx));
        for write in mode.enable_writes(value) {
            msr.write(write);
        }
    }
    access().write(REG_SVR, SVR_ENABLE | vectors::APIC_SPURIOUS as u32);
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    access().id()
}

/// Whether `apic_id` can be reached by an IPI in the machine's mode.
pub fn is_addressable(apic_id: u32) -> bool {
    is_x2apic() || apic_id <= XAPIC_MAX_ID
}

pub fn eoi() {
    access().write(REG_EOI, 0);
}

/// INIT IPI (SDM Vol. 3A §9.4.4.1, "Typical BSP Initialization Sequence").
pub fn send_init(apic_id: u32) {
    access().send_icr(apic_id, ICR_DELIVERY_INIT | ICR_LEVEL_ASSERT);
}

/// Start-up IPI: the AP starts in real mode at `page * 4096`.
pub fn send_startup(apic_id: u32, page: u8) {
    access().send_icr(apic_id, ICR_DELIVERY_STARTUP | ICR_LEVEL_ASSERT | page as u32);
}

/// A fixed interrupt to one CPU.
pub fn send_ipi(apic_id: u32, vector: u8) {
    access().send_icr(apic_id, ICR_DELIVERY_FIXED | ICR_LEVEL_ASSERT | vector as u32);
}

/// An NMI to one CPU (the vector field is ignored).
pub fn send_nmi(apic_id: u32) {
    access().send_icr(apic_id, ICR_DELIVERY_NMI | ICR_LEVEL_ASSERT);
}

/// Measures the APIC timer against the TSC (boot CPU, once).
pub fn calibrate_timer() {
    let apic = access();
    apic.write(REG_TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
    apic.write(REG_LVT_TIMER, LVT_MASKED | vectors::TIMER as u32);
    apic.write(REG_TIMER_INITIAL, u32::MAX);
    time::delay_us(10_000);
    let elapsed = u32::MAX - apic.read(REG_TIMER_CURRENT);
    apic.write(REG_TIMER_INITIAL, 0);
    TIMER_COUNTS_PER_SEC.store(elapsed as u64 * 100, Ordering::Relaxed);
}

/// APIC timer counts per second (after the divider), as calibrated.
pub fn timer_hz() -> u64 {
    TIMER_COUNTS_PER_SEC.load(Ordering::Relaxed)
}

/// Puts this CPU's timer into one-shot mode, stopped ([`arm_one_shot_timer`] starts it).
pub fn init_one_shot_timer() {
    let apic = access();
    apic.write(REG_TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
    apic.write(REG_LVT_TIMER, vectors::TIMER as u32);
}

/// Makes this CPU's timer (one-shot, [`init_one_shot_timer`]) fire once, `ns` from now
/// (at the next count when `ns` is 0); re-arming replaces the previous count.
pub fn arm_one_shot_timer(ns: u64) {
    let counts = (ns as u128 * timer_hz() as u128 / 1_000_000_000).clamp(1, u32::MAX as u128) as u32;
    access().write(REG_TIMER_INITIAL, counts);
}
