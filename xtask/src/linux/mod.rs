//! `cargo xtask linux-assets`: the Linux test guest's files under `target/linux/`, at the
//! paths `taproot_testbed::linux` names.
//!
//! - the kernel of Debian's `linux-image-cloud-amd64` (resolved to the versioned image
//!   package it depends on), its bzImage as `vmlinuz`, and the uncompressed ELF inside it
//!   as `vmlinux` (checked to have a PVH entry);
//! - `initramfs.cpio.gz`: `busybox-static` and the project's `/init`.
//!
//! Each package is unpacked (not installed) into a directory named by its version, so a
//! second run with the same package lists does no network work; the top-level names
//! are symlinks into the current version's directory, and older versions are removed.
//! The initramfs is rebuilt only when its `initramfs.key` (busybox's version, the applet
//! list and the `/init` script) changes.
//! On a host without apt the command prints a notice and succeeds: callers skip the
//! Linux tests (`taproot_testbed::linux::missing`).

mod apt;
mod bzimage;
mod cpio;
mod initramfs;

use apt::{Package, Unavailable};
use std::path::{Path, PathBuf};
use taproot_testbed::linux;

/// The kernel meta package: the newest cloud kernel Debian carries.
const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// Where the packages' files are in them.
const BUSYBOX_IN_DEB: &str = "bin/busybox";
const BOOT_IN_DEB: &str = "boot";

/// What the command left, for callers that go on to use it.
pub struct Assets {
    pub kernel: Package,
    pub busybox: Package,
}

