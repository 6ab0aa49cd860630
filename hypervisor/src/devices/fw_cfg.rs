//! QEMU's firmware configuration device (fw_cfg), the legacy I/O interface only: guests
//! written for QEMU (SeaBIOS, test kernels, Linux's `qemu_fw_cfg`) read their CPU count,
//! RAM size and named blobs from it.
//!
//! Reference: QEMU `docs/specs/fw_cfg.rst` ("QEMU Firmware Configuration (fw_cfg)
//! Device") and `include/standard-headers/linux/qemu_fw_cfg.h` for the item numbers.
//!
//! # Protocol
//! - Writing a 16-bit selector key to [`SELECTOR_PORT`] chooses an item and resets the
//!   data offset to 0 (fw_cfg.rst, "Selector (Control) Register").
//! - Each byte read from [`DATA_PORT`] returns the next byte of the item and advances the
//!   offset; past the item's end, and for keys that name no item, reads return 0
//!   (fw_cfg.rst, "Data Register").
//! - The item [`FW_CFG_ID`] reports only the traditional interface (no DMA, so there is no
//!   DMA address register at 0x514); data writes are ignored (the legacy write path was
//!   removed from QEMU in 2.4).
//!
//! QEMU's x86 device decodes the two ports as one region: a byte read of either port
//! returns the next data byte, a 16-bit write to the selector port selects. This model
//! does the same; wider reads return one data byte zero-extended, a byte write to either
//! port is the (ignored) data write.
//!
//! # How the VM drives it
//! Build one [`FwCfg`] per VM with [`FwCfg::new`] (vCPU count, RAM size) and add named
//! blobs with [`FwCfg::add_file`] at setup. Port exits for [`is_fw_cfg_port`] go to
//! [`FwCfg::read`] / [`FwCfg::write`]. Accesses never allocate: the file directory is
//! computed byte by byte from the file list.

use alloc::vec::Vec;

use super::IoSize;

/// Selector register, 16-bit little-endian write (fw_cfg.rst, "Selector (Control)
/// Register"; port from "Register Locations", x86).
pub const SELECTOR_PORT: u16 = 0x510;
/// Data register, 8-bit read (fw_cfg.rst, "Data Register"; "Register Locations", x86).
pub const DATA_PORT: u16 = 0x511;

/// Item keys (qemu_fw_cfg.h, "selector key values for well-known fw_cfg entries").
/// The signature "QEMU".
pub const FW_CFG_SIGNATURE: u16 = 0x0000;
/// The interface feature bitmap, u32 LE ([`FW_CFG_VERSION_TRADITIONAL`]).
pub const FW_CFG_ID: u16 = 0x0001;
/// RAM size in bytes, u64 LE.
pub const FW_CFG_RAM_SIZE: u16 = 0x0003;
/// Number of CPUs started, u16 LE.
pub const FW_CFG_NB_CPUS: u16 = 0x0005;
/// Maximum number of CPUs, u16 LE (SeaBIOS reads it next to NB_CPUS).
pub const FW_CFG_MAX_CPUS: u16 = 0x000F;
/// The file directory: u32 BE count, then [`FILE_ENTRY_LEN`]-byte entries.
pub const FW_CFG_FILE_DIR: u16 = 0x0019;
/// The key of the first named file; files take consecutive keys from here.
pub const FW_CFG_FILE_FIRST: u16 = 0x0020;

/// The signature item's contents (fw_cfg.rst, "Signature (Key 0x0000,
/// FW_CFG_SIGNATURE)").
pub const SIGNATURE: [u8; 4] = *b"QEMU";
/// FW_CFG_ID bit 0: the traditional (I/O port) interface is available; bit 1 (DMA) is
/// clear (fw_cfg.rst, "Revision / feature bitmap (Key 0x0001, FW_CFG_ID)").
pub const FW_CFG_VERSION_TRADITIONAL: u32 = 1 << 0;
/// Length of a file name in a directory entry, NUL padded (qemu_fw_cfg.h
/// FW_CFG_MAX_FILE_PATH).
pub const FILE_NAME_LEN: usize = 56;
/// One directory entry: u32 BE size, u16 BE select, u16 reserved, name (fw_cfg.rst, "File
/// Directory (Key 0x0019, FW_CFG_FILE_DIR)"; qemu_fw_cfg.h `struct fw_cfg_file`).
pub const FILE_ENTRY_LEN: usize = 4 + 2 + 2 + FILE_NAME_LEN;
/// Bytes before the first directory entry: the u32 BE count.
const DIR_HEADER_LEN: usize = 4;

