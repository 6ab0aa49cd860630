//! A host CPU's queue of runnable vCPUs, served round robin. The image keeps one per CPU
//! (`app/sched.rs`, which adds the CPU side: waking, sleeping, which queue is whose);
//! what is here is plain logic, so it is tested on the host.

use super::vcpu::{Runnable, Slice};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use spin::Mutex;

/// What one scheduling step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A vCPU ran (and yielded or ended).
    Ran,
    /// The vCPU at the head is paused; it went back to the end of the queue.
    Paused,
    Empty,
}

#[derive(Default)]
pub struct RunQueue {
    runnable: Mutex<VecDeque<Box<dyn Runnable>>>,
}

impl RunQueue {
    pub const fn new() -> Self {
        Self { runnable: Mutex::new(VecDeque::new()) }
    }

    pub fn push(&self, runner: Box<dyn Runnable>) {
        self.runnable.lock().push_back(runner);
    }

    pub fn is_empty(&self) -> bool {
        self.runnable.lock().is_empty()
    }

    /// Runs one slice of the vCPU at the head of the queue.
    ///
    /// Whether the vCPU must give way is asked at each host interrupt, not once when its
    /// slice begins: a vCPU that began alone must still yield to one queued later, such as
    /// its own VM's next vCPU, submitted a moment after it and perhaps the very one it
    /// spins waiting for. (Deciding once was the bug behind a two-vCPU guest that never
    /// finished; the test below is that guest.)
    pub fn run_one_slice(&self) -> Step {
        self.run_head(&|| !self.is_empty())
    }

    /// Runs the vCPU at the head of the queue until the next host interrupt at most: for a
    /// CPU that also serves the control plane (the boot CPU of a one-CPU machine), which
    /// must get the CPU back at every tick however the guest behaves.
    pub fn run_one_tick(&self) -> Step {
        self.run_head(&|| true)
    }

    fn run_head(&self, share_cpu: &dyn Fn() -> bool) -> Step {
        let Some(mut runner) = self.runnable.lock().pop_front() else { return Step::Empty };
        match runner.run_slice(share_cpu) {
            Slice::Yielded => {
                self.push(runner);
                Step::Ran
            }
            Slice::Paused => {
                self.push(runner);
                Step::Paused
            }
            Slice::Ended(_) => Step::Ran,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::VcpuEnd;
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// vCPU 0 of a guest like memtouch: it spins until its sibling has run. Each turn of
    /// the loop stands for a host timer interrupt.
    struct WaitsForSibling {
        started: Arc<AtomicBool>,
        sibling_ran: Arc<AtomicBool>,
    }

    impl Runnable for WaitsForSibling {
        fn run_slice(&mut self, share_cpu: &dyn Fn() -> bool) -> Slice {
            self.started.store(true, Ordering::SeqCst);
            while !self.sibling_ran.load(Ordering::SeqCst) {
                if share_cpu() {
                    return Slice::Yielded;
                }
                std::thread::yield_now();
            }
            Slice::Ended(VcpuEnd::VmFinished)
        }
    }

    struct Sibling {
        ran: Arc<AtomicBool>,
    }

    impl Runnable for Sibling {
        fn run_slice(&mut self, _: &dyn Fn() -> bool) -> Slice {
            self.ran.store(true, Ordering::SeqCst);
            Slice::Ended(VcpuEnd::Halted)
        }
    }

    #[test]
    fn a_vcpu_running_alone_yields_to_one_queued_after_it_began() {
        let queue = Arc::new(RunQueue::new());
        let started = Arc::new(AtomicBool::new(false));
        let sibling_ran = Arc::new(AtomicBool::new(false));
        queue.push(Box::new(WaitsForSibling { started: started.clone(), sibling_ran: sibling_ran.clone() }));
        let (done, finished) = std::sync::mpsc::channel();
        let cpu = {
            let (queue, sibling_ran) = (queue.clone(), sibling_ran.clone());
            std::thread::spawn(move || {
                while !(sibling_ran.load(Ordering::SeqCst) && queue.is_empty()) {
                    queue.run_one_slice();
                }
                let _ = done.send(());
            })
        };
        // The sibling is queued only once vCPU 0's slice is under way.
        while !started.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        queue.push(Box::new(Sibling { ran: sibling_ran.clone() }));
        // A liveness bound, not a timing: the schedule either completes or never does.
        assert!(
            finished.recv_timeout(Duration::from_secs(60)).is_ok(),
            "vCPU 0 kept its CPU and its sibling never ran"
        );
        cpu.join().unwrap();
    }

    /// A guest that never exits on its own: each turn of its loop stands for a host timer
    /// interrupt; it gives the CPU back only when asked to share it.
    struct Spins {
        ticks: u32,
    }

    impl Runnable for Spins {
        fn run_slice(&mut self, share_cpu: &dyn Fn() -> bool) -> Slice {
            loop {
                self.ticks += 1;
                if share_cpu() {
                    return Slice::Yielded;
                }
                if self.ticks == 1000 {
                    return Slice::Ended(VcpuEnd::Halted);
                }
            }
        }
    }

    #[test]
    fn a_tick_of_a_lone_spinning_vcpu_gives_the_cpu_back_at_the_next_host_interrupt() {
        let queue = RunQueue::new();
        queue.push(Box::new(Spins { ticks: 0 }));
        for _ in 0..3 {
            assert_eq!(queue.run_one_tick(), Step::Ran);
            assert!(!queue.is_empty(), "the vCPU yielded and stays queued");
        }
        // A slice, by contrast, keeps the CPU while nothing else is queued.
        assert_eq!(queue.run_one_slice(), Step::Ran);
        assert!(queue.is_empty(), "the lone vCPU ran until it ended");
    }

    #[test]
    fn paused_vcpus_go_to_the_back_and_an_empty_queue_says_so() {
        struct Paused;
        impl Runnable for Paused {
            fn run_slice(&mut self, _: &dyn Fn() -> bool) -> Slice {
                Slice::Paused
            }
        }
        let queue = RunQueue::new();
        assert_eq!(queue.run_one_slice(), Step::Empty);
        queue.push(Box::new(Paused));
        assert_eq!(queue.run_one_slice(), Step::Paused);
        assert!(!queue.is_empty(), "a paused vCPU stays queued");
    }
}
