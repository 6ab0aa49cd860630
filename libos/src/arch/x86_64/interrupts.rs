//! The IDT, the interrupt entry stubs and the dispatcher.
//!
//! Every vector Taproot uses has a naked stub that pushes an error code (a zero when the
//! CPU pushes none) and the vector number, then jumps to one common path that saves the
//! general registers and calls [`trap_dispatch`] with a [`TrapFrame`]. Exceptions print a
//! diagnosis and stop the CPU that took them; the other CPUs carry on.
//!
//! NMIs are not exceptions: they do not end anything. libos raises none itself (no
//! watchdog, no panic broadcast: a panic or an exception stops only its own CPU), so every
//! NMI is the platform's (LINT1: an NMI button, a BMC, a PCI SERR or I/O check reported in
//! port 0x61). [`nmi`] counts it on its CPU, reports it with the reason bits of port 0x61,
//! and returns; its IRETQ unblocks NMIs again (SDM Vol. 3A §6.7.1). An NMI that arrives
//! while a guest runs reaches the same handler: on SVM the CPU holds it while GIF=0 and
//! delivers it through this IDT after STGI; on VMX the NMI exit consumed it, and the
//! backend runs this handler through [`run_nmi_handler`]. A future NMI sender (watchdog,
//! panic broadcast) must publish its own request before sending, for [`nmi`] to check
//! first.

use super::vectors::{APIC_SPURIOUS, DOUBLE_FAULT, PAGE_FAULT, PIC1_SPURIOUS, PIC2_SPURIOUS, TIMER, WAKE};
use super::{apic, gdt, host_timer, percpu, stack_guard};
use crate::drivers::serial::{self, EmergencyWriter};
use crate::{power, time};
use core::arch::naked_asm;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::port::PortReadOnly;
use x86_64::structures::idt::InterruptDescriptorTable;

/// Exit status when `exit=1` ends the machine after an exception.
const EXCEPTION_EXIT_STATUS: i32 = 3;
/// The NMI vector (SDM Vol. 3A Table 6-1).
const NMI: u8 = 2;
/// NMI status and control port, and its reason bits: 7 PCI SERR#, 6 I/O channel check
/// (IBM PC/AT; Intel PCH datasheets, "NMI Status and Control Register").
const NMI_STATUS_PORT: u16 = 0x61;
const NMI_REASON_SERR: u8 = 1 << 7;
const NMI_REASON_IOCHK: u8 = 1 << 6;
/// How long an NMI report waits for the console lock: longer than the longest console
/// line holds it (a few hundred bytes at 115200 baud); and at most this many tries, for
/// an NMI before the clock is calibrated (it reads 0 until then).
const NMI_REPORT_WAIT_NS: u64 = 100_000_000;
const NMI_REPORT_MAX_TRIES: u32 = 10_000_000;

/// The registers saved on entry, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

#[unsafe(naked)]
unsafe extern "C" fn trap_common() {
    naked_asm!(
        "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
        "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14",
        "push r15",
        "mov rdi, rsp",
        "mov rbp, rsp",
        "and rsp, -16",
        "cld",
        "call {dispatch}",
        "mov rsp, rbp",
        "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
        "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
        "add rsp, 16",
        "iretq",
        dispatch = sym trap_dispatch,
    );
}

macro_rules! stubs {
    ($($name:ident: $vector:tt $($err:ident)?;)*) => {
        $(
            #[unsafe(naked)]
            unsafe extern "C" fn $name() {
                naked_asm!(
                    stubs!(@push $($err)?),
                    "push {vector}",
                    "jmp {common}",
                    vector = const $vector,
                    common = sym trap_common,
                );
            }
        )*
        const STUBS: &[(u8, unsafe extern "C" fn())] = &[$(($vector, $name)),*];
    };
    (@push err) => { "" };
    (@push) => { "push 0" };
}

// Vectors 8, 10-14, 17, 21, 29 and 30 push an error code (SDM Vol. 3A Table 6-1).
stubs! {
    vec0: 0; vec1: 1; vec2: 2; vec3: 3; vec4: 4; vec5: 5; vec6: 6; vec7: 7;
    vec8: 8 err; vec9: 9; vec10: 10 err; vec11: 11 err; vec12: 12 err; vec13: 13 err;
    vec14: 14 err; vec15: 15; vec16: 16; vec17: 17 err; vec18: 18; vec19: 19; vec20: 20;
    vec21: 21 err; vec22: 22; vec23: 23; vec24: 24; vec25: 25; vec26: 26; vec27: 27;
    vec28: 28; vec29: 29 err; vec30: 30 err; vec31: 31;
    vec_timer: TIMER; vec_pic1_spurious: PIC1_SPURIOUS; vec_pic2_spurious: PIC2_SPURIOUS;
    vec_wake: WAKE; vec_apic_spurious: APIC_SPURIOUS;
}

