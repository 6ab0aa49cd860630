//! The Intel VMX backend (Intel SDM Vol. 3C, chapters 24 to 31).
//!
//! Per host CPU (`cpu`): IA32_FEATURE_CONTROL checked (and locked with VMX on if the
//! firmware left it unlocked), CR0/CR4 fixed bits, CR4.VMXE and a VMXON region. Per vCPU: a
//! VMCS (`vmcs`), bound to and filled (`setup`) on the CPU the vCPU runs on: vCPUs stay on
//! one CPU, since a VMCS that moves must be VMCLEARed on its old CPU first, which nothing
//! here needs yet. Per VM: the I/O and MSR bitmaps, and the EPT tables of the TDP MMU. Per
//! CPU: the VPID numbering (`backend::tags`: a vCPU gets a VPID of the CPU it enters on,
//! written into its VMCS when it changes). A flush the MMU asks for stays an INVEPT: VPIDs
//! do not tag guest-physical (EPT-only) translations, so a new VPID would not reach them
//! (SDM Vol. 3C §29.4.1). Without VPIDs the guest runs untagged, and every VM entry and
//! exit flushes its linear translations (SDM Vol. 3C §29.4.3.3). Each exit is decoded by
//! `exit`; MOVs to CR0/CR4 that touch a host-owned bit are emulated by `cr` without
//! leaving the backend.
//!
//! Guests start in real mode or 32-bit protected mode with paging off, which needs the
//! "unrestricted guest" control; CR0.WP and CR4.PGE are guest-owned (no exits), and so is
//! every CR0/CR4 bit except those VMX fixes (NE, VMXE), which the read shadows hide, and
//! CR0.PG, whose changes switch long mode and PAE paging (`cr`).
#![allow(unsafe_code, reason = "the world switch")]

mod consts;
mod cpu;
mod cr;
mod emulation;
mod entry;
mod exit;
mod interrupts;
mod nmi;
mod pdpte;
mod setup;
mod vmcs;
mod world_switch;

use super::debug_regs::{DR6_STATUS, DebugRegs};
use super::events::{self, Event, EventQueue, Windows};
use super::fpu;
use super::host::{DirectMap, Frames, LibosClock};
use super::ibpb::{self, VmIdentity};
use super::tags::{self, Rollover, TagConfig, TagDecision, TagFlush, TagSpace, VcpuTag};
use super::tlb::{self, RootTracker, TdpFlush};
use super::vcpu_set::{VcpuSet, VcpuSync};
use super::xstate::GuestXstate;
use super::{Backend, BackendError, BackendVcpu, BackendVm, Caps, EntryState, Exit, GuestRegs};
use crate::mmu::{Access, FlushScope, TlbFlush};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use consts::*;
use cr::{CrExit, CrShadows};
use setup::VmResources;
use vmcs::{Current, Vmcs};
use x86::vmx::vmcs::{control, guest, ro};

static VPIDS: TagSpace = TagSpace::new(vpid_config);

/// Every CPU numbers VPIDs 1 to 65535 (or the `max_tag` setting): a rollover flushes all of
/// them with INVVPID all-context where the CPU has it, else each VPID is flushed
/// (single-context) as it is handed out.
fn vpid_config() -> TagConfig {
    let caps = Vmx::caps();
    TagConfig {
        cpus: libos::smp::cpu_count(),
        max: tags::largest_tag(caps.tags, super::host::max_tag_setting()),
        rollover: if caps.flush_all_tags { Rollover::FlushAll } else { Rollover::FlushEachNewTag },
    }
}

/// A VM's VMX resources.
pub struct VmxVm {
    /// I/O bitmaps A and B (two pages) and the MSR bitmap (one page), all ones (every port
    /// and MSR access exits) but for [`PASSTHROUGH_MSRS`].
    io_bitmaps: Frames,
    msr_bitmap: Frames,
    vcpus: VcpuSet,
    /// Who this VM is for the barrier between VMs (`backend::ibpb`).
    identity: VmIdentity,
}

