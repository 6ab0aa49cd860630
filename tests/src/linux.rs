//! The Linux test guest that `cargo xtask linux-assets` prepares: where its files are, and
//! the lines its `/init` prints on the console, which the tests wait for.
//!
//! The files are the current Debian `linux-image-cloud-amd64` kernel and an initramfs
//! with `busybox-static` and the project's own `/init`. On a host without `apt-get` they
//! are not there, and the Linux tests skip with a notice (see [`missing`]).

use crate::api::{Client, expect as ok, free_port};
use crate::console::Console;
use crate::paths::{self, Profile, workspace_root};
use crate::qemu::Qemu;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The first line `/init` prints, right after mounting `/proc`, `/sys` and `/dev`.
pub const INIT_OK: &str = "TAPROOT-INIT-OK";
/// The line with what the guest sees, as `key=value` fields (`console::field`):
/// [`CPUS`], [`DATE`] and [`LOC`].
pub const FACTS: &str = "TAPROOT-FACTS";
/// `/proc/cpuinfo`'s processor count.
pub const CPUS: &str = "cpus";
/// `date -u +%Y-%m-%d`: the guest's date, from the RTC.
pub const DATE: &str = "date";
/// `/proc/interrupts`' LOC counts (local timer interrupts), one per CPU, comma-separated.
pub const LOC: &str = "loc";
/// Printed just before the interactive shell starts on the console.
pub const SHELL: &str = "TAPROOT-SHELL";
/// Printed when that shell exits, before `/init` powers the VM off.
pub const SHELL_EXIT: &str = "TAPROOT-SHELL-EXIT";

/// On the kernel command line: `/init` skips the shell and powers off right after
/// [`SHELL_EXIT`] (for tests, which have no console input).
pub const NO_SHELL: &str = "taproot.poweroff";

/// Where the assets are: `target/linux/`.
pub fn dir() -> PathBuf {
    workspace_root().join("target/linux")
}

/// The kernel as Debian ships it (`/boot/vmlinuz-*`), for `format=bzimage`.
pub fn bzimage() -> PathBuf {
    dir().join("vmlinuz")
}

/// The same kernel's uncompressed ELF, for `format=pvh`.
pub fn vmlinux() -> PathBuf {
    dir().join("vmlinux")
}

/// The initramfs (newc cpio, gzip).
pub fn initramfs() -> PathBuf {
    dir().join("initramfs.cpio.gz")
}

/// The version of the kernel the files hold (Debian's package version).
pub fn version_file() -> PathBuf {
    dir().join("version")
}

/// `None` when every asset is there; otherwise the notice a test prints when it skips.
pub fn missing() -> Option<String> {
    let absent: Vec<String> = [bzimage(), vmlinux(), initramfs()]
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    (!absent.is_empty()).then(|| {
        format!(
            "skipped: no Linux test assets ({}); `cargo xtask linux-assets` makes them",
            absent.join(", ")
        )
    })
}

/// The API token the Linux tests boot the image with.
pub const TOKEN: &str = "e2e-test-token";
/// Bounds the image's own boot to its API (not a speed assertion).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// TCG runs the nested kernel slowly; this bounds a hang, it is not a speed assertion.
pub const LINUX_TIMEOUT: Duration = Duration::from_secs(600);

/// What a kernel prints when it gives up (early boot and later): waits stop there.
pub const PANICS: [&str; 2] = ["PANIC: early exception", "Kernel panic"];

/// The release image under QEMU TCG with its API forwarded: the image's serial console and
/// a client for its API.
pub struct Image {
    pub console: Console,
    pub client: Client,
}

impl Image {
    /// Boots the release image (`memory_mib` of RAM: uploads of images are streamed into
    /// the VM, but the heap is an eighth of it) and waits for its API.
    pub fn boot(memory_mib: u32) -> Image {
        let elf = paths::built_elf(Profile::Release).unwrap_or_else(|e| panic!("{e}"));
        let port = free_port().unwrap();
        let mut qemu = Qemu::kernel(&elf, &format!("ip=10.0.2.15/24 gw=10.0.2.2 token={TOKEN}"));
        qemu.api_port = Some(port);
        qemu.memory_mib = memory_mib;
        let mut console = qemu.spawn().unwrap();
        console.wait_for("taproot: api listening", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        Image { console, client: Client::new(port, TOKEN) }
    }

    /// Creates VM `vm` with `vcpus` and `memory_mib`, uploads the test kernel as
    /// `format=bzimage` with `cmdline` (plain text; it is percent-encoded here) and the test
    /// initramfs. Does not start it.
    pub fn create_linux_vm(&self, vm: &str, vcpus: u32, memory_mib: u32, cmdline: &str) {
        let kernel = std::fs::read(bzimage()).unwrap();
        let initramfs = std::fs::read(initramfs()).unwrap();
        let body = format!(r#"{{"vcpus": {vcpus}, "memory_mib": {memory_mib}}}"#);
        ok(self.client.put(&format!("/v1/vms/{vm}"), body.as_bytes()), 201);
        let cmdline = percent_encode(cmdline);
        ok(self.client.put(&format!("/v1/vms/{vm}/image?format=bzimage&cmdline={cmdline}"), &kernel), 200);
        ok(self.client.put(&format!("/v1/vms/{vm}/initrd"), &initramfs), 200);
    }

    /// Posts `action` (`start`, `stop`, ...) to VM `vm`, expecting 200.
    pub fn action(&self, vm: &str, action: &str) {
        let body = format!(r#"{{"action": "{action}"}}"#);
        ok(self.client.post(&format!("/v1/vms/{vm}/actions"), body.as_bytes()), 200);
    }

    /// The VM's console from `offset` with long-polls until it contains `text` (searched
    /// from `offset`), or the kernel panicked, or the VM left `running`: then the test fails
    /// with the console so far and the VM's record. Returns the text read from `offset` and
    /// the offset after it.
    pub fn console_until(&self, vm: &str, offset: u64, text: &str) -> (String, u64) {
        let client = &self.client;
        let deadline = Instant::now() + LINUX_TIMEOUT;
        let mut offset = offset;
        let mut all = String::new();
        while Instant::now() < deadline {
            let r = ok(client.get(&format!("/v1/vms/{vm}/console?offset={offset}&wait_ms=2000")), 200);
            offset = r.header("x-console-next-offset").and_then(|v| v.parse().ok()).expect("next offset");
            all.push_str(&r.text());
            if all.contains(text) {
                return (all, offset);
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

    /// Polls VM `vm` until its state is `state`; returns its record.
    pub fn wait_state(&self, vm: &str, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + LINUX_TIMEOUT;
        loop {
            let info = ok(self.client.get(&format!("/v1/vms/{vm}")), 200).json();
            if info["state"] == state {
                return info;
            }
            assert!(Instant::now() < deadline, "{vm} never reached {state}: {info}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `text` for a query parameter: everything but unreserved characters percent-encoded.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Today's date (UTC) as `date -u +%Y-%m-%d` prints it, from the host clock.
pub fn today() -> String {
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

#[cfg(test)]
mod tests {
    #[test]
    fn percent_encode_keeps_unreserved_and_encodes_the_rest() {
        assert_eq!(super::percent_encode("console=ttyS0 a~b"), "console%3DttyS0%20a~b");
    }
}
