//! The MMU lock: a phase-fair reader-writer ticket lock (Brandenburg and Anderson, "Spin-
//! Based Reader-Writer Synchronization for Multiprocessor Real-Time Systems", PF-T), with
//! the lock mode carried in the guard's type.
//!
//! Why this lock and not `spin::RwLock`: rule 6 requires that a fault waiting for the lock
//! always makes progress. With a reader-preferring lock writers starve; with a
//! writer-preferring one (or a trylock loop) a steady stream of slot updates starves
//! faults. Phase fairness bounds both: writers are served in ticket (FIFO) order, and a
//! reader that arrives while a writer holds or waits for the lock waits for at most that one
//! writer phase, after which every reader that arrived during it enters together, before
//! the next writer.
//!
//! The lock also holds what it protects (the slot table): a reader borrows it through its
//! guard, the writer changes it through its own. A separate lock for the slot table, taken
//! inside this one, cost every fault two more atomic read-modify-writes on a cache line
//! that every faulting CPU writes; measured with two threads faulting in parallel, that
//! line moving between CPUs was most of a fault's cost.
//!
//! Layout (all counters wrap; only equality is ever tested, so wrapping is harmless):
//! - `rin`: readers that have entered, in units of [`READER`], plus in its low bits the
//!   writer bits ([`WRITER_PRESENT`] and the phase id [`PHASE_ID`], the low bit of the
//!   ticket of the writer that holds or is about to hold the lock);
//! - `rout`: readers that have left, in units of [`READER`];
//! - `win`/`wout`: writer tickets handed out and served.

#![allow(unsafe_code, reason = "the lock hands out references to the data it protects, as every lock does")]

use super::sync::{AtomicU32, Ordering, spin_wait};
use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

const READER: u32 = 0x100;
const WRITER_PRESENT: u32 = 0x2;
const PHASE_ID: u32 = 0x1;
const WRITER_BITS: u32 = WRITER_PRESENT | PHASE_ID;

pub struct MmuLock<T> {
    rin: AtomicU32,
    rout: AtomicU32,
    win: AtomicU32,
    wout: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: the lock gives out `&T` to readers on any thread and `&mut T` to one writer at a
// time, never both at once (the protocol below): what `T: Send + Sync` allows.
unsafe impl<T: Send + Sync> Sync for MmuLock<T> {}

/// Proof that the MMU lock is held shared (faults, zaps, guest memory access), and a shared
/// borrow of what it protects. Functions that may only run on the shared side take
/// `&MmuShared`.
pub struct MmuShared<'a, T> {
    lock: &'a MmuLock<T>,
    /// Guards are released on the CPU that took them.
    _not_send: PhantomData<*const ()>,
}

/// Proof that the MMU lock is held exclusively (slot table changes, marking roots invalid,
/// freeing table pages after a grace period), and a unique borrow of what it protects.
/// Functions that need it take `&mut MmuExclusive`, so holding the shared side instead is
/// a compile error.
pub struct MmuExclusive<'a, T> {
    lock: &'a MmuLock<T>,
    _not_send: PhantomData<*const ()>,
}

impl<T: Default> Default for MmuLock<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> MmuLock<T> {
    pub fn new(data: T) -> Self {
        Self {
            rin: AtomicU32::new(0),
            rout: AtomicU32::new(0),
            win: AtomicU32::new(0),
            wout: AtomicU32::new(0),
            data: UnsafeCell::new(data),
        }
    }

    pub fn read(&self) -> MmuShared<'_, T> {
        let writer = self.rin.fetch_add(READER, Ordering::AcqRel) & WRITER_BITS;
        if writer != 0 {
            // A writer holds or waits for the lock: wait until its phase ends, i.e. until
            // the writer bits change (cleared on its unlock, or replaced by the next
            // writer's, whose phase id differs). We never wait for a second writer.
            while self.rin.load(Ordering::Acquire) & WRITER_BITS == writer {
                spin_wait();
            }
        }
        MmuShared { lock: self, _not_send: PhantomData }
    }

    pub fn write(&self) -> MmuExclusive<'_, T> {
        let ticket = self.win.fetch_add(1, Ordering::AcqRel);
        while self.wout.load(Ordering::Acquire) != ticket {
            spin_wait();
        }
        // Announce the phase; from here on arriving readers wait. `entered` is the number of
        // readers that got in before the announcement (its writer bits are zero: the previous
        // writer cleared them before serving our ticket), and we wait for all of them to
        // leave.
        let entered = self.rin.fetch_add(WRITER_PRESENT | (ticket & PHASE_ID), Ordering::AcqRel);
        while self.rout.load(Ordering::Acquire) != entered {
            spin_wait();
        }
        MmuExclusive { lock: self, _not_send: PhantomData }
    }
}

impl<T> Deref for MmuShared<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this reader is counted in `rin` and not yet in `rout`, so no writer is in:
        // a writer enters only once `rout` has caught up with every reader counted before
        // its announcement, and readers counted after it wait for its phase to end. The
        // writer's changes happen before this read: its unlock releases `rin`, which our
        // entry acquired.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Deref for MmuExclusive<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the writer is alone (see `DerefMut`).
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for MmuExclusive<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this writer holds the one ticket being served and every reader counted
        // before its announcement has left (acquired through `rout`); readers arriving
        // later wait for its unlock. The borrow is tied to `&mut self`, so it is unique.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for MmuShared<'_, T> {
    fn drop(&mut self) {
        self.lock.rout.fetch_add(READER, Ordering::Release);
    }
}

impl<T> Drop for MmuExclusive<'_, T> {
    fn drop(&mut self) {
        self.lock.rin.fetch_and(!WRITER_BITS, Ordering::Release);
        self.lock.wout.fetch_add(1, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn readers_share_and_writers_exclude() {
        let lock = Arc::new(MmuLock::new(()));
        let inside = Arc::new(AtomicUsize::new(0));
        let writers_inside = Arc::new(AtomicUsize::new(0));
        let threads: std::vec::Vec<_> = (0..4)
            .map(|t| {
                let (lock, inside, writers_inside) = (lock.clone(), inside.clone(), writers_inside.clone());
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        if (i + t) % 7 == 0 {
                            let _x = lock.write();
                            assert_eq!(writers_inside.fetch_add(1, Ordering::SeqCst), 0);
                            assert_eq!(inside.load(Ordering::SeqCst), 0);
                            writers_inside.fetch_sub(1, Ordering::SeqCst);
                        } else {
                            let _s = lock.read();
                            inside.fetch_add(1, Ordering::SeqCst);
                            assert_eq!(writers_inside.load(Ordering::SeqCst), 0);
                            inside.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn two_readers_hold_the_lock_at_once() {
        let lock = MmuLock::new(());
        let a = lock.read();
        let b = lock.read();
        drop(a);
        drop(b);
        drop(lock.write());
    }
}
