//! The one place that picks a backend: the CPUs' own virtualization, as libos detected it
//! on the boot CPU (VMX on Intel, SVM on AMD, none under an emulator or hypervisor that
//! hides it). Everything else receives the choice: [`Choice::dispatch`] calls a
//! [`WithBackend`] with the backend as a type.

use super::svm::Svm;
use super::vmx::Vmx;
use super::{Backend, BackendError, Caps};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Svm,
    Vmx,
    /// No hardware virtualization: the image runs (the API answers why no VM can), but no
    /// backend can be turned on.
    None,
}

/// Something to do with the chosen backend `B`.
pub trait WithBackend {
    type Output;
    /// `available` is `Err` when there is no backend to use: `B` is then a stand-in whose
    /// functions must not be called.
    fn with<B: Backend>(self, available: Result<(), BackendError>) -> Self::Output;
}

/// The backend of this machine, from the boot CPU's virtualization.
pub fn choose() -> Choice {
    match libos::smp::virt_caps(0).unwrap_or_default() {
        libos::virt::VirtCaps::Svm(_) => Choice::Svm,
        libos::virt::VirtCaps::Vmx(_) => Choice::Vmx,
        libos::virt::VirtCaps::None => Choice::None,
    }
}

impl Choice {
    /// `svm`, `vmx` or `none`, as the banner and the API say.
    pub fn name(self) -> &'static str {
        match self {
            Choice::Svm => Svm::NAME,
            Choice::Vmx => Vmx::NAME,
            Choice::None => "none",
        }
    }

    /// What the chosen backend's CPU offers.
    pub fn caps(self) -> Caps {
        match self {
            Choice::Svm => Svm::caps().clone(),
            Choice::Vmx => Vmx::caps().clone(),
            Choice::None => Caps::none(),
        }
    }

    /// Runs `work` with the chosen backend's type.
    pub fn dispatch<W: WithBackend>(self, work: W) -> W::Output {
        match self {
            Choice::Svm => work.with::<Svm>(Ok(())),
            Choice::Vmx => work.with::<Vmx>(Ok(())),
            // SVM stands in: `work` is told there is nothing to use.
            Choice::None => work.with::<Svm>(Err(BackendError::NotSupported {
                why: "this machine offers no hardware virtualization (VMX or SVM) to Taproot".into(),
            })),
        }
    }
}
