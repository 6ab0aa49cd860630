//! When one CPU's host timer fires: plain arithmetic, host-tested; `smp` keeps one per CPU
//! and arms the local APIC timer with it.
//!
//! Protocol: the timer is always armed one-shot, for the earlier of two absolute times
//! ([`TimerPlan::expiry`]): the CPU's next scheduler tick (every `period_ns`, the slice
//! accounting) and an optional "wake me at" deadline set by the code running on the CPU
//! (a sleeping scheduler's earliest parked vCPU, a running vCPU's next guest timer). At
//! each timer interrupt [`TimerPlan::on_interrupt`] says whether a scheduler tick passed
//! (only then does the tick logic run: a guest deadline is not a tick) and when to arm
//! next. Ticks are absolute: however often the CPU is interrupted or the deadline moves,
//! the next tick stays where it was, so a guest that exits often cannot postpone it. A
//! tick missed by more than a period is not made up in a burst: the next one is a period
//! after the late one.
//!
//! Only its own CPU touches a plan, with interrupts off.

/// One CPU's timer state (host nanoseconds since boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerPlan {
    period_ns: u64,
    next_tick_ns: u64,
    wake_at_ns: Option<u64>,
    /// The time the timer is armed for now.
    armed_ns: u64,
}

/// What a timer interrupt found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fired {
    /// A scheduler tick passed: run the tick logic.
    pub tick: bool,
    /// Arm the timer for this time.
    pub arm_at_ns: u64,
}

impl Default for TimerPlan {
    fn default() -> Self {
        Self::new()
    }
}

impl TimerPlan {
    /// A plan with no tick yet (`start` begins the ticks).
    pub const fn new() -> Self {
        Self { period_ns: 0, next_tick_ns: u64::MAX, wake_at_ns: None, armed_ns: u64::MAX }
    }

    /// Begins ticks every `period_ns` at `now_ns`: returns the time to arm the timer for.
    pub fn start(&mut self, now_ns: u64, period_ns: u64) -> u64 {
        self.period_ns = period_ns;
        self.next_tick_ns = now_ns.saturating_add(self.period_ns);
        self.armed_ns = self.expiry();
        self.armed_ns
    }

    /// The wake-up deadline, if one is set and has not passed.
    pub fn wake_at(&self) -> Option<u64> {
        self.wake_at_ns
    }

    /// The earlier of the next tick and the wake-up deadline.
    pub fn expiry(&self) -> u64 {
        self.wake_at_ns.map_or(self.next_tick_ns, |wake| wake.min(self.next_tick_ns))
    }

    /// Sets (or clears) the wake-up deadline. `Some(time)`: the timer must be re-armed for
    /// `time`, which comes before what it is armed for; `None`: it stays armed as it is (a
    /// later or cleared deadline costs at most one interrupt that finds nothing to do;
    /// the deadline the plan already has changes nothing).
    pub fn set_wake_at(&mut self, deadline_ns: Option<u64>) -> Option<u64> {
        self.wake_at_ns = deadline_ns;
        let expiry = self.expiry();
        (expiry < self.armed_ns).then(|| {
            self.armed_ns = expiry;
            expiry
        })
    }

    /// A timer interrupt at `now_ns`: a passed deadline is consumed, a passed tick moves
    /// on by a period (or to a period from now when it was missed by more than one).
    pub fn on_interrupt(&mut self, now_ns: u64) -> Fired {
        if self.wake_at_ns.is_some_and(|wake| wake <= now_ns) {
            self.wake_at_ns = None;
        }
        let tick = self.next_tick_ns <= now_ns;
        if tick {
            let next = self.next_tick_ns.saturating_add(self.period_ns);
            self.next_tick_ns = if next > now_ns { next } else { now_ns.saturating_add(self.period_ns) };
        }
        self.armed_ns = self.expiry();
        Fired { tick, arm_at_ns: self.armed_ns }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn started() -> TimerPlan {
        let mut plan = TimerPlan::new();
        assert_eq!(plan.start(0, 10 * MS), 10 * MS);
        plan
    }

    #[test]
    fn without_a_deadline_the_timer_fires_at_each_tick() {
        let mut plan = started();
        assert_eq!(plan.on_interrupt(10 * MS), Fired { tick: true, arm_at_ns: 20 * MS });
        assert_eq!(plan.on_interrupt(20 * MS + 5), Fired { tick: true, arm_at_ns: 30 * MS });
    }

    #[test]
    fn an_earlier_deadline_fires_first_and_is_no_tick() {
        let mut plan = started();
        assert_eq!(plan.set_wake_at(Some(2 * MS)), Some(2 * MS));
        assert_eq!(plan.on_interrupt(2 * MS), Fired { tick: false, arm_at_ns: 10 * MS });
        assert_eq!(plan.on_interrupt(10 * MS), Fired { tick: true, arm_at_ns: 20 * MS });
    }

    #[test]
    fn a_deadline_after_the_tick_waits_for_it_and_survives_it() {
        let mut plan = started();
        assert_eq!(plan.set_wake_at(Some(15 * MS)), None, "the tick comes first");
        assert_eq!(plan.on_interrupt(10 * MS), Fired { tick: true, arm_at_ns: 15 * MS });
        assert_eq!(plan.on_interrupt(15 * MS), Fired { tick: false, arm_at_ns: 20 * MS });
    }

    #[test]
    fn moving_a_deadline_later_or_clearing_it_does_not_rearm() {
        let mut plan = started();
        assert_eq!(plan.set_wake_at(Some(3 * MS)), Some(3 * MS));
        assert_eq!(plan.set_wake_at(Some(3 * MS)), None, "the same deadline: armed already");
        assert_eq!(plan.set_wake_at(Some(5 * MS)), None);
        assert_eq!(plan.set_wake_at(None), None);
        // The interrupt armed for 3 ms finds nothing due and arms for the tick.
        assert_eq!(plan.on_interrupt(3 * MS), Fired { tick: false, arm_at_ns: 10 * MS });
        assert_eq!(plan.set_wake_at(Some(4 * MS)), Some(4 * MS));
    }

    #[test]
    fn an_early_interrupt_rearms_for_what_is_still_due() {
        let mut plan = started();
        plan.set_wake_at(Some(2 * MS));
        assert_eq!(plan.on_interrupt(2 * MS - 100), Fired { tick: false, arm_at_ns: 2 * MS });
        assert_eq!(plan.on_interrupt(9 * MS), Fired { tick: false, arm_at_ns: 10 * MS });
    }

    #[test]
    fn frequent_deadlines_do_not_postpone_the_tick() {
        let mut plan = started();
        let mut ticks = 0;
        for step in 1..=100 {
            let now = step * MS / 2;
            plan.set_wake_at(Some(now + MS / 2));
            ticks += plan.on_interrupt(now).tick as u32;
        }
        // 50 ms of interrupts every 0.5 ms: ticks at 10, 20, 30, 40 and 50 ms.
        assert_eq!(ticks, 5);
    }

    #[test]
    fn missed_ticks_are_not_made_up_in_a_burst() {
        let mut plan = started();
        assert_eq!(plan.on_interrupt(35 * MS), Fired { tick: true, arm_at_ns: 45 * MS });
        assert_eq!(plan.on_interrupt(40 * MS), Fired { tick: false, arm_at_ns: 45 * MS });
    }
}
