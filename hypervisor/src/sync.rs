//! The concurrency primitives of the MMU and the memory slots, in one place so that `--cfg loom` can swap them for
//! loom's model-checked versions. Everything whose interleavings matter (table entries,
//! the MMU lock, root state, the invalidation sequence, backing, grace-period epochs) goes
//! through here; plain statistics counters use `core` atomics directly.

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering, fence};
#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering, fence};

/// One step of a busy wait. Under loom it yields to the model's scheduler, which is what
/// lets loom explore (and terminate) spin loops.
#[inline]
pub fn spin_wait() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// A short mutual-exclusion lock for the MMU's bookkeeping lists (roots, vCPUs, the grace
/// queue). Never held across a table walk, a flush or anything that waits on the MMU lock.
pub struct Mutex<T> {
    #[cfg(not(loom))]
    inner: spin::Mutex<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

#[cfg(not(loom))]
pub type MutexGuard<'a, T> = spin::MutexGuard<'a, T>;
#[cfg(loom)]
pub type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    pub fn new(value: T) -> Self {
        Self {
            #[cfg(not(loom))]
            inner: spin::Mutex::new(value),
            #[cfg(loom)]
            inner: loom::sync::Mutex::new(value),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(not(loom))]
        return self.inner.lock();
        #[cfg(loom)]
        return self.inner.lock().expect("MMU bookkeeping lock poisoned");
    }
}
