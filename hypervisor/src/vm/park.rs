//! Halted vCPUs: how a vCPU that executed HLT leaves its host CPU and how it is woken.
//!
//! A halted vCPU's runner returns `Slice::Blocked { until }` (the earliest of its timers,
//! if any) and its host CPU's run queue keeps it aside (`vm::run_queue`) until
//! [`VcpuPark::is_woken`] holds or `until` passes; the CPU runs other vCPUs or sleeps
//! meanwhile. Whoever makes an interrupt pending for the vCPU (another vCPU's IPI, a
//! device, its own timer, a pause or stop of the VM) calls [`VcpuPark::wake`] after
//! changing the interrupt state, then kicks the CPU it names.
//!
//! # No lost wakeups
//! The sleeper, before it decides to stay halted: (1) [`VcpuPark::going_to_sleep`] clears
//! `woken`; (2) under the device lock, asks the irqchip whether anything wakes it; (3)
//! if nothing does, returns `Blocked`; (4) the CPU's scheduler checks `is_woken` with
//! host interrupts off and sleeps with `sti; hlt`. The waker: (a) makes the interrupt
//! pending under the device lock; (b) after dropping it, sets `woken` (SeqCst); (c) kicks
//! the sleeper's CPU. If (a) comes before (2) under the lock, the sleeper sees the
//! interrupt and does not sleep. Otherwise (1) < (2) < (a) < (b), so `woken` is set after
//! the sleeper cleared it and stays set: the check in (4) sees it, or if (4) came first the
//! kick (c) interrupts the `hlt` and the CPU looks again. Either way the vCPU runs.
//!
//! A wake of a vCPU that is running (in the guest or between exits) also asks its backend
//! for an exit (`backend::ExitRequest`) before the kick: a guest there exits, and the
//! entry path picks up the interrupt. The request closes the gap between the entry path's
//! look at the irqchip and the entry itself, where a kick would land in the host and be
//! gone: the backend checks the request with host interrupts off just before entering.
//!
//! # The entry's attention (`vm::entry`'s fast path)
//! Besides waking, a [`VcpuPark`] tells the vCPU's entry path whether it must look at the
//! irqchip under the device lock at all. Its `attention` flag is set ([`VcpuPark::call_attention`],
//! Release) by whoever may have made an event pending for the vCPU or changed what it may
//! take: every wake (the masks the irqchip returns: IPIs, I/O APIC, PIC/ExtINT, LAPIC timer
//! expiries, INIT, SIPI, NMI), the vCPU's own accesses to its LAPIC and the port bus (a
//! TPR or EOI write can unmask a pending vector; a self-IPI returns no mask for others),
//! a port access by any vCPU for vCPU 0 (the platform's timers run on its deadline), and
//! the entry path itself while something stays pending (an interrupt or NMI window, or
//! more vectors after the one injected). The entry path clears it ([`VcpuPark::take_attention`],
//! Acquire) *before* it looks under the lock. All writes to the flag are to one atomic, so
//! they are totally ordered: a set after the clear leaves it set for the next entry; a set
//! before it was done after the event was made pending (under the lock), and the look that
//! follows the clear takes the lock after that, so it sees the event. [`VcpuPark::wake`]
//! sets the flag before it asks the backend to exit, so the entry that follows the exit
//! sees it. The vCPU's next timer deadline is cached here too ([`VcpuPark::deadline_due`]),
//! written only by the vCPU's own entry path under the lock; a deadline moved earlier by
//! someone else comes with an attention (the accesses above), so a stale cache is only ever
//! too early, which costs one look.

use crate::backend::ExitRequest;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The cached deadline of a vCPU with no timer armed.
const NO_DEADLINE: u64 = u64::MAX;

/// One vCPU's halt state, shared by its runner and its wakers.
pub struct VcpuPark {
    /// The vCPU's backend, asked to leave the guest (set once, by its runner).
    exit_request: spin::Once<Arc<dyn ExitRequest>>,
    woken: AtomicBool,
    /// Whether the vCPU is halted (for the stats' `halted_vcpus`).
    halted: AtomicBool,
    /// The host CPU the vCPU runs on (its runner records it each slice).
    cpu: AtomicUsize,
    /// Whether the next entry must look under the device lock (module doc).
    attention: AtomicBool,
    /// The vCPU's next timer deadline in host ns ([`NO_DEADLINE`]: none), as its entry path
    /// last read it.
    deadline: AtomicU64,
}

