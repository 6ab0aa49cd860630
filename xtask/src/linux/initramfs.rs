//! The test guest's initramfs: `busybox-static` at `/bin/busybox`, links for the applets
//! the shell needs, `/dev/console`, and the project's `/init` (a busybox `sh` script that
//! prints the lines `taproot_testbed::linux` names, then runs a shell on the console).
//!
//! The archive is a function of busybox's bytes alone: entries sorted by name, one fixed
//! mtime, gzip without a name or time stamp, so the same busybox gives the same file.

use super::cpio::{self, Entry};
use std::io::Write;
use taproot_testbed::linux::{CPUS, DATE, FACTS, INIT_OK, LOC, NO_SHELL, SHELL, SHELL_EXIT};

/// Every member's mtime (the epoch): nothing in the archive depends on when it was built.
const MTIME: u32 = 0;

/// The applets linked in `/bin`: what `/init` uses and what a person at the shell expects.
pub const APPLETS: [&str; 49] = [
    "ash", "awk", "cat", "chmod", "clear", "cp", "cttyhack", "date", "dd", "df", "dmesg", "echo", "env",
    "false", "find", "free", "grep", "halt", "head", "hostname", "id", "kill", "less", "ln", "ls", "mkdir",
    "mknod", "more", "mount", "mv", "poweroff", "ps", "pwd", "reboot", "rm", "sed", "seq", "setsid", "sh",
    "sleep", "sort", "stty", "sync", "tail", "top", "true", "umount", "uname", "uptime",
];

/// `/dev/console` (Documentation/admin-guide/devices.txt: char 5:1), so `/init` has its
/// standard streams even before devtmpfs is mounted.
const CONSOLE: (u32, u32) = (5, 1);

/// The `/init` script.
pub fn init_script() -> String {
    format!(
        r#"#!/bin/sh
# Taproot's test init (written by `cargo xtask linux-assets`): mount the kernel's
# filesystems, report what the guest sees, then a shell on the console.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo {INIT_OK}
cpus=$(grep -c '^processor' /proc/cpuinfo)
today=$(date -u +%Y-%m-%d)
loc=$(awk '$1 == "LOC:" {{ s = $2; for (i = 3; i <= NF && $i ~ /^[0-9]+$/; i++) s = s "," $i; print s }}' /proc/interrupts)
echo "{FACTS} {CPUS}=$cpus {DATE}=$today {LOC}=$loc"
# `{NO_SHELL}` on the command line: no shell, straight to the power-off (tests
# without a console input route).
if ! grep -q {NO_SHELL} /proc/cmdline; then
    echo {SHELL}
    setsid cttyhack sh
fi
echo {SHELL_EXIT}
poweroff -f
"#
    )
}

/// The entries, sorted by name, for a given busybox binary.
pub fn entries(busybox: Vec<u8>) -> Vec<Entry> {
    let mut entries = vec![
        Entry::dir("bin"),
        Entry::file("bin/busybox", 0o755, busybox),
        Entry::dir("dev"),
        Entry::char_device("dev/console", 0o600, CONSOLE.0, CONSOLE.1),
        Entry::file("init", 0o755, init_script().into_bytes()),
        Entry::dir("proc"),
        Entry::dir("root"),
        Entry::dir("sys"),
        Entry::dir("tmp"),
    ];
    entries.extend(APPLETS.iter().map(|applet| Entry::symlink(&format!("bin/{applet}"), "busybox")));
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

/// What the archive is made of besides busybox's bytes: a cached initramfs built with
/// another `key` is stale.
pub fn key(busybox_version: &str) -> String {
    format!("busybox {busybox_version}\napplets {}\n{}", APPLETS.join(" "), init_script())
}

/// The gzip-compressed newc archive.
pub fn build(busybox: Vec<u8>) -> Vec<u8> {
    let archive = cpio::write(&entries(busybox), MTIME);
    // GzBuilder writes mtime 0 and no file name unless told: the same input, the same bytes.
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    gz.write_all(&archive).expect("writing to a Vec");
    gz.finish().expect("writing to a Vec")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn the_initramfs_unpacks_to_busybox_its_links_and_init() {
        let busybox = b"\x7fELF a static busybox".to_vec();
        let entries = cpio::parse(&gunzip(&build(busybox.clone()))).unwrap();
        let find =
            |name: &str| entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(find("bin/busybox").data, busybox);
        assert_eq!(find("bin/busybox").mode, cpio::S_IFREG | 0o755);
        for applet in
            ["sh", "mount", "cat", "echo", "poweroff", "reboot", "date", "cttyhack", "setsid", "awk"]
        {
            let link = find(&format!("bin/{applet}"));
            assert_eq!((link.mode & cpio::S_IFMT, link.data.as_slice()), (cpio::S_IFLNK, &b"busybox"[..]));
        }
        assert_eq!(find("dev/console").rdev, (5, 1));
        assert_eq!(find("dev/console").mode & cpio::S_IFMT, cpio::S_IFCHR);
        let init = find("init");
        assert_eq!(init.mode, cpio::S_IFREG | 0o755);
        assert!(init.data.starts_with(b"#!/bin/sh\n"));
        for dir in ["proc", "sys", "dev", "bin"] {
            assert_eq!(find(dir).mode & cpio::S_IFMT, cpio::S_IFDIR);
        }
        // Sorted, so a parent comes before what it holds.
        assert!(entries.windows(2).all(|w| w[0].name < w[1].name));
    }

    #[test]
    fn the_same_busybox_gives_the_same_bytes() {
        let a = build(b"busybox".to_vec());
        assert_eq!(a, build(b"busybox".to_vec()));
        assert_ne!(a, build(b"busybox 2".to_vec()));
        // gzip header: no mtime (bytes 4..8), no name flag.
        assert_eq!(&a[4..8], &[0, 0, 0, 0]);
        assert_eq!(a[3] & 0x08, 0);
    }

    #[test]
    fn the_key_changes_with_what_goes_in() {
        assert_eq!(key("1.35"), key("1.35"));
        assert_ne!(key("1.35"), key("1.36"));
        assert!(key("1.35").contains(&init_script()));
    }

    #[test]
    fn init_prints_each_marker_and_starts_a_console_shell() {
        let script = init_script();
        for marker in [INIT_OK, FACTS, SHELL, SHELL_EXIT] {
            assert!(
                script.lines().any(|l| l.trim_start().starts_with("echo") && l.contains(marker)),
                "{marker}"
            );
        }
        // The shell is skipped when the command line says so.
        let skip = script.find(&format!("if ! grep -q {NO_SHELL} /proc/cmdline; then")).unwrap();
        assert!(skip < script.find("setsid cttyhack sh").unwrap());
        let facts = script.lines().find(|l| l.contains(FACTS)).unwrap();
        for key in [CPUS, DATE, LOC] {
            assert!(facts.contains(&format!(" {key}=$")), "{key}");
        }
        // Every command the script runs is a linked applet.
        for command in ["mount", "grep", "date", "awk", "setsid", "cttyhack", "poweroff"] {
            assert!(APPLETS.contains(&command) && script.contains(command), "{command}");
        }
        // The marker goes out before anything that could hang (a slow /proc read).
        let marker = script.find(&format!("echo {INIT_OK}")).unwrap();
        assert!(marker < script.find("cpuinfo").unwrap());
    }
}
