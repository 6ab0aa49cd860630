//! The host's vCPU scheduler: one queue of runnable (and halted) vCPUs per CPU. Each AP runs its queue
//! forever (round robin, one host-timer slice per vCPU when several share the CPU) and
//! sleeps when it is empty; the boot CPU, which serves the control plane, runs its queue
//! only between network polls on a one-CPU machine, one host-timer tick at a time
//! (`run_one_tick`, so the API keeps its priority over a guest that spins), or for guests
//! launched from the command line (`run_local_until`).
//!
//! A vCPU stays on the queue it was given: VMX binds a VMCS to the CPU it was loaded on.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use hypervisor::backend::BackendError;
use hypervisor::vm::{RunQueue, Runnable, Step};
use spin::{Mutex, Once};

static QUEUES: Once<Vec<RunQueue>> = Once::new();

fn queues() -> &'static [RunQueue] {
    QUEUES.call_once(|| {
        (0..libos::smp::cpu_count())
            .map(|_| RunQueue::new(libos::time::now_ns, libos::smp::current_ticks))
            .collect()
    })
}

/// How long the APs get to turn virtualization on.
const ENABLE_TIMEOUT_NS: u64 = 1_000_000_000;

static STARTED: Once<Result<(), String>> = Once::new();

/// An AP's answer to turning virtualization on: its index and the result.
type Answer = (usize, Result<(), BackendError>);

/// Turns virtualization on for every CPU (`enable`, run on each) and puts every AP into its
/// scheduling loop. The first call does it and waits for every AP's answer; later calls
/// return the same result. An error names the first CPU that failed.
pub fn start(enable: fn() -> Result<(), BackendError>) -> Result<(), String> {
    STARTED.call_once(|| start_once(enable)).clone()
}

fn start_once(enable: fn() -> Result<(), BackendError>) -> Result<(), String> {
    let _ = queues();
    enable().map_err(|e| format!("cpu 0: {e}"))?;
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::new(Mutex::new(Vec::new()));
    let aps = libos::smp::cpu_count() - 1;
    for cpu in 1..=aps {
        let answers = answers.clone();
        libos::smp::run_on(cpu, move || {
            let result = enable();
            let ok = result.is_ok();
            answers.lock().push((cpu, result));
            if ok {
                run_forever(cpu);
            }
        })
        .map_err(|e| format!("cpu {cpu}: {e}"))?;
    }
    let deadline = libos::time::now_ns() + ENABLE_TIMEOUT_NS;
    while answers.lock().len() < aps && libos::time::now_ns() < deadline {
        core::hint::spin_loop();
    }
    let answers = answers.lock();
    if let Some((cpu, Err(e))) = answers.iter().find(|(_, r)| r.is_err()) {
        return Err(format!("cpu {cpu}: {e}"));
    }
    if answers.len() < aps {
        return Err("an AP did not answer while turning virtualization on".into());
    }
    Ok(())
}

/// Queues a vCPU on `cpu` and wakes that CPU.
pub fn submit(cpu: usize, runner: Box<dyn Runnable>) {
    let queues = queues();
    let cpu = cpu.min(queues.len() - 1);
    queues[cpu].push(runner);
    if cpu != libos::smp::current_cpu() {
        libos::smp::kick(cpu);
    }
}

/// The CPUs that run vCPUs: the APs, or the boot CPU alone on a one-CPU machine.
pub fn vcpu_cpus() -> core::ops::Range<usize> {
    let cpus = libos::smp::cpu_count();
    if cpus > 1 { 1..cpus } else { 0..1 }
}

/// Runs one slice of the next vCPU queued on this CPU.
pub fn run_one_slice() -> Step {
    queues()[libos::smp::current_cpu()].run_one_slice()
}

/// Runs the next vCPU queued on this CPU until the next host timer tick at most: the boot
/// CPU of a one-CPU machine, between network polls, so the control plane has the CPU at
/// least once a tick however the guests behave (it runs above the vCPUs).
pub fn run_one_tick() -> Step {
    queues()[libos::smp::current_cpu()].run_one_tick()
}

/// Whether vCPUs run on this CPU (the boot CPU of a one-CPU machine): a wait for vCPUs
/// must then run them.
pub fn runs_vcpus_here() -> bool {
    vcpu_cpus().contains(&libos::smp::current_cpu())
}

/// Runs this CPU's queue until `done` says so (the boot CPU, for guests launched from the
/// command line).
pub fn run_local_until(done: impl Fn() -> bool) {
    while !done() {
        if run_one_slice() != Step::Ran {
            core::hint::spin_loop();
        }
    }
}

fn run_forever(cpu: usize) {
    loop {
        match run_one_slice() {
            Step::Ran => {}
            // Only paused vCPUs: look again at the next timer tick.
            Step::Paused => libos::smp::sleep_unless(|| false),
            // Nothing runnable (perhaps halted vCPUs): sleep until a kick (a submit, a
            // wake: `vm::park`), the next timer tick or the earliest deadline of the halted
            // vCPUs here (their LAPIC timers). The look runs with interrupts off, so a kick
            // after it wakes the `hlt`.
            Step::Empty => {
                let queue = &queues()[cpu];
                libos::smp::sleep_unless_until(queue.next_deadline(), || queue.has_work());
            }
        }
    }
}
