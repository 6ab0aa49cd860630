//! Where the loader reads an image from: a byte slice, or the VM's own memory where an
//! upload was streamed ([`ImageSource`]). Planning reads only bounded pieces (the first
//! [`HEAD_LEN`] bytes, the ELF program header table, `PT_NOTE` segments), so the heap a
//! plan takes does not grow with the image.

use alloc::vec::Vec;

use super::LoadError;

/// Bytes at the start of an image that planning reads: the ELF file header, the bzImage
/// setup header (it ends before byte 0x290) and the multiboot1 search area (8 KiB).
pub const HEAD_LEN: usize = 8 * 1024;
/// Largest ELF program header table or `PT_NOTE` segment planning reads (a vmlinux has a
/// handful of program headers and a few hundred bytes of notes).
pub const TABLE_MAX_LEN: usize = 16 * 1024;

/// An image of [`len`](Self::len) bytes that can be read at any offset.
pub trait ImageSource {
    /// The image's length in bytes.
    fn len(&self) -> u64;

    /// Fills `buf` with the image's bytes at `offset`; the caller keeps
    /// `offset + buf.len() <= len()`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), LoadError>;

    /// The image is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ImageSource for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), LoadError> {
        let start = usize::try_from(offset).map_err(|_| LoadError::ImageRead { offset })?;
        let bytes = start.checked_add(buf.len()).and_then(|end| self.get(start..end));
        buf.copy_from_slice(bytes.ok_or(LoadError::ImageRead { offset })?);
        Ok(())
    }
}

/// The bytes `offset..offset + len` of `image`, or `None` when they lie beyond its end.
/// `len` is at most [`TABLE_MAX_LEN`] or [`HEAD_LEN`] (the caller checks).
pub(super) fn read_range(
    image: &dyn ImageSource,
    offset: u64,
    len: usize,
) -> Result<Option<Vec<u8>>, LoadError> {
    let end = offset.checked_add(len as u64);
    if end.is_none_or(|end| end > image.len()) {
        return Ok(None);
    }
    let mut bytes = alloc::vec![0; len];
    image.read_at(offset, &mut bytes)?;
    Ok(Some(bytes))
}

/// The first [`HEAD_LEN`] bytes of `image` (all of it if shorter).
pub(super) fn head(image: &dyn ImageSource) -> Result<Vec<u8>, LoadError> {
    let len = image.len().min(HEAD_LEN as u64) as usize;
    Ok(read_range(image, 0, len)?.unwrap_or_default())
}