const IO_BITMAP_FRAMES: usize = 2;
/// MSRs the guest may use without exits because VM entry and exit switch them (the
/// "load/save IA32_EFER" and "load/save IA32_PAT" controls, and the guest-state fields for
/// SYSENTER_CS/ESP/EIP and the FS/GS bases; SDM Vol. 3C §26.3.2.1 and §28.3): IA32_EFER,
/// IA32_PAT, IA32_SYSENTER_CS/ESP/EIP, IA32_FS_BASE, IA32_GS_BASE; and
/// IA32_KERNEL_GS_BASE, which the vCPU switches itself around each run. The bitmap's
/// halves are laid out as in SDM Vol. 3C §25.6.9.
const PASSTHROUGH_MSRS: [u32; 8] =
    [0xC000_0080, 0x277, 0x174, 0x175, 0x176, 0xC000_0100, 0xC000_0101, MSR_KERNEL_GS_BASE];

impl VmxVm {
    pub fn new() -> Result<Arc<Self>, BackendError> {
        let io_bitmaps = Frames::filled(IO_BITMAP_FRAMES, 0xFF).ok_or(cpu::OUT_OF_MEMORY)?;
        let mut msr_bitmap = Frames::filled(1, 0xFF).ok_or(cpu::OUT_OF_MEMORY)?;
        let map = msr_bitmap.bytes_mut();
        for msr in PASSTHROUGH_MSRS {
            let (base, read_offset, write_offset) =
                if msr >= 0xC000_0000 { (0xC000_0000, 0x400, 0xC00) } else { (0, 0x000, 0x800) };
            let bit = (msr - base) as usize;
            for offset in [read_offset, write_offset] {
                map[offset + bit / 8] &= !(1 << (bit % 8));
            }
        }
        Ok(Arc::new(Self { io_bitmaps, msr_bitmap, vcpus: VcpuSet::default(), identity: VmIdentity::new() }))
    }

    fn resources(&self) -> VmResources {
        VmResources { io_bitmaps: self.io_bitmaps.phys(), msr_bitmap: self.msr_bitmap.phys() }
    }
}

/// The MMU's flush hook for one VM: the protocol of `backend::vcpu_set`; the flush itself
/// is an INVEPT that each vCPU executes on its own CPU before its next VM entry.
impl TlbFlush for VmxVm {
    fn flush(&self, _scope: FlushScope) {
        self.vcpus.flush();
    }

    fn kick_all(&self) {
        self.vcpus.kick_all();
    }
}

/// Pause and stop kick the vCPUs out through the same set the flush hook uses.
impl BackendVm for VmxVm {
    fn kick_all(&self) {
        self.vcpus.kick_all();
    }

    fn flushes(&self) -> u64 {
        self.vcpus.flushes()
    }
}

/// The longest a guest runs without an exit when the VMX-preemption timer exists: one host
/// timer period. It bounds the time to the next exit even where external-interrupt exits
/// are late (Bochs 2.7 delivers none to a guest that runs with RFLAGS.IF clear).
const GUEST_SLICE_NS: u64 = 10_000_000;

/// The preemption timer counts down at the TSC rate divided by 2^(IA32_VMX_MISC[4:0])
/// (SDM Vol. 3C §26.5.1).
fn preemption_timer_ticks() -> u64 {
    let shift = cpu::host().preemption_timer_shift;
    let tsc_ticks = (libos::time::tsc_hz() as u128 * GUEST_SLICE_NS as u128 / 1_000_000_000) as u64;
    (tsc_ticks >> shift).clamp(1, u32::MAX as u64)
}

