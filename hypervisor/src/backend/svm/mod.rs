//! The AMD SVM backend (AMD64 APM Vol. 2, chapter 15 "Secure Virtual Machine").
//!
//! Per host CPU: EFER.SVME, a host save area (VM_HSAVE_PA) and a page for the host state
//! that VMRUN does not switch (FS/GS/TR/LDTR, KernelGsBase, the syscall MSRs), which the
//! world switch saves and restores with VMSAVE/VMLOAD around each run, and its ASID
//! numbering (`backend::tags`: a vCPU gets an ASID of the CPU it enters on). Per vCPU: a
//! VMCB. Per VM: the I/O and MSR permission maps, and the nested page tables of the TDP MMU
//! in NPT format.
//!
//! Works without NRIP save, decode assists, flush-by-ASID and VMCB clean bits (QEMU TCG
//! has none of them): instruction lengths of the intercepted instructions are fixed, I/O
//! exits carry the next RIP in EXITINFO2 regardless, a flush (the MMU's, or an nCR3
//! change: `backend::tlb`) is a new ASID for the vCPU unless flush-by-ASID exists (ASIDs
//! tag guest and nested translations alike, so a new one reaches none of the old: KVM's
//! `svm_flush_tlb_asid` does the same), and every clean bit is left zero.
//!
//! CR0/CR3/CR4 writes are not intercepted (decided, not forgotten): the guest's own MOVs
//! are checked by the CPU as they execute (reserved bits, PG without PE, LME+PG without
//! PAE, CR4 bits the CPU lacks all #GP in the guest), so VMRUN's consistency checks (APM
//! Vol. 2 §15.5.1) never see a bad CR0/CR3/CR4 of the guest's making; intercepting them
//! would need decode assists, which QEMU TCG lacks. The one register the backend writes
//! for the guest is EFER (its WRMSR exits, to keep SVME set and hidden), and that write
//! goes through the same checks (`backend::control_regs::wrmsr_efer`).
#![allow(unsafe_code, reason = "VMRUN, MSRs and hardware-defined pages")]

mod emulation;
mod entry;
mod exit;
mod interrupts;
pub mod vmcb;
mod world_switch;

use super::choice::{self, Choice};
use super::control_regs::{self, ControlRegs};
use super::debug_regs::DebugRegs;
use super::events::{Event, EventQueue, NmiBlocking, Windows};
use super::fpu;
use super::host::{DirectMap, Frames, LibosClock};
use super::ibpb::{self, VmIdentity};
use super::tags::{self, Rollover, TagConfig, TagSpace, VcpuTag};
use super::tlb::{self, RootTracker, TdpFlush};
use super::vcpu_set::{VcpuSet, VcpuSync};
use super::xstate::GuestXstate;
use super::{Backend, BackendError, BackendVcpu, BackendVm, Caps, EntryState, Exit, GuestRegs};
use crate::mmu::{FlushScope, TlbFlush};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use libos::smp::MAX_CPUS;
use spin::Once;
use vmcb::{Segment, Vmcb, control, exit_code, save};
use x86_64::registers::model_specific::{Efer, EferFlags, Msr};

/// VM_HSAVE_PA (APM Vol. 2 §15.30.4).
const VM_HSAVE_PA: u32 = 0xC001_0117;
/// Instruction lengths of intercepted instructions with fixed encodings (no NRIP needed).
pub const CPUID_LEN: u64 = 2;
pub const VMMCALL_LEN: u64 = 3;
pub const RDMSR_WRMSR_LEN: u64 = 2;
pub const HLT_LEN: u64 = 1;
pub const XSETBV_LEN: u64 = 3;
/// MSR numbers the backend itself virtualizes (AMD64 APM Vol. 2, Appendix A).
const MSR_EFER: u32 = 0xC000_0080;
/// MSRs whose guest values live in the VMCB and are switched by VMRUN/VMLOAD/VMSAVE, so
/// the guest may access them without an exit: SYSENTER_CS/ESP/EIP, PAT (G_PAT with NPT),
/// STAR, LSTAR, CSTAR, SFMASK, FS.base, GS.base, KernelGSBase.
const PASSTHROUGH_MSRS: [u32; 11] = [
    0x174,
    0x175,
    0x176,
    0x277,
    0xC000_0081,
    0xC000_0082,
    0xC000_0083,
    0xC000_0084,
    0xC000_0100,
    0xC000_0101,
    0xC000_0102,
];
/// The MSR permission map's three ranges and where their bit pairs start (APM Vol. 2
/// §15.11, Table 15-7).
const MSRPM_RANGES: [(u32, usize); 3] = [(0x0000_0000, 0x000), (0xC000_0000, 0x800), (0xC001_0000, 0x1000)];
const MSRPM_FRAMES: usize = 2;
/// Exceptions intercepted only to be reflected into the guest: #DB (vector 1) and #AC
/// (vector 17), which a guest can otherwise raise in a loop that never lets the CPU take an
/// interrupt (CVE-2015-8104, CVE-2015-5307).
const REFLECTED_EXCEPTIONS: u32 = (1 << 1) | (1 << 17);
const IOPM_FRAMES: usize = 3;

