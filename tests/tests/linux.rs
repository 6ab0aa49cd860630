//! Debian's own kernel in a child VM, end to end through the control plane: the image under
//! QEMU TCG (SVM), a 2-vCPU VM, the kernel uploaded as `format=bzimage` with the initramfs
//! that `cargo xtask linux-assets` builds (markers in `taproot_testbed::linux`), and its
//! console read back over the API. No `noapic`/`nolapic`/`acpi=off`: the platform must be
//! good enough for the kernel as it is.

use std::time::{Duration, Instant};
use taproot_testbed::api::{Client, expect as ok, free_port};
use taproot_testbed::console::field;
use taproot_testbed::linux;
use taproot_testbed::paths::{self, Profile};
use taproot_testbed::qemu::Qemu;

const TOKEN: &str = "e2e-test-token";
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// TCG runs the nested kernel slowly; this bounds a hang, it is not a speed assertion.
const LINUX_TIMEOUT: Duration = Duration::from_secs(600);

/// What a kernel prints when it gives up (early boot and later): the test stops there.
const PANICS: [&str; 2] = ["PANIC: early exception", "Kernel panic"];

/// The VM's console from offset 0 with long-polls until it contains `text`, or the VM has
/// left state `running` (then the console so far and the VM's record, for the panic).
fn console_until(client: &Client, vm: &str, text: &str) -> String {
    let deadline = Instant::now() + LINUX_TIMEOUT;
    let mut offset = 0u64;
    let mut all = String::new();
    while Instant::now() < deadline {
        let r = ok(client.get(&format!("/v1/vms/{vm}/console?offset={offset}&wait_ms=2000")), 200);
        offset = r.header("x-console-next-offset").and_then(|v| v.parse().ok()).expect("next offset");
        all.push_str(&r.text());
        if all.contains(text) {
            return all;
        }
        let info = ok(client.get(&format!("/v1/vms/{vm}")), 200).json();
        if PANICS.iter().any(|p| all.contains(p)) {
            std::thread::sleep(Duration::from_secs(2));
            let rest = ok(client.get(&format!("/v1/vms/{vm}/console?offset={offset}")), 200).text();
            panic!("{vm}'s kernel panicked before {text:?}: {info}\nconsole:\n{all}{rest}");
        }
        if info["state"] != "running" && r.body.is_empty() {
            panic!("{vm} is {} before {text:?}: {info}\nconsole:\n{all}", info["state"]);
        }
    }
    panic!("{vm}'s console never showed {text:?}:\n{all}");
}

fn wait_state(client: &Client, vm: &str, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + LINUX_TIMEOUT;
    loop {
        let info = ok(client.get(&format!("/v1/vms/{vm}")), 200).json();
        if info["state"] == state {
            return info;
        }
        assert!(Instant::now() < deadline, "{vm} never reached {state}: {info}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Today's date (UTC) as `date -u +%Y-%m-%d` prints it, from the host clock.
fn today() -> String {
    let days = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 86_400;
    // Civil from days (H. Hinnant's algorithm), days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

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
    let kernel = std::fs::read(linux::bzimage()).unwrap();
    let initramfs = std::fs::read(linux::initramfs()).unwrap();
    let elf = paths::built_elf(Profile::Release).unwrap_or_else(|e| panic!("{e}"));
    let port = free_port().unwrap();
    let mut qemu = Qemu::kernel(&elf, &format!("ip=10.0.2.15/24 gw=10.0.2.2 token={TOKEN}"));
    qemu.api_port = Some(port);
    // The kernel upload is staged on the image's heap, an eighth of its RAM.
    qemu.memory_mib = 1024;
    let mut console = qemu.spawn().unwrap();
    console.wait_for("taproot: api listening", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let client = Client::new(port, TOKEN);

    ok(client.put("/v1/vms/linux", br#"{"vcpus": 2, "memory_mib": 512}"#), 201);
    let cmdline = format!("console%3DttyS0%20earlyprintk%3Dserial%20{}", linux::NO_SHELL);
    ok(client.put(&format!("/v1/vms/linux/image?format=bzimage&cmdline={cmdline}"), &kernel), 200);
    ok(client.put("/v1/vms/linux/initrd", &initramfs), 200);
    let started = Instant::now();
    ok(client.post("/v1/vms/linux/actions", br#"{"action": "start"}"#), 200);

    console_until(&client, "linux", linux::INIT_OK);
    eprintln!("linux: {} after {:?} (TCG wall time)", linux::INIT_OK, started.elapsed());
    let text = console_until(&client, "linux", linux::SHELL_EXIT);
    eprintln!("{text}");
    let facts = text.lines().find(|l| l.starts_with(linux::FACTS)).expect("facts line");
    assert_eq!(field(facts, linux::CPUS), Some("2"), "{facts}\n{text}");
    assert_eq!(field(facts, linux::DATE), Some(today().as_str()), "{facts}");
    // The local APIC timer ticks on both CPUs (`/proc/interrupts` LOC).
    let loc: Vec<u64> =
        field(facts, linux::LOC).unwrap_or("").split(',').filter_map(|n| n.parse().ok()).collect();
    assert!(loc.len() == 2 && loc.iter().all(|&n| n > 0), "{facts}");

    let info = wait_state(&client, "linux", "exited");
    assert_eq!(info["exit_status"], 0, "{info}");
    console.kill();
}
