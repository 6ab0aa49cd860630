//! Bochs, booting a GRUB ISO. As packaged in Debian it is built with its debugger (start
//! it with `-rc` holding `c`), has no headless display (use `term` inside a pseudo-terminal
//! from `script`), and has no exit device (Taproot powers off through ACPI S5, which ends
//! the simulation). COM1 goes to a file that the console polls.

use crate::console::{Console, ConsoleError, Source};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A Bochs CPU model with VMX, EPT (2 MiB/1 GiB, A/D), VPID and unrestricted guest.
pub const VMX_MODEL: &str = "corei7_haswell_4770";
/// A Bochs CPU model with SVM and NPT.
pub const SVM_MODEL: &str = "ryzen";

#[derive(Clone, Debug)]
pub struct Bochs {
    pub iso: PathBuf,
    pub cpu_model: String,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Emulated instructions per second: sets how fast guest time runs against
    /// instructions, so the TSC counts instructions one to one at 50 MHz.
    pub ips: u64,
}

impl Bochs {
    pub fn new(iso: &Path) -> Self {
        Self {
            iso: iso.to_path_buf(),
            cpu_model: VMX_MODEL.into(),
            cpus: 2,
            memory_mib: 256,
            ips: 50_000_000,
        }
    }

    pub fn config(&self, serial: &Path, log: &Path) -> String {
        format!(
            "megs: {mem}\n\
             cpu: model={model}, count={cpus}, ips={ips}, reset_on_triple_fault=0\n\
             romimage: file={rom}\n\
             vgaromimage: file={vga}\n\
             ata0-master: type=cdrom, path={iso}, status=inserted\n\
             boot: cdrom\n\
             com1: enabled=1, mode=file, dev={serial}\n\
             display_library: term\n\
             clock: sync=none, time0=local\n\
             log: {log}\n\
             panic: action=fatal\n\
             error: action=report\n",
            mem = self.memory_mib,
            model = self.cpu_model,
            cpus = self.cpus,
            ips = self.ips,
            rom = crate::tools::BOCHS_BIOS,
            vga = crate::tools::VGA_BIOS,
            iso = self.iso.display(),
            serial = serial.display(),
            log = log.display(),
        )
    }

    /// Starts Bochs in `target/testbed/<name>/`.
    pub fn spawn(&self, name: &str) -> Result<Console, ConsoleError> {
        let dir = crate::paths::scratch_dir(name).map_err(|e| ConsoleError::Io(e.to_string()))?;
        let serial = dir.join("serial.txt");
        let rc = dir.join("bochsrc");
        let commands = dir.join("commands");
        std::fs::write(&rc, self.config(&serial, &dir.join("bochs.log")))
            .map_err(|e| ConsoleError::Io(e.to_string()))?;
        std::fs::write(&commands, "c\n").map_err(|e| ConsoleError::Io(e.to_string()))?;
        let screen =
            std::fs::File::create(dir.join("screen.txt")).map_err(|e| ConsoleError::Io(e.to_string()))?;
        let inner =
            format!("{} -q -f {} -rc {}", crate::tools::BOCHS.program, rc.display(), commands.display());
        let child = Command::new(crate::tools::SCRIPT.program)
            .args(["-q", "-e", "-c", &inner, "/dev/null"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(screen)
            .stderr(Stdio::null())
            // Its own process group, so stopping it ends Bochs under `script` as well
            // and nothing else.
            .process_group(0)
            .spawn()
            .map_err(|e| ConsoleError::Io(format!("cannot start bochs under script: {e}")))?;
        Ok(Console::new(child, Source::File { path: serial, offset: 0, partial: String::new() }, true))
    }
}