/// Most named files: their keys run from [`FW_CFG_FILE_FIRST`] to the last generic key
/// 0x3FFF (fw_cfg.rst, "Ranges": 0x4000 up selects write mode or arch-specific items).
pub const MAX_FILES: usize = 0x4000 - FW_CFG_FILE_FIRST as usize;

/// Whether `port` is one of the device's two ports.
#[must_use]
pub const fn is_fw_cfg_port(port: u16) -> bool {
    port == SELECTOR_PORT || port == DATA_PORT
}

/// Why [`FwCfg::add_file`] refused a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwCfgError {
    /// The name is empty, or does not fit [`FILE_NAME_LEN`] bytes with its NUL.
    BadName,
    /// A file of that name exists.
    DuplicateName,
    /// [`MAX_FILES`] files exist already.
    TooManyFiles,
    /// The contents are longer than a directory entry's u32 size.
    TooLarge,
}

#[derive(Clone, Debug)]
struct File {
    name: [u8; FILE_NAME_LEN],
    data: Vec<u8>,
}

/// The fw_cfg device of one VM.
#[derive(Clone, Debug)]
pub struct FwCfg {
    nb_cpus: u16,
    ram_size: u64,
    files: Vec<File>,
    selector: u16,
    offset: usize,
}

impl FwCfg {
    /// A device reporting `vcpus` CPUs and `ram_size` bytes of RAM, with no files,
    /// selecting the signature.
    #[must_use]
    pub fn new(vcpus: u16, ram_size: u64) -> Self {
        Self { nb_cpus: vcpus, ram_size, files: Vec::new(), selector: FW_CFG_SIGNATURE, offset: 0 }
    }

