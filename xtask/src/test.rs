//! `cargo xtask test`: lints, host tests, then the emulator tests.

use crate::{build, cargo, run_cmd, setup};
use taproot_testbed::paths::{self, Profile};

pub struct Options {
    pub full: bool,
    pub host_only: bool,
}

pub fn run(opts: Options) -> Result<(), String> {
    setup::ensure_target()?;
    if !opts.host_only {
        setup::ensure_packages(setup::Need::All)?;
    }
    lint()?;
    // The guests first: a loader host test checks the built guest ELFs, and skips (it can
    // then never fail) when they are not there yet, as on a fresh clone.
    build::guests()?;

    // Host: unit tests of every crate, the MMU's property and stress tests (release: the
    // stress and million-cycle tests are long in debug builds).
    run_cmd(cargo().args(["test", "--workspace", "--release", "--exclude", "taproot-testbed"]))?;
    run_cmd(cargo().args(["test", "--package", "taproot-testbed", "--lib"]))?;
    if paths::workspace_root().join("hypervisor/tests/loom.rs").is_file() {
        run_cmd(
            cargo()
                .args(["test", "--package", "hypervisor", "--release", "--test", "loom"])
                .env("RUSTFLAGS", "--cfg loom")
                .env("CARGO_TARGET_DIR", paths::workspace_root().join("target/loom")),
        )?;
    }
    if opts.host_only {
        return Ok(());
    }

    // Emulators: both profiles, because a misaligned stack at the 32-to-64-bit entry only
    // trips the alignment checks of debug builds. Two at a time: each QEMU runs two vCPU
    // threads and the machine has two cores.
    build::elf(Profile::Debug)?;
    build::elf(Profile::Release)?;
    // The Linux guest's kernel and initramfs for `tests/linux.rs` (cached by version;
    // without apt its tests skip with a notice). Its test is in `--full` for now.
    if opts.full {
        crate::linux::run()?;
    }
    let mut cmd = cargo();
    // Every file of `tests/tests/` (the glob is cargo's, not the shell's).
    cmd.args(["test", "--no-fail-fast", "--package", "taproot-testbed", "--test", "*"]);
    cmd.args(["--", "--test-threads=2"]);
    if opts.full {
        // The heavy variants are `#[ignore]`d; the KVM ones need a KVM host.
        cmd.args(["--include-ignored", "--skip", "kvm_"]);
    }
    run_cmd(&mut cmd)
}

/// Formatting and clippy, on the host and for the bare-metal target.
pub fn lint() -> Result<(), String> {
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_cmd(cargo().args([
        "clippy",
        "--package",
        "libos",
        "--package",
        "hypervisor",
        "--package",
        "guest-images",
        "--target",
        setup::TARGET,
        "--",
        "-D",
        "warnings",
    ]))
}
