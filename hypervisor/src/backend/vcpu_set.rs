//! What the TLB-flush hook and the vCPU loop share, for both backends: which vCPUs of a VM
//! exist, whether each is in guest mode and where, and the flush protocol.
//!
//! Why the protocol is enough (ARCHITECTURE rule 8): a vCPU marks itself in the guest
//! before it checks for a pending flush and enters; the flusher marks the flush pending
//! before it looks whether the vCPU is in the guest (both sequentially consistent). So
//! either the vCPU sees the request and flushes on this very entry (SVM: TLB_CONTROL
//! flush-by-ASID, or without it a new ASID, see `backend::tags`; VMX: INVEPT; which one
//! is `backend::tlb`'s decision), or the flusher sees it in the guest, kicks its CPU with
//! an IPI (external
//! interrupts exit the guest; on VMX the preemption timer bounds the wait too) and waits
//! until its exit count moves; its next entry flushes. Either way, when `flush` returns no
//! vCPU can use a translation from before the call.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// One vCPU's side.
#[derive(Default)]
pub struct VcpuSync {
    /// `backend::ExitRequest`: leave (or do not enter) the guest.
    exit_requested: AtomicBool,
    flush_pending: AtomicBool,
    in_guest: AtomicBool,
    cpu: AtomicUsize,
    exits: AtomicU64,
}

impl VcpuSync {
    /// Just before VM entry on `cpu`: returns whether the TLB must be flushed first.
    pub fn entering(&self, cpu: usize) -> bool {
        self.cpu.store(cpu, Ordering::Relaxed);
        self.in_guest.store(true, Ordering::SeqCst);
        self.flush_pending.swap(false, Ordering::SeqCst)
    }

    /// Just after VM exit.
    pub fn exited(&self) {
        self.exits.fetch_add(1, Ordering::SeqCst);
        self.in_guest.store(false, Ordering::SeqCst);
    }

    /// With host interrupts off, just before entering: whether an exit was requested (the
    /// request is taken). The caller then leaves without entering, after [`Self::exited`].
    pub fn take_exit_request(&self) -> bool {
        self.exit_requested.swap(false, Ordering::SeqCst)
    }

    /// Asks for a flush at the next entry (after a reset, for example).
    pub fn request_flush(&self) {
        self.flush_pending.store(true, Ordering::SeqCst);
    }
}

impl super::ExitRequest for VcpuSync {
    fn request_exit(&self) {
        self.exit_requested.store(true, Ordering::SeqCst);
    }
}

/// The vCPUs of one VM.
#[derive(Default)]
pub struct VcpuSet {
    vcpus: spin::Mutex<Vec<Arc<VcpuSync>>>,
    flushes: AtomicU64,
}

impl VcpuSet {
    pub fn register(&self) -> Arc<VcpuSync> {
        let sync = Arc::new(VcpuSync::default());
        self.vcpus.lock().push(sync.clone());
        sync
    }

    pub fn unregister(&self, sync: &Arc<VcpuSync>) {
        self.vcpus.lock().retain(|s| !Arc::ptr_eq(s, sync));
    }

    /// The flush: see the module comment.
    pub fn flush(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        let vcpus = self.vcpus.lock().clone();
        let me = libos::smp::current_cpu();
        for vcpu in &vcpus {
            vcpu.flush_pending.store(true, Ordering::SeqCst);
        }
        for vcpu in &vcpus {
            if !vcpu.in_guest.load(Ordering::SeqCst) {
                continue;
            }
            let exits = vcpu.exits.load(Ordering::SeqCst);
            let cpu = vcpu.cpu.load(Ordering::Relaxed);
            if cpu != me {
                libos::smp::kick(cpu);
            }
            while vcpu.in_guest.load(Ordering::SeqCst) && vcpu.exits.load(Ordering::SeqCst) == exits {
                core::hint::spin_loop();
            }
        }
    }

    /// Kicks every vCPU in guest mode on another CPU out of it; does not wait.
    pub fn kick_all(&self) {
        let me = libos::smp::current_cpu();
        for vcpu in self.vcpus.lock().iter() {
            let cpu = vcpu.cpu.load(Ordering::Relaxed);
            if vcpu.in_guest.load(Ordering::SeqCst) && cpu != me {
                libos::smp::kick(cpu);
            }
        }
    }

    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}
