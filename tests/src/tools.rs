//! The host tools the testbeds need, and how to get them on Debian.

use std::path::Path;
use std::process::Command;

/// A host program and the Debian packages that provide it.
#[derive(Clone, Copy, Debug)]
pub struct Tool {
    pub program: &'static str,
    pub packages: &'static [&'static str],
}

pub const QEMU: Tool = Tool { program: "qemu-system-x86_64", packages: &["qemu-system-x86"] };
pub const BOCHS: Tool = Tool { program: "bochs", packages: &["bochs", "bochsbios", "vgabios", "bochs-term"] };
pub const GRUB_MKRESCUE: Tool = Tool {
    program: "grub-mkrescue",
    packages: &["grub-common", "grub-pc-bin", "grub-efi-amd64-bin", "xorriso", "mtools"],
};
pub const SCRIPT: Tool = Tool { program: "script", packages: &["bsdutils"] };

/// Files some packages provide that their program's presence does not prove.
pub const BOCHS_BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
pub const VGA_BIOS: &str = "/usr/share/vgabios/vgabios.bin";
pub const GRUB_PC_DIR: &str = "/usr/lib/grub/i386-pc";
pub const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";
/// UEFI firmware for QEMU (Debian's `ovmf`), to boot the ISO the way UEFI clouds do.
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// Every tool any testbed uses, with the packages for the files above.
pub fn all_packages() -> Vec<&'static str> {
    let mut packages: Vec<&str> =
        [QEMU, BOCHS, GRUB_MKRESCUE, SCRIPT].iter().flat_map(|t| t.packages.iter().copied()).collect();
    packages.push("ovmf");
    packages.sort_unstable();
    packages.dedup();
    packages
}

/// Whether `program` is on PATH.
pub fn has_program(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The Debian packages missing for the testbeds: tools not on PATH, firmware files absent.
pub fn missing_packages() -> Vec<&'static str> {
    let mut missing = Vec::new();
    for tool in [QEMU, BOCHS, GRUB_MKRESCUE, SCRIPT] {
        if !has_program(tool.program) {
            missing.extend(tool.packages);
        }
    }
    for (file, package) in [
        (BOCHS_BIOS, "bochsbios"),
        (VGA_BIOS, "vgabios"),
        (GRUB_PC_DIR, "grub-pc-bin"),
        (GRUB_EFI_DIR, "grub-efi-amd64-bin"),
        (OVMF, "ovmf"),
    ] {
        if !Path::new(file).exists() {
            missing.push(package);
        }
    }
    if !has_program("mformat") {
        missing.push("mtools");
    }
    if !has_program("xorriso") {
        missing.push("xorriso");
    }
    missing.sort_unstable();
    missing.dedup();
    missing
}