/// Each CPU's host save area and host VMSAVE area, kept for good once SVM is on there.
static HOST_AREAS: [Once<(Frames, Frames)>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];
static ASIDS: TagSpace = TagSpace::new(asid_config);
static CAPS: Once<Caps> = Once::new();

const OUT_OF_MEMORY: BackendError = BackendError::OutOfMemory { backend: "SVM" };

/// What the boot CPU's SVM offers (CPUID Fn8000_000A, as libos detected it).
fn read_caps() -> Caps {
    let Some(libos::virt::VirtCaps::Svm(svm)) = libos::smp::virt_caps(0) else { return Caps::none() };
    let huge = libos::arch::x86_64::cpu::has_1g_pages();
    Caps {
        nested_paging: svm.npt,
        // Nested tables use the host's paging: 2 MiB leaves always, 1 GiB with Page1GB.
        max_page_size: super::largest_leaf(true, huge),
        tags: svm.asids,
        flush_one_vm: svm.flush_by_asid,
        flush_all: true,
        flush_tag: svm.flush_by_asid,
        flush_all_tags: true,
        next_rip: svm.nrip_save,
        vgif: svm.vgif,
        accessed_dirty: true,
        preemption_timer: false,
        disabled_by_firmware: svm.disabled_by_firmware,
        features: libos::virt::VirtCaps::Svm(svm).features().to_string(),
    }
}

/// Every CPU numbers ASIDs 1 to the CPU's last (or the `max_tag` setting) and flushes all
/// of them at a rollover (TLB_CONTROL "flush all" always exists).
fn asid_config() -> TagConfig {
    TagConfig {
        cpus: libos::smp::cpu_count(),
        max: tags::largest_tag(Svm::caps().tags, super::host::max_tag_setting()),
        rollover: Rollover::FlushAll,
    }
}

/// Turns SVM on for the calling CPU. Idempotent.
pub fn enable_on_this_cpu() -> Result<(), BackendError> {
    let cpu = libos::smp::current_cpu();
    if HOST_AREAS[cpu].is_completed() {
        return Ok(());
    }
    if choice::choose() != Choice::Svm {
        return Err(BackendError::NotSupported { why: "this CPU has no AMD SVM".into() });
    }
    let caps = Svm::caps();
    if caps.disabled_by_firmware {
        return Err(BackendError::DisabledByFirmware {
            why: "SVM is disabled by the firmware (VM_CR.SVMDIS); enable it in the BIOS",
        });
    }
    if !caps.nested_paging {
        return Err(BackendError::NotSupported {
            why: "this CPU's SVM has no nested paging, which Taproot requires".into(),
        });
    }
    let hsave = Frames::zeroed(1).ok_or(OUT_OF_MEMORY)?;
    let host_vmsave = Frames::zeroed(1).ok_or(OUT_OF_MEMORY)?;
    // SAFETY: CPUID reported SVM and VM_CR.SVMDIS is clear, so setting EFER.SVME is
    // allowed (APM Vol. 2 §15.4); VM_HSAVE_PA then names a page reserved for the processor
    // on this CPU for good (`HOST_AREAS` keeps it).
    unsafe {
        Efer::update(|f| f.insert(EferFlags::SECURE_VIRTUAL_MACHINE_ENABLE));
        Msr::new(VM_HSAVE_PA).write(hsave.phys());
    }
    HOST_AREAS[cpu].call_once(|| (hsave, host_vmsave));
    fpu::enable_on_this_cpu();
    ibpb::enable_on_this_cpu();
    Ok(())
}

