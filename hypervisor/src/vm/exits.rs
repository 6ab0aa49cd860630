//! What the vCPU loop does with each exit, above the backend: CPUID (the VM's
//! `cpuid::Policy`), port I/O (INS/OUTS in `vm::string_io`), MSRs (`vm::msr`), hypercalls,
//! nested page faults (outside every slot: device pages in `vm::mmio`), HLT, triple
//! faults. The same code serves SVM and VMX.

use super::msr::{self, VcpuMsrs};
use super::platform::{Outcome, outcome_of};
use super::{Vm, VmState};
use crate::addr::{Gfn, GfnRange, PAGE_SIZE};
use crate::backend::{Backend, BackendVcpu, Exit};
use crate::devices::IoEffect;
use crate::devices::events::EventKind;
use crate::devices::irqchip::{Irqchip, VcpuMask};
use crate::memslot::AsId;
use crate::mmu::{Fault, MmuError, VcpuMmu};
use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};
use serde::Serialize;
use taproot_guest_abi::hypercall::{self, Hypercall, HypercallError};

/// What the loop does next.
pub(crate) enum Flow {
    Continue,
    /// This vCPU executed HLT (RIP is past it): it is halted until something wakes it
    /// (`vm::entry::halt`).
    Halt,
    /// The VM reaches a final state.
    Finish(VmState),
}

/// Exit reasons as counted in the stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum ExitReason {
    HostInterrupt,
    Cpuid,
    Io,
    Msr,
    Hypercall,
    NestedPageFault,
    Mmio,
    Hlt,
    /// Interrupt and NMI window exits.
    InterruptWindow,
    Shutdown,
    /// Not exits: device accesses emulated, and instructions that could not be.
    MmioEmulated,
    EmulationFailed,
    Other,
}

impl ExitReason {
    const COUNT: usize = ExitReason::Other as usize + 1;
}

/// Exits by reason, counted as the vCPUs take them.
#[derive(Default)]
pub struct ExitCounts {
    counts: [AtomicU64; ExitReason::COUNT],
}

impl ExitCounts {
    pub fn add(&self, reason: ExitReason) {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self, reason: ExitReason) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }

    /// The counts now, one field per reason.
    #[must_use]
    pub fn snapshot(&self) -> ExitStats {
        ExitStats {
            host_interrupt: self.count(ExitReason::HostInterrupt),
            cpuid: self.count(ExitReason::Cpuid),
            io: self.count(ExitReason::Io),
            msr: self.count(ExitReason::Msr),
            hypercall: self.count(ExitReason::Hypercall),
            nested_page_fault: self.count(ExitReason::NestedPageFault),
            mmio: self.count(ExitReason::Mmio),
            hlt: self.count(ExitReason::Hlt),
            interrupt_window: self.count(ExitReason::InterruptWindow),
            shutdown: self.count(ExitReason::Shutdown),
            mmio_emulated: self.count(ExitReason::MmioEmulated),
            emulation_failed: self.count(ExitReason::EmulationFailed),
            other: self.count(ExitReason::Other),
        }
    }
}

/// A snapshot of [`ExitCounts`]: the `exits` object of the API's `Stats` schema, one key
/// per [`ExitReason`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExitStats {
    pub host_interrupt: u64,
    pub cpuid: u64,
    pub io: u64,
    pub msr: u64,
    pub hypercall: u64,
    #[serde(rename = "npf")]
    pub nested_page_fault: u64,
    /// Nested page faults outside every memory slot (device pages or nothing; also
    /// counted as `npf`).
    pub mmio: u64,
    pub hlt: u64,
    /// Interrupt and NMI window exits (the guest became able to take a pending event).
    pub interrupt_window: u64,
    pub shutdown: u64,
    /// Instructions emulated on a device page (LAPIC, I/O APIC): one per REP iteration.
    pub mmio_emulated: u64,
    /// Instructions on a device page or string port I/O that could not be emulated (each
    /// ends its VM).
    pub emulation_failed: u64,
    /// Invalid guest state and exits the loop does not handle.
    pub other: u64,
}

