//! Runs of frames that back hardware control structures (VMCB, VMCS, VMXON region, host
//! save areas, I/O and MSR permission maps): owned, reached through libos's direct map,
//! freed on drop.
#![allow(unsafe_code, reason = "a frame run is reached through the direct map")]

use libos::mm::frame::{self, FRAME_SIZE};

/// `count` contiguous 4 KiB frames from libos, owned by this value.
pub struct Frames {
    phys: u64,
    count: usize,
}

impl Frames {
    /// `count` zeroed frames, or `None` when memory is out.
    pub fn zeroed(count: usize) -> Option<Self> {
        frame::alloc_zeroed(count).map(|phys| Self { phys, count })
    }

    /// `count` frames with every byte `byte` (permission maps: all ones = intercept all).
    pub fn filled(count: usize, byte: u8) -> Option<Self> {
        let mut frames = frame::alloc(count).map(|phys| Self { phys, count })?;
        frames.bytes_mut().fill(byte);
        Some(frames)
    }

    /// The physical (and, through the direct map, virtual) address of the first frame.
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// The frames' bytes, for the host to fill before the hardware uses them.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `frame::alloc` handed these frames to this value alone (libos gives each
        // run out once, from RAM nothing else uses) and all RAM is identity mapped, so the
        // run is valid, aligned and unaliased for as long as `&mut self` is held.
        unsafe { core::slice::from_raw_parts_mut(self.phys as *mut u8, self.count * FRAME_SIZE as usize) }
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        frame::free(self.phys, self.count);
    }
}