/// This CPU's host VMSAVE area, if SVM is on here.
fn host_vmsave_area(cpu: usize) -> Option<u64> {
    HOST_AREAS[cpu].get().map(|(_, vmsave)| vmsave.phys())
}

/// A VM's SVM resources, shared by its vCPUs and its MMU's flush hook.
pub struct SvmVm {
    /// The I/O and MSR permission maps, all ones (every port and MSR access exits) but for
    /// [`PASSTHROUGH_MSRS`].
    iopm: Frames,
    msrpm: Frames,
    vcpus: VcpuSet,
    /// Who this VM is for the barrier between VMs (`backend::ibpb`).
    identity: VmIdentity,
}

impl SvmVm {
    pub fn new() -> Result<Arc<Self>, BackendError> {
        let iopm = Frames::filled(IOPM_FRAMES, 0xFF).ok_or(OUT_OF_MEMORY)?;
        let mut msrpm = Frames::filled(MSRPM_FRAMES, 0xFF).ok_or(OUT_OF_MEMORY)?;
        let map = msrpm.bytes_mut();
        for msr in PASSTHROUGH_MSRS {
            let Some(&(base, offset)) =
                MSRPM_RANGES.iter().find(|(base, _)| (*base..*base + 0x2000).contains(&msr))
            else {
                continue;
            };
            let bit = offset * 8 + (msr - base) as usize * 2;
            map[bit / 8] &= !(0b11 << (bit % 8));
        }
        Ok(Arc::new(Self { iopm, msrpm, vcpus: VcpuSet::default(), identity: VmIdentity::new() }))
    }
}

/// Pause and stop kick the vCPUs out through the same set the flush hook uses.
impl BackendVm for SvmVm {
    fn kick_all(&self) {
        self.vcpus.kick_all();
    }

    fn flushes(&self) -> u64 {
        self.vcpus.flushes()
    }
}

/// The MMU's flush hook for one VM: the protocol of `backend::vcpu_set` (INTR is
/// intercepted, so a kicked guest exits even with interrupts masked inside it); the flush
/// itself happens at the next VMRUN: TLB_CONTROL flush-by-ASID, or a new ASID.
impl TlbFlush for SvmVm {
    fn flush(&self, _scope: FlushScope) {
        self.vcpus.flush();
    }

    fn kick_all(&self) {
        self.vcpus.kick_all();
    }
}

/// One vCPU: its VMCB, its ASID, and the registers VMRUN does not switch (general-purpose
/// registers, x87/SSE/AVX state and XCR0, DR0-DR3; DR6 and DR7 are in the VMCB).
pub struct SvmVcpu {
    vm: Arc<SvmVm>,
    vmcb: Vmcb,
    regs: GuestRegs,
    xstate: GuestXstate,
    debug: DebugRegs,
    sync: Arc<VcpuSync>,
    tag: VcpuTag,
    /// The nCR3 of the last entry, and where (`backend::tlb`).
    roots: RootTracker,
    /// The event in flight at the last exit and those requested since (`backend::events`).
    events: EventQueue,
    /// The window exits the entry path asked for, and the guest's NMI blocking
    /// (`interrupts`).
    windows: Windows,
    nmi: NmiBlocking,
    /// What the VMCB's window bits were written for: the windows and the NMI blocking
    /// state that decides the IRET intercept (`None`: unknown, after a reset).
    windows_written: Option<(Windows, bool, bool)>,
}

// SAFETY-free note: the VMCB page is owned by this value; moving the value to another CPU
// between runs is allowed by SVM (a VMCB is not bound to a CPU).
impl SvmVcpu {
    pub fn new(vm: &Arc<SvmVm>, entry: &EntryState) -> Result<Self, BackendError> {
        let vmcb = Vmcb::new(Frames::zeroed(1).ok_or(OUT_OF_MEMORY)?);
        let sync = vm.vcpus.register();
        let mut vcpu = Self {
            vm: vm.clone(),
            vmcb,
            regs: GuestRegs::default(),
            xstate: fpu::new_state(),
            debug: DebugRegs::default(),
            sync,
            tag: VcpuTag::default(),
            roots: RootTracker::default(),
            events: EventQueue::default(),
            windows: Windows::default(),
            nmi: NmiBlocking::default(),
            windows_written: None,
        };
        vcpu.init_controls();
        vcpu.reset(entry);
        Ok(vcpu)
    }