static IDT: Once<InterruptDescriptorTable> = Once::new();

/// Loads the IDT on this CPU (built on first use).
pub fn init_cpu() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        for &(vector, stub) in STUBS {
            let addr = VirtAddr::new(stub as usize as u64);
            // SAFETY: each stub saves every register it touches, passes a well-formed frame
            // to `trap_dispatch` and returns with IRETQ; whether it expects an error code
            // matches the vector (see the table above). Double fault: see its arm.
            unsafe {
                match vector {
                    0 => drop(idt.divide_error.set_handler_addr(addr)),
                    1 => drop(idt.debug.set_handler_addr(addr)),
                    2 => drop(idt.non_maskable_interrupt.set_handler_addr(addr)),
                    3 => drop(idt.breakpoint.set_handler_addr(addr)),
                    4 => drop(idt.overflow.set_handler_addr(addr)),
                    5 => drop(idt.bound_range_exceeded.set_handler_addr(addr)),
                    6 => drop(idt.invalid_opcode.set_handler_addr(addr)),
                    7 => drop(idt.device_not_available.set_handler_addr(addr)),
                    // The IST slot is filled by `gdt::init_cpu` on every CPU before its
                    // IDT is loaded, with a stack used for nothing else.
                    DOUBLE_FAULT => drop(
                        idt.double_fault.set_handler_addr(addr).set_stack_index(gdt::DOUBLE_FAULT_IST_INDEX),
                    ),
                    10 => drop(idt.invalid_tss.set_handler_addr(addr)),
                    11 => drop(idt.segment_not_present.set_handler_addr(addr)),
                    12 => drop(idt.stack_segment_fault.set_handler_addr(addr)),
                    13 => drop(idt.general_protection_fault.set_handler_addr(addr)),
                    PAGE_FAULT => drop(idt.page_fault.set_handler_addr(addr)),
                    16 => drop(idt.x87_floating_point.set_handler_addr(addr)),
                    17 => drop(idt.alignment_check.set_handler_addr(addr)),
                    18 => drop(idt.machine_check.set_handler_addr(addr)),
                    19 => drop(idt.simd_floating_point.set_handler_addr(addr)),
                    20 => drop(idt.virtualization.set_handler_addr(addr)),
                    21 => drop(idt.cp_protection_exception.set_handler_addr(addr)),
                    28 => drop(idt.hv_injection_exception.set_handler_addr(addr)),
                    29 => drop(idt.vmm_communication_exception.set_handler_addr(addr)),
                    30 => drop(idt.security_exception.set_handler_addr(addr)),
                    // Reserved exception vectors: the crate keeps their entries private
                    // and no CPU raises them.
                    15 | 22..=27 | 31 => {}
                    _ => drop(idt[vector].set_handler_addr(addr)),
                }
            }
        }
        idt
    });
    idt.load();
}

const EXCEPTION_NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 floating point",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD floating point",
    "#VE virtualization",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved",
];

extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    match frame.vector as u8 {
        NMI => nmi(),
        v if v < 32 => exception(frame),
        TIMER => {
            let cpu = percpu::current();
            host_timer::on_interrupt();
            apic::eoi();
            if !stack_guard::is_intact(cpu) {
                panic!(
                    "stack overflow on cpu {}: the canary at the bottom of its stack is gone",
                    cpu.index()
                );
            }
        }
        WAKE => apic::eoi(),
        APIC_SPURIOUS | PIC1_SPURIOUS | PIC2_SPURIOUS => {}
        _ => apic::eoi(),
    }
}

/// The host's NMI handling (see the module docs): counted, reported, survived. Reported
/// at the 1st, 2nd, 4th, 8th... NMI of a CPU (a line on the serial console takes
/// milliseconds: an NMI storm must not turn into a printing storm), whole under the
/// console lock when it comes free soon. When it does not (the NMI may have interrupted
/// the lock's holder on this very CPU, which cannot release it until the handler
/// returns), the report is deferred, not dropped: [`report_deferred_nmis`] prints it from
/// ordinary context, at the next console print or before the CPU sleeps.
fn nmi() {
    let cpu = percpu::current();
    let count = cpu.nmis.fetch_add(1, Ordering::Relaxed) + 1;
    if !count.is_power_of_two() {
        return;
    }
    // SAFETY: reading port 0x61 has no side effects on any PC.
    let status = unsafe { PortReadOnly::<u8>::new(NMI_STATUS_PORT).read() };
    let give_up = time::now_ns() + NMI_REPORT_WAIT_NS;
    let mut tries = 0;
    let printed =
        serial::try_print(format_args!("{}", NmiReport { cpu: cpu.index(), count, status }), || {
            tries += 1;
            tries <= NMI_REPORT_MAX_TRIES && time::now_ns() < give_up
        });
    if !printed {
        // The slot first, then the flag: a flusher that sees the flag sees the slot. A
        // later deferred report of this CPU replaces an unprinted earlier one (its count
        // says how many came).
        cpu.nmi_report_deferred.store(count << 8 | u64::from(status), Ordering::Release);
        NMI_REPORTS_DEFERRED.store(true, Ordering::Release);
    }
}

