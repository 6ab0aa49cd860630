//! The hardware backends (AMD SVM in `svm/`, Intel VMX in `vmx/`) and the one contract
//! the arch-neutral layers use them through: [`Backend`] (turn virtualization on, read what
//! the CPU offers as [`Caps`], make the per-VM and per-vCPU parts), [`BackendVm`] (VM-wide
//! operations, and the MMU's TLB flush hook), [`BackendVcpu`] (guest registers, entry
//! state, a `run` that returns a decoded [`Exit`]) and [`BackendError`].
//!
//! Layout: `choice` picks the backend the CPUs offer (the only place that names SVM or
//! VMX); `host/` holds the bare-metal helpers both backends share (clock, host CPUID,
//! frames and the direct map); `tags` (host-tested) hands out hardware tags per CPU and
//! `vcpu_set` holds the flush protocol, also shared, and `tlb` (host-tested) decides
//! what each entry flushes of the nested translations; `xstate` (host-tested) and `fpu` (its
//! instructions) switch each vCPU's x87/SSE/AVX state and XCR0 around guest execution,
//! `debug_regs` the debug registers the hardware does not switch; `events` (host-tested)
//! decides which event each entry injects, the one in flight at the last exit first; `nmi`
//! (host-tested) says how a host NMI that arrived in a guest reaches the host; `ibpb`
//! (host-tested decision) puts a branch-prediction barrier between two VMs on one CPU. Only the backends (and libos) contain `unsafe` code; everything
//! above this module is ordinary Rust.

mod caps;
pub mod control_regs;
mod error;
pub mod events;
pub mod ibpb;
pub mod nmi;
pub mod xstate;

#[cfg(target_os = "none")]
pub mod choice;
#[cfg(target_os = "none")]
pub mod debug_regs;
#[cfg(target_os = "none")]
pub mod fpu;
#[cfg(target_os = "none")]
pub mod host;
#[cfg(target_os = "none")]
pub mod svm;
pub mod tags;
pub mod tlb;
#[cfg(target_os = "none")]
pub mod vcpu_set;
#[cfg(target_os = "none")]
pub mod vmx;

pub use caps::{Caps, largest_leaf};
pub use error::BackendError;

use crate::addr::Gpa;
use crate::mmu::{Access, Platform, TlbFlush};
use alloc::sync::Arc;

/// General-purpose registers that VM entry does not load from the VMCB/VMCS (and `rax`,
/// which SVM keeps in the VMCB: the backend syncs it). The layout is fixed: the world-switch
/// assembly addresses fields by offset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

/// How a vCPU starts (or restarts after an INIT-like reset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 16-bit real mode at `cs:ip` (CS base = cs << 4).
    Real16 { cs: u16, ip: u16 },
    /// 32-bit protected mode, flat segments, paging off, at `eip`.
    Protected32 { eip: u32 },
    /// 64-bit mode at `rip` (the Linux boot protocol's 64-bit entry): CR0.PE|PG, CR4.PAE,
    /// EFER.LME|LMA, CR3 = `cr3` (an identity map in guest memory), GDTR = `gdt_base` /
    /// `gdt_limit`; CS = [`LONG64_CS`] (64-bit code: L=1, D=0), the data segments
    /// [`LONG64_DS`], all flat; TR a busy 64-bit TSS, LDTR unusable, interrupts off.
    Long64 { rip: u64, cr3: u64, gdt_base: u64, gdt_limit: u16 },
}

/// The selectors of [`EntryMode::Long64`]: Linux's `__BOOT_CS` and `__BOOT_DS`, which
/// the loader's GDT defines.
pub const LONG64_CS: u16 = taproot_guest_abi::boot::linux::BOOT_CS;
pub const LONG64_DS: u16 = taproot_guest_abi::boot::linux::BOOT_DS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryState {
    pub mode: EntryMode,
    pub regs: GuestRegs,
}

/// One port I/O exit. The backend decodes it fully (SVM's IOIO exit information and VMX's
/// exit qualification both give all of it), so no instruction decoding is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoExit {
    pub port: u16,
    /// 1, 2 or 4 bytes.
    pub size: u8,
    pub is_in: bool,
    /// INS/OUTS (with or without REP): see `string`.
    pub is_string: bool,
    /// RIP of the next instruction.
    pub next_rip: u64,
    /// For INS/OUTS, what the backend decoded of the instruction (meaningless otherwise).
    pub string: StringIoExit,
}

/// What an INS/OUTS exit says beyond the port, size and direction: REP always; the address
/// size and the segment OUTS reads from only where the hardware reports them (SVM IOIO
/// EXITINFO1 gives the address size on real CPUs but not under QEMU TCG, and the segment
/// only with decode assists; VMX gives both in the VM-exit instruction information when
/// IA32_VMX_BASIC[54] says so). `None`: the VM layer reads it from the instruction bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StringIoExit {
    pub is_rep: bool,
    /// 2, 4 or 8 bytes.
    pub address_size: Option<u8>,
    pub segment: Option<crate::emulate::Segment>,
}

