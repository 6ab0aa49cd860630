//! Debian packages without installing them: which version `apt-cache` would install, and
//! `apt-get download` of that version (which works without root).
//!
//! A meta package such as `linux-image-cloud-amd64` holds no kernel: its candidate's
//! `Depends` names the versioned image package (`linux-image-6.1.0-57-cloud-amd64`), whose
//! candidate version is what gets downloaded. Nothing is pinned: the newest kernel Debian
//! carries is taken each time the package lists change. The package lists are refreshed
//! (`apt-get update`) only when a package is not found in them, and only as root.

use crate::run_cmd;
use std::path::Path;
use std::process::Command;

/// A package at one version: the cache key of what is unpacked from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

impl Package {
    /// A file or directory name for it (`:` of an epoch is not welcome everywhere).
    pub fn key(&self) -> String {
        format!("{}_{}", self.name, self.version.replace(':', "%3a"))
    }
}

/// Why the packages cannot be had here.
#[derive(Debug)]
pub enum Unavailable {
    /// Not a Debian host: the Linux tests skip.
    NoApt(String),
    /// A Debian host where something went wrong: an error.
    Failed(String),
}

/// The value of field `name` in one `apt-cache show` stanza (continuation lines joined).
pub fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':').map(str::trim))
}

/// The versioned image package a kernel meta package depends on: the first alternative
/// of the first `Depends` entry named `linux-image-*`, without its version constraint.
pub fn image_dependency(depends: &str) -> Option<&str> {
    depends
        .split([',', '|'])
        .map(|alternative| alternative.split_whitespace().next().unwrap_or(""))
        .find(|name| name.starts_with("linux-image-"))
}

/// Whether the programs this needs are on PATH.
pub fn check_tools() -> Result<(), Unavailable> {
    for program in ["apt-get", "apt-cache", "dpkg-deb"] {
        if !taproot_testbed::tools::has_program(program) {
            return Err(Unavailable::NoApt(format!(
                "{program} is not available (not a Debian host?): the Linux test assets cannot be \
                 obtained, and the Linux guest tests are skipped"
            )));
        }
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `apt-cache show --no-all-versions NAME`: the candidate's stanza, or `None` when the
/// package lists do not have it.
fn show(name: &str) -> Result<Option<String>, Unavailable> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", name])
        .output()
        .map_err(|e| Unavailable::Failed(format!("cannot run apt-cache: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok((out.status.success() && field(&text, "Version").is_some()).then_some(text))
}

/// [`show`], refreshing the package lists once (as root) when the package is missing.
fn show_or_update(name: &str) -> Result<String, Unavailable> {
    if let Some(stanza) = show(name)? {
        return Ok(stanza);
    }
    if !is_root() {
        return Err(Unavailable::Failed(format!(
            "apt-cache does not know {name}: refresh the package lists with\n    sudo apt-get update"
        )));
    }
    eprintln!("xtask: apt-cache does not know {name}; refreshing the package lists");
    run_cmd(Command::new("apt-get").args(["update", "-q"])).map_err(Unavailable::Failed)?;
    show(name)?.ok_or_else(|| Unavailable::Failed(format!("no package {name} in this host's Debian sources")))
}

/// The package and candidate version apt would install for `name`; for a kernel meta
/// package, the image package it depends on.
pub fn resolve(name: &str) -> Result<Package, Unavailable> {
    let mut stanza = show_or_update(name)?;
    let mut name = name.to_string();
    if let Some(image) = field(&stanza, "Depends").and_then(image_dependency)
        && name != image
    {
        name = image.to_string();
        stanza = show_or_update(&name)?;
    }
    let version = field(&stanza, "Version").unwrap_or_default().to_string();
    Ok(Package { name, version })
}

/// Downloads the `.deb` of `package` into `dir` and returns its path.
pub fn download(package: &Package, dir: &Path) -> Result<std::path::PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(dir).arg("download").arg(format!("{}={}", package.name, package.version));
    if is_root() {
        // As root, apt drops to its `_apt` user to download, who cannot write under target/.
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    run_cmd(&mut cmd)?;
    let prefix = format!("{}_", package.name);
    std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|x| x == "deb")
                && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .ok_or_else(|| format!("apt-get download left no {prefix}*.deb in {}", dir.display()))
}

/// Unpacks a `.deb`'s files into `dir` without installing it.
pub fn unpack(deb: &Path, dir: &Path) -> Result<(), String> {
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `apt-cache show --no-all-versions linux-image-cloud-amd64` on Debian 12.
    const META: &str = "\
Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.192+3)
Version: 6.1.192-3
Installed-Size: 13
Provides: linux-latest-modules-6.1.0-57-cloud-amd64, virtualbox-guest-modules, wireguard-modules (= 1.0.0)
Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)
Description: Linux for x86-64 cloud (meta-package)
";

    const BUSYBOX: &str = "\
Package: busybox-static
Source: busybox (1:1.35.0-4+deb12u1)
Version: 1:1.35.0-4+deb12u1+b1
Conflicts: busybox
Replaces: busybox
";

    #[test]
    fn fields_are_read_from_a_stanza() {
        assert_eq!(field(META, "Version"), Some("6.1.192-3"));
        assert_eq!(field(META, "Depends"), Some("linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)"));
        assert_eq!(field(BUSYBOX, "Version"), Some("1:1.35.0-4+deb12u1+b1"));
        assert_eq!(field(BUSYBOX, "Depends"), None);
        // A field name is matched whole, not as a prefix of a longer one.
        assert_eq!(field("Pre-Depends: x\nDepends-Extra: y\n", "Depends"), None);
    }

    #[test]
    fn the_meta_package_resolves_to_its_image_package() {
        assert_eq!(
            image_dependency(field(META, "Depends").unwrap()),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        // Other dependencies first, alternatives, and no version constraint.
        assert_eq!(
            image_dependency("initramfs-tools | linux-initramfs-tool, linux-image-6.12.9-cloud-amd64"),
            Some("linux-image-6.12.9-cloud-amd64")
        );
        assert_eq!(image_dependency("busybox (>= 1), kmod"), None);
    }

    #[test]
    fn an_epoch_does_not_reach_the_cache_key() {
        let p = Package { name: "busybox-static".into(), version: "1:1.35.0-4+deb12u1+b1".into() };
        assert_eq!(p.key(), "busybox-static_1%3a1.35.0-4+deb12u1+b1");
    }
}