    fn init_controls(&mut self) {
        use vmcb::{misc1, misc2};
        let v = &mut self.vmcb;
        v.write32(control::INTERCEPT_CR, 0);
        v.write32(control::INTERCEPT_EXCEPTIONS, REFLECTED_EXCEPTIONS);
        v.write32(
            control::INTERCEPT_MISC1,
            misc1::INTR
                | misc1::NMI
                | misc1::SMI
                | misc1::INIT
                | misc1::CPUID
                | misc1::INVD
                | misc1::HLT
                | misc1::IOIO_PROT
                | misc1::MSR_PROT
                | misc1::SHUTDOWN,
        );
        v.write32(
            control::INTERCEPT_MISC2,
            misc2::VMRUN
                | misc2::VMMCALL
                | misc2::VMLOAD
                | misc2::VMSAVE
                | misc2::STGI
                | misc2::CLGI
                | misc2::SKINIT
                | misc2::XSETBV,
        );
        v.write64(control::IOPM_BASE_PA, self.vm.iopm.phys());
        v.write64(control::MSRPM_BASE_PA, self.vm.msrpm.phys());
        v.write64(control::TSC_OFFSET, 0);
        v.write64(control::VINTR, vmcb::V_INTR_MASKING);
        v.write64(control::NESTED_CONTROL, vmcb::NP_ENABLE);
        v.write32(control::CLEAN_BITS, 0);
    }

    /// Just before VMRUN on `cpu` with `ncr3`: marks the vCPU in the guest, sets its ASID
    /// for this CPU and returns the TLB_CONTROL the entry needs (`backend::tlb`). The
    /// vCPU's ASID tags every translation it caches, nested ones included, whatever nCR3
    /// they came from: so a flush the MMU asked for, or an nCR3 other than the last
    /// entry's on this CPU, is a flush-by-ASID where the CPU has it, else a new ASID
    /// (under which nothing is cached); a fresh ASID needs neither.
    fn choose_asid(&mut self, cpu: usize, ncr3: u64) -> u8 {
        let caps = Svm::caps();
        let requested = self.sync.entering(cpu);
        let stale = self.roots.on_entry(cpu, ncr3, requested);
        let tag = &mut self.tag;
        let flush = tlb::entry_flush(stale, caps.tdp_flush_offer(true), |drop_tag| {
            if drop_tag {
                tag.forget();
            }
            let before = *tag;
            let decision = ASIDS.on_entry(cpu, tag);
            (decision, tag.is_fresh_since(&before))
        });
        self.vmcb.write32(control::GUEST_ASID, flush.tag.tag);
        match tlb::combined(flush.tdp, flush.tag.flush) {
            TdpFlush::None => vmcb::TLB_CONTROL_NOTHING,
            TdpFlush::Root if caps.flush_one_vm => vmcb::TLB_CONTROL_FLUSH_ASID,
            TdpFlush::Root | TdpFlush::All => vmcb::TLB_CONTROL_FLUSH_ALL,
        }
    }

    pub fn sync(&self) -> &Arc<VcpuSync> {
        &self.sync
    }