/// Why the guest stopped running, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// An interrupt for the host (timer, IPI, kick): nothing to emulate.
    HostInterrupt,
    Cpuid,
    Io(IoExit),
    Msr {
        write: bool,
    },
    /// VMMCALL / VMCALL.
    Hypercall,
    NestedPageFault {
        gpa: Gpa,
        access: Access,
    },
    Hlt,
    /// The guest can take an interrupt now (the window the last entry asked for).
    InterruptWindow,
    /// The guest can take an NMI now (or, on SVM, is leaving its NMI handler).
    NmiWindow,
    /// Triple fault.
    Shutdown,
    /// VM entry refused the guest state (a backend bug or a state the guest cannot reach).
    InvalidState,
    /// An exit the backend does not handle, with its raw code.
    Unhandled {
        code: u64,
    },
    /// The CPU refused a nested page table entry on the walk to `gpa` (VMX EPT
    /// misconfiguration; SVM nested page fault with the reserved-bit flag): an MMU bug,
    /// which retrying would only repeat.
    TdpMisconfig {
        gpa: Gpa,
    },
}

/// Whether an exception injected into a guest whose CR0 is `cr0` carries an error code:
/// only in protected mode. Real-mode delivery pushes none (FLAGS, CS, IP only); VMX entry
/// fails with "deliver error code" set while the guest's CR0.PE is 0 (SDM Vol. 3C
/// §27.2.1.3, which KVM's nested entry checks enforce), and SVM would push garbage (APM
/// Vol. 2 §15.20). Both backends' injections ask here.
#[must_use]
pub const fn exception_error_code_valid(cr0: u64) -> bool {
    const CR0_PE: u64 = 1 << 0;
    cr0 & CR0_PE != 0
}

/// A vCPU's hardware side.
pub trait BackendVcpu: Send {
    /// Puts the vCPU in `entry`'s state, as after INIT: the other registers are reset.
    fn reset(&mut self, entry: &EntryState);
    fn regs(&self) -> &GuestRegs;
    fn regs_mut(&mut self) -> &mut GuestRegs;
    fn rip(&self) -> u64;
    fn set_rip(&mut self, rip: u64);
    /// Advances RIP past the instruction that caused the last exit (CPUID, VMMCALL/VMCALL,
    /// RDMSR/WRMSR, HLT). I/O exits carry their next RIP instead.
    fn skip_exiting_instruction(&mut self);
    /// The guest's CR4 as the guest reads it.
    fn guest_cr4(&self) -> u64;
    /// Injects #GP at the next entry: with error code 0 in protected mode, without one in
    /// real mode ([`exception_error_code_valid`]).
    fn inject_general_protection(&mut self);
    /// Runs the guest on this CPU with `root_pointer` (nCR3 / EPTP) until the next exit.
    /// Interrupts are enabled on return; the host has taken any that caused the exit.
    fn run(&mut self, root_pointer: u64) -> Exit;
    /// One line of guest state for crash reports.
    fn describe(&self) -> alloc::string::String;
    /// What the instruction emulator reads of the vCPU and never changes (`emulate`'s
    /// module doc): CR0, CR3, CR4, EFER, CPL (SS.DPL), the six segment bases, the code size
    /// from EFER.LMA, CS.L and CS.D.
    fn emulation_cpu(&self) -> crate::emulate::CpuState;
    /// RSP, RFLAGS: kept in the VMCB/VMCS, not in [`GuestRegs`].
    fn rsp(&self) -> u64;
    fn set_rsp(&mut self, rsp: u64);
    fn rflags(&self) -> u64;
    fn set_rflags(&mut self, rflags: u64);
    /// Injects #PF at the next entry with `error_code` and CR2 = `linear`.
    fn inject_page_fault(&mut self, error_code: u32, linear: u64);
    /// Injects #UD at the next entry.
    fn inject_undefined_opcode(&mut self);
    /// Whether the last exit interrupted an event's delivery (`events`): its access is the
    /// delivery's (a stack push, an IDT read), not the instruction's at RIP.
    fn is_delivering_event(&self) -> bool;
    /// What the guest can take at the next entry ([`events::openings`]: RFLAGS.IF, the
    /// interrupt shadow, NMI blocking, nothing in flight or waiting in its `EventQueue`).
    fn openings(&self) -> crate::devices::irqchip::Openings;
    /// Delivers an external interrupt or NMI at the next entry, through the vCPU's
    /// `EventQueue` (call only when [`BackendVcpu::openings`] allowed it).
    fn inject(&mut self, injection: crate::devices::irqchip::Injection);
    /// The window exits the next entries ask for (until changed): [`Exit::InterruptWindow`]
    /// and [`Exit::NmiWindow`].
    fn set_windows(&mut self, windows: events::Windows);
    /// The guest's RFLAGS.IF (whether a halted vCPU wakes for an interrupt).
    fn interrupts_enabled(&self) -> bool;
    /// The guest TSC from now on: the host's plus `offset` (wrapping).
    fn set_tsc_offset(&mut self, offset: u64);
    /// How another CPU makes this vCPU's next entry (or the one under way) leave the guest
    /// at once: [`ExitRequest::request_exit`], then a kick of the CPU.
    fn exit_request(&self) -> alloc::sync::Arc<dyn ExitRequest>;
}

