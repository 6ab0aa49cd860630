//! CPUs: bring-up of the application processors (INIT-SIPI-SIPI, Intel SDM Vol. 3A
//! §9.4.4), the per-CPU idle loop, and a way to give a CPU work.

use crate::arch::x86_64::{
    apic, cpu, gdt, host_timer, interrupts, paging, percpu, stack_guard, trampoline, vectors,
};
use crate::mm::frame;
use crate::time;
use crate::virt::VirtCaps;
use alloc::boxed::Box;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub use percpu::{MAX_CPUS, current_cpu};

/// 256 KiB: vCPU loops and their exit handling run on AP stacks.
const AP_STACK_FRAMES: usize = 64;
const INIT_DEASSERT_WAIT_US: u64 = 10_000;
const SIPI_WAIT_US: u64 = 200;
const AP_START_TIMEOUT_US: u64 = 500_000;

static CPU_COUNT: AtomicUsize = AtomicUsize::new(1);
static AP_STARTED: AtomicBool = AtomicBool::new(false);

/// How many CPUs were brought up (indices 0..count).
pub fn cpu_count() -> usize {
    CPU_COUNT.load(Ordering::Acquire)
}

/// Whether CPU `index` is up and has not stopped on an exception.
pub fn is_online(index: usize) -> bool {
    percpu::cpu(index).is_some_and(|c| c.online.load(Ordering::Acquire))
}

/// The virtualization CPU `index` detected when it came up.
pub fn virt_caps(index: usize) -> Option<VirtCaps> {
    percpu::cpu(index).and_then(|c| c.virt.get().copied())
}

/// Scheduler ticks CPU `index` has taken (every `1 / TIMER_HZ` s; timer interrupts for a
/// wake-up deadline do not count).
pub fn timer_ticks(index: usize) -> u64 {
    percpu::cpu(index).map_or(0, |c| c.timer_ticks.load(Ordering::Relaxed))
}

/// The calling CPU's scheduler ticks so far ([`timer_ticks`]): the slice accounting asks
/// whether it moved.
pub fn current_ticks() -> u64 {
    percpu::current().timer_ticks.load(Ordering::Relaxed)
}

/// Asks for a timer interrupt on the calling CPU at `deadline_ns` ([`time::now_ns`]) at
/// the latest, besides its scheduler ticks (`None`: no such deadline). A CPU running a
/// guest then exits it by the deadline (a running vCPU's next guest timer); the deadline
/// is consumed once it passes.
#[inline]
pub fn set_wake_at(deadline_ns: Option<u64>) {
    host_timer::set_wake_at(deadline_ns);
}

/// Runs the host's NMI handling on this CPU for an NMI that a VM exit consumed (VMX's
/// NMI exit): see `arch::x86_64::interrupts`. Call it with interrupts off, right after
/// the exit.
pub fn run_nmi_handler() {
    interrupts::run_nmi_handler();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOnError {
    /// No such CPU, or it stopped.
    Offline(usize),
    /// The boot CPU runs the application's `main`, not an idle loop.
    BootCpu,
}

impl fmt::Display for RunOnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunOnError::Offline(i) => write!(f, "cpu {i} is not online"),
            RunOnError::BootCpu => f.write_str("cpu 0 runs the application and takes no queued work"),
        }
    }
}

/// Interrupts CPU `index` (a no-op interrupt): a CPU running a guest takes an exit, a
/// halted CPU wakes up.
pub fn kick(index: usize) {
    if let Some(cpu) = percpu::cpu(index)
        && index < cpu_count()
    {
        apic::send_ipi(cpu.apic_id.load(Ordering::Relaxed), vectors::WAKE);
    }
}

/// Sends an NMI to CPU `index` (other than the caller's): the host's NMI handling there
/// runs, in a guest or not (the `nmi_ms=` test option).
pub fn send_nmi(index: usize) {
    if let Some(cpu) = percpu::cpu(index)
        && index < cpu_count()
    {
        apic::send_nmi(cpu.apic_id.load(Ordering::Relaxed));
    }
}

/// Queues `work` on CPU `index`'s idle loop and wakes it.
pub fn run_on(index: usize, work: impl FnOnce() + Send + 'static) -> Result<(), RunOnError> {
    if index == 0 {
        return Err(RunOnError::BootCpu);
    }
    if index >= cpu_count() || !is_online(index) {
        return Err(RunOnError::Offline(index));
    }
    let cpu = percpu::cpu(index).ok_or(RunOnError::Offline(index))?;
    cpu.work.lock().push_back(Box::new(work));
    apic::send_ipi(cpu.apic_id.load(Ordering::Relaxed), vectors::WAKE);
    Ok(())
}