    /// Handles the exits that only concern the backend itself (EFER, whose SVME bit the
    /// guest must neither see nor clear; XSETBV, whose XCR0 the backend switches). Returns
    /// `true` if the exit is done.
    fn handle_internally(&mut self, exit: &Exit) -> bool {
        let code = self.vmcb.read64(control::EXIT_CODE);
        if code == exit_code::DB || code == exit_code::AC {
            self.reflect_exception(code);
            return true;
        }
        if code == exit_code::XSETBV {
            let value = (self.regs.rdx << 32) | (self.regs.rax & 0xFFFF_FFFF);
            let cpl = self.vmcb.read8(save::CPL);
            match fpu::xsetbv(&mut self.xstate, cpl, self.regs.rcx as u32, value) {
                Ok(()) => self.skip_exiting_instruction(),
                Err(_) => self.inject_general_protection(),
            }
            return true;
        }
        let Exit::Msr { write } = *exit else { return false };
        if self.regs.rcx as u32 != MSR_EFER {
            return false;
        }
        if write {
            // Checked as the CPU would (`backend::control_regs`): VMRUN refuses an EFER with
            // reserved bits (APM Vol. 2 §15.5.1), so a bad value is the guest's #GP.
            let value = (self.regs.rdx << 32) | (self.regs.rax & 0xFFFF_FFFF);
            let now = ControlRegs {
                cr0: self.vmcb.read64(save::CR0),
                efer: self.vmcb.read64(save::EFER) & !vmcb::EFER_SVME,
                ..ControlRegs::default()
            };
            match control_regs::wrmsr_efer(&now, value) {
                Ok(efer) => self.vmcb.write64(save::EFER, efer | vmcb::EFER_SVME),
                Err(control_regs::Gp) => {
                    self.inject_general_protection();
                    return true;
                }
            }
        } else {
            let value = self.vmcb.read64(save::EFER) & !vmcb::EFER_SVME;
            self.regs.rax = value & 0xFFFF_FFFF;
            self.regs.rdx = value >> 32;
        }
        self.skip_exiting_instruction();
        true
    }
}

impl SvmVcpu {
    /// Injects the intercepted #DB or #AC again: #AC with its error code 0, #DB as it came
    /// (the VMCB's DR6 already holds its status bits, which KVM's `db_interception` relies
    /// on too).
    fn reflect_exception(&mut self, code: u64) {
        let vector = (code - exit_code::EXCEPTION_BASE) as u8;
        let error_code = (code == exit_code::AC).then_some(0);
        self.events.request(Event::exception(vector, error_code));
    }

    /// EVENTINJ for the next VMRUN: the event `backend::events` picks, or none. Written
    /// before every VMRUN, so an EVENTINJ left from an earlier entry never injects twice.
    fn write_event_injection(&mut self) {
        let event = self.events.next_entry();
        if event.is_some_and(|event| event.is_nmi()) {
            self.nmi.injected();
        }
        let eventinj = event.map_or(0, |event| {
            (event.info as u64) | ((event.error_code as u64) << vmcb::EVENT_ERROR_CODE_SHIFT)
        });
        self.vmcb.write64(control::EVENT_INJECTION, eventinj);
        let wanted = (self.windows, self.nmi.in_handler(), self.nmi.iret_pending());
        if self.windows_written != Some(wanted) {
            interrupts::write_windows(&mut self.vmcb, self.windows, &self.nmi);
            self.windows_written = Some(wanted);
        }
    }
}

impl Drop for SvmVcpu {
    fn drop(&mut self) {
        self.vm.vcpus.unregister(&self.sync);
    }
}

impl BackendVcpu for SvmVcpu {
    fn reset(&mut self, entry: &EntryState) {
        let v = &mut self.vmcb;
        let cpu = entry::entry_cpu(entry.mode);
        v.write_segment(save::CS, cpu.cs);
        for seg in [save::DS, save::ES, save::SS, save::FS, save::GS] {
            v.write_segment(seg, cpu.data);
        }
        v.write_segment(save::GDTR, cpu.gdtr);
        v.write_segment(save::IDTR, Segment::table(0xFFFF, 0));
        v.write_segment(save::LDTR, Segment::LDT);
        v.write_segment(save::TR, Segment::TSS);
        v.write8(save::CPL, 0);
        v.write64(save::EFER, cpu.efer);
        v.write64(save::CR0, cpu.cr0);
        v.write64(save::CR3, cpu.cr3);
        v.write64(save::CR4, cpu.cr4);
        v.write64(save::CR2, 0);
        v.write64(save::DR6, 0xFFFF_0FF0);
        v.write64(save::DR7, 0x400);
        v.write64(save::RFLAGS, 0x2);
        v.write64(save::RIP, cpu.rip);
        v.write64(save::RSP, 0);
        v.write64(save::G_PAT, vmcb::DEFAULT_PAT);
        v.write64(control::EVENT_INJECTION, 0);
        v.write64(control::INTERRUPT_SHADOW, 0);
        self.events.clear();
        self.windows = Windows::default();
        self.nmi = NmiBlocking::default();
        self.windows_written = None;
        self.regs = entry.regs;
        self.xstate.reset();
        self.debug = DebugRegs::default();
        self.sync.request_flush();
    }