/// Obtains the assets; `Ok(None)` (after a notice) on a host without apt.
pub fn obtain() -> Result<Option<Assets>, String> {
    match try_obtain() {
        Ok(assets) => Ok(Some(assets)),
        Err(Unavailable::NoApt(why)) => {
            eprintln!("xtask: NOTICE: {why}");
            Ok(None)
        }
        Err(Unavailable::Failed(why)) => Err(why),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

fn try_obtain() -> Result<Assets, Unavailable> {
    apt::check_tools()?;
    let kernel = apt::resolve(KERNEL_PACKAGE)?;
    let busybox = apt::resolve(BUSYBOX_PACKAGE)?;
    let dir = linux::dir();
    let kernel_dir = dir.join(kernel.key());
    let busybox_dir = dir.join(busybox.key());
    (|| -> Result<(), String> {
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        if !kernel_dir.join("vmlinuz").is_file() {
            fetch(&kernel, &kernel_dir, |unpacked, into| {
                let boot = unpacked.join(BOOT_IN_DEB);
                let vmlinuz = find_prefixed(&boot, "vmlinuz-")?;
                std::fs::rename(&vmlinuz, into.join("vmlinuz")).map_err(io(&vmlinuz))?;
                if let Ok(config) = find_prefixed(&boot, "config-") {
                    std::fs::rename(&config, into.join("config")).map_err(io(&config))?;
                }
                Ok(())
            })?;
        }
        if !kernel_dir.join("vmlinux").is_file() {
            extract_vmlinux(&kernel_dir)?;
        }
        if !busybox_dir.join("busybox").is_file() {
            fetch(&busybox, &busybox_dir, |unpacked, into| {
                let from = unpacked.join(BUSYBOX_IN_DEB);
                std::fs::rename(&from, into.join("busybox")).map_err(io(&from))
            })?;
        }
        let key = initramfs::key(&busybox.version);
        let key_file = dir.join("initramfs.key");
        if !linux::initramfs().is_file() || std::fs::read_to_string(&key_file).ok() != Some(key.clone()) {
            let busybox_bytes = std::fs::read(busybox_dir.join("busybox")).map_err(io(&busybox_dir))?;
            write_if_changed(&linux::initramfs(), &initramfs::build(busybox_bytes))?;
            write_if_changed(&key_file, key.as_bytes())?;
        }
        for name in ["vmlinuz", "vmlinux"] {
            link(&dir.join(name), &Path::new(&kernel.key()).join(name))?;
        }
        let version = format!(
            "kernel={} {}\nbusybox={} {}\n",
            kernel.name, kernel.version, busybox.name, busybox.version
        );
        write_if_changed(&linux::version_file(), version.as_bytes())?;
        prune(&dir, &[&kernel.key(), &busybox.key()]);
        Ok(())
    })()
    .map_err(Unavailable::Failed)?;
    Ok(Assets { kernel, busybox })
}

/// Downloads and unpacks `package`, lets `take` move what is wanted from the unpacked
/// tree into a new directory, and renames that to `into`: an interrupted run leaves no
/// half-filled `into`.
fn fetch(
    package: &Package,
    into: &Path,
    take: impl FnOnce(&Path, &Path) -> Result<(), String>,
) -> Result<(), String> {
    let work = linux::dir().join(format!("work-{}", package.key()));
    let _ = std::fs::remove_dir_all(&work);
    let (downloads, unpacked, filled) = (work.join("deb"), work.join("tree"), work.join("out"));
    eprintln!("xtask: downloading {} {}", package.name, package.version);
    let deb = apt::download(package, &downloads)?;
    apt::unpack(&deb, &unpacked)?;
    std::fs::create_dir_all(&filled).map_err(io(&filled))?;
    take(&unpacked, &filled)?;
    std::fs::rename(&filled, into).map_err(io(into))?;
    std::fs::remove_dir_all(&work).map_err(io(&work))
}

/// The one file in `dir` whose name starts with `prefix`.
fn find_prefixed(dir: &Path, prefix: &str) -> Result<PathBuf, String> {
    std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .ok_or_else(|| format!("no {prefix}* in {}", dir.display()))
}

/// `vmlinux` from `vmlinuz` in `kernel_dir`, and `vmlinux.txt` saying what was found.
fn extract_vmlinux(kernel_dir: &Path) -> Result<(), String> {
    let vmlinuz = kernel_dir.join("vmlinuz");
    let found = bzimage::extract(&std::fs::read(&vmlinuz).map_err(io(&vmlinuz))?)
        .map_err(|e| format!("{}: {e}", vmlinuz.display()))?;
    let info = format!("compression={:?} pvh_entry={:#x}\n", found.compression, found.pvh_entry);
    write_if_changed(&kernel_dir.join("vmlinux.txt"), info.as_bytes())?;
    write_if_changed(&kernel_dir.join("vmlinux"), &found.elf)
}

/// Writes `bytes` to `path` through a temporary file, unless it already holds them (so
/// its mtime, and anything keyed on it, stays).
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Makes `path` a symlink to `target` (relative to its directory).
fn link(path: &Path, target: &Path) -> Result<(), String> {
    if std::fs::read_link(path).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink(target, path).map_err(io(path))
}

/// Removes the unpacked directories of versions other than `keep`.
fn prune(dir: &Path, keep: &[&str]) {
    let Ok(read) = std::fs::read_dir(dir) else { return };
    for entry in read.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let versioned = [KERNEL_PACKAGE, "linux-image-", BUSYBOX_PACKAGE].iter().any(|p| name.starts_with(p));
        if versioned && entry.path().is_dir() && !keep.contains(&name.as_str()) {
            eprintln!("xtask: removing the old {name}");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn size(path: &Path) -> String {
    std::fs::metadata(path).map_or_else(|_| "missing".into(), |m| format!("{} bytes", m.len()))
}

/// `cargo xtask linux-assets`.
pub fn run() -> Result<(), String> {
    let Some(assets) = obtain()? else { return Ok(()) };
    let info = std::fs::read_to_string(linux::dir().join(assets.kernel.key()).join("vmlinux.txt"))
        .unwrap_or_default();
    println!("kernel  {} {}", assets.kernel.name, assets.kernel.version);
    println!("busybox {} {}", assets.busybox.name, assets.busybox.version);
    println!("{}: {}", linux::bzimage().display(), size(&linux::bzimage()));
    println!("{}: {} ({})", linux::vmlinux().display(), size(&linux::vmlinux()), info.trim());
    println!("{}: {}", linux::initramfs().display(), size(&linux::initramfs()));
    Ok(())
}