fn reason_of(exit: &Exit) -> ExitReason {
    match exit {
        Exit::HostInterrupt => ExitReason::HostInterrupt,
        Exit::Cpuid => ExitReason::Cpuid,
        Exit::Io(_) => ExitReason::Io,
        Exit::Msr { .. } => ExitReason::Msr,
        Exit::Hypercall => ExitReason::Hypercall,
        Exit::NestedPageFault { .. } => ExitReason::NestedPageFault,
        Exit::Hlt => ExitReason::Hlt,
        Exit::InterruptWindow | Exit::NmiWindow => ExitReason::InterruptWindow,
        Exit::Shutdown => ExitReason::Shutdown,
        Exit::InvalidState | Exit::Unhandled { .. } | Exit::TdpMisconfig { .. } => ExitReason::Other,
    }
}

/// Per-vCPU state the handlers change.
pub(crate) struct VcpuContext<'a, B: Backend> {
    pub vm: &'a Vm<B>,
    pub index: u32,
    pub vcpu: &'a mut B::Vcpu,
    pub mmu: &'a mut VcpuMmu<B::Platform>,
    pub as_id: AsId,
    /// The MSRs the VM layer answers for this vCPU (`vm::msr`).
    pub msrs: &'a mut VcpuMsrs,
}

pub(crate) fn handle<B: Backend>(cx: &mut VcpuContext<'_, B>, exit: Exit) -> Flow {
    cx.vm.exits.add(reason_of(&exit));
    match exit {
        // The entry path looks at the interrupt controllers before every entry.
        Exit::HostInterrupt | Exit::InterruptWindow | Exit::NmiWindow => Flow::Continue,
        Exit::Cpuid => {
            let regs = cx.vcpu.regs();
            let (leaf, subleaf) = (regs.rax as u32, regs.rcx as u32);
            let host = B::host_cpuid(leaf, subleaf);
            let [a, b, mut c, d] = cx.vm.cpuid.guest_view(leaf, subleaf, host, cx.index);
            if leaf == 1 {
                c = crate::backend::xstate::leaf1_ecx_osxsave(c, cx.vcpu.guest_cr4());
            }
            let regs = cx.vcpu.regs_mut();
            (regs.rax, regs.rbx, regs.rcx, regs.rdx) = (a as u64, b as u64, c as u64, d as u64);
            cx.vcpu.skip_exiting_instruction();
            Flow::Continue
        }
        Exit::Io(io) => {
            if io.is_string {
                return super::string_io::handle(cx, io);
            }
            let mask = match io.size {
                1 => 0xFF,
                2 => 0xFFFF,
                _ => 0xFFFF_FFFF,
            };
            let now = (cx.vm.clock)();
            let result = if io.is_in {
                cx.vm.devices.lock().read(io.port, io.size, now)
            } else {
                cx.vm.devices.lock().write(io.port, io.size, (cx.vcpu.regs().rax & mask) as u32, now)
            };
            if io.is_in {
                let regs = cx.vcpu.regs_mut();
                regs.rax = (regs.rax & !mask) | (result.value as u64 & mask);
            }
            cx.vcpu.set_rip(io.next_rip);
            if !io.is_in && io.port == taproot_guest_abi::port::COM1_BASE {
                cx.vm.console_written();
            }
            // An access can make an interrupt pending here or elsewhere (a PIC unmask, an
            // RTC register) or move the platform's timers.
            super::entry::ports_accessed(cx.vm, cx.index, result.wake);
            port_outcome(cx, io.port, result.effect)
        }
        Exit::Msr { write } if Irqchip::is_lapic_msr(cx.vcpu.regs().rcx as u32) => lapic_msr(cx, write),
        Exit::Msr { write } => {
            let regs = *cx.vcpu.regs();
            let msr = regs.rcx as u32;
            let result = if write {
                cx.msrs.write(msr, (regs.rdx << 32) | (regs.rax & 0xFFFF_FFFF))
            } else {
                cx.msrs.read(msr).map(|value| {
                    let regs = cx.vcpu.regs_mut();
                    (regs.rax, regs.rdx) = (value & 0xFFFF_FFFF, value >> 32);
                })
            };
            match result {
                Ok(()) => cx.vcpu.skip_exiting_instruction(),
                // As a CPU without that MSR (or refusing that value) would do.
                Err(msr::Gp) => cx.vcpu.inject_general_protection(),
            }
            Flow::Continue
        }
        Exit::Hypercall => hypercall(cx),
        Exit::NestedPageFault { gpa, access } => match cx.mmu.handle_fault(gpa, access) {
            Ok(Fault::Installed | Fault::Retry) => Flow::Continue,
            Ok(Fault::NotInSlot) => {
                cx.vm.exits.add(ExitReason::Mmio);
                super::mmio::handle(cx, gpa, access)
            }
            Ok(Fault::WriteToReadOnly) => crash(cx, format!("write to read-only memory at {:#x}", gpa.raw())),
            Err(MmuError::OutOfMemory) => crash(
                cx,
                format!(
                    "the host ran out of memory backing guest address {:#x} (guest memory is \
                     allocated on first touch, so VMs together may ask for more than there is: \
                     delete a VM or give this one less)",
                    gpa.raw()
                ),
            ),
            Err(e) => crash(cx, format!("nested page fault at {:#x} not handled: {e:?}", gpa.raw())),
        },
        Exit::Hlt => {
            cx.vcpu.skip_exiting_instruction();
            Flow::Halt
        }
        Exit::Shutdown => crash(cx, format!("triple fault on vcpu {}: {}", cx.index, cx.vcpu.describe())),
        Exit::InvalidState => {
            crash(cx, format!("VM entry refused the state of vcpu {}: {}", cx.index, cx.vcpu.describe()))
        }
        Exit::Unhandled { code } => {
            crash(cx, format!("unhandled exit {code:#x} on vcpu {}: {}", cx.index, cx.vcpu.describe()))
        }
        Exit::TdpMisconfig { gpa } => crash(cx, misconfig_report(gpa, &cx.mmu.walk(gpa))),
    }
}

