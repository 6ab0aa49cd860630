//! Child guests end to end: the image launches guests named on its command line
//! (`guest=a,b,...`, run one after the other), prints their console lines as `[vm <id>] `
//! and, for each, `taproot: vm <id> exited status=<n> state=<state> stats=<json>`.
//! SVM runs under QEMU TCG, VMX under Bochs.

use std::time::Duration;
use taproot_testbed::bochs::Bochs;
use taproot_testbed::console::field;
use taproot_testbed::paths::{self, Profile};
use taproot_testbed::qemu::{Qemu, guest_status};

const QEMU_TIMEOUT: Duration = Duration::from_secs(120);
const BOCHS_TIMEOUT: Duration = Duration::from_secs(300);

fn elf(profile: Profile) -> std::path::PathBuf {
    paths::built_elf(profile).unwrap_or_else(|e| panic!("{e}"))
}

/// The exit line of VM `id`, split into (status, state, stats JSON).
fn vm_end(transcript: &str, id: u32) -> (i64, String, String) {
    let prefix = format!("taproot: vm {id} exited ");
    let line = transcript
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no exit line for vm {id}:\n{transcript}"));
    let status = field(line, "status").and_then(|s| s.parse().ok()).expect("status=");
    let state = field(line, "state").expect("state=").to_string();
    let stats = line.split_once("stats=").expect("stats=").1.to_string();
    (status, state, stats)
}

