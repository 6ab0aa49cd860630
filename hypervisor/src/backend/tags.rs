//! Hardware tags handed to VMs (SVM ASIDs, VMX VPIDs): numbers from 1 to a CPU-given
//! limit, recycled when a VM goes. A recycled tag may still name stale translations on a
//! CPU; every vCPU flushes its tag's translations before its first entry (a pending flush
//! at creation), so the new VM never sees the old one's.

use alloc::vec::Vec;
use spin::Mutex;

pub struct TagPool {
    state: Mutex<(u32, Vec<u32>)>,
}

impl TagPool {
    pub const fn new() -> Self {
        Self { state: Mutex::new((1, Vec::new())) }
    }

    /// A free tag below `limit`, if any.
    pub fn alloc(&self, limit: u32) -> Option<u32> {
        let mut state = self.state.lock();
        if let Some(tag) = state.1.pop() {
            return Some(tag);
        }
        let tag = state.0;
        if tag >= limit {
            return None;
        }
        state.0 += 1;
        Some(tag)
    }

    pub fn free(&self, tag: u32) {
        self.state.lock().1.push(tag);
    }
}

impl Default for TagPool {
    fn default() -> Self {
        Self::new()
    }
}
