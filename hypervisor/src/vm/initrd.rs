//! The VM's initrd: kept by the VM, placed by the image's plan.
//!
//! One order is not imposed: an initrd given before the image is kept and placed when the
//! image is loaded ([`Vm::load_image`]); one given after it is placed at once through the
//! plan the image load kept (`LoadPlan::place_initrd` updates the boot information, which
//! is written again). A new initrd replaces the old one, and a new image re-places the
//! kept initrd. Both happen only in `Created`: after start the guest owns its memory.
//! Placing fails (nothing is changed) when the image's protocol takes no initrd or the
//! initrd does not fit where the protocol allows it.

use super::{Vm, VmError, lifecycle};
use crate::addr::Gpa;
use crate::backend::Backend;
use crate::loader::LoadPlan;
use crate::memslot::AsId;
use alloc::format;
use alloc::vec::Vec;

/// What the VM keeps of its boot files.
#[derive(Default)]
pub(super) struct BootFiles {
    /// The loaded image's plan, with the initrd's fields when one is placed.
    pub plan: Option<LoadPlan>,
    pub initrd: Option<Vec<u8>>,
    /// Where the initrd went (`None`: no initrd, or no image yet).
    pub initrd_gpa: Option<Gpa>,
}

/// The answer to an initrd upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlaced {
    pub size: u64,
    /// Where it went; `None` until an image is loaded.
    pub gpa: Option<Gpa>,
}

pub(super) fn initrd_error(e: crate::loader::LoadError) -> VmError {
    VmError::BadImage(format!("initrd: {e}"))
}

impl<B: Backend> Vm<B> {
    /// Sets the VM's initrd (replacing any earlier one), placed now if an image is loaded.
    /// Only in `Created`.
    pub fn set_initrd(&self, initrd: Vec<u8>) -> Result<InitrdPlaced, VmError> {
        let state = self.state.lock();
        lifecycle::check_image_load(&state)
            .map_err(|_| VmError::WrongState { action: "load an initrd into", state: state.name() })?;
        let mut files = self.boot_files.lock();
        let size = initrd.len() as u64;
        let gpa = match &files.plan {
            Some(plan) => {
                let mut plan = plan.clone();
                let gpa = plan.place_initrd(size).map_err(initrd_error)?;
                self.write_initrd(&plan, gpa, &initrd)?;
                files.plan = Some(plan);
                Some(gpa)
            }
            None if initrd.is_empty() => return Err(initrd_error(crate::loader::LoadError::InitrdEmpty)),
            None => None,
        };
        files.initrd = Some(initrd);
        files.initrd_gpa = gpa;
        drop(state);
        Ok(InitrdPlaced { size, gpa })
    }

    /// Where the initrd is in guest memory (`None`: no initrd, or no image yet).
    pub fn initrd_gpa(&self) -> Option<Gpa> {
        self.boot_files.lock().initrd_gpa
    }

    /// Writes `initrd` at `gpa` and the plan's boot information (which names it).
    pub(super) fn write_initrd(&self, plan: &LoadPlan, gpa: Gpa, initrd: &[u8]) -> Result<(), VmError> {
        let write = |gpa: Gpa, bytes: &[u8]| {
            self.mmu.write_guest(AsId::Normal, gpa, bytes).map_err(|e| VmError::Memory(format!("{e:?}")))
        };
        write(gpa, initrd)?;
        if let Some(info) = &plan.boot_info {
            write(info.gpa, &info.bytes)?;
        }
        Ok(())
    }
}
