//! The vCPU loop: load the root for the vCPU's role, run, report quiescence, handle the
//! exit; until the VM reaches a final state or the vCPU halts.

use super::Vm;
use super::exits::{self, Flow, VcpuContext};
use crate::backend::{Backend, BackendVcpu};
use crate::memslot::AsId;
use crate::mmu::Role;
use alloc::format;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;

/// How a vCPU's loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuEnd {
    /// The VM reached a final state.
    VmFinished,
    /// The vCPU executed HLT with nothing to wake it.
    Halted,
}

/// Runs vCPU `index` of `vm` on the calling CPU (virtualization enabled there).
pub fn run_vcpu<B: Backend>(vm: &Arc<Vm<B>>, index: u32, vcpu: &mut B::Vcpu) -> VcpuEnd {
    let mut mmu = vm.mmu.create_vcpu();
    let mut cx = VcpuContext { vm, index, vcpu, mmu: &mut mmu, as_id: AsId::Normal };
    let end = loop {
        if cx.vm.stop.load(Ordering::SeqCst) {
            break VcpuEnd::VmFinished;
        }
        // A reload request only asks for what `load` checks anyway: whether the current
        // root is still valid. Clearing it first means a request that arrives after this
        // point forces another pass.
        cx.mmu.take_reload_request();
        let root = match cx.mmu.load(Role::new(cx.as_id)) {
            Ok(root) => root,
            Err(e) => {
                cx.vm.finish(super::VmState::Crashed { reason: format!("no TDP root for vcpu {index}: {e:?}") });
                break VcpuEnd::VmFinished;
            }
        };
        let exit = cx.vcpu.run(root);
        cx.mmu.report_quiescent();
        cx.vm.check_deadline();
        match exits::handle(&mut cx, exit) {
            Flow::Continue => {}
            Flow::Halt => break VcpuEnd::Halted,
            Flow::Finish(state) => {
                cx.vm.finish(state);
                break VcpuEnd::VmFinished;
            }
        }
    };
    mmu.unload();
    mmu.report_offline();
    vm.vcpu_ended();
    end
}
