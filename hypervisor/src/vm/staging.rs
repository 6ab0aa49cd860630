//! Image uploads staged in the VM's own memory: the body is written, as it arrives, to
//! the top of guest RAM, and the loader validates and places it from there, so the heap an
//! upload takes does not grow with the image (a kernel is 10-60 MB; the heap is an eighth
//! of the host's RAM).
//!
//! The protocol, all in `Created`:
//! 1. [`Vm::begin_staging`] unloads the VM's image (the staged bytes may overwrite it) and
//!    picks the staging area: the image's length rounded up to pages, ending at the top of
//!    guest RAM, never below [`STAGING_LOWEST`] (the real-mode area, the boot information
//!    and the ACPI tables stay untouched); an image that does not fit is refused before a
//!    byte is written.
//! 2. [`Vm::stage_chunk`] writes each piece of the body at its offset in the area.
//! 3. [`Vm::load_staged`] plans the image by reading the area (see
//!    [`crate::loader::ImageSource`]) and copies each segment guest-to-guest to its load
//!    address. The rule that keeps the copy sound: **every segment (file bytes and
//!    zero-filled tail) lies below the staging area**, checked before the first byte is
//!    copied, so no copy overwrites bytes still to be read. After the segments, the area is
//!    zeroed, and only then are the initrd and the boot information written (the initrd
//!    goes as high as its area allows, which may be where the image was staged).
//!    A plan that breaks the rule is refused (422) and says how much RAM would do.
//! 4. On any failure (a bad image, a cut-off upload: [`Vm::discard_staged`]) the area is
//!    zeroed and the VM stays without an image. Memory below the area is as it was: an
//!    image is refused before its first segment is copied (only a guest-memory failure
//!    midway, which ends the upload 503, leaves part of them). An earlier image's bytes
//!    that lay in the area are gone (the VM had no image any more from step 1).
//!
//! Heap per upload: the loader's bounded reads ([`crate::loader::HEAD_LEN`],
//! [`crate::loader::TABLE_MAX_LEN`]) and one [`COPY_CHUNK`] buffer while placing.

use super::{Vm, VmError, lifecycle};
use crate::addr::{Gpa, PAGE_SIZE};
use crate::backend::Backend;
use crate::loader::{ImageFormat, ImageSource, LoadError, LoadPlan, Size};
use crate::memslot::AsId;
use crate::mmu::{Mmu, Platform};
use alloc::format;
use alloc::vec::Vec;

/// The staging area never reaches below 1 MiB: the real-mode area, the boot information
/// and the ACPI tables (0xE0000) are there.
pub const STAGING_LOWEST: u64 = 0x10_0000;
/// Bytes copied at a time from a source to guest memory.
pub const COPY_CHUNK: usize = 16 * 1024;

/// Where an upload is being staged: `len` bytes at `gpa`, up to the top of guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagedImage {
    pub gpa: Gpa,
    pub len: u64,
}

impl StagedImage {
    /// The first gpa the staged image's pages do not cover.
    fn end(&self) -> u64 {
        self.gpa.raw() + self.len.next_multiple_of(PAGE_SIZE)
    }
}

/// A staged image as the loader reads it: straight from guest memory.
pub(super) struct GuestImage<'a, P: Platform> {
    pub mmu: &'a Mmu<P>,
    pub staged: StagedImage,
}

impl<P: Platform> ImageSource for GuestImage<'_, P> {
    fn len(&self) -> u64 {
        self.staged.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), LoadError> {
        let end = offset.checked_add(buf.len() as u64).filter(|&end| end <= self.staged.len);
        if end.is_none() {
            return Err(LoadError::ImageRead { offset });
        }
        let gpa = Gpa::new(self.staged.gpa.raw() + offset);
        self.mmu.read_guest(AsId::Normal, gpa, buf).map_err(|_| LoadError::ImageRead { offset })
    }
}

/// Where an image of `len` bytes is staged in a VM of `mem_size` bytes, or why it cannot be.
pub fn staging_area(len: u64, mem_size: u64) -> Result<StagedImage, VmError> {
    let pages = len.checked_next_multiple_of(PAGE_SIZE);
    let start = pages.and_then(|pages| mem_size.checked_sub(pages)).filter(|&start| start >= STAGING_LOWEST);
    let start = start.ok_or_else(|| {
        VmError::TooLarge(format!(
            "the image ({}) does not fit in the VM's {} of RAM above {} where it is staged",
            Size(len),
            Size(mem_size),
            Size(STAGING_LOWEST)
        ))
    })?;
    Ok(StagedImage { gpa: Gpa::new(start), len })
}

