//! The Linux test guest that `cargo xtask linux-assets` prepares: where its files are, and
//! the lines its `/init` prints on the console, which the tests wait for.
//!
//! The files are the current Debian `linux-image-cloud-amd64` kernel and an initramfs
//! with `busybox-static` and the project's own `/init`. On a host without `apt-get` they
//! are not there, and the Linux tests skip with a notice (see [`missing`]).

use crate::paths::workspace_root;
use std::path::PathBuf;

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
