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
//! Faults, the one reader that every vCPU runs at a high rate, have a second way in: a
//! reader slot of their own ([`MmuLock::read_in`]), so that taking and dropping the shared
//! side writes no cache line that another vCPU's fault writes too. With two threads
//! faulting on a two-CPU host whose CPUs share no cache, the central reader count alone
//! made two threads fault more slowly than one. This is the "big-reader" idea (Linux's
//! brlock, per-CPU rwsems): readers announce themselves in their own slot, a writer
//! announces itself centrally and waits for every slot to empty. Announcing and checking
//! are each followed by a sequentially consistent fence, so of a reader and a writer that
//! arrive together at least one sees the other (the store-buffering pattern): the reader
//! sees the writer and withdraws into the central, phase-fair queue behind it, or the
//! writer sees the reader and waits for it to leave. A slot reader therefore waits for
//! at most the writer it met (and, if that writer left before the reader queued, the
//! next one), as a central reader does.
//!
//! Layout (all counters wrap; only equality is ever tested, so wrapping is harmless):
//! - `rin`: readers that have entered, in units of [`READER`], plus in its low bits the
//!   writer bits ([`WRITER_PRESENT`] and the phase id [`PHASE_ID`], the low bit of the
//!   ticket of the writer that holds or is about to hold the lock);
//! - `rout`: readers that have left, in units of [`READER`];
//! - `win`/`wout`: writer tickets handed out and served;
//! - `slots`: per slot, the readers inside through it (or announcing themselves).

#![allow(unsafe_code, reason = "the lock hands out references to the data it protects, as every lock does")]

use crate::sync::{AtomicU32, Ordering, fence, spin_wait};
use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

const READER: u32 = 0x100;
const WRITER_PRESENT: u32 = 0x2;
const PHASE_ID: u32 = 0x1;
const WRITER_BITS: u32 = WRITER_PRESENT | PHASE_ID;

/// Reader slots of a lock: vCPUs beyond this many share slots (which stays correct; a
/// slot is a count, not a flag).
pub const READER_SLOTS: usize = 16;

/// One reader slot, alone on its cache line (and the adjacent one, which x86 prefetches
/// in pairs).
#[repr(align(128))]
struct ReaderSlot(AtomicU32);

pub struct MmuLock<T> {
    rin: AtomicU32,
    rout: AtomicU32,
    win: AtomicU32,
    wout: AtomicU32,
    slots: [ReaderSlot; READER_SLOTS],
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
    /// The reader slot this reader came in through, or `None` for the central count.
    slot: Option<usize>,
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
            slots: core::array::from_fn(|_| ReaderSlot(AtomicU32::new(0))),
            data: UnsafeCell::new(data),
        }
    }

    /// Takes the shared side through reader slot `slot % READER_SLOTS` (a vCPU's own), so
    /// that, while no writer is about, it writes only that slot's cache line.
    pub fn read_in(&self, slot: usize) -> MmuShared<'_, T> {
        let slot = slot % READER_SLOTS;
        let count = &self.slots[slot].0;
        count.fetch_add(1, Ordering::Relaxed);
        // Store-buffering with the writer's announcement in `write`: after both fences,
        // either our load below sees its writer bits (or the state after its unlock), or its
        // scan of the slots sees our count.
        fence(Ordering::SeqCst);
        // Acquire: when the bits read clear because a writer unlocked, its changes to the
        // data happen before our reads (its unlock released `rin`; readers' increments
        // since then continue that release sequence).
        if self.rin.load(Ordering::Acquire) & WRITER_BITS == 0 {
            return MmuShared { lock: self, slot: Some(slot), _not_send: PhantomData };
        }
        // A writer holds or waits for the lock, and may be waiting for this slot to empty:
        // withdraw, and queue centrally, where phase fairness lets us in right after it.
        count.fetch_sub(1, Ordering::Release);
        self.read()
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
        MmuShared { lock: self, slot: None, _not_send: PhantomData }
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
        // The other half of the store-buffering pair in `read_in`: a slot reader that
        // missed our bits is in its slot's count when we look.
        fence(Ordering::SeqCst);
        while self.rout.load(Ordering::Acquire) != entered {
            spin_wait();
        }
        // Slot readers that are in leave; new ones see our bits and withdraw. Acquire: a
        // count read as zero synchronises with every reader's release of that slot before.
        for slot in &self.slots {
            while slot.0.load(Ordering::Acquire) != 0 {
                spin_wait();
            }
        }
        MmuExclusive { lock: self, _not_send: PhantomData }
    }
}

impl<T> Deref for MmuShared<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: no writer is in while this reader is. A central reader is counted in
        // `rin` and not yet in `rout`: a writer enters only once `rout` has caught up with
        // every reader counted before its announcement, and readers counted after it wait
        // for its phase to end. A slot reader is counted in its slot, which it entered
        // only after seeing no writer bits past the fence, and a writer enters only after
        // seeing every slot empty past its own (see `read_in`). The writer's changes
        // happen before this read: its unlock releases `rin`, which our entry acquired.
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
        match self.slot {
            Some(slot) => self.lock.slots[slot].0.fetch_sub(1, Ordering::Release),
            None => self.lock.rout.fetch_add(READER, Ordering::Release),
        };
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
