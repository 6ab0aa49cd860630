//! The MMU's concurrency primitives, in one place so that `--cfg loom` can swap them for
//! loom's model-checked versions. Everything whose interleavings matter (table entries,
//! the MMU lock, root state, the invalidation sequence, backing, grace-period epochs) goes
//! through here; plain statistics counters use `core` atomics directly.

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

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

/// The slot table's lock. Its write side is only ever taken while the MMU lock is held
/// exclusively, and its read side only while the MMU lock is held (either way), so it is
/// never contended: it exists to give safe interior mutability, not ordering.
pub struct RwLock<T> {
    #[cfg(not(loom))]
    inner: spin::RwLock<T>,
    #[cfg(loom)]
    inner: loom::sync::RwLock<T>,
}

#[cfg(not(loom))]
pub type RwLockReadGuard<'a, T> = spin::RwLockReadGuard<'a, T>;
#[cfg(not(loom))]
pub type RwLockWriteGuard<'a, T> = spin::RwLockWriteGuard<'a, T>;
#[cfg(loom)]
pub type RwLockReadGuard<'a, T> = loom::sync::RwLockReadGuard<'a, T>;
#[cfg(loom)]
pub type RwLockWriteGuard<'a, T> = loom::sync::RwLockWriteGuard<'a, T>;

impl<T> RwLock<T> {
    pub fn new(value: T) -> Self {
        Self {
            #[cfg(not(loom))]
            inner: spin::RwLock::new(value),
            #[cfg(loom)]
            inner: loom::sync::RwLock::new(value),
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        #[cfg(not(loom))]
        return self.inner.read();
        #[cfg(loom)]
        return self.inner.read().expect("slot table lock poisoned");
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        #[cfg(not(loom))]
        return self.inner.write();
        #[cfg(loom)]
        return self.inner.write().expect("slot table lock poisoned");
    }
}
