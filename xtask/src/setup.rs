//! Installing what a fresh machine lacks: the bare-metal Rust target and Debian packages.

use crate::run_cmd;
use std::process::Command;
use taproot_testbed::tools;

pub const TARGET: &str = "x86_64-unknown-none";

/// Adds the `x86_64-unknown-none` target through rustup if it is missing.
pub fn ensure_target() -> Result<(), String> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output().map_err(|e| {
        format!("cannot run rustup ({e}); install the target with: rustup target add {TARGET}")
    })?;
    if String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == TARGET) {
        return Ok(());
    }
    run_cmd(Command::new("rustup").args(["target", "add", TARGET]))
}

/// Which testbed tools a command needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Iso,
    Qemu,
    All,
}

/// Installs the missing Debian packages when running as root with apt-get; otherwise
/// fails with the exact command to run.
pub fn ensure_packages(need: Need) -> Result<(), String> {
    let wanted: Vec<&str> = match need {
        Need::Iso => tools::GRUB_MKRESCUE.packages.to_vec(),
        Need::Qemu => tools::QEMU.packages.to_vec(),
        Need::All => tools::all_packages(),
    };
    let missing: Vec<&str> = tools::missing_packages().into_iter().filter(|p| wanted.contains(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !is_root || !tools::has_program("apt-get") {
        return Err(format!(
            "missing Debian packages: {}. Install them with:\n    sudo sh -c '{command}'",
            missing.join(" ")
        ));
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still: Vec<&str> = tools::missing_packages().into_iter().filter(|p| wanted.contains(p)).collect();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!("still missing after apt-get install: {}", still.join(" ")))
    }
}
