//! `cargo xtask run`: boot the image with its console on this terminal.

use crate::{build, setup};
use taproot_testbed::bochs::Bochs;
use taproot_testbed::paths::Profile;
use taproot_testbed::qemu::{Accel, Qemu};

pub struct Options {
    pub profile: Profile,
    pub accel: String,
    pub bochs: bool,
    pub cpus: u32,
    pub memory_mib: u32,
    pub cmdline: String,
}

pub fn run(opts: Options) -> Result<(), String> {
    setup::ensure_target()?;
    if opts.bochs {
        setup::ensure_packages(setup::Need::All)?;
        let built = build::image(opts.profile, &opts.cmdline)?;
        let mut bochs = Bochs::new(&built.iso);
        bochs.cpus = opts.cpus;
        bochs.memory_mib = opts.memory_mib;
        eprintln!("xtask: booting {} in Bochs ({}); Ctrl-C ends it", built.iso.display(), bochs.cpu_model);
        let mut console = bochs.spawn("run-bochs").map_err(|e| e.to_string())?;
        console.follow(|line| println!("{line}"));
        return Ok(());
    }
    setup::ensure_packages(setup::Need::Qemu)?;
    let accel = match opts.accel.as_str() {
        "auto" => Accel::detect(),
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        other => {
            return Err(format!("unknown accelerator {other:?}: use kvm, tcg or auto"));
        }
    };
    let elf = build::elf(opts.profile)?;
    let mut qemu = Qemu::kernel(&elf, &opts.cmdline);
    qemu.accel = accel;
    qemu.cpus = opts.cpus;
    qemu.memory_mib = opts.memory_mib;
    eprintln!(
        "xtask: booting {} in QEMU ({}, {} CPUs, {} MiB); Ctrl-A X quits",
        elf.display(),
        accel.name(),
        opts.cpus,
        opts.memory_mib
    );
    let status = qemu.run_interactive().map_err(|e| format!("cannot run QEMU: {e}"))?;
    match taproot_testbed::qemu::guest_status(status) {
        Some(0) => Ok(()),
        Some(code) => Err(format!("the image exited with status {code}")),
        // Ctrl-A X: QEMU ends with status 0.
        None if status.success() => Ok(()),
        None => Err(format!("QEMU ended with {status}")),
    }
}
