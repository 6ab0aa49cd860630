//! `cargo xtask`: everything from a fresh machine to a booted, tested image.
//!
//! Each command first installs what it needs (the Rust target; Debian packages when run
//! as root, otherwise it prints the exact command to run).

mod bench;
mod build;
mod bzimage;
mod console;
mod ctl;
mod linux;
mod run;
mod setup;
mod test;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use taproot_testbed::paths::Profile;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, boot, test and benchmark Taproot")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build target/taproot/taproot.elf (PVH) and target/taproot/taproot.iso (GRUB, BIOS+UEFI).
    Build {
        #[arg(long)]
        release: bool,
        /// Kernel command line baked into the ISO's grub.cfg.
        #[arg(long, default_value = "")]
        cmdline: String,
    },
    /// Build and boot the image with its serial console on this terminal.
    Run {
        #[arg(long)]
        release: bool,
        /// QEMU accelerator: kvm (nested virtualization), tcg (emulation) or auto.
        #[arg(long, default_value = "auto")]
        accel: String,
        /// Boot the ISO in Bochs (VMX with EPT) instead of QEMU.
        #[arg(long)]
        bochs: bool,
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        #[arg(long, default_value_t = 512)]
        mem: u32,
        /// Kernel command line (e.g. `exit=1`, `log=debug`).
        #[arg(long, default_value = "")]
        cmdline: String,
        /// The demo guest: one of guest-images' (hello, memtouch, ...) is launched through
        /// the API; a built-in one (hello16, spin, ...) from the command line; `none` boots
        /// the image alone.
        #[arg(long, default_value = "hello")]
        guest: String,
        /// Host port forwarded to the image's API port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Drive a running image's API (`cargo xtask run` prints the token).
    Ctl(ctl::Args),
    /// Run every test: lints, host unit/property/stress/model tests, then the emulator tests.
    Test {
        /// Also run the heavier emulator variants.
        #[arg(long)]
        full: bool,
        /// Host tests only (no images, no emulators).
        #[arg(long)]
        host_only: bool,
    },
    /// Run the benchmarks; writes target/bench/report.json and report.md.
    Bench,
    /// Install what the other commands need, and nothing else.
    Setup,
    /// Debian's current cloud kernel (bzImage and vmlinux) and a busybox initramfs, in
    /// target/linux/ (cached by version; on a host without apt, a notice and nothing).
    LinuxAssets,
    /// cargo fmt --check and clippy -D warnings, for the host and the bare-metal target.
    Lint,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Build { release, cmdline } => {
            setup::ensure_target().and_then(|()| setup::ensure_packages(setup::Need::Iso)).and_then(|()| {
                build::image(profile(release), &cmdline).map(|out| {
                    println!("built {} and {}", out.elf.display(), out.iso.display());
                })
            })
        }
        Cmd::Run { release, accel, bochs, cpus, mem, cmdline, guest, port } => run::run(run::Options {
            profile: profile(release),
            accel,
            bochs,
            cpus,
            memory_mib: mem,
            cmdline,
            guest,
            api_port: port,
        }),
        Cmd::Ctl(args) => ctl::run(args),
        Cmd::Test { full, host_only } => test::run(test::Options { full, host_only }),
        Cmd::Bench => bench::run(),
        Cmd::Setup => setup::ensure_target().and_then(|()| setup::ensure_packages(setup::Need::All)),
        Cmd::LinuxAssets => linux::run(),
        Cmd::Lint => setup::ensure_target().and_then(|()| test::lint()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn profile(release: bool) -> Profile {
    if release { Profile::Release } else { Profile::Debug }
}

/// Runs a command, echoing it; an error names the command and its status.
pub fn run_cmd(cmd: &mut std::process::Command) -> Result<(), String> {
    eprintln!("xtask: running {}", display(cmd));
    let status = cmd.status().map_err(|e| format!("cannot run {}: {e}", display(cmd)))?;
    if status.success() { Ok(()) } else { Err(format!("{} failed ({status})", display(cmd))) }
}

pub fn display(cmd: &std::process::Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// `cargo`, as the one running xtask.
pub fn cargo() -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(taproot_testbed::paths::workspace_root());
    cmd
}
