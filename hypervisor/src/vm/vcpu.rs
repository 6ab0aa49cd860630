//! The vCPU loop: load the root for the vCPU's role, prepare the entry (timers, interrupt
//! injection and windows: `vm::entry`), run, report quiescence, handle the exit; until the
//! VM reaches a final state. A platform reset the guest asked for restarts the vCPU at its
//! entry at the top of the loop. A [`VcpuRunner`] runs in slices, so several vCPUs can
//! share a host CPU (time-sliced by the host timer, whose interrupts make the guest exit).
//! A HLT that nothing wakes ends the slice with [`Slice::Blocked`]: the vCPU stays halted
//! (its next slice looks again) until an interrupt it would take, its timer, or a pause or
//! stop of the VM (`vm::park`), or the VM's time limit (`timeout_ms`, checked here as a
//! sleeping vCPU makes no exits).

use super::Vm;
use super::entry;
use super::exits::{self, Flow, VcpuContext};
use super::msr::VcpuMsrs;
use crate::backend::{Backend, BackendVcpu};
use crate::memslot::AsId;
use crate::mmu::{Role, VcpuMmu};
use alloc::format;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;

/// How a vCPU's loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuEnd {
    /// The VM reached a final state.
    VmFinished,
}

/// How a slice ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slice {
    /// The host timer fired and the caller asked to share the CPU: run another vCPU.
    Yielded,
    /// The VM is paused: run this vCPU again later.
    Paused,
    /// The vCPU is halted: run it again once it is woken (`vm::park`) or at host time
    /// `until` (its next timer deadline), whichever comes first.
    Blocked {
        until: Option<u64>,
    },
    Ended(VcpuEnd),
}

/// One vCPU with everything its loop keeps between slices.
pub struct VcpuRunner<B: Backend> {
    vm: Arc<Vm<B>>,
    index: u32,
    vcpu: B::Vcpu,
    mmu: VcpuMmu<B::Platform>,
    as_id: AsId,
    msrs: VcpuMsrs,
    /// The VM's platform-reset count this vCPU has restarted for.
    resets_seen: u64,
    /// What the vCPU does now, and after a platform reset.
    activity: Activity,
    start: Activity,
}

/// A vCPU's activity state (as VMX names them, SDM Vol. 3C §25.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Activity {
    Running,
    /// Executed HLT; runs again when `vm::entry::halt` says an event wakes it.
    Halted,
    /// An AP after INIT (or from power-on, `Vm::aps_wait_for_sipi`): runs again at a
    /// start-up IPI's vector.
    WaitForSipi,
}

