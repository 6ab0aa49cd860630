//! Loom models: one fault racing one range invalidation (rule 7), and the MMU lock.
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p hypervisor --release --test loom`.
#![cfg(loom)]

use hypervisor::addr::{Gfn, GfnRange, Gpa, PAGE_SIZE, PageSize};
use hypervisor::memslot::{AsId, SlotFlags, SlotId, SlotSpec};
use hypervisor::mmu::host::{HostPages, HostPagesConfig, HostPlatform, RecordingFlush};
use hypervisor::mmu::lock::MmuLock;
use hypervisor::mmu::testfmt::TestFormat;
use hypervisor::mmu::{Access, Fault, Mmu, MmuConfig, NoClock, Role};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};

/// Spin-waits make unbounded models explode; two preemptions cover the interleavings these
/// races need (each side preempted once inside its critical section) and finish in seconds.
fn builder(preemptions: usize) -> loom::model::Builder {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    builder.max_branches = 200_000;
    builder
}

#[test]
fn fault_racing_a_range_invalidation_never_maps_discarded_memory() {
    builder(3).check(|| {
        let pages = std::sync::Arc::new(HostPages::new(HostPagesConfig {
            tables: 64,
            frames_4k: 16,
            frames_2m: 0,
            frames_1g: 0,
        }));
        let flush = std::sync::Arc::new(RecordingFlush::new());
        let config = MmuConfig { max_page_size: PageSize::Size4K, ..MmuConfig::default() };
        let mmu =
            Arc::new(Mmu::<HostPlatform<TestFormat, NoClock>>::new(config, pages.clone(), flush, NoClock));
        mmu.add_slot(SlotSpec {
            id: SlotId(0),
            as_id: AsId::Normal,
            base: Gpa::new(0),
            size: 4 * PAGE_SIZE,
            flags: SlotFlags::default(),
        })
        .unwrap();
        let gfn = Gfn::new(1);
        mmu.write_guest(AsId::Normal, gfn.gpa(), &[0xaa]).unwrap();
        let old = mmu.backing_of(AsId::Normal, gfn).unwrap();
        let mut vcpu = mmu.create_vcpu();
        vcpu.load(Role::new(AsId::Normal)).unwrap();

        let invalidator = {
            let mmu = mmu.clone();
            loom::thread::spawn(move || {
                let invalidation = mmu.begin_invalidation(AsId::Normal, GfnRange::new(gfn, gfn.add(1)));
                invalidation.discard();
            })
        };
        let outcome = vcpu.handle_fault(gfn.gpa(), Access::Write).unwrap();
        invalidator.join().unwrap();

        assert!(matches!(outcome, Fault::Installed | Fault::Retry), "{outcome:?}");
        let root = vcpu.root().unwrap().clone();
        // Whatever the interleaving, a translation that exists maps the current backing,
        // never the discarded frame. (`backing_of` allocates nothing; the arena may hand the
        // discarded frame's address out again, so comparing with `old` would prove nothing.)
        if let Some((hpa, _)) = mmu.translate(&root, gfn.gpa()) {
            assert_eq!(
                Some(hpa),
                mmu.backing_of(AsId::Normal, gfn),
                "a translation to discarded memory survived"
            );
        }
        let _ = old;
        let mut byte = [0xffu8];
        mmu.read_guest(AsId::Normal, gfn.gpa(), &mut byte).unwrap();
        assert_eq!(byte, [0], "discarded memory must read as zero");
        drop(root);
        vcpu.report_offline();
        drop(vcpu);
        drop(Arc::try_unwrap(mmu).ok().expect("threads are done"));
        assert_eq!(pages.all_frames_in_use(), 0);
        assert_eq!(pages.tables_in_use(), 0);
    });
}

#[test]
fn mmu_lock_excludes_writers_and_shares_readers() {
    builder(2).check(|| {
        let lock = Arc::new(MmuLock::new(()));
        let readers = Arc::new(AtomicUsize::new(0));
        let writers = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let (lock, readers, writers) = (lock.clone(), readers.clone(), writers.clone());
                loom::thread::spawn(move || {
                    if t == 0 {
                        let _exclusive = lock.write();
                        assert_eq!(writers.fetch_add(1, Ordering::SeqCst), 0);
                        assert_eq!(readers.load(Ordering::SeqCst), 0);
                        writers.fetch_sub(1, Ordering::SeqCst);
                    } else {
                        let _shared = lock.read();
                        readers.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(writers.load(Ordering::SeqCst), 0);
                        readers.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
}

#[test]
fn mmu_lock_serves_two_writers_in_turn() {
    builder(2).check(|| {
        let lock = Arc::new(MmuLock::new(()));
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (lock, inside) = (lock.clone(), inside.clone());
                loom::thread::spawn(move || {
                    let _exclusive = lock.write();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        let shared = lock.read();
        drop(shared);
        for t in threads {
            t.join().unwrap();
        }
    });
}

/// The value a lock protects in the models below: a loom cell, so that loom reports every
/// access the lock does not order (a read racing a write) as a causality violation.
struct Guarded(loom::cell::UnsafeCell<u64>);

// SAFETY: the models touch the cell only through the lock's guards; whether that makes the
// accesses ordered is exactly what loom checks.
unsafe impl Sync for Guarded {}

fn guarded_lock() -> Arc<MmuLock<Guarded>> {
    Arc::new(MmuLock::new(Guarded(loom::cell::UnsafeCell::new(0))))
}

fn read_value(lock: &MmuLock<Guarded>, slot: Option<usize>) -> u64 {
    let shared = match slot {
        Some(slot) => lock.read_in(slot),
        None => lock.read(),
    };
    // SAFETY: a shared guard is held; loom checks that no write races this read.
    shared.0.with(|v| unsafe { *v })
}

fn write_value(lock: &MmuLock<Guarded>) {
    let exclusive = lock.write();
    // SAFETY: the exclusive guard is held; loom checks that no access races this write.
    exclusive.0.with_mut(|v| unsafe { *v += 1 });
}

/// A vCPU's reader coming in through its own slot, a central reader and a writer: the
/// slot reader and the writer meet through the fences of the store-buffering pair, and
/// loom finds no read racing the write.
#[test]
fn mmu_lock_slot_readers_and_central_readers_exclude_the_writer() {
    builder(2).check(|| {
        let lock = guarded_lock();
        let writer = {
            let lock = lock.clone();
            loom::thread::spawn(move || write_value(&lock))
        };
        let slot_reader = {
            let lock = lock.clone();
            loom::thread::spawn(move || read_value(&lock, Some(3)))
        };
        let central = read_value(&lock, None);
        writer.join().unwrap();
        let seen = slot_reader.join().unwrap();
        assert!(seen <= 1 && central <= 1);
        assert_eq!(read_value(&lock, Some(3)), 1, "the write is seen after the writer left");
    });
}