/// What a port access at `port` with `effect` leaves the VM to do (IN, OUT, INS, OUTS).
pub(crate) fn port_outcome<B: Backend>(
    cx: &mut VcpuContext<'_, B>,
    port: u16,
    effect: Option<IoEffect>,
) -> Flow {
    match outcome_of(effect) {
        Outcome::Continue => Flow::Continue,
        Outcome::End(state) => Flow::Finish(state),
        Outcome::PowerOff => {
            cx.vm.log_event(format!("the guest powered off through ACPI (S5, port {port:#x})"));
            Flow::Finish(VmState::Exited { status: 0 })
        }
        Outcome::ResetPlatform => {
            cx.vm.reset_platform(port);
            Flow::Continue
        }
    }
}

/// The crash reason for a nested page table entry the CPU refused: an MMU bug, reported
/// with every entry the walk to `gpa` reads.
fn misconfig_report(gpa: crate::addr::Gpa, walk: &[crate::mmu::WalkStep]) -> String {
    let mut report = format!(
        "MMU bug: the CPU refused a nested page table entry (reserved bits or a misconfiguration) \
         on the walk to guest address {:#x}; entries:",
        gpa.raw()
    );
    for step in walk {
        report.push_str(&format!(" level {} = {:#x};", step.level, step.entry));
    }
    report
}

/// RDMSR / WRMSR of a local APIC MSR (IA32_APIC_BASE, IA32_TSC_DEADLINE, the x2APIC
/// range): the irqchip answers; the vCPUs a write made an interrupt pending for (an IPI,
/// an EOI that re-delivers a level interrupt) are woken or kicked after the lock is
/// dropped.
fn lapic_msr<B: Backend>(cx: &mut VcpuContext<'_, B>, write: bool) -> Flow {
    let regs = *cx.vcpu.regs();
    let msr = regs.rcx as u32;
    let now = (cx.vm.clock)();
    let result = {
        let mut devices = cx.vm.devices.lock();
        let chip = devices.irqchip_mut();
        if write {
            let value = (regs.rdx << 32) | (regs.rax & 0xFFFF_FFFF);
            chip.msr_write(cx.index, msr, value, now).map(|wake| (None, wake))
        } else {
            chip.msr_read(cx.index, msr, now).map(|value| (Some(value), VcpuMask::EMPTY))
        }
    };
    match result {
        Ok((value, wake)) => {
            if let Some(value) = value {
                let regs = cx.vcpu.regs_mut();
                (regs.rax, regs.rdx) = (value & 0xFFFF_FFFF, value >> 32);
            }
            cx.vcpu.skip_exiting_instruction();
            super::entry::devices_accessed(cx.vm, cx.index, wake);
        }
        Err(msr::Gp) => cx.vcpu.inject_general_protection(),
    }
    Flow::Continue
}

