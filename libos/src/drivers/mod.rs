//! Device drivers of the image itself (not the device models of child guests).
pub mod serial;
