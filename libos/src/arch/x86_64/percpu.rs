//! Per-CPU data, reached through the GS base: `gs:[0]` holds the CPU's index.

use crate::timer_plan::TimerPlan;
use crate::virt::VirtCaps;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use spin::{Mutex, Once};

pub const MAX_CPUS: usize = 64;

/// IA32_GS_BASE (Intel SDM Vol. 4, Table 2-2).
const IA32_GS_BASE: u32 = 0xC000_0101;

/// Work queued for a CPU's idle loop.
pub type Work = Box<dyn FnOnce() + Send + 'static>;

#[repr(C)]
pub struct PerCpu {
    /// Must stay the first field: `current_cpu` reads it as `gs:[0]`.
    index: AtomicUsize,
    pub apic_id: AtomicU32,
    pub online: AtomicBool,
    /// Scheduler ticks (`host_timer`), not every timer interrupt.
    pub timer_ticks: AtomicU64,
    /// When this CPU's timer fires next (`host_timer`; only this CPU, interrupts off).
    pub timer: Mutex<TimerPlan>,
    /// The plan's wake-up deadline (`u64::MAX`: none), readable without the lock: setting
    /// the deadline it already has costs one load (`host_timer::set_wake_at`).
    pub wake_at_ns: AtomicU64,
    /// NMIs this CPU has taken (the host's, including those that arrived in a guest).
    pub nmis: AtomicU64,
    /// An NMI report its handler could not print (the console lock was held, perhaps by
    /// the code the NMI interrupted on this CPU): `count << 8 | port 0x61 status`, 0 when
    /// none. Printed later from ordinary context (`interrupts::report_deferred_nmis`).
    pub nmi_report_deferred: AtomicU64,
    /// Lowest address of this CPU's stack, where `stack_guard` keeps its canary (0: none).
    pub stack_bottom: AtomicU64,
    pub virt: Once<VirtCaps>,
    pub work: Mutex<VecDeque<Work>>,
}

impl PerCpu {
    const fn new() -> Self {
        Self {
            index: AtomicUsize::new(0),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            timer_ticks: AtomicU64::new(0),
            timer: Mutex::new(TimerPlan::new()),
            wake_at_ns: AtomicU64::new(u64::MAX),
            nmis: AtomicU64::new(0),
            nmi_report_deferred: AtomicU64::new(0),
            stack_bottom: AtomicU64::new(0),
            virt: Once::new(),
            work: Mutex::new(VecDeque::new()),
        }
    }

    pub fn index(&self) -> usize {
        self.index.load(Ordering::Relaxed)
    }
}

static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// Points this CPU's GS base at `CPUS[index]`. Called first thing on every CPU.
pub fn install(index: usize, apic_id: u32) {
    let cpu = &CPUS[index];
    cpu.index.store(index, Ordering::Relaxed);
    cpu.apic_id.store(apic_id, Ordering::Relaxed);
    let mut msr = x86_64::registers::model_specific::Msr::new(IA32_GS_BASE);
    // SAFETY: GS is not used for anything else in the image, and `CPUS` is a static, so
    // the base stays valid forever.
    unsafe { msr.write(cpu as *const PerCpu as u64) };
}

/// The index of the CPU running this code (0 is the boot CPU).
pub fn current_cpu() -> usize {
    let index: usize;
    // SAFETY: every CPU installs its GS base (`install`) before any code that can call
    // this runs on it, and `PerCpu` is `repr(C)` with the index first.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) index, options(nostack, readonly, preserves_flags))
    };
    index
}

pub fn cpu(index: usize) -> Option<&'static PerCpu> {
    CPUS.get(index)
}

pub fn current() -> &'static PerCpu {
    &CPUS[current_cpu()]
}
