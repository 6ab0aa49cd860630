//! The host's vCPU scheduler: one queue of runnable vCPUs per CPU. Each AP runs its queue
//! forever (round robin, one host-timer slice per vCPU when several share the CPU) and
//! sleeps when it is empty; the boot CPU, which serves the control plane, runs its queue
//! only between network polls, and only on a one-CPU machine.
//!
//! A vCPU stays on the queue it was given: VMX binds a VMCS to the CPU it was loaded on.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use hypervisor::vm::{Runnable, Slice};
use spin::{Mutex, Once};

struct Queue {
    runnable: Mutex<VecDeque<Box<dyn Runnable>>>,
}

static QUEUES: Once<Vec<Queue>> = Once::new();

fn queues() -> &'static [Queue] {
    QUEUES.call_once(|| {
        (0..libos::smp::cpu_count()).map(|_| Queue { runnable: Mutex::new(VecDeque::new()) }).collect()
    })
}

/// Turns virtualization on for every CPU (`enable`, run on each) and puts every AP into its
/// scheduling loop. Called once at boot. A CPU where `enable` fails takes no vCPUs.
pub fn start(enable: fn() -> Result<(), String>) {
    let _ = queues();
    if let Err(e) = enable() {
        log::error!("sched: cpu 0: {e}");
    }
    for cpu in 1..libos::smp::cpu_count() {
        let started = libos::smp::run_on(cpu, move || match enable() {
            Ok(()) => run_forever(cpu),
            Err(e) => log::error!("sched: cpu {cpu} takes no vCPUs: {e}"),
        });
        if let Err(e) = started {
            log::warn!("sched: cpu {cpu} takes no vCPUs: {e}");
        }
    }
}

/// Queues a vCPU on `cpu` and wakes that CPU.
pub fn submit(cpu: usize, runner: Box<dyn Runnable>) {
    let queues = queues();
    let cpu = cpu.min(queues.len() - 1);
    queues[cpu].runnable.lock().push_back(runner);
    if cpu != libos::smp::current_cpu() {
        libos::smp::kick(cpu);
    }
}

/// The CPUs that run vCPUs: the APs, or the boot CPU alone on a one-CPU machine.
pub fn vcpu_cpus() -> core::ops::Range<usize> {
    let cpus = libos::smp::cpu_count();
    if cpus > 1 { 1..cpus } else { 0..1 }
}

/// What one scheduling step did.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A vCPU ran (and yielded or ended).
    Ran,
    /// The vCPU at the head is paused; it went back to the end of the queue.
    Paused,
    Empty,
}

/// Runs one slice of the next vCPU queued on this CPU.
pub fn run_one_slice() -> Step {
    let queue = &queues()[libos::smp::current_cpu()];
    let Some(mut runner) = queue.runnable.lock().pop_front() else { return Step::Empty };
    let share = !queue.runnable.lock().is_empty();
    match runner.run_slice(share) {
        Slice::Yielded => {
            queue.runnable.lock().push_back(runner);
            Step::Ran
        }
        Slice::Paused => {
            queue.runnable.lock().push_back(runner);
            Step::Paused
        }
        Slice::Ended(_) => Step::Ran,
    }
}

fn run_forever(cpu: usize) {
    loop {
        match run_one_slice() {
            Step::Ran => {}
            // Only paused vCPUs: look again at the next timer tick.
            Step::Paused => libos::smp::sleep_unless(|| false),
            Step::Empty => libos::smp::sleep_unless(|| !queues()[cpu].runnable.lock().is_empty()),
        }
    }
}
