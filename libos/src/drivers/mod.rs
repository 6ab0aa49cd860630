//! Device drivers of the image itself (not the device models of child guests).
pub mod pci;
pub mod serial;
pub mod virtio_net;