/// Set when some CPU holds a deferred NMI report (one load on the print path otherwise).
static NMI_REPORTS_DEFERRED: AtomicBool = AtomicBool::new(false);

/// Prints the NMI reports their handlers had to defer (see [`nmi`]). Ordinary context
/// only (it takes the console lock). Cheap when there are none.
///
/// No report is lost between the two steps: a handler stores its slot before the flag,
/// and the flag is cleared before the slots are read, so a report stored after the clear
/// is either read now or leaves the flag set for the next call.
pub fn report_deferred_nmis() {
    if !NMI_REPORTS_DEFERRED.load(Ordering::Acquire) || !NMI_REPORTS_DEFERRED.swap(false, Ordering::AcqRel) {
        return;
    }
    for index in 0..percpu::MAX_CPUS {
        let Some(cpu) = percpu::cpu(index) else { break };
        let report = cpu.nmi_report_deferred.swap(0, Ordering::AcqRel);
        if report != 0 {
            serial::print_now(format_args!(
                "{}",
                NmiReport { cpu: index, count: report >> 8, status: report as u8 }
            ));
        }
    }
}

/// The console line for the `count`th NMI of `cpu`, with port 0x61's reason bits.
struct NmiReport {
    cpu: usize,
    count: u64,
    status: u8,
}

impl core::fmt::Display for NmiReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let reason = match (self.status & NMI_REASON_SERR != 0, self.status & NMI_REASON_IOCHK != 0) {
            (true, true) => "pci serr and i/o channel check",
            (true, false) => "pci serr",
            (false, true) => "i/o channel check",
            (false, false) => "unknown (lint1, a bmc or an nmi button)",
        };
        writeln!(f, "taproot: nmi on cpu {} (count {}), reason {reason}; carrying on", self.cpu, self.count)
    }
}

/// Runs the NMI handler as if an NMI had just arrived: for an NMI that a VM exit consumed
/// (VMX with "NMI exiting"). Through `INT 2`, so that the handler's IRETQ ends the
/// blocking of NMIs that such an exit leaves in effect (KVM's `vmx_do_nmi_irqoff` calls
/// its handler through an IRET frame for the same reason); IRET unblocks NMIs whatever
/// the way in (SDM Vol. 3A §6.7.1).
pub fn run_nmi_handler() {
    // SAFETY: vector 2 has a stub in this IDT that saves every register and returns
    // with IRETQ; INT 2 from CPL 0 passes the gate's DPL check.
    unsafe { core::arch::asm!("int 2") };
}

/// Prints the diagnosis and stops this CPU. Never returns: the interrupted context may
/// be in any state.
fn exception(frame: &TrapFrame) -> ! {
    let vector = frame.vector as usize;
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let mut w = EmergencyWriter;
    let _ = write!(
        w,
        "\ntaproot: exception {} (vector {}) on cpu {}: error={:#x} rip={:#x} cs={:#x} \
         rflags={:#x} rsp={:#x}",
        EXCEPTION_NAMES[vector],
        vector,
        percpu::current_cpu(),
        frame.error_code,
        frame.rip,
        frame.cs,
        frame.rflags,
        frame.rsp,
    );
    if vector == PAGE_FAULT as usize {
        let _ = write!(w, " cr2={cr2:#x}");
    }
    let _ = write!(
        w,
        "\n  rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}\n  \
         r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}\n\
         taproot: cpu {} stopped\n",
        frame.rax,
        frame.rbx,
        frame.rcx,
        frame.rdx,
        frame.rsi,
        frame.rdi,
        frame.rbp,
        frame.r8,
        frame.r9,
        frame.r10,
        frame.r11,
        frame.r12,
        frame.r13,
        frame.r14,
        frame.r15,
        percpu::current_cpu(),
    );
    percpu::current().online.store(false, Ordering::Release);
    // With the test option `exit=1` the machine ends here too, so a harness need not wait
    // for its timeout.
    power::halt_or_exit(EXCEPTION_EXIT_STATUS)
}
