//! Debian's own kernel in a child VM, end to end through the control plane: the image under
//! QEMU TCG (SVM), a 2-vCPU VM, the kernel uploaded as `format=bzimage` with the initramfs
//! that `cargo xtask linux-assets` builds (markers in `taproot_testbed::linux`), and its
//! console read back over the API. No `noapic`/`nolapic`/`acpi=off`: the platform must be
//! good enough for the kernel as it is.

use std::time::Instant;
use taproot_testbed::console::field;
use taproot_testbed::linux::{self, Image, today};

/// The bzImage boots to `/init` on 2 vCPUs with the date from the RTC and the LAPIC timer
/// ticking on both, and `poweroff -f`
/// (what `/init` runs at once when the command line has `linux::NO_SHELL`) ends the VM `exited`.
#[test]
#[ignore = "in --full until an unexplained failure before /init (1 of 16 runs) is understood; \
            cargo xtask test --full fetches the kernel and runs it"]
fn debian_kernel_boots_to_init_on_two_vcpus_and_powers_off() {
    if let Some(notice) = linux::missing() {
        eprintln!("{notice}");
        return;
    }
    let mut image = Image::boot(1024);
    image.create_linux_vm("linux", 2, 512, &format!("console=ttyS0 earlyprintk=serial {}", linux::NO_SHELL));
    let started = Instant::now();
    image.action("linux", "start");

    image.console_until("linux", 0, linux::INIT_OK);
    eprintln!("linux: {} after {:?} (TCG wall time)", linux::INIT_OK, started.elapsed());
    let (text, _) = image.console_until("linux", 0, linux::SHELL_EXIT);
    eprintln!("{text}");
    let facts = text.lines().find(|l| l.starts_with(linux::FACTS)).expect("facts line");
    assert_eq!(field(facts, linux::CPUS), Some("2"), "{facts}\n{text}");
    assert_eq!(field(facts, linux::DATE), Some(today().as_str()), "{facts}");
    // The local APIC timer ticks on both CPUs (`/proc/interrupts` LOC).
    let loc: Vec<u64> =
        field(facts, linux::LOC).unwrap_or("").split(',').filter_map(|n| n.parse().ok()).collect();
    assert!(loc.len() == 2 && loc.iter().all(|&n| n > 0), "{facts}");

    let info = image.wait_state("linux", "exited");
    assert_eq!(info["exit_status"], 0, "{info}");
    image.console.kill();
}
