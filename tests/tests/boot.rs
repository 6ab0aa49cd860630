//! End-to-end boot tests: the images `cargo xtask test` built, booted in QEMU TCG and
//! Bochs, checked through their serial consoles. Each test stops only the emulator it
//! started (its `Console` is dropped), with a bounded timeout.

use std::time::Duration;
use taproot_testbed::bochs::Bochs;
use taproot_testbed::console::field;
use taproot_testbed::paths::{self, Profile};
use taproot_testbed::qemu::{Qemu, guest_status};

/// QEMU TCG reaches the banner in about a second; leave room for a loaded machine.
const QEMU_TIMEOUT: Duration = Duration::from_secs(60);
/// Bochs: BIOS and GRUB take about 6 s at 50 MIPS, the image a few more.
const BOCHS_TIMEOUT: Duration = Duration::from_secs(180);

fn elf(profile: Profile) -> std::path::PathBuf {
    paths::built_elf(profile).unwrap_or_else(|e| panic!("{e}"))
}

/// Boots `profile` under QEMU TCG with 2 CPUs through PVH and checks the banner.
fn qemu_banner_shows_two_cpus_and_svm(profile: Profile) {
    let mut console = Qemu::kernel(&elf(profile), "exit=1").spawn().unwrap();
    let banner = console.wait_for("taproot: ready", QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(field(&banner, "cpus"), Some("2"), "{banner}");
    assert_eq!(field(&banner, "virt"), Some("svm"), "{banner}");
    let features: Vec<&str> = field(&banner, "features").unwrap_or("").split(',').collect();
    assert!(features.contains(&"npt"), "{banner}");
    let mem: u64 = field(&banner, "mem").and_then(|m| m.parse().ok()).unwrap_or(0);
    assert!((400..=512).contains(&mem), "512 MiB machine reports mem={mem}: {banner}");
    let status = console.wait_exit(QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(guest_status(status), Some(0), "exit=1 powers off with status 0 ({status})");
    assert!(console.transcript().contains("booting via pvh"), "{}", console.transcript());
    assert_timer_ticks_on_every_cpu(console.transcript(), 2);
}

/// The APIC timer of every CPU fired while the image waited before its banner.
fn assert_timer_ticks_on_every_cpu(transcript: &str, cpus: usize) {
    let line = transcript
        .lines()
        .find(|l| l.contains("timer: ticks"))
        .unwrap_or_else(|| panic!("no timer line:\n{transcript}"));
    for cpu in 0..cpus {
        let ticks: u64 = field(line, &format!("cpu{cpu}"))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no ticks for cpu{cpu}: {line}"));
        assert!(ticks > 0, "cpu{cpu}'s APIC timer never fired: {line}");
    }
}

#[test]
fn qemu_tcg_debug_image_boots_two_cpus_with_svm_and_npt() {
    qemu_banner_shows_two_cpus_and_svm(Profile::Debug);
}

#[test]
fn qemu_tcg_release_image_boots_two_cpus_with_svm_and_npt() {
    qemu_banner_shows_two_cpus_and_svm(Profile::Release);
}

#[test]
fn qemu_tcg_page_fault_is_diagnosed_with_vector_and_cr2() {
    let mut console = Qemu::kernel(&elf(Profile::Debug), "exit=1 fault=pagefault").spawn().unwrap();
    console.wait_for("taproot: ready", QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let report = console.wait_for("taproot: exception", QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("#PF page fault (vector 14) on cpu 0"), "{report}");
    assert!(report.contains("cr2=0x4000dead0000"), "{report}");
    assert!(report.contains("rip=0x"), "{report}");
    console.wait_for("taproot: cpu 0 stopped", QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let status = console.wait_exit(QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(guest_status(status), Some(3), "an exception under exit=1 powers off with status 3");
}

#[test]
fn qemu_tcg_boots_the_iso_through_grub_and_multiboot2() {
    let iso = paths::scratch_dir("qemu-iso").unwrap().join("taproot.iso");
    taproot_testbed::iso::make(&elf(Profile::Debug), "exit=1 log=debug", &iso).unwrap();
    let mut console = Qemu::cdrom(&iso).spawn().unwrap();
    let banner = console.wait_for("taproot: ready", QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(field(&banner, "cpus"), Some("2"), "{banner}");
    assert_eq!(field(&banner, "virt"), Some("svm"), "{banner}");
    let transcript = console.transcript();
    assert!(transcript.contains("booting via multiboot2"), "{transcript}");
    assert!(transcript.contains("command line \"exit=1 log=debug\""), "{transcript}");
    let status = console.wait_exit(QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(guest_status(status), Some(0));
}

#[test]
fn qemu_tcg_boots_the_iso_under_uefi_firmware() {
    let iso = paths::scratch_dir("qemu-uefi-iso").unwrap().join("taproot.iso");
    taproot_testbed::iso::make(&elf(Profile::Release), "exit=1", &iso).unwrap();
    let mut console = Qemu::cdrom_uefi(&iso).spawn().unwrap();
    let banner = console.wait_for("taproot: ready", QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(field(&banner, "cpus"), Some("2"), "ACPI tables found through GRUB's RSDP tag: {banner}");
    assert!(console.transcript().contains("booting via multiboot2"));
    let status = console.wait_exit(QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(guest_status(status), Some(0));
}

/// Nested virtualization: what users run. Needs a usable /dev/kvm on a host with nested
/// VMX or SVM, so it runs only where asked (`--ignored`, the CI job with KVM).
#[test]
#[ignore = "needs /dev/kvm with nested virtualization; the kvm CI job runs it"]
fn kvm_boots_with_the_hosts_virtualization() {
    if let Err(why) = taproot_testbed::qemu::Accel::kvm_status() {
        panic!("KVM cannot give Taproot VMX or SVM on this host: {why}");
    }
    let mut qemu = Qemu::kernel(&elf(Profile::Release), "exit=1");
    qemu.accel = taproot_testbed::qemu::Accel::Kvm;
    let mut console = qemu.spawn().unwrap();
    let banner = console.wait_for("taproot: ready", QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(field(&banner, "cpus"), Some("2"), "{banner}");
    let virt = field(&banner, "virt").unwrap_or("");
    let features: Vec<&str> = field(&banner, "features").unwrap_or("").split(',').collect();
    match virt {
        "vmx" => assert!(features.contains(&"ept"), "{banner}"),
        "svm" => assert!(features.contains(&"npt"), "{banner}"),
        _ => panic!("KVM without nested virtualization: {banner}"),
    }
    let status = console.wait_exit(QEMU_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(guest_status(status), Some(0));
}

#[test]
fn bochs_vmx_iso_boots_two_cpus_with_vmx_and_ept() {
    let iso = paths::scratch_dir("bochs-vmx-iso").unwrap().join("taproot.iso");
    taproot_testbed::iso::make(&elf(Profile::Release), "exit=1", &iso).unwrap();
    let mut console = Bochs::new(&iso).spawn("bochs-vmx").unwrap();
    let banner = console.wait_for("taproot: ready", BOCHS_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(field(&banner, "cpus"), Some("2"), "{banner}");
    assert_eq!(field(&banner, "virt"), Some("vmx"), "{banner}");
    let features: Vec<&str> = field(&banner, "features").unwrap_or("").split(',').collect();
    for wanted in ["ept", "vpid", "unrestricted-guest"] {
        assert!(features.contains(&wanted), "missing {wanted}: {banner}");
    }
    assert!(console.transcript().contains("booting via multiboot2"));
    assert_timer_ticks_on_every_cpu(console.transcript(), 2);
    // No exit device in Bochs: the image powers off through ACPI S5, which ends Bochs.
    console.wait_exit(BOCHS_TIMEOUT).unwrap_or_else(|e| panic!("Bochs did not power off: {e}"));
}

#[test]
fn bochs_svm_iso_boots_two_cpus_with_svm_and_npt() {
    let iso = paths::scratch_dir("bochs-svm-iso").unwrap().join("taproot.iso");
    taproot_testbed::iso::make(&elf(Profile::Debug), "exit=1", &iso).unwrap();
    let mut bochs = Bochs::new(&iso);
    bochs.cpu_model = taproot_testbed::bochs::SVM_MODEL.into();
    let mut console = bochs.spawn("bochs-svm").unwrap();
    let banner = console.wait_for("taproot: ready", BOCHS_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(field(&banner, "cpus"), Some("2"), "{banner}");
    assert_eq!(field(&banner, "virt"), Some("svm"), "{banner}");
    let features: Vec<&str> = field(&banner, "features").unwrap_or("").split(',').collect();
    assert!(features.contains(&"npt"), "{banner}");
    console.wait_exit(BOCHS_TIMEOUT).unwrap_or_else(|e| panic!("Bochs did not power off: {e}"));
}
