//! The newc ("new ASCII", `070701`) cpio format, as the kernel's initramfs unpacker reads
//! it (Documentation/driver-api/early-userspace/buffer-format.rst): per entry a 110-byte
//! header of `070701` and 13 eight-digit hex fields, the NUL-terminated name padded to 4
//! bytes (counting the header), the data padded to 4 bytes; a `TRAILER!!!` entry ends it.
//!
//! [`write`] is deterministic: entries in the order given (the caller sorts), inode numbers
//! from 1 in that order, one link each, and the mtime the caller fixed.

/// File type bits of `mode` (`S_IFMT` and its values, POSIX `<sys/stat.h>`).
pub const S_IFMT: u32 = 0o170_000;
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFLNK: u32 = 0o120_000;
pub const S_IFCHR: u32 = 0o020_000;

const MAGIC: &[u8; 6] = b"070701";
#[cfg(test)]
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

/// One archive member. `data` is a file's bytes or a symlink's target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Without a leading `/` (`bin/sh`), as the kernel's own `gen_init_cpio` writes them.
    pub name: String,
    pub mode: u32,
    /// A device node's (major, minor).
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

impl Entry {
    pub fn dir(name: &str) -> Self {
        Self { name: name.into(), mode: S_IFDIR | 0o755, rdev: (0, 0), data: Vec::new() }
    }

    pub fn file(name: &str, permissions: u32, data: Vec<u8>) -> Self {
        Self { name: name.into(), mode: S_IFREG | permissions, rdev: (0, 0), data }
    }

    pub fn symlink(name: &str, target: &str) -> Self {
        Self { name: name.into(), mode: S_IFLNK | 0o777, rdev: (0, 0), data: target.as_bytes().to_vec() }
    }

    pub fn char_device(name: &str, permissions: u32, major: u32, minor: u32) -> Self {
        Self { name: name.into(), mode: S_IFCHR | permissions, rdev: (major, minor), data: Vec::new() }
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn push_entry(out: &mut Vec<u8>, ino: u32, entry: &Entry, mtime: u32) {
    let nlink = if entry.mode & S_IFMT == S_IFDIR { 2 } else { 1 };
    let name_size = entry.name.len() + 1;
    let fields = [
        ino,
        entry.mode,
        0, // uid
        0, // gid
        nlink,
        mtime,
        u32::try_from(entry.data.len()).expect("an initramfs member over 4 GiB"),
        0, // devmajor
        0, // devminor
        entry.rdev.0,
        entry.rdev.1,
        u32::try_from(name_size).expect("a name over 4 GiB"),
        0, // check: only for the `070702` (crc) variant
    ];
    out.extend_from_slice(MAGIC);
    for field in fields {
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(entry.name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(&entry.data);
    pad4(out);
}

/// The archive of `entries`, in their order, each with modification time `mtime`.
pub fn write(entries: &[Entry], mtime: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for (ino, entry) in (1..).zip(entries) {
        push_entry(&mut out, ino, entry, mtime);
    }
    push_entry(&mut out, 0, &Entry { name: TRAILER.into(), mode: 0, rdev: (0, 0), data: Vec::new() }, 0);
    out
}

/// Reads an archive back (up to its trailer): what the tests check [`write`] against.
#[cfg(test)]
pub fn parse(mut bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let start_len = bytes.len();
    let mut entries = Vec::new();
    loop {
        let at = start_len - bytes.len();
        let header = bytes.get(..HEADER_LEN).ok_or(format!("truncated header at {at}"))?;
        if &header[..6] != MAGIC {
            return Err(format!("no newc magic at {at}"));
        }
        let field = |i: usize| -> Result<u32, String> {
            let hex = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).map_err(|e| e.to_string())?;
            u32::from_str_radix(hex, 16).map_err(|e| format!("field {i} at {at}: {e}"))
        };
        let (mode, file_size, name_size) = (field(1)?, field(6)? as usize, field(11)? as usize);
        let name_end = HEADER_LEN + name_size;
        let name_bytes = bytes.get(HEADER_LEN..name_end - 1).ok_or(format!("truncated name at {at}"))?;
        let name = String::from_utf8(name_bytes.to_vec()).map_err(|e| e.to_string())?;
        let data_start = name_end.next_multiple_of(4);
        let data_end = data_start + file_size;
        let data = bytes.get(data_start..data_end).ok_or(format!("truncated data of {name}"))?.to_vec();
        bytes = &bytes[data_end.next_multiple_of(4).min(bytes.len())..];
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(Entry { name, mode, rdev: (field(9)?, field(10)?), data });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::dir("bin"),
            Entry::file("bin/busybox", 0o755, (0..=255u8).cycle().take(1001).collect()),
            Entry::symlink("bin/sh", "busybox"),
            Entry::dir("dev"),
            Entry::char_device("dev/console", 0o600, 5, 1),
            Entry::file("init", 0o755, b"#!/bin/sh\n".to_vec()),
        ]
    }

    #[test]
    fn an_archive_parses_back_to_its_entries() {
        let archive = write(&sample(), 0);
        assert!(archive.len().is_multiple_of(4));
        assert_eq!(parse(&archive).unwrap(), sample());
    }

    #[test]
    fn headers_have_the_kernels_layout() {
        let archive = write(&[Entry::symlink("bin/sh", "busybox")], 7);
        let header = std::str::from_utf8(&archive[..HEADER_LEN]).unwrap();
        // magic, ino 1, mode 0o120777, uid, gid, nlink 1, mtime 7, size 7, dev 0:0,
        // rdev 0:0, name size 7 ("bin/sh\0"), check 0.
        assert_eq!(
            header,
            "070701000000010000A1FF000000000000000000000001000000070000000700000000\
             00000000000000000000000000000007\
             00000000"
        );
        // The name ends at 110 + 7 = 117, padded to 120; the 7 data bytes to 128.
        assert_eq!(&archive[117..120], &[0, 0, 0]);
        assert_eq!(&archive[120..127], b"busybox");
        assert_eq!(&archive[128..134], b"070701");
        assert!(std::str::from_utf8(&archive[128..]).unwrap().contains("TRAILER!!!"));
    }

    #[test]
    fn the_same_entries_give_the_same_bytes() {
        assert_eq!(write(&sample(), 0), write(&sample(), 0));
        assert_ne!(write(&sample(), 0), write(&sample(), 1));
    }

    #[test]
    fn damaged_archives_are_refused() {
        let archive = write(&sample(), 0);
        assert!(parse(&archive[..archive.len() - 20]).is_err());
        assert!(parse(&archive[4..]).is_err());
        assert!(parse(&[]).is_err());
    }
}