impl<B: Backend> VcpuRunner<B> {
    pub fn new(vm: &Arc<Vm<B>>, index: u32, vcpu: B::Vcpu) -> Self {
        let mmu = vm.mmu.create_vcpu();
        let resets_seen = vm.platform_resets();
        let mut vcpu = vcpu;
        vcpu.set_tsc_offset(vm.tsc_offset);
        vm.park(index).attach(vcpu.exit_request());
        let start =
            if index != 0 && vm.aps_wait_for_sipi() { Activity::WaitForSipi } else { Activity::Running };
        Self {
            vm: vm.clone(),
            index,
            vcpu,
            mmu,
            as_id: AsId::Normal,
            msrs: VcpuMsrs::new(),
            resets_seen,
            activity: start,
            start,
        }
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Runs until the vCPU ends, or until a host interrupt finds `share_cpu()` true.
    ///
    /// `share_cpu` is asked at each host interrupt rather than once per slice: a vCPU that
    /// began its slice alone on its CPU must still give way to one queued behind it later
    /// (the second vCPU of the same VM, submitted a moment after the first, which the first
    /// may be spinning on).
    pub fn run_slice(&mut self, share_cpu: &dyn Fn() -> bool) -> Slice {
        self.vm.park(self.index).runs_on(B::current_cpu());
        let mut cx = VcpuContext {
            vm: &self.vm,
            index: self.index,
            vcpu: &mut self.vcpu,
            mmu: &mut self.mmu,
            as_id: self.as_id,
            msrs: &mut self.msrs,
        };
        let end = loop {
            if cx.vm.stop.load(Ordering::SeqCst) {
                break VcpuEnd::VmFinished;
            }
            if cx.vm.is_paused() {
                self.as_id = cx.as_id;
                self.mmu.report_offline();
                return Slice::Paused;
            }
            let resets = cx.vm.platform_resets();
            if resets != self.resets_seen {
                // The guest reset the platform (`vm::platform`): start again at the entry.
                self.resets_seen = resets;
                self.activity = self.start;
                cx.vm.park(cx.index).set_halted(false);
                if let Flow::Finish(state) = exits::restart_at_entry(&mut cx) {
                    cx.vm.finish(state);
                    break VcpuEnd::VmFinished;
                }
            }
            // A vCPU that sleeps makes no exits that would check the time limit.
            if self.activity != Activity::Running && cx.vm.check_deadline() {
                break VcpuEnd::VmFinished;
            }
            match self.activity {
                Activity::Running => {}
                Activity::Halted => match entry::halt(cx.vm, cx.index, cx.vcpu) {
                    Some(until) => {
                        self.as_id = cx.as_id;
                        self.mmu.report_offline();
                        return Slice::Blocked { until: earliest(until, self.vm.time_limit()) };
                    }
                    None => {
                        self.activity = Activity::Running;
                        cx.vm.park(cx.index).set_halted(false);
                        cx.vm.interrupt_counts.wakeup();
                    }
                },
                Activity::WaitForSipi => match entry::wait_for_sipi(cx.vm, cx.index) {
                    None => {
                        self.as_id = cx.as_id;
                        self.mmu.report_offline();
                        return Slice::Blocked { until: self.vm.time_limit() };
                    }
                    Some(vector) => {
                        exits::start_at_sipi(&mut cx, vector);
                        self.activity = Activity::Running;
                    }
                },
            }
            // A reload request only asks for what `load` checks anyway: whether the current
            // root is still valid. Clearing it first means a request that arrives after this
            // point forces another pass.
            cx.mmu.take_reload_request();
            let root = match cx.mmu.load(Role::new(cx.as_id)) {
                Ok(root) => root,
                Err(e) => {
                    let reason = format!("no TDP root for vcpu {}: {e:?}", cx.index);
                    cx.vm.finish(super::VmState::Crashed { reason });
                    break VcpuEnd::VmFinished;
                }
            };
            let host_deadline = match entry::prepare(&mut cx) {
                entry::Prepared::Enter { host_deadline } => host_deadline,
                entry::Prepared::Init => {
                    // INIT (SDM Vol. 3A §9.4): the boot vCPU restarts at its entry, the others
                    // wait for a start-up IPI.
                    if cx.index == 0 {
                        if let Flow::Finish(state) = exits::restart_at_entry(&mut cx) {
                            cx.vm.finish(state);
                            break VcpuEnd::VmFinished;
                        }
                    } else {
                        self.activity = Activity::WaitForSipi;
                    }
                    continue;
                }
            };
            B::set_host_deadline(host_deadline);
            let exit = cx.vcpu.run(root);
            cx.mmu.report_quiescent();
            cx.vm.check_deadline();
            let host_interrupt = exit == crate::backend::Exit::HostInterrupt;
            match exits::handle(&mut cx, exit) {
                Flow::Continue if host_interrupt && share_cpu() => {
                    self.as_id = cx.as_id;
                    // Off the CPU, this vCPU walks no table: grace periods need not wait
                    // for it until it runs again.
                    self.mmu.report_offline();
                    return Slice::Yielded;
                }
                Flow::Continue => {}
                Flow::Halt => {
                    // Blocked or not is decided at the top of the loop, after the stop
                    // and pause checks.
                    self.activity = Activity::Halted;
                    cx.vm.park(cx.index).set_halted(true);
                    cx.vm.interrupt_counts.halt();
                }
                Flow::Finish(state) => {
                    cx.vm.finish(state);
                    break VcpuEnd::VmFinished;
                }
            }
        };
        self.mmu.unload();
        self.mmu.report_offline();
        self.vm.vcpu_ended();
        Slice::Ended(end)
    }
}

/// A vCPU runner with its backend erased, for the host's scheduler queues.
pub trait Runnable: Send {
    fn run_slice(&mut self, share_cpu: &dyn Fn() -> bool) -> Slice;
    /// Whether a blocked vCPU was woken since it blocked (`vm::park`).
    fn is_woken(&self) -> bool;
}

impl<B: Backend> Runnable for VcpuRunner<B> {
    fn run_slice(&mut self, share_cpu: &dyn Fn() -> bool) -> Slice {
        VcpuRunner::run_slice(self, share_cpu)
    }

    fn is_woken(&self) -> bool {
        self.vm.park(self.index).is_woken()
    }
}

/// The earlier of two optional host times (`None`: never).
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::earliest;

    #[test]
    fn a_halted_vcpu_wakes_by_its_timer_or_the_vm_time_limit() {
        assert_eq!(earliest(Some(5), Some(3)), Some(3), "the time limit comes first");
        assert_eq!(earliest(Some(3), Some(5)), Some(3), "the timer comes first");
        assert_eq!(earliest(None, Some(5)), Some(5), "no timer: the limit still ends the sleep");
        assert_eq!(earliest(Some(5), None), Some(5));
        assert_eq!(earliest(None, None), None, "neither: sleeps until woken");
    }
}