/// One vCPU: its VMCS and the registers VM entry does not load (general-purpose
/// registers, x87/SSE/AVX state and XCR0, DR0-DR3 and DR6, IA32_KERNEL_GS_BASE).
pub struct VmxVcpu {
    vm: Arc<VmxVm>,
    vmcs: Vmcs,
    regs: GuestRegs,
    xstate: GuestXstate,
    debug: DebugRegs,
    kernel_gs_base: u64,
    sync: Arc<VcpuSync>,
    /// Whether VMLAUNCH happened (later entries are VMRESUMEs).
    launched: bool,
    entry: EntryState,
    cr: CrShadows,
    eptp: u64,
    /// The EPTP of the last entry, and where (`backend::tlb`).
    roots: RootTracker,
    /// The VPID numbering's view of this vCPU, and the VPID its VMCS holds.
    tag: VcpuTag,
    vpid: u32,
    last_exit_reason: u32,
    /// The event in flight at the last exit and those requested since (`backend::events`).
    events: EventQueue,
    /// The CR2 of an injected #PF, loaded just before the entry (`emulation`).
    pending_cr2: emulation::PendingCr2,
    /// The window exits and TSC offset the VM layer asked for.
    requests: interrupts::EntryRequests,
}

impl VmxVcpu {
    pub fn new(vm: &Arc<VmxVm>, entry: &EntryState) -> Result<Self, BackendError> {
        let vmcs = Vmcs::new(cpu::host().revision)?;
        let sync = vm.vcpus.register();
        // Its first entry flushes the EPT root it enters with (`backend::tlb`: the root may
        // have served another VM on this CPU); its VPID is fresh from this CPU's numbering,
        // under which nothing is cached.
        Ok(Self {
            vm: vm.clone(),
            vmcs,
            regs: entry.regs,
            xstate: fpu::new_state(),
            debug: DebugRegs::default(),
            kernel_gs_base: 0,
            sync,
            launched: false,
            entry: *entry,
            cr: CrShadows::default(),
            eptp: 0,
            roots: RootTracker::default(),
            tag: VcpuTag::default(),
            vpid: 0,
            last_exit_reason: 0,
            events: EventQueue::default(),
            pending_cr2: emulation::PendingCr2::default(),
            requests: interrupts::EntryRequests::default(),
        })
    }

    /// Binds the VMCS to this CPU and sets it up, the first time.
    fn set_up(&mut self) -> Result<(), BackendError> {
        if !self.vmcs.bind()? {
            return Ok(());
        }
        let v = self.vmcs.current()?;
        let caps = Vmx::caps();
        setup::write_controls(&v, caps, cpu::host(), &self.vm.resources())?;
        self.vpid = 0;
        setup::write_host_state(&v)?;
        setup::write_guest_state(&v, cpu::host(), &mut self.cr, &self.entry)?;
        self.regs = self.entry.regs;
        self.requests.vmcs_filled();
        Ok(())
    }