    fn regs(&self) -> &GuestRegs {
        &self.regs
    }

    fn regs_mut(&mut self) -> &mut GuestRegs {
        &mut self.regs
    }

    fn rip(&self) -> u64 {
        self.vmcb.read64(save::RIP)
    }

    fn set_rip(&mut self, rip: u64) {
        self.vmcb.write64(save::RIP, rip);
    }

    fn skip_exiting_instruction(&mut self) {
        let len = match self.vmcb.read64(control::EXIT_CODE) {
            exit_code::CPUID => CPUID_LEN,
            exit_code::VMMCALL => VMMCALL_LEN,
            exit_code::MSR => RDMSR_WRMSR_LEN,
            exit_code::HLT => HLT_LEN,
            exit_code::XSETBV => XSETBV_LEN,
            _ => 0,
        };
        self.set_rip(self.rip().wrapping_add(len));
        // Past the instruction, the STI / MOV SS shadow is over (KVM's
        // `svm_skip_emulated_instruction` clears it too).
        self.vmcb.write64(control::INTERRUPT_SHADOW, 0);
    }

    fn guest_cr4(&self) -> u64 {
        self.vmcb.read64(save::CR4)
    }

    fn inject_general_protection(&mut self) {
        const GP_VECTOR: u8 = 13;
        let error_code = crate::backend::exception_error_code_valid(self.vmcb.read64(save::CR0)).then_some(0);
        self.events.request(Event::exception(GP_VECTOR, error_code));
    }

    fn run(&mut self, root_pointer: u64) -> Exit {
        loop {
            let cpu = libos::smp::current_cpu();
            let Some(host_area) = host_vmsave_area(cpu) else {
                // A scheduling bug, not the guest's doing: refuse to enter, and let the VM
                // layer end this VM with the reason.
                log::error!("svm: vCPU scheduled on cpu {cpu}, where SVM is off");
                return Exit::InvalidState;
            };
            self.vmcb.write64(control::NESTED_CR3, root_pointer);
            let tlb = self.choose_asid(cpu, root_pointer);
            self.vmcb.write8(control::TLB_CONTROL, tlb);
            self.vmcb.write64(save::RAX, self.regs.rax);
            x86_64::instructions::interrupts::disable();
            if self.sync.take_exit_request() {
                // Another CPU asked for an exit (`backend::ExitRequest`): none entered, no
                // event taken from the queue.
                // The flush this entry was to do (TLB_CONTROL) is not done: ask for it again,
                // since `choose_asid` consumed the request and recorded the root as entered.
                if tlb != vmcb::TLB_CONTROL_NOTHING {
                    self.sync.request_flush();
                }
                self.sync.exited();
                x86_64::instructions::interrupts::enable();
                return Exit::HostInterrupt;
            }
            self.write_event_injection();
            ibpb::before_entry(cpu, self.vm.identity);
            fpu::load_guest(&mut self.xstate);
            self.debug.load(false);
            // SAFETY: SVM is enabled on this CPU (checked above: its areas exist), the VMCB
            // is a valid page owned by this vCPU with intercepts that return control to us
            // on every event we rely on (INTR, SHUTDOWN, VMRUN and friends), and
            // `host_area` is this CPU's host VMSAVE page. The world switch restores every
            // host register it changes.
            unsafe { world_switch::run(self.vmcb.phys(), &mut self.regs, host_area) };
            fpu::save_guest(&mut self.xstate);
            self.debug.save(false);
            self.sync.exited();
            self.regs.rax = self.vmcb.read64(save::RAX);
            self.events.in_flight(exit::in_flight(&self.vmcb));
            // The exit left interrupts off (GIF set again, IF clear); take pending ones now.
            x86_64::instructions::interrupts::enable();
            let exit = exit::decode(&self.vmcb);
            if exit == Exit::NmiWindow {
                self.nmi.iret(self.rip());
            } else if self.nmi.blocked() {
                self.nmi.exited_at(self.rip());
            }
            if !self.handle_internally(&exit) {
                return exit;
            }
        }
    }

    fn openings(&self) -> crate::devices::irqchip::Openings {
        interrupts::openings(&self.vmcb, &self.nmi, &self.events)
    }

    fn inject(&mut self, injection: crate::devices::irqchip::Injection) {
        self.events.request(Event::of_injection(injection));
    }