/// The value of `"key":<number>` in a flat part of the stats JSON.
fn stat(stats: &str, key: &str) -> u64 {
    let pattern = format!("\"{key}\":");
    let at = stats.find(&pattern).unwrap_or_else(|| panic!("no {key} in {stats}")) + pattern.len();
    stats[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().expect("a number")
}

fn events_of(transcript: &str, id: u32) -> Vec<&str> {
    let prefix = format!("[vm {id}] event");
    transcript.lines().filter(|l| l.starts_with(&prefix)).collect()
}

/// What every backend must show for the hostile guests and the one that follows them.
fn check_hostile_then_hello(transcript: &str, hello_id: u32) {
    let (status, state, stats) = vm_end(transcript, 1);
    assert_eq!((status, state.as_str()), (-1, "crashed"), "{transcript}");
    assert_eq!(stat(&stats, "shutdown"), 1, "{stats}");
    assert!(events_of(transcript, 1).iter().any(|e| e.contains("triple fault on vcpu 0")), "{transcript}");

    let (status, state, stats) = vm_end(transcript, 2);
    assert_eq!((status, state.as_str()), (-1, "crashed"), "{transcript}");
    assert_eq!(stat(&stats, "mmio"), 1, "the wild write counts as an MMIO exit: {stats}");
    assert!(
        events_of(transcript, 2)
            .iter()
            .any(|e| e.contains("guest address 0x100000, outside every memory slot")),
        "{transcript}"
    );

    let (status, state, stats) = vm_end(transcript, 3);
    assert_eq!((status, state.as_str()), (-1, "stopped"), "{transcript}");
    assert!(stat(&stats, "host_interrupt") > 0, "the endless loop was interrupted by the host: {stats}");
    assert!(events_of(transcript, 3).iter().any(|e| e.contains("time limit")), "{transcript}");

    // The hypervisor still runs guests after all that.
    assert!(transcript.contains(&format!("[vm {hello_id}] hello from a real-mode guest")), "{transcript}");
    let (status, state, _) = vm_end(transcript, hello_id);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
}

#[test]
fn svm_hostile_guests_end_with_clear_reasons_and_the_next_guest_runs() {
    let cmdline = "exit=1 guest=triplefault,wild,spin,hello16 mem=1 timeout_ms=300";
    let mut console = Qemu::kernel(&elf(Profile::Debug), cmdline).spawn().unwrap();
    console.wait_for("taproot: vm 4 exited", QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let status = console.wait_exit(QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(guest_status(status), Some(0), "the image ends with the last guest's status");
    check_hostile_then_hello(console.transcript(), 4);
}

#[test]
fn svm_guest_doing_io_to_every_port_gets_all_ones_and_counted_exits() {
    let mut console = Qemu::kernel(&elf(Profile::Release), "exit=1 guest=ioscan mem=1").spawn().unwrap();
    console.wait_for("taproot: vm 1 exited", QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let status = console.wait_exit(QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(guest_status(status), Some(0));
    // 65,536 reads and the final exit-port write each exit; ports no device claims are
    // counted.
    let (status, state, stats) = vm_end(console.transcript(), 1);
    assert_eq!((status, state.as_str()), (0, "exited"), "{}", console.transcript());
    assert_eq!(stat(&stats, "io"), 65_537, "{stats}");
    assert!(stat(&stats, "unknown_port_reads") > 65_000, "{stats}");
}

#[test]
fn vmx_hostile_guests_end_with_clear_reasons_and_the_next_guest_runs() {
    let iso = paths::scratch_dir("bochs-vmx-hostile-iso").unwrap().join("taproot.iso");
    let cmdline = "exit=1 guest=triplefault,wild,spin,hello16 mem=1 timeout_ms=300";
    taproot_testbed::iso::make(&elf(Profile::Release), cmdline, &iso).unwrap();
    let mut console = Bochs::new(&iso).spawn("bochs-vmx-hostile").unwrap();
    console.wait_for("taproot: vm 4 exited", BOCHS_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    console.wait_exit(BOCHS_TIMEOUT).unwrap_or_else(|e| panic!("Bochs did not power off: {e}"));
    let transcript = console.transcript();
    assert!(transcript.contains("virt=vmx"), "{transcript}");
    check_hostile_then_hello(transcript, 4);
}

/// msr16 reads IA32_APIC_BASE (the boot vCPU's value) and then an unknown MSR, whose #GP
/// it takes in real mode through its IVT with FLAGS, CS and IP on its stack and no error
/// code (it exits 1 if the stack says otherwise). Before the fix, Bochs refused the VM
/// entry that injected #GP with an error code into real mode; QEMU TCG drops such an
/// error code itself, so under TCG only the APIC_BASE read would have failed (real AMD
/// CPUs and KVM nested are stricter than TCG).
fn check_msr16(transcript: &str) {
    assert!(
        transcript.contains("[vm 1] msr16: APIC base 0xfee00900, #GP without an error code"),
        "{transcript}"
    );
    let (status, state, stats) = vm_end(transcript, 1);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
    // Two RDMSRs, each exiting exactly once: the #GP of the second is delivered through
    // the stack page the guest never touched before, so its delivery takes a nested page
    // fault exit; the event in flight then must be re-injected, not lost (which would
    // make the RDMSR run, and exit, again).
    assert_eq!(stat(&stats, "msr"), 2, "{stats}");
}

#[test]
fn svm_real_mode_guest_reads_apic_base_and_takes_gp_without_error_code() {
    check_msr16(&run_svm("exit=1 guest=msr16 mem=1", 1));
}

#[test]
fn vmx_real_mode_guest_reads_apic_base_and_takes_gp_without_error_code() {
    let transcript = run_vmx("bochs-vmx-msr16", "exit=1 guest=msr16 mem=1", 1);
    assert!(transcript.contains("virt=vmx"), "{transcript}");
    check_msr16(&transcript);
}

/// The registers the `cpuid` guest of VM 1 printed for `leaf` (subleaf 0).
fn cpuid_leaf(transcript: &str, leaf: u32) -> [u32; 4] {
    let prefix = format!("[vm 1] cpuid {leaf:#010x}.0: ");
    let line = transcript
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no line for leaf {leaf:#x}:\n{transcript}"));
    ["eax", "ebx", "ecx", "edx"].map(|reg| {
        let value = field(line, reg).unwrap_or_else(|| panic!("no {reg} in {line}"));
        u32::from_str_radix(value.trim_start_matches("0x"), 16).expect("hex")
    })
}

/// What the CPUID policy (hypervisor/src/cpuid) promises, as the guest saw it.
fn check_cpuid(transcript: &str) {
    assert!(transcript.contains("[vm 1] cpuid: done"), "{transcript}");
    assert_eq!(vm_end(transcript, 1).0, 0, "{transcript}");
    let bit = |leaf: u32, reg: usize, bit: u32| cpuid_leaf(transcript, leaf)[reg] & (1 << bit) != 0;
    assert!(cpuid_leaf(transcript, 0)[0] <= 0x1F, "max basic leaf clamped");
    assert!(bit(1, 2, 31), "hypervisor bit");
    for (name, b) in [("vmx", 5), ("monitor", 3), ("pcid", 17), ("osxsave", 27)] {
        assert!(!bit(1, 2, b), "leaf 1 ECX {name}");
    }
    assert!(bit(1, 2, 21) && bit(1, 2, 24), "the emulated x2APIC and TSC-deadline timer");
    assert!(bit(1, 3, 9), "the emulated local APIC");
    assert_eq!(cpuid_leaf(transcript, 7)[0], 0, "leaf 7 has subleaf 0 only");
    for (name, reg, b) in [("hle", 1, 4), ("rtm", 1, 11), ("invpcid", 1, 10), ("pku", 2, 3), ("la57", 2, 16)]
    {
        assert!(!bit(7, reg, b), "leaf 7 {name}");
    }
    assert_eq!(cpuid_leaf(transcript, 7)[3] & 0xAC00_0000, 0, "no speculation-control bits");
    assert_eq!(cpuid_leaf(transcript, 0xA), [0; 4], "no PMU");
    if bit(1, 2, 26) {
        // XSAVE shown (cpuid::XSAVE_VIRTUALIZED): leaf 0Dh offers x87 and SSE, AVX exactly
        // when leaf 1 shows it, nothing else (cpuid::offered_xcr0, what the backends switch),
        // and an area of the legacy 576 bytes plus AVX's 256.
        let [xcr0, size, max_size, xcr0_hi] = cpuid_leaf(transcript, 0xD);
        let avx = bit(1, 2, 28);
        assert_eq!((xcr0, xcr0_hi), (if avx { 0b111 } else { 0b11 }, 0), "offered XCR0");
        let expected = if avx { 832 } else { 576 };
        assert_eq!((size, max_size), (expected, expected), "XSAVE area size");
    } else {
        assert_eq!(cpuid_leaf(transcript, 0xD), [0; 4], "no XSAVE leaf without XSAVE");
        assert!(!bit(1, 2, 28) && !bit(7, 1, 5), "no AVX or AVX2 without XSAVE");
    }
    assert!(!bit(7, 1, 16), "no AVX-512: its state is not switched");
    let [max, b, c, d] = cpuid_leaf(transcript, 0x4000_0000);
    assert_eq!(max, 0x4000_0010);
    let signature: Vec<u8> = [b, c, d].iter().flat_map(|r| r.to_le_bytes()).collect();
    assert_eq!(signature, b"TaprootTaprt");
    let [tsc_khz, bus_khz, _, _] = cpuid_leaf(transcript, 0x4000_0010);
    assert!(tsc_khz > 0, "TSC kHz published");
    assert_eq!(bus_khz, 1_000_000, "LAPIC bus kHz");
    assert!(cpuid_leaf(transcript, 0x8000_0000)[0] <= 0x8000_001E, "max extended leaf clamped");
    assert!(!bit(0x8000_0001, 2, 2), "no SVM");
    assert!(!bit(0x8000_0001, 3, 27), "no RDTSCP");
    assert!(bit(0x8000_0001, 3, 29), "long mode");
    assert_eq!(cpuid_leaf(transcript, 0x8000_000A), [0; 4], "no SVM leaf");
}

/// Both emulators' CPUs have XSAVE and AVX (Bochs' Haswell; QEMU 7.2's TCG `-cpu max`),
/// which the policy passes (cpuid::XSAVE_VIRTUALIZED): the guest must see them.
fn check_xsave_and_avx_shown(transcript: &str) {
    let ecx = cpuid_leaf(transcript, 1)[2];
    assert_eq!(ecx & (1 << 26 | 1 << 28), 1 << 26 | 1 << 28, "XSAVE and AVX shown: {transcript}");
    assert_eq!(cpuid_leaf(transcript, 0xD)[0], 0b111, "x87|SSE|AVX in leaf 0Dh: {transcript}");
}

#[test]
fn svm_guest_sees_the_cpuid_policy() {
    let transcript = run_svm("exit=1 guest=cpuid", 1);
    check_cpuid(&transcript);
    check_xsave_and_avx_shown(&transcript);
}

#[test]
fn vmx_guest_sees_the_cpuid_policy() {
    let transcript = run_vmx("bochs-vmx-cpuid", "exit=1 guest=cpuid", 1);
    assert!(transcript.contains("virt=vmx"), "{transcript}");
    check_cpuid(&transcript);
    check_xsave_and_avx_shown(&transcript);
}

#[test]
fn unknown_guest_names_are_refused_with_the_list_of_guests() {
    let mut console = Qemu::kernel(&elf(Profile::Debug), "exit=1 guest=nosuchguest").spawn().unwrap();
    let line = console.wait_for("cannot launch guest", QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("no guest named \"nosuchguest\""), "{line}");
    assert!(line.contains("hello16"), "the error lists what exists: {line}");
    let status = console.wait_exit(QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(guest_status(status), Some(125));
}

/// Boots `cmdline` under QEMU TCG (SVM) and returns the transcript once the image ended.
fn run_svm(cmdline: &str, last_vm: u32) -> String {
    let mut console = Qemu::kernel(&elf(Profile::Release), cmdline).spawn().unwrap();
    console
        .wait_for(&format!("taproot: vm {last_vm} exited"), QEMU_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    console.wait_exit(QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    console.transcript().to_string()
}

/// Boots `cmdline` from an ISO under Bochs (VMX) and returns the transcript.
fn run_vmx(name: &str, cmdline: &str, last_vm: u32) -> String {
    let iso = paths::scratch_dir(&format!("{name}-iso")).unwrap().join("taproot.iso");
    taproot_testbed::iso::make(&elf(Profile::Release), cmdline, &iso).unwrap();
    let mut console = Bochs::new(&iso).spawn(name).unwrap();
    console
        .wait_for(&format!("taproot: vm {last_vm} exited"), BOCHS_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    console.wait_exit(BOCHS_TIMEOUT).unwrap_or_else(|e| panic!("Bochs did not power off: {e}"));
    console.transcript().to_string()
}

/// hello prints and exits 0; memtouch with 2 vCPUs verifies its pattern; tlbprobe's
/// spinning vCPU sees a page discarded by the other once the hypercall returned.
fn check_guests(transcript: &str) {
    assert!(
        transcript.contains(
            r#"[vm 1] hello from taproot guest (booted by pvh, cmdline "mib=16", ram ends at 0x4000000)"#
        ),
        "{transcript}"
    );
    assert_eq!(vm_end(transcript, 1).0, 0, "{transcript}");

    assert!(transcript.contains("[vm 2] memtouch: 2 vcpus"), "{transcript}");
    assert!(transcript.contains("[vm 2] memtouch: verified"), "{transcript}");
    let (status, _, stats) = vm_end(transcript, 2);
    assert_eq!(status, 0, "{transcript}");
    assert_eq!(stat(&stats, "roots_allocated"), 1, "both vCPUs share one root: {stats}");
    assert_eq!(stat(&stats, "roots_reused"), 1, "the second vCPU reuses it: {stats}");

    assert!(transcript.contains("[vm 3] tlbprobe: PASS"), "{transcript}");
    let (status, _, stats) = vm_end(transcript, 3);
    assert_eq!(status, 0, "{transcript}");
    assert_eq!(stat(&stats, "zaps"), 1, "the discard zapped once: {stats}");
    assert!(stat(&stats, "tlb_flushes") >= 1, "{stats}");
}

#[test]
fn svm_runs_hello_memtouch_on_two_vcpus_and_tlbprobe() {
    let transcript = run_svm("exit=1 guest=hello,memtouch,tlbprobe vcpus=2 mem=64 guest.mib=16", 3);
    check_guests(&transcript);
}

/// The same guests booted through their multiboot1 header: the runtime recognises the
/// magic in eax and reads its command line and memory map from the multiboot information.
fn check_multiboot1(transcript: &str) {
    assert!(
        transcript.contains(
            r#"[vm 1] hello from taproot guest (booted by multiboot1, cmdline "mib=8", ram ends at 0x3000000)"#
        ),
        "{transcript}"
    );
    assert_eq!(vm_end(transcript, 1).0, 0, "{transcript}");
    assert!(transcript.contains("[vm 2] memtouch: 2 vcpus, 8 MiB"), "{transcript}");
    assert!(transcript.contains("[vm 2] memtouch: verified 8 MiB"), "{transcript}");
    assert_eq!(vm_end(transcript, 2).0, 0, "{transcript}");
}

#[test]
fn svm_boots_multiboot1_guests() {
    check_multiboot1(&run_svm("exit=1 guest=hello,memtouch format=multiboot vcpus=2 mem=48 guest.mib=8", 2));
}

#[test]
fn vmx_boots_multiboot1_guests() {
    let transcript = run_vmx(
        "bochs-vmx-multiboot1",
        "exit=1 guest=hello,memtouch format=multiboot vcpus=2 mem=48 guest.mib=8",
        2,
    );
    assert!(transcript.contains("virt=vmx"), "{transcript}");
    check_multiboot1(&transcript);
}

#[test]
fn vmx_runs_hello_memtouch_on_two_vcpus_and_tlbprobe() {
    let transcript =
        run_vmx("bochs-vmx-guests", "exit=1 guest=hello,memtouch,tlbprobe vcpus=2 mem=64 guest.mib=16", 3);
    assert!(transcript.contains("virt=vmx"), "{transcript}");
    check_guests(&transcript);
}

#[test]
fn svm_runs_more_vcpus_than_host_cpus_by_time_slicing() {
    // 4 vCPUs on a 2-CPU machine: two share each CPU, switched at host timer interrupts.
    let transcript = run_svm("exit=1 guest=memtouch vcpus=4 mem=64 guest.mib=32", 1);
    assert!(transcript.contains("[vm 1] memtouch: 4 vcpus"), "{transcript}");
    assert!(transcript.contains("[vm 1] memtouch: verified 32 MiB"), "{transcript}");
    let (status, _, stats) = vm_end(&transcript, 1);
    assert_eq!(status, 0, "{transcript}");
    assert_eq!(stat(&stats, "roots_allocated"), 1, "{stats}");
    assert_eq!(stat(&stats, "roots_reused"), 3, "{stats}");
}

/// xmmiso with vcpus=3 on the two-CPU machine: vCPUs 0 and 2 time-slice on CPU 0, one
/// keeping a marker in XMM0/YMM0, the other watching its own value there over 30 slices.
fn check_vector_registers_are_each_vcpus_own(transcript: &str, avx: bool) {
    assert!(transcript.contains("[vm 1] xmmiso: 3 vcpus"), "{transcript}");
    assert!(!transcript.contains("FAILED"), "{transcript}");
    assert!(transcript.contains(&format!("[vm 1] xmmiso: ok switches=30 avx={avx}")), "{transcript}");
    assert_eq!(vm_end(transcript, 1).0, 0, "{transcript}");
}

#[test]
fn svm_vector_registers_are_each_vcpus_own() {
    // QEMU 7.2's TCG `-cpu max` has AVX, which the policy passes: YMM0 is checked whole.
    let transcript = run_svm("exit=1 guest=xmmiso vcpus=3 mem=16", 1);
    check_vector_registers_are_each_vcpus_own(&transcript, true);
}

#[test]
fn vmx_vector_registers_are_each_vcpus_own() {
    // Bochs' Haswell has AVX: YMM0 is checked whole, after an emulated XSETBV.
    let transcript = run_vmx("bochs-vmx-xmmiso", "exit=1 guest=xmmiso vcpus=3 mem=16", 1);
    check_vector_registers_are_each_vcpus_own(&transcript, true);
}

/// guardrails `test=NAME` (see the guest's docs) passed in VM 1.
fn check_guardrail(transcript: &str, test: &str) {
    assert!(!transcript.contains("FAILED"), "{transcript}");
    assert!(transcript.contains(&format!("[vm 1] guardrails: {test} ok")), "{transcript}");
    assert_eq!(vm_end(transcript, 1).0, 0, "{transcript}");
}

#[test]
fn vmx_xsetbv_takes_valid_xcr0_values_and_refuses_invalid_ones_with_gp() {
    // VMX always exits on XSETBV (QEMU TCG's SVM lets it through, so only Bochs tests it).
    let transcript = run_vmx("bochs-vmx-xsetbv", "exit=1 guest=guardrails guest.test=xsetbv mem=16", 1);
    assert!(transcript.contains("[vm 1] guardrails: xsetbv valid=[3, 7] invalid=4"), "{transcript}");
    check_guardrail(&transcript, "xsetbv");
}

#[test]
fn svm_hardware_breakpoint_survives_exits_and_another_vcpus_debug_registers() {
    check_guardrail(
        &run_svm("exit=1 guest=guardrails guest.test=breakpoint vcpus=3 mem=16", 1),
        "breakpoint",
    );
}

#[test]
fn vmx_hardware_breakpoint_survives_exits_and_another_vcpus_debug_registers() {
    let cmdline = "exit=1 guest=guardrails guest.test=breakpoint vcpus=3 mem=16";
    check_guardrail(&run_vmx("bochs-vmx-breakpoint", cmdline, 1), "breakpoint");
}

/// vCPU 1, alone on host CPU 1, writes CR8 = 15 and halts; the next VM's vCPU 1 runs there
/// to its end (a guest that set the physical TPR would leave that CPU deaf to interrupts).
fn check_cr8(transcript: &str) {
    assert!(
        transcript.contains("[vm 1] guardrails: the last vcpu wrote CR8=15, read back 15, halting"),
        "{transcript}"
    );
    check_guardrail(transcript, "cr8");
    assert!(transcript.contains("[vm 2] hello from taproot guest"), "{transcript}");
    assert_eq!(vm_end(transcript, 2).0, 0, "{transcript}");
}

#[test]
fn svm_guest_tpr_stays_virtual() {
    // V_INTR_MASKING: the guest's CR8 is the VMCB's V_TPR, never the host's TPR.
    check_cr8(&run_svm("exit=1 guest=guardrails,hello guest.test=cr8 vcpus=2 mem=16", 2));
}

#[test]
fn vmx_guest_tpr_stays_virtual() {
    let cmdline = "exit=1 guest=guardrails,hello guest.test=cr8 vcpus=2 mem=16";
    check_cr8(&run_vmx("bochs-vmx-cr8", cmdline, 2));
}

#[test]
fn vmx_cr4_vmxe_and_reserved_bits_raise_gp() {
    // VMXE is host-owned on VMX: the MOV exits and the host must refuse it as a CPU would.
    // (SVM does not intercept CR4 and real AMD CPUs refuse VMXE themselves; QEMU TCG lets
    // the MOV set it and then fails VMRUN, which ends the VM `crashed` with the state: no
    // TCG test of this.)
    check_guardrail(&run_vmx("bochs-vmx-cr4", "exit=1 guest=guardrails guest.test=cr4 mem=16", 1), "cr4");
}

#[test]
fn svm_guest_goes_from_long_mode_to_pae_paging_and_back() {
    check_guardrail(&run_svm("exit=1 guest=guardrails guest.test=pae mem=16", 1), "pae");
}

#[test]
fn vmx_guest_goes_from_long_mode_to_pae_paging_and_back() {
    // The MOVs that turn paging on toggle NE, so they exit: the host loads the PDPTEs into
    // the VMCS on the way down and activates long mode on the way up.
    check_guardrail(&run_vmx("bochs-vmx-pae", "exit=1 guest=guardrails guest.test=pae mem=16", 1), "pae");
}

#[test]
fn vmx_guest_enters_long_mode_by_a_mov_to_cr0_that_exits() {
    // Every guest's runtime (`rt`) turns on paging with LME and NE in one MOV from 32-bit
    // PAE code, as Linux does; NE is host-owned on VMX, so the host activates long mode
    // (EFER.LMA, the IA-32e mode entry control) before the guest prints from 64-bit code.
    let transcript = run_vmx("bochs-vmx-longmode", "exit=1 guest=hello mem=16", 1);
    assert!(transcript.contains("[vm 1] hello from taproot guest"), "{transcript}");
    assert_eq!(vm_end(&transcript, 1).0, 0, "{transcript}");
}

/// A slot deleted while memtouch runs: every root is invalidated and zapped once, the
/// guest keeps running on a new root (it faults again after the delete), and what it wrote
/// before the delete, in the slot that stays, is intact (it verifies every pass).
fn check_slot_delete_while_running(transcript: &str) {
    let event = transcript
        .lines()
        .find(|l| l.contains("host deleted slot 1 while the guest ran (Ok(()))"))
        .unwrap_or_else(|| panic!("no delete event:\n{transcript}"));
    assert!(event.contains("roots_invalidated 0 -> 1"), "{event}");
    assert!(event.contains("zaps 0 -> 1"), "exactly one zap for one root: {event}");
    let faults_at_delete: u64 =
        event.rsplit("faults at delete ").next().and_then(|v| v.trim().parse().ok()).unwrap();
    assert!(transcript.contains("[vm 1] memtouch: verified"), "{transcript}");
    let (status, _, stats) = vm_end(transcript, 1);
    assert_eq!(status, 0, "the pattern survived: {transcript}");
    assert_eq!(stat(&stats, "roots_invalidated"), 1, "{stats}");
    assert_eq!(stat(&stats, "zaps"), 1, "{stats}");
    assert_eq!(stat(&stats, "roots_allocated"), 2, "the guest went on with a new root: {stats}");
    assert!(stat(&stats, "faults") > faults_at_delete, "the guest faulted its memory in again: {stats}");
}

#[test]
fn svm_slot_deleted_while_memtouch_runs_invalidates_and_zaps_once() {
    let transcript =
        run_svm("exit=1 guest=memtouch mem=128 guest.mib=64 guest.passes=40 delete_slot_ms=100", 1);
    check_slot_delete_while_running(&transcript);
}

#[test]
fn vmx_slot_deleted_while_memtouch_runs_invalidates_and_zaps_once() {
    let transcript = run_vmx(
        "bochs-vmx-slot-delete",
        "exit=1 guest=memtouch mem=64 guest.mib=8 guest.passes=6 delete_slot_ms=20",
        1,
    );
    check_slot_delete_while_running(&transcript);
}

/// `roots`: 100,000 CR0.WP and 100,000 CR4.PGE toggles, two address-space switches and an
/// INIT-like reset use at most one root per role (normal, alternate) and fault nothing in
/// after warm-up (one fault per root for its one 2 MiB leaf).
fn check_roots(transcript: &str) {
    assert!(
        transcript
            .contains("[vm 1] roots: cr0.wp toggles=100000 cr4.pge toggles=100000 as switches=2 resets=1"),
        "{transcript}"
    );
    let (status, _, stats) = vm_end(transcript, 1);
    assert_eq!(status, 0, "{transcript}");
    assert!(stat(&stats, "roots_allocated") <= 2, "{stats}");
    assert_eq!(stat(&stats, "roots_invalidated"), 0, "{stats}");
    assert!(stat(&stats, "faults") <= 2, "no faults after warm-up: {stats}");
    assert_eq!(stat(&stats, "hypercall"), 3, "two switches and a reset: {stats}");
}

#[test]
fn svm_roots_survive_mode_toggles_switches_and_reset() {
    check_roots(&run_svm("exit=1 guest=roots", 1));
}

#[test]
fn vmx_roots_survive_mode_toggles_switches_and_reset() {
    check_roots(&run_vmx("bochs-vmx-roots", "exit=1 guest=roots", 1));
}

#[test]
#[ignore = "heavy (minutes in Bochs): cargo xtask test --full runs it"]
fn vmx_full_io_to_every_port_and_more_vcpus_than_cpus() {
    let transcript = run_vmx("bochs-vmx-ioscan", "exit=1 guest=ioscan mem=1", 1);
    let (status, _, stats) = vm_end(&transcript, 1);
    assert_eq!(status, 0, "{transcript}");
    assert_eq!(stat(&stats, "io"), 65_537, "{stats}");
    let transcript = run_vmx("bochs-vmx-3vcpus", "exit=1 guest=memtouch mem=64 vcpus=3 guest.mib=8", 1);
    assert!(transcript.contains("[vm 1] memtouch: 3 vcpus"), "{transcript}");
    assert_eq!(vm_end(&transcript, 1).0, 0, "{transcript}");
}

/// The guests under KVM with the host's real VMX or SVM (nested virtualization): what the
/// `kvm` CI job runs, on Intel or AMD runners alike.
#[test]
#[ignore = "needs /dev/kvm with nested virtualization; the kvm CI job runs it"]
fn kvm_runs_the_guests_on_the_hosts_virtualization() {
    if let Err(why) = taproot_testbed::qemu::Accel::kvm_status() {
        panic!("KVM cannot give Taproot VMX or SVM on this host: {why}");
    }
    let run = |cmdline: &str, last_vm: u32| {
        let mut qemu = Qemu::kernel(&elf(Profile::Release), cmdline);
        qemu.accel = taproot_testbed::qemu::Accel::Kvm;
        let mut console = qemu.spawn().unwrap();
        console
            .wait_for(&format!("taproot: vm {last_vm} exited"), QEMU_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        console.wait_exit(QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        console.transcript().to_string()
    };
    check_guests(&run("exit=1 guest=hello,memtouch,tlbprobe vcpus=2 mem=64 guest.mib=16", 3));
    check_multiboot1(&run("exit=1 guest=hello,memtouch format=multiboot vcpus=2 mem=48 guest.mib=8", 2));
    check_roots(&run("exit=1 guest=roots", 1));
    check_hostile_then_hello(&run("exit=1 guest=triplefault,wild,spin,hello16 mem=1 timeout_ms=300", 4), 4);
    // Where the emulators forgive: real-mode injection and what the host CPU advertises.
    check_msr16(&run("exit=1 guest=msr16 mem=1", 1));
    check_cpuid(&run("exit=1 guest=cpuid", 1));
    let xmmiso = run("exit=1 guest=xmmiso vcpus=3 mem=16", 1);
    check_vector_registers_are_each_vcpus_own(&xmmiso, xmmiso.contains("avx=true"));
    check_guardrail(&run("exit=1 guest=guardrails guest.test=xsetbv mem=16", 1), "xsetbv");
    check_guardrail(&run("exit=1 guest=guardrails guest.test=breakpoint vcpus=3 mem=16", 1), "breakpoint");
    check_cr8(&run("exit=1 guest=guardrails,hello guest.test=cr8 vcpus=2 mem=16", 2));
    check_guardrail(&run("exit=1 guest=guardrails guest.test=cr4 mem=16", 1), "cr4");
    check_guardrail(&run("exit=1 guest=guardrails guest.test=pae mem=16", 1), "pae");
    // A host NMI while a guest runs: on Intel runners, a real VMX NMI exit.
    check_nmi_in_a_guest(&run(NMI_IN_A_GUEST, 2));
}

/// Twenty `hello` VMs, then `tlbprobe` with three vCPUs, with one tag per CPU
/// (`max_tag=1`): every switch between two vCPUs on a CPU starts a new generation with a
/// full flush (SVM TLB_CONTROL flush-all, VMX INVVPID all-context), and tlbprobe's reader
/// still sees the discarded page.
const TWENTY_VMS_ON_ONE_TAG: &str = "exit=1 guest=hello,hello,hello,hello,hello,hello,hello,hello,hello,hello,\
hello,hello,hello,hello,hello,hello,hello,hello,hello,hello,tlbprobe vcpus=3 mem=32 max_tag=1";

fn check_twenty_vms_on_one_tag(transcript: &str) {
    for id in 1..=20 {
        assert!(transcript.contains(&format!("[vm {id}] hello from taproot guest")), "{transcript}");
        assert_eq!(vm_end(transcript, id).0, 0, "vm {id}: {transcript}");
    }
    assert!(transcript.contains("[vm 21] tlbprobe: PASS"), "{transcript}");
    assert_eq!(vm_end(transcript, 21).0, 0, "{transcript}");
    // Each CPU's `<cpu>:<generation>/<flushes>` after the last VM: rollovers happened, one
    // full flush each.
    let line = transcript.lines().rfind(|l| l.starts_with("taproot: cpu tags")).expect("a tags line");
    let mut generations = 0;
    for cpu in line.split(' ').skip(4) {
        let (generation, flushes) = cpu.split_once(':').unwrap().1.split_once('/').unwrap();
        assert_eq!(generation, flushes, "one flush per generation: {line}");
        generations += generation.parse::<u64>().unwrap();
    }
    assert!(generations > 21, "vCPUs sharing one tag roll over: {line}");
}

#[test]
fn svm_runs_twenty_vms_and_tlbprobe_on_one_asid_per_cpu() {
    check_twenty_vms_on_one_tag(&run_svm(TWENTY_VMS_ON_ONE_TAG, 21));
}

#[test]
fn vmx_runs_twenty_vms_and_tlbprobe_on_one_vpid_per_cpu() {
    let transcript = run_vmx("bochs-vmx-twenty", TWENTY_VMS_ON_ONE_TAG, 21);
    assert!(transcript.contains("virt=vmx"), "{transcript}");
    check_twenty_vms_on_one_tag(&transcript);
}

/// Today's UTC date as YYYY-MM-DD, from the host's clock.
fn host_utc_date() -> String {
    let days = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 86_400;
    // H. Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// `platform` with 2 vCPUs: fw_cfg says QEMU and 2 CPUs, the RTC shows the host's UTC date
/// (taken before and after the run, for a run across midnight), the RSDP comes from
/// `source` (the PVH start info, or the BIOS-area scan for multiboot) with a MADT of 2
/// processors, and the VM ends `exited` 0 through ACPI S5.
fn check_platform(transcript: &str, source: &str, date_before: &str, date_after: &str) {
    assert!(transcript.contains("[vm 1] platform: fw_cfg signature QEMU cpus 2"), "{transcript}");
    let rtc = transcript
        .lines()
        .find_map(|l| l.strip_prefix("[vm 1] platform: rtc "))
        .unwrap_or_else(|| panic!("no RTC line:\n{transcript}"));
    let date = rtc.split(' ').next().unwrap();
    assert!(date == date_before || date == date_after, "RTC {rtc}, host {date_before}..{date_after}");
    assert!(
        transcript.contains(&format!("[vm 1] platform: rsdp at 0xe0000 ({source}) madt processors 2")),
        "{transcript}"
    );
    let (status, state, stats) = vm_end(transcript, 1);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
    assert!(
        events_of(transcript, 1).iter().any(|e| e.contains("powered off through ACPI (S5, port 0x604)")),
        "the ACPI path, not the exit port: {transcript}"
    );
    assert_eq!(stat(&stats, "unknown_port_reads") + stat(&stats, "unknown_port_writes"), 0, "{stats}");
}

#[test]
fn svm_platform_guest_reads_fw_cfg_rtc_acpi_and_powers_off() {
    let before = host_utc_date();
    let transcript = run_svm("exit=1 guest=platform vcpus=2 mem=64", 1);
    check_platform(&transcript, "start info", &before, &host_utc_date());
}

#[test]
fn svm_multiboot_platform_guest_finds_the_rsdp_by_scanning() {
    let before = host_utc_date();
    let transcript = run_svm("exit=1 guest=platform format=multiboot vcpus=2 mem=64", 1);
    check_platform(&transcript, "scan", &before, &host_utc_date());
}

#[test]
fn vmx_platform_guest_reads_fw_cfg_rtc_acpi_and_powers_off() {
    let before = host_utc_date();
    let transcript = run_vmx("bochs-vmx-platform", "exit=1 guest=platform vcpus=2 mem=64", 1);
    check_platform(&transcript, "start info", &before, &host_utc_date());
}

const RESET_CMDLINE: &str = "exit=1 guest=reset16,hello16 mem=1";

/// reset16 resets the platform through 0xCF9 once: it prints its line twice (memory kept:
/// its counter), the VM logs the reset and ends `exited` 0, and hello16 runs after it.
fn check_reset(transcript: &str) {
    let lines: Vec<&str> = transcript.lines().filter(|l| l.starts_with("[vm 1] reset16:")).collect();
    assert_eq!(lines, ["[vm 1] reset16: resetting", "[vm 1] reset16: after reset"], "{transcript}");
    assert!(
        events_of(transcript, 1).iter().any(|e| e.contains("the guest reset the platform (port 0xcf9)")),
        "{transcript}"
    );
    let (status, state, _) = vm_end(transcript, 1);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
    assert!(transcript.contains("[vm 2] hello from a real-mode guest"), "{transcript}");
    assert_eq!(vm_end(transcript, 2).0, 0, "{transcript}");
}

#[test]
fn svm_guest_reset_through_0xcf9_restarts_it_and_the_next_guest_runs() {
    check_reset(&run_svm(RESET_CMDLINE, 2));
}

#[test]
fn vmx_guest_reset_through_0xcf9_restarts_it_and_the_next_guest_runs() {
    check_reset(&run_vmx("bochs-vmx-reset", RESET_CMDLINE, 2));
}

/// `mmio` (64-bit: the LAPIC through many instruction forms, the I/O APIC, REP OUTSB to
/// the UART, REP INSB of fw_cfg's signature, a #PF from an emulated MOVSD with its CR2 and
/// error code), then `mmio32` (32-bit protected mode, paging off) and `outs16` (REP
/// INSB/OUTSB in real mode, 16-bit addresses): every device access emulated with the right
/// values, and counted.
fn check_mmio(transcript: &str) {
    assert!(transcript.contains("[vm 1] mmio: 23 checks, first failure 0"), "{transcript}");
    assert!(transcript.contains("[vm 1] mmio: rep outsb reached the uart"), "{transcript}");
    let (status, state, stats) = vm_end(transcript, 1);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
    // 6 LAPIC reads, 9 TPR writes each read back and one reset, 2 I/O APIC selects and reads.
    assert_eq!(stat(&stats, "mmio_emulated"), 29, "{stats}");
    assert_eq!(stat(&stats, "emulation_failed"), 0, "{stats}");
    assert!(
        transcript.contains("[vm 2] mmio32: lapic version 0x50014 and tpr 0x42 in 32-bit protected mode"),
        "{transcript}"
    );
    let (status, state, stats) = vm_end(transcript, 2);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
    assert_eq!(stat(&stats, "mmio_emulated"), 4, "{stats}");
    assert!(
        transcript.contains("[vm 3] outs16: rep insb read QEMU from fw_cfg, rep outsb wrote this line"),
        "{transcript}"
    );
    let (status, state, _) = vm_end(transcript, 3);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
}

#[test]
fn svm_device_pages_and_string_io_go_through_the_instruction_emulator() {
    check_mmio(&run_svm("exit=1 guest=mmio,mmio32,outs16 mem=16", 3));
}

#[test]
fn vmx_device_pages_and_string_io_go_through_the_instruction_emulator() {
    check_mmio(&run_vmx("bochs-vmx-mmio", "exit=1 guest=mmio,mmio32,outs16 mem=16", 3));
}

/// `mmio test=unsupported`: an `xchg` on the APIC page ends its VM `crashed` with the
/// instruction's bytes, and the next guest runs.
fn check_unsupported_instruction(transcript: &str) {
    assert!(transcript.contains("[vm 1] mmio: xchg on the TPR next"), "{transcript}");
    let (status, state, stats) = vm_end(transcript, 1);
    assert_eq!((status, state.as_str()), (-1, "crashed"), "{transcript}");
    assert_eq!(stat(&stats, "emulation_failed"), 1, "{stats}");
    let reason = "(41 87 80 80 00 00 00) accessing the local APIC at 0xfee00080 cannot be emulated";
    assert!(events_of(transcript, 1).iter().any(|e| e.contains(reason)), "{transcript}");
    assert!(!transcript.contains("[vm 1] mmio: FAILED"), "{transcript}");
    let (status, state, _) = vm_end(transcript, 2);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
}

#[test]
fn svm_instruction_the_emulator_lacks_ends_only_its_vm() {
    check_unsupported_instruction(&run_svm("exit=1 guest=mmio,hello guest.test=unsupported mem=16", 2));
}

#[test]
fn vmx_instruction_the_emulator_lacks_ends_only_its_vm() {
    let cmdline = "exit=1 guest=mmio,hello guest.test=unsupported mem=16";
    check_unsupported_instruction(&run_vmx("bochs-vmx-mmio-unsupported", cmdline, 2));
}

/// `spin` loops on CPU 1 (`nmi_ms` puts the vCPUs on the APs) when the boot CPU sends it
/// an NMI: SVM holds it over the #VMEXIT and delivers it to the host IDT after STGI; VMX's
/// NMI exit consumes it and the backend runs the host's handler. The handler reports it,
/// the guest runs on to its time limit, and hello16 runs next (and gets its own NMI,
/// probably in the host: it ends at once).
fn check_nmi_in_a_guest(transcript: &str) {
    let reported = transcript.find("taproot: nmi on cpu 1 (count 1)");
    let spin_ended = transcript.find("taproot: vm 1 exited");
    assert!(
        matches!((reported, spin_ended), (Some(r), Some(e)) if r < e),
        "the NMI sent while spin ran was handled while it ran: {transcript}"
    );
    assert!(!transcript.contains("taproot: exception"), "{transcript}");
    assert!(events_of(transcript, 1).iter().any(|e| e.contains("host sent an NMI")), "{transcript}");
    let (status, state, _) = vm_end(transcript, 1);
    assert_eq!((status, state.as_str()), (-1, "stopped"), "{transcript}");
    assert!(transcript.contains("[vm 2] hello from a real-mode guest"), "{transcript}");
    assert_eq!(vm_end(transcript, 2).0, 0, "{transcript}");
}

const NMI_IN_A_GUEST: &str = "exit=1 guest=spin,hello16 mem=1 timeout_ms=1500 nmi_ms=500";

#[test]
fn svm_host_nmi_in_a_guest_reaches_the_host_handler() {
    check_nmi_in_a_guest(&run_svm(NMI_IN_A_GUEST, 2));
}

#[test]
fn vmx_host_nmi_exit_runs_the_host_handler() {
    check_nmi_in_a_guest(&run_vmx("bochs-vmx-nmi", NMI_IN_A_GUEST, 2));
}

/// The `apic` guest's `timer` test: one-shot, periodic and TSC-deadline x2APIC timers with
/// HLT between ticks. The guest checks the counts against its TSC (never early; the
/// periodic count at least half the elapsed periods, `logic::periodic_ticks_plausible`),
/// and that a tick which expired while it ran with IF=0 arrives right after its STI (the
/// interrupt window); here the stats must show the injections, the timer expiries, the
/// window exit and the halts that ended.
fn check_apic_timer(transcript: &str) {
    assert!(transcript.contains("[vm 1] apic: timer ok"), "{transcript}");
    let (status, state, stats) = vm_end(transcript, 1);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
    // 1 one-shot + 10 periodic + 5 deadlines + 1 masked one-shot, each injected once.
    assert!(stat(&stats, "injected") >= 17, "{stats}");
    assert!(stat(&stats, "timer_expiries") >= 17, "{stats}");
    assert!(stat(&stats, "interrupt_window") >= 1, "{stats}");
    assert!(stat(&stats, "halts") >= 16, "the guest halted between ticks: {stats}");
    assert!(stat(&stats, "wakeups") >= 16, "{stats}");
}

#[test]
fn svm_x2apic_timer_in_three_modes_wakes_a_halted_guest() {
    check_apic_timer(&run_svm("exit=1 guest=apic guest.test=timer mem=16", 1));
}

#[test]
fn vmx_x2apic_timer_in_three_modes_wakes_a_halted_guest() {
    check_apic_timer(&run_vmx("bochs-vmx-apic-timer", "exit=1 guest=apic guest.test=timer mem=16", 1));
}

/// The `apic` guest's `running` test: TSC-deadline expiries while the guest spins with
/// IF=1 and never halts. Each must reach the guest's handler within 5 ms of guest TSC
/// (the guest checks). The guest TSC is the host's clock, and both emulators here tie it
/// to instructions (QEMU with `-icount shift=0`: 1 ns per instruction; Bochs), so the
/// bound is 5 M instructions against the host's 10 ms tick of 10 M, what a host that
/// delivers expiries only at its tick is late by, and no wall time (a loaded machine
/// descheduling TCG) enters it.
fn check_apic_running(transcript: &str) {
    // The measurement, for `--nocapture`.
    transcript.lines().filter(|l| l.contains("apic: running: latency")).for_each(|l| eprintln!("{l}"));
    assert!(transcript.contains("[vm 1] apic: running ok"), "{transcript}");
    let (status, state, stats) = vm_end(transcript, 1);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
    assert_eq!(stat(&stats, "halts"), 0, "the guest spun, it never halted: {stats}");
    assert!(stat(&stats, "timer_expiries") >= 8, "{stats}");
}

#[test]
fn svm_timer_fires_on_time_while_the_vcpu_spins() {
    let mut qemu = Qemu::kernel(&elf(Profile::Release), "exit=1 guest=apic guest.test=running mem=16");
    qemu.icount = true;
    let mut console = qemu.spawn().unwrap();
    console.wait_for("taproot: vm 1 exited", QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    console.wait_exit(QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    check_apic_running(console.transcript());
}

#[test]
fn vmx_timer_fires_on_time_while_the_vcpu_spins() {
    check_apic_running(&run_vmx("bochs-vmx-apic-running", "exit=1 guest=apic guest.test=running mem=16", 1));
}

/// The `apic` guest's `ipi` test: 20 round trips of fixed IPIs through the x2APIC ICR
/// between two vCPUs, each halted until its IPI arrives (a wake of a halted vCPU, or a kick
/// of one in the guest, on the other host CPU or time-sliced with it).
fn check_apic_ipi(transcript: &str) {
    assert!(transcript.contains("[vm 1] apic: ipi ok"), "{transcript}");
    let (status, state, stats) = vm_end(transcript, 1);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
    assert!(stat(&stats, "injected") >= 40, "{stats}");
}

#[test]
fn svm_x2apic_ipis_between_two_vcpus_in_both_directions() {
    check_apic_ipi(&run_svm("exit=1 guest=apic guest.test=ipi vcpus=2 mem=16", 1));
}

#[test]
fn vmx_x2apic_ipis_between_two_vcpus_in_both_directions() {
    check_apic_ipi(&run_vmx("bochs-vmx-apic-ipi", "exit=1 guest=apic guest.test=ipi vcpus=2 mem=16", 1));
}

/// The `apic` guest's `haltif0` test: vCPU 1 halts with IF=0 and IPIs do not wake it; the
/// VM is not ended by it (vCPU 0 exits with 0), and the stats show it halted at the end.
fn check_apic_halt_if0(transcript: &str) {
    assert!(transcript.contains("[vm 1] apic: haltif0 ok"), "{transcript}");
    let (status, state, stats) = vm_end(transcript, 1);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
    assert_eq!(stat(&stats, "halted_vcpus"), 1, "{stats}");
}

#[test]
fn svm_halt_with_interrupts_off_stays_halted_while_the_other_vcpu_finishes() {
    check_apic_halt_if0(&run_svm("exit=1 guest=apic guest.test=haltif0 vcpus=2 mem=16", 1));
}

#[test]
fn vmx_halt_with_interrupts_off_stays_halted_while_the_other_vcpu_finishes() {
    let cmdline = "exit=1 guest=apic guest.test=haltif0 vcpus=2 mem=16";
    check_apic_halt_if0(&run_vmx("bochs-vmx-apic-haltif0", cmdline, 1));
}

/// The `apic` guest's `initsipi` test with `aps=sipi`: vCPU 1 waits for INIT-SIPI-SIPI
/// and starts in real mode at the vector's page (CS 0x800, IP 0).
fn check_apic_init_sipi(transcript: &str) {
    assert!(transcript.contains("[vm 1] apic: initsipi: marker 0x1234, AP CS 0x800"), "{transcript}");
    assert!(transcript.contains("[vm 1] apic: initsipi ok"), "{transcript}");
    assert_eq!(vm_end(transcript, 1).0, 0, "{transcript}");
}

#[test]
fn svm_init_sipi_starts_an_ap_in_real_mode_at_the_vector() {
    check_apic_init_sipi(&run_svm("exit=1 guest=apic guest.test=initsipi vcpus=2 aps=sipi mem=16", 1));
}

#[test]
fn vmx_init_sipi_starts_an_ap_in_real_mode_at_the_vector() {
    let cmdline = "exit=1 guest=apic guest.test=initsipi vcpus=2 aps=sipi mem=16";
    check_apic_init_sipi(&run_vmx("bochs-vmx-apic-initsipi", cmdline, 1));
}

/// The `apic` guest's `nmi` test: a self-NMI through the ICR, and a second one sent from
/// its handler, delivered only after the handler's IRET (the NMI window).
fn check_apic_nmi(transcript: &str) {
    assert!(transcript.contains("[vm 1] apic: nmi: 2 NMIs, 0 inside the handler"), "{transcript}");
    let (status, _, stats) = vm_end(transcript, 1);
    assert_eq!(status, 0, "{transcript}");
    assert_eq!(stat(&stats, "nmis_injected"), 2, "{stats}");
}

#[test]
fn svm_nmis_are_delivered_and_never_nest() {
    check_apic_nmi(&run_svm("exit=1 guest=apic guest.test=nmi mem=16", 1));
}

#[test]
fn vmx_nmis_are_delivered_and_never_nest() {
    check_apic_nmi(&run_vmx("bochs-vmx-apic-nmi", "exit=1 guest=apic guest.test=nmi mem=16", 1));
}

/// The `apic` guest's `pit` test: PIT channel 0 through I/O APIC pin 2 (the 8259 pair
/// masked), mode 2 at ~100 Hz with the guest halted between ticks, its 10 ticks held by
/// the guest to the TSC (`logic::periodic_ticks_plausible`: never more than the elapsed
/// periods, at least half); then mode 0: exactly one interrupt, after its count.
fn check_apic_pit(transcript: &str) {
    assert!(transcript.contains("[vm 1] apic: pit one-shot: 1 interrupts in 5 periods"), "{transcript}");
    assert!(transcript.contains("[vm 1] apic: pit ok"), "{transcript}");
    let (status, _, stats) = vm_end(transcript, 1);
    assert_eq!(status, 0, "{transcript}");
    assert!(stat(&stats, "injected") >= 11, "10 periodic ticks and the one-shot: {stats}");
    assert!(stat(&stats, "halts") >= 10, "the guest halted between ticks: {stats}");
}

#[test]
fn svm_pit_through_the_ioapic_wakes_a_halted_guest() {
    check_apic_pit(&run_svm("exit=1 guest=apic guest.test=pit mem=16 timeout_ms=10000", 1));
}

#[test]
fn vmx_pit_through_the_ioapic_wakes_a_halted_guest() {
    check_apic_pit(&run_vmx(
        "bochs-vmx-apic-pit",
        "exit=1 guest=apic guest.test=pit mem=16 timeout_ms=10000",
        1,
    ));
}

/// The `apic` guest's `rtc` test: the RTC's 64 Hz periodic interrupt through I/O APIC
/// pin 8, re-armed by reading register C; the ticks after the first held to the TSC.
fn check_apic_rtc(transcript: &str) {
    assert!(transcript.contains("[vm 1] apic: rtc ok"), "{transcript}");
    let (status, _, stats) = vm_end(transcript, 1);
    assert_eq!(status, 0, "{transcript}");
    assert!(stat(&stats, "injected") >= 10, "{stats}");
}

#[test]
fn svm_rtc_periodic_interrupt_through_the_ioapic() {
    check_apic_rtc(&run_svm("exit=1 guest=apic guest.test=rtc mem=16 timeout_ms=10000", 1));
}

#[test]
fn vmx_rtc_periodic_interrupt_through_the_ioapic() {
    check_apic_rtc(&run_vmx(
        "bochs-vmx-apic-rtc",
        "exit=1 guest=apic guest.test=rtc mem=16 timeout_ms=10000",
        1,
    ));
}

/// `pic16`, a built-in real-mode guest, sets the 8259 pair up as a BIOS does (bases 0x08
/// and 0x70), unmasks IRQ 0 and takes 5 PIT ticks through its IVT entry 8, each ended with
/// a non-specific EOI: the ExtINT path through vCPU 0's LINT0, the local APIC untouched.
fn check_pic16(transcript: &str) {
    assert!(
        transcript.contains("[vm 1] pic16: 5 ticks of IRQ 0 through the 8259 and the IVT"),
        "{transcript}"
    );
    let (status, state, stats) = vm_end(transcript, 1);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
    assert!(stat(&stats, "injected") >= 5, "{stats}");
}

#[test]
fn svm_real_mode_guest_takes_irq0_through_the_8259_and_its_ivt() {
    check_pic16(&run_svm("exit=1 guest=pic16 mem=1 timeout_ms=10000", 1));
}

#[test]
fn vmx_real_mode_guest_takes_irq0_through_the_8259_and_its_ivt() {
    check_pic16(&run_vmx("bochs-vmx-pic16", "exit=1 guest=pic16 mem=1 timeout_ms=10000", 1));
}

/// `halt16` halts with IF=0 for good: no exit ever comes, yet the VM is stopped at its
/// time limit (a sleeping vCPU blocks no longer than that), and the next guest runs.
fn check_halted_guest_meets_its_time_limit(transcript: &str) {
    let (status, state, _) = vm_end(transcript, 1);
    assert_eq!((status, state.as_str()), (-1, "stopped"), "{transcript}");
    assert!(events_of(transcript, 1).iter().any(|e| e.contains("time limit")), "{transcript}");
    assert!(transcript.contains("[vm 2] hello from a real-mode guest"), "{transcript}");
    let (status, state, _) = vm_end(transcript, 2);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
}

const HALTED_FOR_GOOD: &str = "exit=1 guest=halt16,hello16 mem=1 timeout_ms=300";

#[test]
fn svm_guest_halted_for_good_is_stopped_at_its_time_limit() {
    check_halted_guest_meets_its_time_limit(&run_svm(HALTED_FOR_GOOD, 2));
}

#[test]
fn vmx_guest_halted_for_good_is_stopped_at_its_time_limit() {
    check_halted_guest_meets_its_time_limit(&run_vmx("bochs-vmx-halt16", HALTED_FOR_GOOD, 2));
}

/// The bzImage guest (`bzboot`, guest-images' runtime wrapped by xtask into a setup header
/// and a 64-bit payload) checks the Linux boot protocol's 64-bit entry: long mode at
/// 1 MiB + 0x200 with CS = __BOOT_CS, rsi = boot_params; it prints the command line, the
/// e820 map (the loader's boot tables reserved) and its initrd (the `hello` ELF, placed
/// page-aligned at the top of RAM) with a checksum compared here with the file's.
/// The line a guest prints of its initrd, the built guest `file` placed page-aligned at
/// the top of `mem_mib` of RAM: `<who>: initrd at <gpa> size <n> fnv1a <FNV-1a>`.
fn initrd_line(who: &str, file: &str, mem_mib: u64) -> String {
    let initrd = std::fs::read(paths::workspace_root().join("target/x86_64-unknown-none/release").join(file))
        .expect("the guests are built");
    let fnv = taproot_testbed::fnv1a64(&initrd);
    let gpa = ((mem_mib << 20) - initrd.len() as u64) & !0xFFF;
    format!("{who}: initrd at {gpa:#x} size {} fnv1a {fnv:#018x}", initrd.len())
}

fn check_bzimage(transcript: &str) {
    for line in [
        "[vm 1] bzboot: entry rip 0x100200 cs 0x10 ".to_string(),
        "rsi 0x1000\n".to_string(),
        r#"[vm 1] bzboot: cmdline "console=ttyS0 root=/dev/ram0""#.to_string(),
        "[vm 1] bzboot: ram ends at 0x4000000".to_string(),
        "[vm 1] bzboot: e820 0x0-0x3000 ram 0x3000-0xa000 reserved 0xa000-0xa0000 ram 0xa0000-0x100000 reserved \
         0x100000-0x4000000 ram"
            .to_string(),
        format!("[vm 1] {}", initrd_line("bzboot", "hello", 64)),
    ] {
        assert!(transcript.contains(&line), "no {line:?} in:\n{transcript}");
    }
    let (status, state, _) = vm_end(transcript, 1);
    assert_eq!((status, state.as_str()), (0, "exited"), "{transcript}");
}

const BZIMAGE_CMDLINE: &str =
    "exit=1 guest=bzboot format=bzimage initrd=hello mem=64 guest.console=ttyS0 guest.root=/dev/ram0";

#[test]
fn svm_boots_a_bzimage_in_long_mode_with_boot_params_and_initrd() {
    check_bzimage(&run_svm(BZIMAGE_CMDLINE, 1));
}

#[test]
fn vmx_boots_a_bzimage_in_long_mode_with_boot_params_and_initrd() {
    let transcript = run_vmx("bochs-vmx-bzimage", BZIMAGE_CMDLINE, 1);
    assert!(transcript.contains("virt=vmx"), "{transcript}");
    check_bzimage(&transcript);
}

/// A PVH guest gets its initrd as hvm_start_info module 0 (here the built `memtouch`):
/// hello prints where it is and its checksum, compared with the file's.
#[test]
fn svm_pvh_guest_gets_its_initrd_as_module_0() {
    let transcript = run_svm("exit=1 guest=hello format=pvh initrd=memtouch mem=64", 1);
    let line = format!("[vm 1] {}", initrd_line("hello", "memtouch", 64));
    assert!(transcript.contains(&line), "no {line:?} in:\n{transcript}");
    assert_eq!(vm_end(&transcript, 1).0, 0, "{transcript}");
}