    /// Adds a named file (e.g. `etc/...`); returns its selector key.
    pub fn add_file(&mut self, name: &str, data: &[u8]) -> Result<u16, FwCfgError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= FILE_NAME_LEN || bytes.contains(&0) {
            return Err(FwCfgError::BadName);
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge);
        }
        if self.files.len() >= MAX_FILES {
            return Err(FwCfgError::TooManyFiles);
        }
        let mut padded = [0; FILE_NAME_LEN];
        padded[..bytes.len()].copy_from_slice(bytes);
        if self.files.iter().any(|f| f.name == padded) {
            return Err(FwCfgError::DuplicateName);
        }
        let key = FW_CFG_FILE_FIRST + self.files.len() as u16;
        self.files.push(File { name: padded, data: data.to_vec() });
        Ok(key)
    }

    /// The selected key.
    #[must_use]
    pub fn selector(&self) -> u16 {
        self.selector
    }

    /// An IN from one of the ports: the next data byte (0 past the end or for an unknown
    /// key), zero-extended. Other ports read 0.
    pub fn read(&mut self, port: u16, _size: IoSize) -> u32 {
        if !is_fw_cfg_port(port) {
            return 0;
        }
        let byte = self.item_byte(self.selector, self.offset);
        self.offset = self.offset.saturating_add(1);
        u32::from(byte)
    }

    /// An OUT to one of the ports: a 16- or 32-bit write to [`SELECTOR_PORT`] selects the
    /// key in its low 16 bits and rewinds the offset; anything else is ignored.
    pub fn write(&mut self, port: u16, size: IoSize, value: u32) {
        if port == SELECTOR_PORT && size != IoSize::Byte {
            self.selector = value as u16;
            self.offset = 0;
        }
    }

    /// Byte `offset` of item `key`, 0 past its end or for an unknown key.
    fn item_byte(&self, key: u16, offset: usize) -> u8 {
        let le = |bytes: &[u8]| bytes.get(offset).copied().unwrap_or(0);
        match key {
            FW_CFG_SIGNATURE => le(&SIGNATURE),
            FW_CFG_ID => le(&FW_CFG_VERSION_TRADITIONAL.to_le_bytes()),
            FW_CFG_RAM_SIZE => le(&self.ram_size.to_le_bytes()),
            FW_CFG_NB_CPUS | FW_CFG_MAX_CPUS => le(&self.nb_cpus.to_le_bytes()),
            FW_CFG_FILE_DIR => self.directory_byte(offset),
            _ => match key.checked_sub(FW_CFG_FILE_FIRST) {
                Some(index) => self.files.get(usize::from(index)).map_or(0, |f| le(&f.data)),
                None => 0,
            },
        }
    }

    /// Byte `offset` of the file directory.
    fn directory_byte(&self, offset: usize) -> u8 {
        let Some(entry_offset) = offset.checked_sub(DIR_HEADER_LEN) else {
            return (self.files.len() as u32).to_be_bytes()[offset];
        };
        let (index, field) = (entry_offset / FILE_ENTRY_LEN, entry_offset % FILE_ENTRY_LEN);
        let Some(file) = self.files.get(index) else { return 0 };
        match field {
            0..4 => (file.data.len() as u32).to_be_bytes()[field],
            4..6 => (FW_CFG_FILE_FIRST + index as u16).to_be_bytes()[field - 4],
            6..8 => 0,
            _ => file.name[field - 8],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(dev: &mut FwCfg, key: u16) {
        dev.write(SELECTOR_PORT, IoSize::Word, u32::from(key));
    }

    fn read_bytes(dev: &mut FwCfg, n: usize) -> Vec<u8> {
        (0..n).map(|_| dev.read(DATA_PORT, IoSize::Byte) as u8).collect()
    }

    fn item(dev: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        select(dev, key);
        read_bytes(dev, n)
    }

    #[test]
    fn signature_reads_qemu() {
        let mut dev = FwCfg::new(1, 0);
        assert_eq!(item(&mut dev, FW_CFG_SIGNATURE, 4), b"QEMU");
    }

    #[test]
    fn id_reports_the_traditional_interface_without_dma() {
        let mut dev = FwCfg::new(1, 0);
        assert_eq!(item(&mut dev, FW_CFG_ID, 4), [1, 0, 0, 0]);
    }

    #[test]
    fn cpu_count_and_ram_size_are_little_endian() {
        let mut dev = FwCfg::new(3, 0x1_2345_6780);
        assert_eq!(item(&mut dev, FW_CFG_NB_CPUS, 2), [3, 0]);
        assert_eq!(item(&mut dev, FW_CFG_MAX_CPUS, 2), [3, 0]);
        assert_eq!(item(&mut dev, FW_CFG_RAM_SIZE, 8), 0x1_2345_6780u64.to_le_bytes());
    }

    #[test]
    fn directory_lists_files_big_endian_with_padded_names() {
        let mut dev = FwCfg::new(1, 0);
        assert_eq!(item(&mut dev, FW_CFG_FILE_DIR, 4), [0, 0, 0, 0], "empty directory");
        assert_eq!(dev.add_file("etc/first", b"abc"), Ok(0x20));
        assert_eq!(dev.add_file("opt/taproot/second", &[7; 300]), Ok(0x21));
        let dir = item(&mut dev, FW_CFG_FILE_DIR, DIR_HEADER_LEN + 2 * FILE_ENTRY_LEN + 4);
        assert_eq!(dir[..4], [0, 0, 0, 2]);
        let first = &dir[4..4 + FILE_ENTRY_LEN];
        assert_eq!(first[..4], [0, 0, 0, 3], "size");
        assert_eq!(first[4..6], [0x00, 0x20], "select");
        assert_eq!(first[6..8], [0, 0], "reserved");
        assert_eq!(&first[8..17], b"etc/first");
        assert!(first[17..].iter().all(|&b| b == 0), "NUL padded");
        let second = &dir[4 + FILE_ENTRY_LEN..4 + 2 * FILE_ENTRY_LEN];
        assert_eq!(second[..6], [0, 0, 0x01, 0x2C, 0x00, 0x21]);
        assert_eq!(&second[8..26], b"opt/taproot/second");
        assert_eq!(dir[4 + 2 * FILE_ENTRY_LEN..], [0; 4], "past the last entry");
        // The file itself, through the key the directory gave.
        assert_eq!(item(&mut dev, 0x20, 5), [b'a', b'b', b'c', 0, 0]);
        assert_eq!(item(&mut dev, 0x21, 301)[299..], [7, 0]);
    }

    #[test]
    fn add_file_refuses_bad_names_and_duplicates() {
        let mut dev = FwCfg::new(1, 0);
        assert_eq!(dev.add_file("", b""), Err(FwCfgError::BadName));
        assert_eq!(dev.add_file(&"x".repeat(FILE_NAME_LEN), b""), Err(FwCfgError::BadName));
        assert_eq!(dev.add_file("a\0b", b""), Err(FwCfgError::BadName));
        assert_eq!(dev.add_file(&"x".repeat(FILE_NAME_LEN - 1), b""), Ok(FW_CFG_FILE_FIRST));
        assert_eq!(dev.add_file("etc/a", b"1"), Ok(FW_CFG_FILE_FIRST + 1));
        assert_eq!(dev.add_file("etc/a", b"2"), Err(FwCfgError::DuplicateName));
    }

    #[test]
    fn reads_past_the_end_and_of_unknown_keys_are_zero() {
        let mut dev = FwCfg::new(2, 0);
        assert_eq!(item(&mut dev, FW_CFG_NB_CPUS, 6), [2, 0, 0, 0, 0, 0]);
        for key in [0x0002, 0x0018, 0x0020, 0x3FFF, 0x4000, 0x8000, 0x8003, 0xFFFF] {
            assert_eq!(item(&mut dev, key, 3), [0, 0, 0], "key {key:#x}");
        }
    }

    #[test]
    fn selecting_rewinds_the_offset_even_to_the_same_key() {
        let mut dev = FwCfg::new(1, 0);
        assert_eq!(item(&mut dev, FW_CFG_SIGNATURE, 2), b"QE");
        assert_eq!(read_bytes(&mut dev, 2), b"MU", "the offset advances per byte");
        assert_eq!(item(&mut dev, FW_CFG_SIGNATURE, 4), b"QEMU");
        assert_eq!(dev.selector(), FW_CFG_SIGNATURE);
    }

    #[test]
    fn byte_writes_and_data_writes_do_not_select() {
        let mut dev = FwCfg::new(1, 0);
        select(&mut dev, FW_CFG_ID);
        dev.write(SELECTOR_PORT, IoSize::Byte, 0);
        dev.write(DATA_PORT, IoSize::Byte, 0x55);
        dev.write(DATA_PORT, IoSize::Word, 0);
        assert_eq!(dev.selector(), FW_CFG_ID);
        assert_eq!(read_bytes(&mut dev, 1), [1], "the offset is unchanged too");
        // A byte read of the selector port is a data read, as in QEMU's combined region.
        assert_eq!(dev.read(SELECTOR_PORT, IoSize::Byte), 0);
        assert_eq!(dev.read(0x512, IoSize::Byte), 0);
    }

    #[test]
    fn every_key_and_long_reads_never_panic() {
        let mut dev = FwCfg::new(u16::MAX, u64::MAX);
        dev.add_file("f", b"x").unwrap();
        for key in 0..=u16::MAX {
            select(&mut dev, key);
            read_bytes(&mut dev, 2);
        }
        select(&mut dev, FW_CFG_FILE_DIR);
        assert_eq!(read_bytes(&mut dev, 1000).iter().filter(|&&b| b != 0).count(), 4); // 1, 1, 0x20, 'f'
    }
}