/// Copies `len` bytes of `image` from `offset` to guest memory at `gpa`, a [`COPY_CHUNK`]
/// at a time.
pub(super) fn copy_to_guest<P: Platform>(
    mmu: &Mmu<P>,
    image: &dyn ImageSource,
    offset: u64,
    gpa: Gpa,
    len: u64,
) -> Result<(), VmError> {
    let mut buf: Vec<u8> = Vec::new();
    buf.try_reserve_exact(COPY_CHUNK.min(len as usize))
        .map_err(|_| VmError::Memory("no heap for the copy buffer".into()))?;
    buf.resize(COPY_CHUNK.min(len as usize), 0);
    let mut done = 0;
    while done < len {
        let n = (len - done).min(COPY_CHUNK as u64) as usize;
        image.read_at(offset + done, &mut buf[..n]).map_err(|e| VmError::BadImage(format!("{e}")))?;
        mmu.write_guest(AsId::Normal, Gpa::new(gpa.raw() + done), &buf[..n])
            .map_err(|e| VmError::Memory(format!("{e:?}")))?;
        done += n as u64;
    }
    Ok(())
}

/// Copies every segment of `plan` from `image` into guest memory, and zeroes each
/// segment's tail beyond its file bytes.
pub(super) fn place_segments<P: Platform>(
    mmu: &Mmu<P>,
    image: &dyn ImageSource,
    plan: &LoadPlan,
) -> Result<(), VmError> {
    for segment in &plan.segments {
        let file_len = segment.file_range.len() as u64;
        copy_to_guest(mmu, image, segment.file_range.start as u64, segment.gpa, file_len)?;
        // The tail beyond the file's bytes reads as zeros; memory never touched is zero
        // already, so a huge `p_memsz` costs nothing (see `Mmu::zero_guest`).
        let tail = Gpa::new(segment.gpa.raw() + file_len);
        let tail_len = segment.gpa_range().end.raw().saturating_sub(tail.raw());
        mmu.zero_guest(AsId::Normal, tail, tail_len).map_err(|e| VmError::Memory(format!("{e:?}")))?;
    }
    Ok(())
}

/// Refuses a plan whose segments reach into the staging area (the rule in the module doc).
pub(super) fn check_below_staging(plan: &LoadPlan, staged: &StagedImage) -> Result<(), VmError> {
    let Some(top) = plan.segments.iter().map(|s| s.gpa_range().end.raw()).max() else {
        return Ok(());
    };
    if top <= staged.gpa.raw() {
        return Ok(());
    }
    let needed = (top + staged.len.next_multiple_of(PAGE_SIZE)).next_multiple_of(1 << 20);
    Err(VmError::BadImage(format!(
        "the image's segments reach {top:#x}, into {:#x}..{:#x} where the upload was staged; a VM with {} \
         of RAM or more can load it",
        staged.gpa.raw(),
        staged.end(),
        Size(needed)
    )))
}

impl<B: Backend> Vm<B> {
    /// Step 1: unloads the image and returns where an upload of `len` bytes goes. Only in
    /// `Created`.
    pub fn begin_staging(&self, len: u64) -> Result<StagedImage, VmError> {
        let state = self.state.lock();
        lifecycle::check_image_load(&state)?;
        let staged = staging_area(len, self.memory_bytes())?;
        self.unload_image();
        drop(state);
        Ok(staged)
    }

    /// Step 2: writes `bytes` at `offset` of the staged image.
    pub fn stage_chunk(&self, staged: &StagedImage, offset: u64, bytes: &[u8]) -> Result<(), VmError> {
        let end = offset.checked_add(bytes.len() as u64).filter(|&end| end <= staged.len);
        if end.is_none() {
            return Err(VmError::BadImage(format!(
                "{} bytes at offset {offset} run past the image's {} bytes",
                bytes.len(),
                staged.len
            )));
        }
        let gpa = Gpa::new(staged.gpa.raw() + offset);
        self.mmu.write_guest(AsId::Normal, gpa, bytes).map_err(|e| VmError::Memory(format!("{e:?}")))
    }

    /// Step 3: validates the staged image and places it (see the module doc); on error the
    /// area is zeroed and the VM has no image.
    pub fn load_staged(
        &self,
        staged: &StagedImage,
        format: ImageFormat,
        cmdline: &str,
    ) -> Result<LoadPlan, VmError> {
        let image = GuestImage { mmu: &self.mmu, staged: *staged };
        let loaded = self.load_from(&image, format, cmdline, Some(staged));
        if loaded.is_err() {
            self.discard_staged(staged);
        }
        loaded
    }

    /// Zeroes the staging area: an upload ends without an image.
    pub fn discard_staged(&self, staged: &StagedImage) {
        // The area lies in the RAM slot, which lives as long as the VM: zeroing it fails
        // only if a slot was deleted under it, and then there is nothing to zero.
        let _ = self.clear_staging(staged);
    }

    /// Forgets the image (and where the initrd went, which the next image decides); the
    /// initrd itself is kept.
    fn unload_image(&self) {
        *self.entry.lock() = None;
        let mut files = self.boot_files.lock();
        files.plan = None;
        files.initrd_gpa = None;
    }

    /// The zeroing of step 3, between the segments and the initrd.
    pub(super) fn clear_staging(&self, staged: &StagedImage) -> Result<(), VmError> {
        self.mmu
            .zero_guest(AsId::Normal, staged.gpa, staged.end() - staged.gpa.raw())
            .map_err(|e| VmError::Memory(format!("{e:?}")))
    }
}

#[cfg(test)]
#[path = "staging_tests.rs"]
mod tests;
