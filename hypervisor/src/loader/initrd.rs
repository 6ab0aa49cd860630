//! The initrd (initial ramdisk): where a plan lets it go, and how the boot information
//! names it. Placing is separate from planning so that an initrd given after the image
//! goes through the same code as one given before: the VM keeps the plan and calls
//! [`LoadPlan::place_initrd`] whenever it has both.
//!
//! Placement: page-aligned, as high as the area allows (Linux boot.rst: "as high as
//! possible" below `initrd_addr_max`, as GRUB and QEMU do), never below the area's start
//! (the end of the kernel's `init_size` for Linux, of the last segment for PVH).

use taproot_guest_abi::boot::{hvm_start_info as si, linux as bp};

use super::{LoadError, LoadPlan};
use crate::addr::{Gpa, PAGE_SIZE};

/// Where an initrd may go: `[lowest, limit)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitrdArea {
    pub lowest: Gpa,
    pub limit: Gpa,
    pub(super) fields: InitrdFields,
}

/// Which fields of the boot information take the initrd's address and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InitrdFields {
    /// `boot_params.hdr.ramdisk_image`/`ramdisk_size`, with `ext_ramdisk_*` for the upper
    /// halves.
    Linux,
    /// `hvm_start_info` module 0: `nr_modules` = 1, `modlist_paddr` = `modlist`, whose
    /// entry (reserved, zeroed, by the start info) gets `paddr` and `size`.
    Pvh { modlist: Gpa },
}

impl LoadPlan {
    /// Places an initrd of `size` bytes: returns its gpa and records it in the boot
    /// information. Calling it again (a replaced initrd) overwrites the record.
    pub fn place_initrd(&mut self, size: u64) -> Result<Gpa, LoadError> {
        let area =
            self.initrd_area.as_ref().ok_or(LoadError::InitrdNotSupported { protocol: self.protocol })?;
        if size == 0 {
            return Err(LoadError::InitrdEmpty);
        }
        let (lowest, limit) = (area.lowest.raw().next_multiple_of(PAGE_SIZE), area.limit.raw());
        let gpa = limit
            .checked_sub(size)
            .map(|start| start & !(PAGE_SIZE - 1))
            .filter(|&start| start >= lowest)
            .ok_or(LoadError::InitrdDoesNotFit { size, lowest, limit })?;
        let fields = area.fields;
        let info =
            self.boot_info.as_mut().ok_or(LoadError::InitrdNotSupported { protocol: self.protocol })?;
        let base = info.gpa.raw();
        let mut put = |gpa: u64, value: &[u8]| {
            let at = (gpa - base) as usize;
            info.bytes[at..at + value.len()].copy_from_slice(value);
        };
        match fields {
            InitrdFields::Linux => {
                let ((image_lo, image_hi), (size_lo, size_hi)) = (split(gpa), split(size));
                put(base + bp::RAMDISK_IMAGE as u64, &image_lo.to_le_bytes());
                put(base + bp::RAMDISK_SIZE as u64, &size_lo.to_le_bytes());
                put(base + bp::EXT_RAMDISK_IMAGE as u64, &image_hi.to_le_bytes());
                put(base + bp::EXT_RAMDISK_SIZE as u64, &size_hi.to_le_bytes());
            }
            InitrdFields::Pvh { modlist } => {
                put(base + si::NR_MODULES as u64, &1u32.to_le_bytes());
                put(base + si::MODLIST_PADDR as u64, &modlist.raw().to_le_bytes());
                put(modlist.raw() + si::MODLIST_ENTRY_PADDR as u64, &gpa.to_le_bytes());
                put(modlist.raw() + si::MODLIST_ENTRY_LEN as u64, &size.to_le_bytes());
            }
        }
        Ok(Gpa::new(gpa))
    }
}

/// The low and high 32 bits of `value`.
const fn split(value: u64) -> (u32, u32) {
    (value as u32, (value >> 32) as u32)
}
