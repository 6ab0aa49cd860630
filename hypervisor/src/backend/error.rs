//! What can go wrong in a backend, typed; `Display` is the operator-facing sentence (the
//! API and the launcher print it after "virtualization backend: ").

use alloc::string::String;
use core::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendError {
    /// The CPU does not offer what the backend needs (no SVM or VMX, no nested paging,
    /// VMX controls it cannot set); `why` says what, for the operator.
    NotSupported { why: String },
    /// The firmware turned virtualization off; `why` says how to turn it on again.
    DisabledByFirmware { why: &'static str },
    /// Turning virtualization on for a CPU failed (VMXON), with the CPU's reason.
    EnableFailed { what: &'static str, error: String },
    /// No memory for a control structure (host save areas, VMCB, VMCS, bitmaps) of
    /// `backend` (`SVM` or `VMX`).
    OutOfMemory { backend: &'static str },
    /// Preparing or doing a VM entry failed (VMCLEAR, VMPTRLD, VMWRITE, VMLAUNCH/VMRESUME,
    /// or the vCPU cannot enter on this CPU), with the VM-instruction error or the reason.
    VmEntryFailed { what: &'static str, error: String },
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::NotSupported { why } => f.write_str(why),
            BackendError::DisabledByFirmware { why } => f.write_str(why),
            BackendError::EnableFailed { what, error } | BackendError::VmEntryFailed { what, error } => {
                write!(f, "{what} failed: {error}")
            }
            BackendError::OutOfMemory { backend } => write!(f, "out of memory for {backend} structures"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn errors_read_as_the_operator_sentences() {
        assert_eq!(
            BackendError::OutOfMemory { backend: "SVM" }.to_string(),
            "out of memory for SVM structures"
        );
        let entry = BackendError::VmEntryFailed {
            what: "VMLAUNCH",
            error: "VM entry with invalid control field(s)".into(),
        };
        assert_eq!(entry.to_string(), "VMLAUNCH failed: VM entry with invalid control field(s)");
        let why = "this CPU has no AMD SVM";
        assert_eq!(BackendError::NotSupported { why: why.into() }.to_string(), why);
    }
}
