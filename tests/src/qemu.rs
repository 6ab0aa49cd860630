//! QEMU: `-kernel` (PVH) or `-cdrom` (GRUB, multiboot2), TCG or KVM.

use crate::console::{Console, ConsoleError, Source};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// Which accelerator QEMU uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Nested virtualization on the host: `-accel kvm -cpu host` (the host's VMX or SVM).
    Kvm,
    /// Emulation: `-accel tcg -cpu max` (SVM with NPT, no VMX).
    Tcg,
}

impl Accel {
    /// KVM when it can run Taproot ([`Accel::kvm_status`]), TCG otherwise.
    pub fn detect() -> Accel {
        if Accel::kvm_status().is_ok() { Accel::Kvm } else { Accel::Tcg }
    }

    /// Whether KVM can run Taproot: `/dev/kvm` opens for reading and writing, and KVM can
    /// give its guests VMX or SVM (nested virtualization). Without the second, QEMU boots
    /// the image under KVM but the image finds no virtualization to take (`virt=none`).
    /// The error says which is missing and what to do.
    pub fn kvm_status() -> Result<(), String> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(|e| format!("/dev/kvm cannot be opened ({e})"))?;
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or("");
        let vendor = flags.split_whitespace().find(|f| matches!(*f, "vmx" | "svm"));
        let Some(vendor) = vendor else {
            return Err("/dev/kvm works, but this CPU shows neither vmx nor svm, so KVM cannot give \
                        its guests either (a virtual machine without nested virtualization)"
                .into());
        };
        let module = if vendor == "vmx" { "kvm_intel" } else { "kvm_amd" };
        let nested = std::fs::read_to_string(format!("/sys/module/{module}/parameters/nested"));
        if let Ok(value) = nested
            && matches!(value.trim(), "N" | "n" | "0")
        {
            return Err(format!(
                "{module} has nested virtualization off: `sudo modprobe -r {module} && sudo modprobe {module} nested=1`"
            ));
        }
        Ok(())
    }

    pub const fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What QEMU boots.
#[derive(Clone, Debug)]
pub enum Boot {
    /// The ELF through its PVH note, with this command line.
    Kernel { elf: PathBuf, cmdline: String },
    /// A GRUB ISO (its command line is inside its grub.cfg).
    Cdrom(PathBuf),
    /// A GRUB ISO under UEFI firmware.
    CdromUefi { iso: PathBuf, firmware: PathBuf },
}

/// QEMU's `isa-debug-exit`: the image writes `v` to port 0xF4 and QEMU exits with
/// `(v << 1) | 1`.
pub const DEBUG_EXIT_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";

/// The image's default control-plane port.
pub const GUEST_API_PORT: u16 = 8080;

/// The guest's exit status from QEMU's, when the image ended through the debug-exit port.
pub fn guest_status(status: ExitStatus) -> Option<i32> {
    let code = status.code()?;
    (code & 1 == 1).then_some(code >> 1)
}

/// A QEMU command line.
#[derive(Clone, Debug)]
pub struct Qemu {
    pub boot: Boot,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u32,
    /// `-icount shift=0`: one instruction is one virtual nanosecond, so guest time counts
    /// instructions (TCG only).
    pub icount: bool,
    /// A virtio-net NIC on QEMU's user network, with host `127.0.0.1:<port>` forwarded to
    /// the image's API port 8080.
    pub api_port: Option<u16>,
    /// The TCG CPU model (default `max`); `max,-svm` is a machine without virtualization.
    pub tcg_cpu: Option<String>,
    pub extra: Vec<String>,
}

impl Qemu {
    /// TCG, 2 CPUs, 512 MiB, booting `elf` through PVH with `cmdline`.
    pub fn kernel(elf: &Path, cmdline: &str) -> Self {
        Self {
            boot: Boot::Kernel { elf: elf.to_path_buf(), cmdline: cmdline.to_string() },
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 512,
            icount: false,
            api_port: None,
            tcg_cpu: None,
            extra: Vec::new(),
        }
    }

    /// TCG, 2 CPUs, 512 MiB, booting a GRUB ISO under UEFI firmware (OVMF).
    pub fn cdrom_uefi(iso: &Path) -> Self {
        Self {
            boot: Boot::CdromUefi { iso: iso.to_path_buf(), firmware: crate::tools::OVMF.into() },
            ..Self::kernel(Path::new(""), "")
        }
    }

    /// TCG, 2 CPUs, 512 MiB, booting a GRUB ISO.
    pub fn cdrom(iso: &Path) -> Self {
        Self { boot: Boot::Cdrom(iso.to_path_buf()), ..Self::kernel(Path::new(""), "") }
    }

    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        let mut push = |a: &str| args.push(a.to_string());
        match self.accel {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"].iter().for_each(|a| push(a)),
            Accel::Tcg => ["-accel", "tcg", "-cpu", self.tcg_cpu.as_deref().unwrap_or("max")]
                .iter()
                .for_each(|a| push(a)),
        }
        if self.icount {
            push("-icount");
            push("shift=0");
        }
        push("-smp");
        push(&self.cpus.to_string());
        push("-m");
        push(&self.memory_mib.to_string());
        for a in ["-nodefaults", "-display", "none", "-no-reboot", "-device", DEBUG_EXIT_DEVICE] {
            push(a);
        }
        match &self.boot {
            Boot::Kernel { elf, cmdline } => {
                push("-kernel");
                push(&elf.display().to_string());
                if !cmdline.is_empty() {
                    push("-append");
                    push(cmdline);
                }
            }
            Boot::Cdrom(iso) => {
                push("-cdrom");
                push(&iso.display().to_string());
            }
            Boot::CdromUefi { iso, firmware } => {
                push("-bios");
                push(&firmware.display().to_string());
                push("-cdrom");
                push(&iso.display().to_string());
            }
        }
        if let Some(port) = self.api_port {
            args.push("-netdev".into());
            args.push(format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_API_PORT}"));
            args.push("-device".into());
            args.push("virtio-net-pci,netdev=net0".into());
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts QEMU with the serial console on a pipe.
    pub fn spawn(&self) -> Result<Console, ConsoleError> {
        let mut child = Command::new(crate::tools::QEMU.program)
            .args(self.args())
            .args(["-serial", "stdio", "-monitor", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| ConsoleError::Io(format!("cannot start {}: {e}", crate::tools::QEMU.program)))?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for &b in &buf[..n] {
                    line.push(b);
                    if b == b'\n' {
                        if tx.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                            return;
                        }
                        line.clear();
                    }
                }
            }
            if !line.is_empty() {
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
            }
        });
        Ok(Console::new(child, Source::Lines(rx), false))
    }

    /// Runs QEMU in the foreground with the console on this terminal (Ctrl-A X quits).
    pub fn run_interactive(&self) -> std::io::Result<ExitStatus> {
        Command::new(crate::tools::QEMU.program).args(self.args()).args(["-serial", "mon:stdio"]).status()
    }
}