    /// One VM entry and exit, with the exits only VMX cares about (CR emulation) handled.
    fn enter(&mut self, root_pointer: u64) -> Result<Exit, BackendError> {
        loop {
            self.set_up()?;
            let v = self.vmcs.current()?;
            // The EPTP as the MMU encodes it (`Ept::root_pointer`: write-back, walk length,
            // no A/D).
            let eptp = root_pointer;
            if eptp != self.eptp {
                v.write(control::EPTP_FULL, eptp)?;
                self.eptp = eptp;
            }
            if Vmx::caps().preemption_timer {
                v.write(guest::VMX_PREEMPTION_TIMER_VALUE, preemption_timer_ticks())?;
            }
            let cpu = libos::smp::current_cpu();
            let requested = self.sync.entering(cpu);
            let stale = self.roots.on_entry(cpu, eptp, requested);
            if let Err(error) = flush_on_entry(&v, cpu, stale, eptp, &mut self.tag, &mut self.vpid) {
                // Not entering after all: a flusher waiting for this vCPU must see it out
                // of the guest.
                self.sync.exited();
                return Err(error);
            }
            x86_64::instructions::interrupts::disable();
            if self.sync.take_exit_request() {
                // Another CPU asked for an exit (`backend::ExitRequest`): none entered, no
                // event taken from the queue.
                self.sync.exited();
                x86_64::instructions::interrupts::enable();
                return Ok(Exit::HostInterrupt);
            }
            let written =
                self.requests.apply(&v).and_then(|()| write_event_injection(&v, self.events.next_entry()));
            if let Err(error) = written {
                self.sync.exited();
                x86_64::instructions::interrupts::enable();
                return Err(error);
            }
            ibpb::before_entry(cpu, self.vm.identity);
            fpu::load_guest(&mut self.xstate);
            self.debug.load(true);
            cpu::load_kernel_gs_base(cpu, self.kernel_gs_base);
            self.pending_cr2.load();
            // SAFETY: VMX is on for this CPU and our VMCS is current (`v`) and fully set
            // up (host state with this CPU's values, HOST_RIP the world switch's exit
            // label); `launched` says whether it was launched; `regs` is this vCPU's
            // register block.
            let failed = unsafe { world_switch::run(&mut self.regs, self.launched) };
            fpu::save_guest(&mut self.xstate);
            self.debug.save(true);
            self.kernel_gs_base = cpu::save_kernel_gs_base(cpu);
            self.sync.exited();
            if !failed {
                nmi::handle_host_nmi(&v);
            }
            x86_64::instructions::interrupts::enable();
            if failed {
                return Err(BackendError::VmEntryFailed {
                    what: if self.launched { "VMRESUME" } else { "VMLAUNCH" },
                    error: v.instruction_error().into(),
                });
            }
            self.launched = true;
            let (reason, exit) = exit::decode(&v);
            self.last_exit_reason = reason;
            self.events.in_flight(exit::in_flight(&v));
            if exit::is_xsetbv(reason) {
                emulate_xsetbv(&v, &mut self.xstate, &self.regs, &mut self.events);
                continue;
            }
            if exit::is_exception(reason) && reflect_exception(&v, &mut self.debug, &mut self.events) {
                continue;
            }
            if !exit::is_cr_access(reason) {
                return Ok(exit);
            }
            match cr::emulate(&v, cpu::host(), &mut self.cr, &mut self.regs, self.eptp) {
                CrExit::Emulated => skip_instruction(&v),
                CrExit::Fault => self.events.request(general_protection(&v)),
                CrExit::NeedsPage(gpa) => return Ok(Exit::NestedPageFault { gpa, access: Access::Read }),
                CrExit::NotHandled => return Ok(exit),
            }
        }
    }
}

/// Just before VM entry on `cpu`, the flushes `backend::tlb` decides: this CPU's VPID
/// for the vCPU (into the VMCS if it differs from the one there) with the INVVPID its
/// numbering asks for, and the INVEPT of the EPTP the entry uses if its translations
/// are `stale` (single-context where the CPU offers it, else all-context). VPIDs do not
/// tag guest-physical translations, so a new VPID never stands for an INVEPT.
fn flush_on_entry(
    v: &Current,
    cpu: usize,
    stale: bool,
    eptp: u64,
    tag: &mut VcpuTag,
    vpid: &mut u32,
) -> Result<(), BackendError> {
    let caps = Vmx::caps();
    let flush = tlb::entry_flush(stale, caps.tdp_flush_offer(false), |_| {
        if caps.tags == 0 {
            return (TagDecision { tag: 0, flush: TagFlush::None }, false);
        }
        let before = *tag;
        let decision = VPIDS.on_entry(cpu, tag);
        (decision, tag.is_fresh_since(&before))
    });
    if caps.tags > 0 && flush.tag.tag != *vpid {
        v.write(control::VPID, flush.tag.tag as u64)?;
        *vpid = flush.tag.tag;
    }
    let failed = |what| move |fail| vm_fail(v, what, fail);
    match flush.tag.flush {
        TagFlush::All => cpu::invvpid(INVVPID_ALL_CONTEXT, 0).map_err(failed("INVVPID all-context"))?,
        TagFlush::ThisTag => cpu::invvpid(INVVPID_SINGLE_CONTEXT, flush.tag.tag as u16)
            .map_err(failed("INVVPID single-context"))?,
        TagFlush::None => {}
    }
    match flush.tdp {
        TdpFlush::Root => {
            cpu::invept(INVEPT_SINGLE_CONTEXT, eptp).map_err(failed("INVEPT single-context"))?
        }
        TdpFlush::All => cpu::invept(INVEPT_ALL_CONTEXT, 0).map_err(failed("INVEPT all-context"))?,
        TdpFlush::None => {}
    }
    Ok(())
}