    fn set_windows(&mut self, windows: Windows) {
        self.windows = windows;
    }

    fn interrupts_enabled(&self) -> bool {
        self.vmcb.read64(save::RFLAGS) & vmcb::RFLAGS_IF != 0
    }

    fn set_tsc_offset(&mut self, offset: u64) {
        self.vmcb.write64(control::TSC_OFFSET, offset);
    }

    fn exit_request(&self) -> Arc<dyn super::ExitRequest> {
        self.sync.clone()
    }

    fn describe(&self) -> String {
        let v = &self.vmcb;
        format!(
            "rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} \
             rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} exit_code={:#x} exit_info1={:#x} exit_info2={:#x} \
             exit_int_info={:#x}",
            v.read64(save::RIP),
            v.read64(save::RSP),
            v.read64(save::RFLAGS),
            v.read64(save::CR0),
            v.read64(save::CR3),
            v.read64(save::CR4),
            v.read64(save::EFER),
            v.read_segment(save::CS).selector,
            self.regs.rax,
            self.regs.rbx,
            self.regs.rcx,
            self.regs.rdx,
            v.read64(control::EXIT_CODE),
            v.read64(control::EXIT_INFO1),
            v.read64(control::EXIT_INFO2),
            v.read64(control::EXIT_INT_INFO),
        )
    }

    fn emulation_cpu(&self) -> crate::emulate::CpuState {
        emulation::cpu_state(&self.vmcb)
    }

    fn rsp(&self) -> u64 {
        self.vmcb.read64(save::RSP)
    }

    fn set_rsp(&mut self, rsp: u64) {
        self.vmcb.write64(save::RSP, rsp);
    }

    fn rflags(&self) -> u64 {
        self.vmcb.read64(save::RFLAGS)
    }

    fn set_rflags(&mut self, rflags: u64) {
        self.vmcb.write64(save::RFLAGS, rflags);
    }

    fn inject_page_fault(&mut self, error_code: u32, linear: u64) {
        emulation::inject_page_fault(&mut self.vmcb, &mut self.events, error_code, linear);
    }

    fn inject_undefined_opcode(&mut self) {
        emulation::inject_undefined_opcode(&mut self.events);
    }

    fn is_delivering_event(&self) -> bool {
        self.events.has_in_flight()
    }
}

/// The TDP MMU as the SVM backend instantiates it: NPT entries, frames from libos.
pub struct SvmPlatform;

impl crate::mmu::Platform for SvmPlatform {
    type Format = crate::mmu::npt::Npt;
    type Pages = DirectMap;
    type Flush = SvmVm;
    type Clock = LibosClock;
}

/// The SVM backend, as the VM layer sees it.
pub struct Svm;

impl Backend for Svm {
    type Platform = SvmPlatform;
    type Vm = SvmVm;
    type Vcpu = SvmVcpu;
    const NAME: &'static str = "svm";
    const VENDOR: crate::cpuid::Vendor = crate::cpuid::Vendor::Amd;

    fn caps() -> &'static Caps {
        CAPS.call_once(read_caps)
    }

    fn enable_on_this_cpu() -> Result<(), BackendError> {
        enable_on_this_cpu()
    }

    fn create_vm() -> Result<Arc<SvmVm>, BackendError> {
        SvmVm::new()
    }

    fn create_vcpu(vm: &Arc<SvmVm>, entry: &EntryState) -> Result<SvmVcpu, BackendError> {
        SvmVcpu::new(vm, entry)
    }

    fn pages() -> Arc<DirectMap> {
        Arc::new(DirectMap)
    }

    fn clock() -> LibosClock {
        LibosClock
    }

    fn host_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
        super::host::cpuid(leaf, subleaf)
    }

    fn tsc_hz() -> u64 {
        libos::time::tsc_hz()
    }

    fn tag_stats() -> alloc::vec::Vec<tags::TagStats> {
        ASIDS.stats()
    }

    fn host_tsc() -> u64 {
        libos::time::tsc()
    }

    fn current_cpu() -> usize {
        libos::smp::current_cpu()
    }

    fn kick_cpu(cpu: usize) {
        libos::smp::kick(cpu);
    }

    fn set_host_deadline(deadline_ns: Option<u64>) {
        libos::smp::set_wake_at(deadline_ns);
    }
}
