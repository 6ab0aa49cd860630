//! The control plane (work in progress).
