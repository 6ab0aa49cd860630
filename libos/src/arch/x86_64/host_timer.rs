//! This CPU's host timer: its `TimerPlan` (the next scheduler tick and an optional
//! wake-up deadline, see `timer_plan`) applied to the local APIC timer, always armed
//! one-shot for the plan's expiry.
//!
//! Protocol: [`start`] once per CPU, when its APIC is up; [`on_interrupt`] from the timer
//! vector (interrupts off), which counts a scheduler tick only when the tick time passed;
//! [`set_wake_at`] from the code running on the CPU. The plan is only ever touched by its
//! own CPU with interrupts off, so its lock is never contended.

use super::{apic, percpu};
use crate::time;
use core::sync::atomic::Ordering;
use x86_64::instructions::interrupts;

/// Nanoseconds between scheduler ticks.
pub const TICK_NS: u64 = 1_000_000_000 / apic::TIMER_HZ;

/// Begins this CPU's scheduler ticks.
pub fn start() {
    interrupts::without_interrupts(|| {
        let now = time::now_ns();
        let at = percpu::current().timer.lock().start(now, TICK_NS);
        apic::arm_one_shot_timer(at.saturating_sub(now));
    });
}

/// The timer interrupt: whether a scheduler tick passed (counted in `timer_ticks`). The
/// timer is armed again for what is due next.
pub fn on_interrupt() -> bool {
    let cpu = percpu::current();
    let now = time::now_ns();
    let fired = {
        let mut plan = cpu.timer.lock();
        let fired = plan.on_interrupt(now);
        cpu.wake_at_ns.store(encode(plan.wake_at()), Ordering::Relaxed);
        fired
    };
    apic::arm_one_shot_timer(fired.arm_at_ns.saturating_sub(now));
    if fired.tick {
        cpu.timer_ticks.fetch_add(1, Ordering::Relaxed);
    }
    fired.tick
}

/// Sets (or clears) the time this CPU must be interrupted by at the latest, besides its
/// ticks: the timer is re-armed only when that comes before what it is armed for.
#[inline]
pub fn set_wake_at(deadline_ns: Option<u64>) {
    let cpu = percpu::current();
    // The common entry of a running vCPU: the deadline it had (none, or the same timer).
    // Only this CPU stores the mirror (here or in its interrupt handler, which leaves it
    // equal to the plan's), so equal means the plan has it and nothing would change.
    if cpu.wake_at_ns.load(Ordering::Relaxed) == encode(deadline_ns) {
        return;
    }
    change_wake_at(cpu, deadline_ns);
}

/// [`set_wake_at`] for a deadline the plan does not have yet.
fn change_wake_at(cpu: &percpu::PerCpu, deadline_ns: Option<u64>) {
    interrupts::without_interrupts(|| {
        let rearm = {
            let mut plan = cpu.timer.lock();
            let rearm = plan.set_wake_at(deadline_ns);
            cpu.wake_at_ns.store(encode(plan.wake_at()), Ordering::Relaxed);
            rearm
        };
        if let Some(at) = rearm {
            apic::arm_one_shot_timer(at.saturating_sub(time::now_ns()));
        }
    });
}

/// A wake-up deadline as the per-CPU mirror holds it (`u64::MAX`: none).
fn encode(deadline_ns: Option<u64>) -> u64 {
    deadline_ns.unwrap_or(u64::MAX)
}
