//! Building the image: the `taproot` binary for `x86_64-unknown-none`, copied to
//! `target/taproot/<profile>/taproot.elf` and wrapped in a GRUB ISO; the last build is also
//! at `target/taproot/taproot.{elf,iso}`.

use crate::{cargo, run_cmd, setup::TARGET};
use std::path::PathBuf;
use taproot_testbed::paths::{self, Profile};

pub struct Built {
    pub elf: PathBuf,
    pub iso: PathBuf,
}

/// Builds the child guests of `guest-images/` (always optimised: they are small and the
/// emulators are slow), wraps those of [`crate::bzimage::GUESTS`] into bzImages, and
/// returns the directory holding them.
pub fn guests() -> Result<PathBuf, String> {
    run_cmd(cargo().args(["build", "--package", "guest-images", "--target", TARGET, "--release"]))?;
    let dir = paths::workspace_root().join("target").join(TARGET).join("release");
    crate::bzimage::wrap_guests(&dir)?;
    Ok(dir)
}

/// Compiles the ELF of `profile` (no ISO), with the guests embedded.
pub fn elf(profile: Profile) -> Result<PathBuf, String> {
    let guest_dir = guests()?;
    let mut cmd = cargo();
    cmd.args(["build", "--package", "hypervisor", "--bin", "taproot", "--target", TARGET]);
    cmd.env("TAPROOT_GUEST_DIR", &guest_dir);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)?;
    let built = paths::workspace_root().join("target").join(TARGET).join(profile.name()).join("taproot");
    let out = paths::elf(profile);
    std::fs::create_dir_all(out.parent().expect("elf path has a parent")).map_err(|e| e.to_string())?;
    std::fs::copy(&built, &out).map_err(|e| format!("cannot copy {}: {e}", built.display()))?;
    Ok(out)
}

/// Compiles the ELF and makes the ISO with `cmdline` in its grub.cfg.
pub fn image(profile: Profile, cmdline: &str) -> Result<Built, String> {
    let elf = elf(profile)?;
    let iso = paths::iso(profile);
    taproot_testbed::iso::make(&elf, cmdline, &iso)?;
    let dir = paths::image_dir();
    for (from, name) in [(&elf, "taproot.elf"), (&iso, "taproot.iso")] {
        std::fs::copy(from, dir.join(name)).map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
    }
    Ok(Built { elf: dir.join("taproot.elf"), iso: dir.join("taproot.iso") })
}