/// A failed INVEPT/INVVPID: a backend bug (a type the CPU does not offer, a bad EPTP), so
/// the vCPU ends with the CPU's reason rather than running on stale translations.
fn vm_fail(v: &Current, what: &'static str, fail: cpu::VmFail) -> BackendError {
    let error = match fail {
        cpu::VmFail::Invalid => "VMfailInvalid".into(),
        cpu::VmFail::Valid => format!("VMfailValid: {}", v.instruction_error()),
    };
    BackendError::VmEntryFailed { what, error }
}

/// XSETBV (which always exits on VMX): a valid value becomes the vCPU's XCR0, anything
/// else injects #GP(0). The CPL is SS.DPL (SDM Vol. 3A §5.5).
fn emulate_xsetbv(v: &Current, xstate: &mut GuestXstate, regs: &GuestRegs, events: &mut EventQueue) {
    let value = (regs.rdx << 32) | (regs.rax & 0xFFFF_FFFF);
    let cpl = ((v.read(guest::SS_ACCESS_RIGHTS) >> 5) & 3) as u8;
    match fpu::xsetbv(xstate, cpl, regs.rcx as u32, value) {
        Ok(()) => skip_instruction(v),
        Err(_) => events.request(general_protection(v)),
    }
}

/// Reflects an intercepted #DB or #AC into the guest (the exception bitmap's only
/// exceptions, `REFLECTED_EXCEPTIONS`): the same event requested again, #AC with its error
/// code 0, #DB after setting the DR6 status bits the exit qualification reports (VM exit
/// leaves DR6 alone: SDM Vol. 3C §27.1). Returns `false` for an NMI (the host's).
fn reflect_exception(v: &Current, debug: &mut DebugRegs, events: &mut EventQueue) -> bool {
    use consts::intr_info::*;
    let info = v.read(ro::VMEXIT_INTERRUPTION_INFO);
    let kind = (info >> TYPE_SHIFT) & TYPE_MASK;
    let vector = (info & VECTOR_MASK) as u8;
    if kind == TYPE_NMI {
        return false;
    }
    if vector == DB_VECTOR {
        let qual = v.read(ro::EXIT_QUALIFICATION);
        debug.dr6 = (debug.dr6 & !DR6_STATUS) | (qual & DR6_STATUS);
    }
    let info =
        VALID | (kind << TYPE_SHIFT) | vector as u64 | if vector == AC_VECTOR { ERROR_CODE } else { 0 };
    let instruction_len = if is_software(kind) { v.read(ro::VMEXIT_INSTRUCTION_LEN) as u32 } else { 0 };
    events.request(Event { info: info as u32, error_code: 0, instruction_len });
    true
}

/// Writes the VM-entry event injection for `event` (SDM Vol. 3C §25.8.3): interruption
/// information, its error code, and for software interrupts and exceptions the
/// instruction length. Nothing to inject writes nothing: every VM exit clears the valid
/// bit (SDM Vol. 3C §28.2 "Recording VM-Exit Information and Updating VM-Entry Control
/// Fields"), so an earlier injection never repeats. Re-injecting an NMI whose delivery the
/// exit interrupted clears blocking by NMI first, as KVM's `__vmx_complete_interrupts`
/// does (the exit during delivery left it set).
fn write_event_injection(v: &Current, event: Option<Event>) -> Result<(), BackendError> {
    use consts::intr_info::*;
    let Some(event) = event else { return Ok(()) };
    let kind = event.kind() as u64;
    if event.has_error_code() {
        v.write(control::VMENTRY_EXCEPTION_ERR_CODE, event.error_code as u64)?;
    }
    if is_software(kind) || kind == events::TYPE_SOFTWARE_INTERRUPT as u64 {
        v.write(control::VMENTRY_INSTRUCTION_LEN, event.instruction_len as u64)?;
    }
    if kind == TYPE_NMI {
        let state = v.read(guest::INTERRUPTIBILITY_STATE);
        v.write(guest::INTERRUPTIBILITY_STATE, state & !INTERRUPTIBILITY_BLOCKING_BY_NMI)?;
    }
    v.write(control::VMENTRY_INTERRUPTION_INFO_FIELD, event.info as u64)
}

