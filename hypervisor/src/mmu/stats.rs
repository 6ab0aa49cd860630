//! Counters for rule 11 and the snapshot the backend prints.

use core::sync::atomic::{AtomicU64, Ordering};

/// Monotonic time for zap durations. The backend passes its TSC- or timer-based clock; the
/// host uses `std::time` ([`super::host::StdClock`]).
pub trait Clock: Send + Sync + 'static {
    fn now_ns(&self) -> u64;
}

/// A clock that always reads zero, for builds that do not measure.
#[derive(Default, Clone, Copy)]
pub struct NoClock;

impl Clock for NoClock {
    fn now_ns(&self) -> u64 {
        0
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters. Statistics only: relaxed, and nothing synchronises through them.
        #[derive(Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        /// A snapshot of the MMU's counters. It serializes as one flat JSON object whose
        /// keys are the field names (the `mmu` object of the API's `Stats` schema).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub struct Stats {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Stats {
                Stats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Roots created (a table page allocated for a new role).
    roots_allocated,
    /// Root loads satisfied by an existing root (the vCPU's cache or the MMU's list).
    roots_reused,
    /// Roots marked invalid.
    roots_invalidated,
    /// Roots whose last reference went and whose top table was retired.
    roots_freed,
    /// Faults handled (every call). This and the next three are counted per vCPU
    /// ([`FaultCounters`]); here they hold the totals of vCPUs already gone.
    faults,
    /// Faults that returned `Retry`.
    faults_retried,
    /// Lost compare-and-exchange races or frozen entries met while faulting.
    faults_raced,
    /// Leaf entries installed (or made writable).
    sptes_installed,
    /// Leaf entries removed by zaps.
    sptes_zapped,
    /// Zap operations (one per root zapped, one per range zapped).
    zaps,
    /// Time spent in zap operations.
    zap_ns,
    /// Calls of the TLB flush hook.
    tlb_flushes,
    /// Calls of the kick hook (reload requests).
    kicks,
    /// Table pages in use (roots and interior tables, including those awaiting a grace period).
    table_pages,
    /// Table pages unlinked and flushed, waiting for their grace period.
    table_pages_retired,
    /// Backing frames allocated for slots.
    backing_frames,
    /// Range invalidations begun (rule 7).
    range_invalidations,
}

/// The counters every fault bumps, kept per vCPU.
///
/// Rule 6 asks for faults that scale across vCPUs. A shared counter bumped on every fault
/// is a cache line that every faulting CPU must own in turn: with two threads it cost more
/// than the fault itself. Each vCPU bumps its own (one cache line, not shared with anything
/// another CPU writes), and [`super::Mmu::stats`] adds them up with the totals of vCPUs
/// already gone ([`FaultCounters::retire_into`]).
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct FaultCounters {
    pub(crate) faults: AtomicU64,
    pub(crate) faults_retried: AtomicU64,
    pub(crate) faults_raced: AtomicU64,
    pub(crate) sptes_installed: AtomicU64,
}

impl FaultCounters {
    fn each(&self) -> [&AtomicU64; 4] {
        [&self.faults, &self.faults_retried, &self.faults_raced, &self.sptes_installed]
    }

    /// Adds this vCPU's counts to a snapshot.
    pub(crate) fn add_to(&self, stats: &mut Stats) {
        let [a, b, c, d] = self.each().map(|c| c.load(Ordering::Relaxed));
        stats.faults += a;
        stats.faults_retried += b;
        stats.faults_raced += c;
        stats.sptes_installed += d;
    }

    /// Moves this vCPU's counts into the MMU's totals (the vCPU is going away).
    pub(crate) fn retire_into(&self, counters: &Counters) {
        let totals =
            [&counters.faults, &counters.faults_retried, &counters.faults_raced, &counters.sptes_installed];
        for (mine, total) in self.each().into_iter().zip(totals) {
            Counters::add(total, mine.swap(0, Ordering::Relaxed));
        }
    }
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_one_flat_object() {
        let stats = Stats { roots_allocated: 3, zap_ns: 17, ..Stats::default() };
        let s = serde_json::to_string(&stats).unwrap();
        assert!(s.starts_with("{\"roots_allocated\":3,"));
        assert!(s.contains("\"zap_ns\":17"));
        assert!(s.ends_with('}'));
        assert_eq!(s.matches('{').count(), 1);
    }
}
