//! GRUB ISOs: `grub-mkrescue` makes one image that boots under BIOS and UEFI and loads
//! the ELF through multiboot2.

use std::path::Path;
use std::process::Command;

/// Writes `iso` holding `elf` and a grub.cfg that boots it at once with `cmdline`.
pub fn make(elf: &Path, cmdline: &str, iso: &Path) -> Result<(), String> {
    let stage = iso.with_extension("iso.d");
    let _ = std::fs::remove_dir_all(&stage);
    let grub = stage.join("boot").join("grub");
    std::fs::create_dir_all(&grub).map_err(|e| format!("cannot create {}: {e}", grub.display()))?;
    std::fs::copy(elf, stage.join("boot").join("taproot.elf"))
        .map_err(|e| format!("cannot copy {}: {e}", elf.display()))?;
    std::fs::write(grub.join("grub.cfg"), grub_cfg(cmdline))
        .map_err(|e| format!("cannot write grub.cfg: {e}"))?;
    let output = Command::new(crate::tools::GRUB_MKRESCUE.program)
        .arg("-o")
        .arg(iso)
        .arg(&stage)
        .output()
        .map_err(|e| format!("cannot run grub-mkrescue: {e}"))?;
    let _ = std::fs::remove_dir_all(&stage);
    if !output.status.success() {
        return Err(format!(
            "grub-mkrescue failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// The menu: no timeout, one entry. GRUB's own output stays on the screen, so the serial
/// console carries only Taproot's lines.
pub fn grub_cfg(cmdline: &str) -> String {
    // GRUB script metacharacters would let a command line escape the menu entry.
    let cmdline = cmdline.replace(['"', '\'', '\n', '\r', '\\', '$', ';', '{', '}', '#', '|', '&'], " ");
    format!(
        "set timeout=0\nset default=0\n\nmenuentry \"Taproot\" {{\n    multiboot2 /boot/taproot.elf {cmdline}\n    boot\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_cannot_break_out_of_the_menu_entry() {
        let cfg = super::grub_cfg("exit=1\n}\nmenuentry evil { $x; }");
        assert_eq!(cfg.matches('{').count(), 1, "only the entry's own braces remain");
        assert_eq!(cfg.matches('}').count(), 1);
        assert!(!cfg.contains('$'));
        assert!(!cfg.contains(';'));
        assert!(cfg.contains("multiboot2 /boot/taproot.elf exit=1"));
    }
}