/// Whether an interruption type is a (privileged) software exception, which VM entry
/// injects with an instruction length.
fn is_software(kind: u64) -> bool {
    use consts::intr_info::*;
    kind == TYPE_PRIV_SOFTWARE || kind == TYPE_SOFTWARE
}

/// Advances the guest's RIP past the instruction that caused the last exit (VMX reports its
/// length).
fn skip_instruction(v: &Current) {
    let len = v.read(ro::VMEXIT_INSTRUCTION_LEN);
    let _ = v.write(guest::RIP, v.read(guest::RIP).wrapping_add(len));
    interrupts::end_shadow(v);
}

/// #GP(0) for the guest: a hardware exception, vector 13, whose error code is delivered
/// only in protected mode (SDM §25.8.3, §27.2.1.3).
fn general_protection(v: &Current) -> Event {
    const GP_VECTOR: u8 = 13;
    Event::exception(GP_VECTOR, crate::backend::exception_error_code_valid(v.read(guest::CR0)).then_some(0))
}

impl Drop for VmxVcpu {
    fn drop(&mut self) {
        self.vm.vcpus.unregister(&self.sync);
    }
}

impl BackendVcpu for VmxVcpu {
    fn reset(&mut self, entry: &EntryState) {
        self.entry = *entry;
        self.regs = entry.regs;
        self.xstate.reset();
        self.debug = DebugRegs::default();
        self.kernel_gs_base = 0;
        self.cr.cr8 = 0;
        self.events.clear();
        self.pending_cr2.clear();
        self.requests.windows = Windows::default();
        if self.vmcs.bound_cpu().is_some()
            && let Ok(v) = self.vmcs.current()
        {
            let _ = setup::write_guest_state(&v, cpu::host(), &mut self.cr, entry);
        }
        // The guest's linear translations from before the reset: a new VPID has none.
        self.tag.forget();
    }

    fn regs(&self) -> &GuestRegs {
        &self.regs
    }

    fn regs_mut(&mut self) -> &mut GuestRegs {
        &mut self.regs
    }

    fn rip(&self) -> u64 {
        self.vmcs.current().map_or(0, |v| v.read(guest::RIP))
    }

    fn set_rip(&mut self, rip: u64) {
        if let Ok(v) = self.vmcs.current() {
            let _ = v.write(guest::RIP, rip);
        }
    }

    fn skip_exiting_instruction(&mut self) {
        if let Ok(v) = self.vmcs.current() {
            skip_instruction(&v);
        }
    }

    fn guest_cr4(&self) -> u64 {
        // The guest owns every bit but VMXE (`cr`): those from CR4 itself, VMXE from the
        // shadow.
        self.vmcs
            .current()
            .map_or(0, |v| (v.read(guest::CR4) & !cr::CR4_HOST_OWNED) | (self.cr.cr4 & cr::CR4_HOST_OWNED))
    }

    fn inject_general_protection(&mut self) {
        if let Ok(v) = self.vmcs.current() {
            self.events.request(general_protection(&v));
        }
    }

    fn run(&mut self, root_pointer: u64) -> Exit {
        self.enter(root_pointer).unwrap_or_else(|error| {
            log::error!("vmx: {error}");
            Exit::InvalidState
        })
    }

    fn openings(&self) -> crate::devices::irqchip::Openings {
        // Before the first entry (no VMCS on this CPU yet) the guest takes nothing.
        self.vmcs.current().map_or_else(|_| Default::default(), |v| interrupts::openings(&v, &self.events))
    }

    fn inject(&mut self, injection: crate::devices::irqchip::Injection) {
        self.events.request(Event::of_injection(injection));
    }

    fn set_windows(&mut self, windows: Windows) {
        self.requests.windows = windows;
    }