impl Default for VcpuPark {
    fn default() -> Self {
        Self {
            exit_request: spin::Once::new(),
            woken: AtomicBool::new(false),
            halted: AtomicBool::new(false),
            cpu: AtomicUsize::new(0),
            // The first entry looks.
            attention: AtomicBool::new(true),
            deadline: AtomicU64::new(NO_DEADLINE),
        }
    }
}

impl VcpuPark {
    /// The runner: how to make this vCPU's backend leave the guest.
    pub fn attach(&self, exit_request: Arc<dyn ExitRequest>) {
        self.exit_request.call_once(|| exit_request);
    }

    /// The runner: this vCPU runs on host CPU `cpu`.
    pub fn runs_on(&self, cpu: usize) {
        self.cpu.store(cpu, Ordering::Relaxed);
    }

    /// The sleeper's step (1): forget earlier wakes, before looking at the interrupt state.
    pub fn going_to_sleep(&self) {
        self.woken.store(false, Ordering::SeqCst);
    }

    /// The vCPU is halted (true) or runs again (false).
    pub fn set_halted(&self, halted: bool) {
        self.halted.store(halted, Ordering::Relaxed);
    }

    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Relaxed)
    }

    /// The waker's step (b), after the interrupt state changed: returns the CPU to kick,
    /// and whether the vCPU was halted (a wakeup, for the stats).
    pub fn wake(&self) -> (usize, bool) {
        // Before the exit request: the entry after that exit must see it (module doc).
        self.call_attention();
        self.woken.store(true, Ordering::SeqCst);
        if let Some(backend) = self.exit_request.get() {
            backend.request_exit();
        }
        (self.cpu.load(Ordering::Relaxed), self.is_halted())
    }

    /// The scheduler's check (4).
    pub fn is_woken(&self) -> bool {
        self.woken.load(Ordering::SeqCst)
    }

    /// Something may be pending for the vCPU, or what it may take changed: its next entry
    /// looks under the lock. Call it after the change (or under the lock that made it).
    pub fn call_attention(&self) {
        self.attention.store(true, Ordering::Release);
    }

    /// The entry path, before it looks under the lock: whether it must look (the flag is
    /// clear afterwards).
    pub fn take_attention(&self) -> bool {
        self.attention.swap(false, Ordering::Acquire)
    }

    /// The vCPU's entry path, under the device lock: its next timer deadline.
    pub fn set_deadline(&self, deadline: Option<u64>) {
        self.deadline.store(deadline.unwrap_or(NO_DEADLINE), Ordering::Relaxed);
    }

    /// The cached deadline (for the host timer while the vCPU runs).
    pub fn deadline(&self) -> Option<u64> {
        let deadline = self.deadline.load(Ordering::Relaxed);
        (deadline != NO_DEADLINE).then_some(deadline)
    }

    /// Whether the cached deadline has passed (`now_ns` is read only if one is set).
    pub fn deadline_due(&self, now_ns: fn() -> u64) -> bool {
        let deadline = self.deadline.load(Ordering::Relaxed);
        deadline != NO_DEADLINE && deadline <= now_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::VcpuPark;
    use std::sync::{Arc, Mutex};

    /// The protocol with a real lock and threads, many times: a waker racing a sleeper
    /// never leaves the sleeper asleep with its interrupt pending.
    #[test]
    fn a_wake_racing_a_sleep_is_never_lost() {
        for _ in 0..2000 {
            let park = Arc::new(VcpuPark::default());
            let pending = Arc::new(Mutex::new(false));
            let waker = {
                let (park, pending) = (park.clone(), pending.clone());
                std::thread::spawn(move || {
                    *pending.lock().unwrap() = true;
                    park.wake();
                })
            };
            park.going_to_sleep();
            let sleeps = !*pending.lock().unwrap();
            waker.join().unwrap();
            if sleeps {
                assert!(park.is_woken(), "the sleeper slept through a pending interrupt");
            }
        }
    }

    #[test]
    fn an_old_wake_is_forgotten_when_the_vcpu_halts_again() {
        let park = VcpuPark::default();
        park.wake();
        assert!(park.is_woken());
        park.going_to_sleep();
        assert!(!park.is_woken(), "a wake before the halt's own check is that check's to see");
    }
}