/// Starts every AP in `apic_ids` (the boot CPU's own ID is skipped), one at a time.
pub(crate) fn start_aps(apic_ids: &[u32]) {
    let bsp = apic::id();
    let mut next = 1;
    for &apic_id in apic_ids.iter().filter(|id| **id != bsp) {
        if next >= MAX_CPUS {
            log::warn!("smp: more than {MAX_CPUS} CPUs; the rest stay off");
            break;
        }
        if !apic::is_addressable(apic_id) {
            log::warn!(
                "smp: cpu with APIC ID {apic_id} needs x2APIC mode, which this machine lacks; it stays off"
            );
            continue;
        }
        let Some(stack) = frame::alloc(AP_STACK_FRAMES) else {
            log::warn!("smp: no memory for a stack; cpu with APIC ID {apic_id} stays off");
            break;
        };
        let stack_top = stack + (AP_STACK_FRAMES as u64) * frame::FRAME_SIZE;
        let cpu = percpu::cpu(next).expect("index below MAX_CPUS");
        cpu.apic_id.store(apic_id, Ordering::Relaxed);
        stack_guard::install(cpu, stack);
        AP_STARTED.store(false, Ordering::Release);
        trampoline::install(paging::kernel_pml4(), stack_top, ap_main, next as u64);
        let page = (trampoline::TRAMPOLINE_PHYS / 4096) as u8;
        apic::send_init(apic_id);
        time::delay_us(INIT_DEASSERT_WAIT_US);
        apic::send_startup(apic_id, page);
        time::delay_us(SIPI_WAIT_US);
        if !AP_STARTED.load(Ordering::Acquire) {
            apic::send_startup(apic_id, page);
        }
        let deadline = time::now_ns() + AP_START_TIMEOUT_US * 1000;
        while !AP_STARTED.load(Ordering::Acquire) && time::now_ns() < deadline {
            core::hint::spin_loop();
        }
        if AP_STARTED.load(Ordering::Acquire) {
            next += 1;
            CPU_COUNT.store(next, Ordering::Release);
        } else {
            log::warn!("smp: cpu with APIC ID {apic_id} did not start");
            frame::free(stack, AP_STACK_FRAMES);
        }
    }
    log::info!("smp: {} cpu(s) online", cpu_count());
}

/// First Rust code on an AP, called by the trampoline on its own stack.
extern "C" fn ap_main(index: u64) -> ! {
    let index = index as usize;
    let apic_id = percpu::cpu(index).map_or(0, |c| c.apic_id.load(Ordering::Relaxed));
    percpu::install(index, apic_id);
    gdt::init_cpu();
    interrupts::init_cpu();
    cpu::init_fpu();
    apic::init_cpu();
    apic::init_one_shot_timer();
    host_timer::start();
    let me = percpu::current();
    let virt = *me.virt.call_once(cpu::detect_virt);
    me.online.store(true, Ordering::Release);
    log::debug!("smp: cpu {index} (APIC ID {apic_id}) up, virt={}", virt.kind());
    AP_STARTED.store(true, Ordering::Release);
    idle_loop(me)
}

/// Sleeps until the next interrupt (timer tick, IPI) unless `has_work` says there is work:
/// interrupts are off while it looks, and `sti; hlt` re-enables them atomically with the
/// halt, so a wake-up IPI sent after the look is not lost.
pub fn sleep_unless(has_work: impl FnOnce() -> bool) {
    use x86_64::instructions::interrupts;
    self::interrupts::report_deferred_nmis();
    interrupts::disable();
    if has_work() {
        interrupts::enable();
    } else {
        interrupts::enable_and_hlt();
    }
}

/// As [`sleep_unless`], but wakes by `deadline_ns` ([`time::now_ns`]) at the latest, even
/// when that comes before the next scheduler tick ([`set_wake_at`]).
pub fn sleep_unless_until(deadline_ns: Option<u64>, has_work: impl FnOnce() -> bool) {
    use x86_64::instructions::interrupts;
    self::interrupts::report_deferred_nmis();
    interrupts::disable();
    if has_work() {
        interrupts::enable();
        return;
    }
    host_timer::set_wake_at(deadline_ns);
    interrupts::enable_and_hlt();
}

/// Turns the calling CPU into an idle CPU for good (the boot CPU, once the application has
/// nothing left to do on it).
pub fn idle() -> ! {
    idle_loop(percpu::current())
}

/// Runs queued work; otherwise sleeps until an interrupt. Interrupts are off while the
/// queue is checked and `sti; hlt` re-enables them atomically with the halt, so a wake-up
/// IPI sent after the check is not lost.
fn idle_loop(me: &'static percpu::PerCpu) -> ! {
    use x86_64::instructions::interrupts;
    loop {
        self::interrupts::report_deferred_nmis();
        interrupts::disable();
        let work = me.work.lock().pop_front();
        match work {
            Some(work) => {
                interrupts::enable();
                work();
            }
            None => interrupts::enable_and_hlt(),
        }
    }
}