    fn interrupts_enabled(&self) -> bool {
        self.vmcs.current().is_ok_and(|v| v.read(guest::RFLAGS) & RFLAGS_IF != 0)
    }

    fn set_tsc_offset(&mut self, offset: u64) {
        self.requests.set_tsc_offset(offset);
    }

    fn exit_request(&self) -> Arc<dyn super::ExitRequest> {
        self.sync.clone()
    }

    fn describe(&self) -> String {
        let v = match self.vmcs.current() {
            Ok(v) => v,
            Err(e) => return format!("VMCS not readable: {e}"),
        };
        format!(
            "rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} rax={:#x} \
             rbx={:#x} rcx={:#x} rdx={:#x} exit_reason={:#x} qualification={:#x} instruction_error={}",
            v.read(guest::RIP),
            v.read(guest::RSP),
            v.read(guest::RFLAGS),
            v.read(guest::CR0),
            v.read(guest::CR3),
            v.read(guest::CR4),
            v.read(guest::IA32_EFER_FULL),
            v.read(guest::CS_SELECTOR),
            self.regs.rax,
            self.regs.rbx,
            self.regs.rcx,
            self.regs.rdx,
            self.last_exit_reason,
            v.read(ro::EXIT_QUALIFICATION),
            v.instruction_error(),
        )
    }

    fn emulation_cpu(&self) -> crate::emulate::CpuState {
        match self.vmcs.current() {
            Ok(v) => emulation::cpu_state(&v),
            // Never after an exit (the VMCS was current for it); a real-mode view at 0
            // makes any emulation fail on the fetch rather than panic.
            Err(_) => crate::emulate::CpuState {
                control: crate::emulate::ControlRegs::default(),
                segments: crate::emulate::SegmentBases::default(),
                code_size: crate::emulate::CodeSize::Bits16,
            },
        }
    }

    fn rsp(&self) -> u64 {
        self.vmcs.current().map_or(0, |v| v.read(guest::RSP))
    }

    fn set_rsp(&mut self, rsp: u64) {
        if let Ok(v) = self.vmcs.current() {
            let _ = v.write(guest::RSP, rsp);
        }
    }

    fn rflags(&self) -> u64 {
        self.vmcs.current().map_or(0x2, |v| v.read(guest::RFLAGS))
    }

    fn set_rflags(&mut self, rflags: u64) {
        if let Ok(v) = self.vmcs.current() {
            let _ = v.write(guest::RFLAGS, rflags);
        }
    }

    fn inject_page_fault(&mut self, error_code: u32, linear: u64) {
        if let Ok(v) = self.vmcs.current() {
            emulation::inject_page_fault(&v, &mut self.events, &mut self.pending_cr2, error_code, linear);
        }
    }

    fn inject_undefined_opcode(&mut self) {
        emulation::inject_undefined_opcode(&mut self.events);
    }

    fn is_delivering_event(&self) -> bool {
        self.events.has_in_flight()
    }
}

/// The TDP MMU as the VMX backend instantiates it.
pub struct VmxPlatform;

impl crate::mmu::Platform for VmxPlatform {
    type Format = crate::mmu::ept::Ept;
    type Pages = DirectMap;
    type Flush = VmxVm;
    type Clock = LibosClock;
}

/// The VMX backend, as the VM layer sees it.
pub struct Vmx;

impl Backend for Vmx {
    type Platform = VmxPlatform;
    type Vm = VmxVm;
    type Vcpu = VmxVcpu;
    const NAME: &'static str = "vmx";
    const VENDOR: crate::cpuid::Vendor = crate::cpuid::Vendor::Intel;

    fn caps() -> &'static Caps {
        cpu::caps()
    }

    fn enable_on_this_cpu() -> Result<(), BackendError> {
        cpu::enable_on_this_cpu()
    }

    fn create_vm() -> Result<Arc<VmxVm>, BackendError> {
        VmxVm::new()
    }

    fn create_vcpu(vm: &Arc<VmxVm>, entry: &EntryState) -> Result<VmxVcpu, BackendError> {
        VmxVcpu::new(vm, entry)
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
        VPIDS.stats()
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
