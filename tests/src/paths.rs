//! Where the build puts things. Every path is under the workspace's `target/`.

use std::path::PathBuf;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testbed crate lives inside the workspace")
        .to_path_buf()
}

/// `target/taproot/`: the images `cargo xtask build` produces.
pub fn image_dir() -> PathBuf {
    workspace_root().join("target").join("taproot")
}

/// Build profile of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    pub const fn name(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// `target/taproot/<profile>/taproot.elf`.
pub fn elf(profile: Profile) -> PathBuf {
    image_dir().join(profile.name()).join("taproot.elf")
}

/// `target/taproot/<profile>/taproot.iso`: GRUB, multiboot2, BIOS and UEFI.
pub fn iso(profile: Profile) -> PathBuf {
    image_dir().join(profile.name()).join("taproot.iso")
}

/// A scratch directory for one emulator run, under `target/testbed/`, emptied first.
pub fn scratch_dir(name: &str) -> std::io::Result<PathBuf> {
    let dir = workspace_root().join("target").join("testbed").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The image of `profile`, or an error that says how to build it.
pub fn built_elf(profile: Profile) -> Result<PathBuf, String> {
    let path = elf(profile);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} does not exist: run the tests through `cargo xtask test`, which builds the image first",
            path.display()
        ))
    }
}