/// A request that a vCPU not stay in the guest: set before its CPU is kicked, and checked
/// by the backend with host interrupts off just before each entry (an entry that finds it
/// returns [`Exit::HostInterrupt`] without entering). So a kick that lands while the vCPU
/// is still in the host, where it is taken and gone, is not lost: the entry sees the flag;
/// a kick after that check is held pending by the disabled interrupts and makes the guest
/// exit at once.
pub trait ExitRequest: Send + Sync {
    fn request_exit(&self);
}

/// Vectors of the exceptions the VM layer injects (SDM Vol. 3A §6.3.1, Table 6-1).
pub const UD_VECTOR: u8 = 6;
pub const PF_VECTOR: u8 = 14;

/// A VM's hardware side, shared by its vCPUs. It is also the MMU's TLB flush hook
/// (`Platform::Flush`), so VM-wide operations and TLB flushes reach the same vCPU set.
pub trait BackendVm: TlbFlush {
    /// Asks every vCPU of the VM to leave guest mode soon (an IPI to each CPU running one),
    /// so it sees a pause or a stop. Does not wait.
    fn kick_all(&self);
    /// TLB flushes done for this VM so far.
    fn flushes(&self) -> u64;
}

/// A hardware backend: how to turn it on, what the CPU offers, and how to make its per-VM
/// and per-vCPU parts.
pub trait Backend: Send + Sync + 'static {
    /// The TDP MMU as this backend instantiates it (entry format, pages, flush hook); its
    /// flush hook is the per-VM part.
    type Platform: Platform<Flush = Self::Vm>;
    type Vm: BackendVm;
    type Vcpu: BackendVcpu;
    /// `svm` or `vmx`, as the banner and the API say.
    const NAME: &'static str;
    /// Whose CPUID conventions the guest sees, and which hypercall instruction it uses.
    const VENDOR: crate::cpuid::Vendor;

    /// What the CPU offers, read once by the first call (the boot banner's, or turning
    /// virtualization on) and kept.
    fn caps() -> &'static Caps;
    /// Turns virtualization on for the calling CPU (idempotent).
    fn enable_on_this_cpu() -> Result<(), BackendError>;
    fn create_vm() -> Result<Arc<Self::Vm>, BackendError>;
    fn create_vcpu(vm: &Arc<Self::Vm>, entry: &EntryState) -> Result<Self::Vcpu, BackendError>;
    fn pages() -> Arc<<Self::Platform as Platform>::Pages>;
    fn clock() -> <Self::Platform as Platform>::Clock;
    /// The host's CPUID for `leaf`/`subleaf` (the guest's view is derived from it).
    fn host_cpuid(leaf: u32, subleaf: u32) -> [u32; 4];
    /// The host's TSC frequency in Hz (the guest's TSC runs at it), 0 if unknown.
    fn tsc_hz() -> u64;
    /// Each CPU's tag numbering (ASIDs, VPIDs): its generation and flushes so far.
    fn tag_stats() -> alloc::vec::Vec<tags::TagStats>;
    /// The host TSC now (the VM's guest TSC offset is its negation at creation).
    fn host_tsc() -> u64;
    /// The host CPU the caller runs on.
    fn current_cpu() -> usize;
    /// Interrupts host CPU `cpu` (not the caller's): a guest running there exits, a CPU
    /// sleeping there wakes and looks at its run queue.
    fn kick_cpu(cpu: usize);
    /// Asks for a host interrupt on the calling CPU by `deadline_ns` (the clock's time) at
    /// the latest, besides the scheduler ticks (`None`: none): a guest entered after it
    /// exits by then (a host interrupt).
    fn set_host_deadline(deadline_ns: Option<u64>);
}

#[cfg(test)]
mod tests {
    use super::exception_error_code_valid;

    #[test]
    fn exceptions_carry_an_error_code_only_in_protected_mode() {
        assert!(!exception_error_code_valid(0x10), "real mode: ET only");
        assert!(!exception_error_code_valid(0x6000_0010), "real mode with caches off");
        assert!(exception_error_code_valid(0x11), "protected mode, paging off");
        assert!(exception_error_code_valid(0x8000_0011), "paging");
    }
}