/// As INIT: the vCPU drops its roots (the MMU keeps them, so the next load finds the same
/// one) and restarts at its entry, in the normal address space.
pub(crate) fn restart_at_entry<B: Backend>(cx: &mut VcpuContext<'_, B>) -> Flow {
    cx.mmu.unload();
    cx.as_id = AsId::Normal;
    match cx.vm.entry_for(cx.index) {
        Some(entry) => {
            cx.vcpu.reset(&entry);
            Flow::Continue
        }
        None => crash(cx, "reset requested before an image was loaded".into()),
    }
}

/// A start-up IPI with `vector` to a vCPU waiting for one: it starts in real mode at
/// CS = `vector << 8`, IP = 0 (address `vector << 12`), its registers as after INIT (SDM
/// Vol. 3A §9.4.4), in the normal address space.
pub(crate) fn start_at_sipi<B: Backend>(cx: &mut VcpuContext<'_, B>, vector: u8) {
    cx.mmu.unload();
    cx.as_id = AsId::Normal;
    let mode = crate::backend::EntryMode::Real16 { cs: u16::from(vector) << 8, ip: 0 };
    cx.vcpu.reset(&crate::backend::EntryState { mode, regs: crate::backend::GuestRegs::default() });
}

fn crash<B: Backend>(_cx: &VcpuContext<'_, B>, reason: String) -> Flow {
    Flow::Finish(VmState::Crashed { reason })
}

fn hypercall<B: Backend>(cx: &mut VcpuContext<'_, B>) -> Flow {
    let regs = *cx.vcpu.regs();
    cx.vcpu.skip_exiting_instruction();
    let result = match Hypercall::from_number(regs.rax) {
        None => Err(HypercallError::UnknownHypercall),
        Some(Hypercall::Exit) => return Flow::Finish(VmState::Exited { status: regs.rdi as u32 }),
        Some(Hypercall::ResetVcpu) => return restart_at_entry(cx),
        Some(Hypercall::SwitchAddressSpace) => match regs.rdi {
            hypercall::ADDRESS_SPACE_NORMAL => {
                cx.as_id = AsId::Normal;
                Ok(0)
            }
            hypercall::ADDRESS_SPACE_ALTERNATE => {
                cx.as_id = AsId::Alternate;
                Ok(0)
            }
            _ => Err(HypercallError::InvalidArgument),
        },
        Some(Hypercall::DiscardPage) => {
            let gpa = regs.rdi;
            if !gpa.is_multiple_of(PAGE_SIZE) {
                Err(HypercallError::InvalidArgument)
            } else if gpa >= cx.vm.memory_bytes() {
                Err(HypercallError::NotMapped)
            } else {
                let gfn = Gfn::new(gpa / PAGE_SIZE);
                cx.vm.mmu.discard_range(AsId::Normal, GfnRange::new(gfn, Gfn::new(gfn.raw() + 1)));
                Ok(0)
            }
        }
        Some(Hypercall::VcpuCount) => Ok(cx.vm.config.vcpus as u64),
        Some(Hypercall::LogEvent) => {
            let now = (cx.vm.clock)();
            let event = EventKind::Hypercall { vcpu: cx.index, value: regs.rdi };
            cx.vm.devices.lock().events_mut().push(now, event);
            Ok(0)
        }
    };
    cx.vcpu.regs_mut().rax = hypercall::encode_result(result);
    Flow::Continue
}

#[cfg(test)]
mod misconfig_tests {
    use super::misconfig_report;
    use crate::addr::Gpa;
    use crate::mmu::WalkStep;

    #[test]
    fn a_refused_entry_is_reported_with_every_entry_of_the_walk() {
        let walk =
            [WalkStep { level: 4, entry: 0x5007 }, WalkStep { level: 3, entry: 0x8000_0000_0000_6007 }];
        let report = misconfig_report(Gpa::new(0x40_1000), &walk);
        assert!(report.starts_with("MMU bug:"), "{report}");
        assert!(report.contains("guest address 0x401000"), "{report}");
        assert!(report.contains("level 4 = 0x5007; level 3 = 0x8000000000006007;"), "{report}");
    }
}
