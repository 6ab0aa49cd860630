//! vCPU threads fault random gfns while a control thread deletes, moves, re-adds slots,
//! flips flags and invalidates ranges. Afterwards no translation points to a frame that
//! does not back its gfn, and destroy returns every table page and frame.

mod common;

use common::*;
use hypervisor::addr::{Gfn, GfnRange, Gpa, PageSize};
use hypervisor::memslot::{AsId, SlotFlags, SlotId};
use hypervisor::mmu::host::{HostPagesConfig, HostPlatform};
use hypervisor::mmu::testfmt::TestFormat;
use hypervisor::mmu::{Access, Fault, MmuConfig, NoClock, Role};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Slot `i` lives in one of two 8 MiB windows: [i * 16 MiB, +8 MiB) or [+8 MiB, +16 MiB).
const SLOTS: u32 = 4;

fn window(i: u32, alt: bool) -> u64 {
    u64::from(i) * 16 * MIB + if alt { 8 * MIB } else { 0 }
}

fn run(threads: usize, rounds: u32, max_page_size: PageSize, seed: u64) {
    let config = MmuConfig { max_page_size, zap_batch: 64, ..MmuConfig::default() };
    let vm = Arc::new(vm_with::<TestFormat>(
        config,
        HostPagesConfig { tables: 1 << 14, frames_4k: 1 << 18, frames_2m: 256, frames_1g: 0 },
    ));
    // Slot i: 4 MiB (2 MiB-aligned, so 2 MiB chunks where allowed).
    for i in 0..SLOTS {
        vm.mmu.add_slot(spec(i, AsId::Normal, window(i, false), 4 * MIB)).unwrap();
    }
    vm.mmu.add_slot(spec(100, AsId::Alternate, 0, 4 * MIB)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let faults = Arc::new(AtomicU64::new(0));
    let vcpus: Vec<_> = (0..threads)
        .map(|t| {
            let (vm, stop, faults) = (vm.clone(), stop.clone(), faults.clone());
            let mut vcpu = vm.mmu.create_vcpu();
            std::thread::spawn(move || {
                let mut rng = Rng::new(1000 + t as u64);
                let mut role = Role::new(AsId::Normal);
                vcpu.load(role).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    // A VM exit: report quiescence, then handle the exit.
                    vcpu.report_quiescent();
                    if rng.below(64) == 0 {
                        role = Role::new(if role.as_id == AsId::Normal {
                            AsId::Alternate
                        } else {
                            AsId::Normal
                        });
                        vcpu.load(role).unwrap();
                    }
                    if rng.below(512) == 0 {
                        vcpu.unload();
                        vcpu.load(role).unwrap();
                    }
                    let gfn = rng.below((u64::from(SLOTS) * 16 * MIB) >> 12);
                    let access = if rng.chance(50) { Access::Write } else { Access::Read };
                    match vcpu.handle_fault(Gfn::new(gfn).gpa(), access).unwrap() {
                        Fault::Installed | Fault::Retry | Fault::NotInSlot | Fault::WriteToReadOnly => {}
                    }
                    faults.fetch_add(1, Ordering::Relaxed);
                    // Before the next entry.
                    if vcpu.take_reload_request() {
                        vcpu.load(role).unwrap();
                    }
                }
                vcpu.report_offline();
                drop(vcpu);
            })
        })
        .collect();

    // The churn must race with running vCPUs, and on a loaded 2-core host (CI runs the
    // three tests at once: 14 vCPU threads and 3 churners) a thread may not have run at all
    // by the time `rounds` rounds are over. So: start once the vCPUs have faulted `threads`
    // times, and keep churning past `rounds` until they have faulted `threads` more times
    // during the churn. A minute of extra churn without that is a liveness failure, not
    // scheduling.
    let deadline = Instant::now() + Duration::from_secs(60);
    while faults.load(Ordering::Relaxed) < threads as u64 {
        assert!(Instant::now() < deadline, "vCPU threads made no fault in 60 s before the churn");
        std::thread::yield_now();
    }
    let before_churn = faults.load(Ordering::Relaxed);
    let mut rng = Rng::new(seed);
    let mut moved = [false; SLOTS as usize];
    let mut present = [true; SLOTS as usize];
    let mut round = 0;
    let mut overtime = None;
    while round < rounds || faults.load(Ordering::Relaxed) < before_churn + threads as u64 {
        if round >= rounds {
            let since = *overtime.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "vCPU threads made {} faults against the churn, and none more in 60 s of it",
                faults.load(Ordering::Relaxed) - before_churn
            );
        }
        let i = rng.below(u64::from(SLOTS)) as u32;
        let s = i as usize;
        match rng.below(6) {
            0 if present[s] => {
                let frames: Vec<_> = (0..1024)
                    .filter_map(|p| {
                        vm.mmu.backing_of(AsId::Normal, Gpa::new(window(i, moved[s])).gfn().add(p))
                    })
                    .collect();
                vm.mmu.delete_slot(SlotId(i)).unwrap();
                present[s] = false;
                // None of the deleted slot's frames is still mapped at a gfn it does not
                // back (it may be reused by now, for another gfn, legitimately).
                check_translations(&vm.mmu);
                let _ = frames;
            }
            0 | 1 if !present[s] => {
                moved[s] = rng.chance(50);
                vm.mmu.add_slot(spec(i, AsId::Normal, window(i, moved[s]), 4 * MIB)).unwrap();
                present[s] = true;
            }
            1 | 2 if present[s] => {
                moved[s] = !moved[s];
                // Sometimes to a base aligned only to 4 KiB, so 2 MiB chunks map page by page.
                let skew = if rng.chance(30) { 4096 } else { 0 };
                vm.mmu.move_slot(SlotId(i), Gpa::new(window(i, moved[s]) + skew)).unwrap();
                if skew != 0 {
                    vm.mmu.move_slot(SlotId(i), Gpa::new(window(i, moved[s]))).unwrap();
                }
            }
            3 => {
                let start = rng.below((u64::from(SLOTS) * 16 * MIB) >> 12);
                let len = rng.range(1, 2048);
                vm.mmu.discard_range(AsId::Normal, GfnRange::new(Gfn::new(start), Gfn::new(start + len)));
            }
            4 if present[s] => {
                let flags = SlotFlags { read_only: rng.chance(30), dirty_log: rng.chance(30) };
                vm.mmu.set_slot_flags(SlotId(i), flags).unwrap();
                if flags.dirty_log {
                    vm.mmu.dirty_log(SlotId(i)).unwrap();
                }
            }
            _ => {
                vm.mmu
                    .discard_range(AsId::Alternate, GfnRange::new(Gfn::new(0), Gfn::new(rng.range(1, 1024))));
            }
        }
        if round % 16 == 0 {
            check_translations(&vm.mmu);
        }
        round += 1;
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for t in vcpus {
        t.join().unwrap();
    }
    check_translations(&vm.mmu);
    let stats = vm.mmu.stats();
    assert!(stats.faults > 0 && stats.zaps > 0);
    let vm = Arc::into_inner(vm).expect("threads are done");
    let (pages, mmu) = (vm.pages.clone(), vm.mmu);
    drop(mmu);
    assert_eq!(pages.tables_in_use(), 0, "table pages leaked");
    assert_eq!(pages.all_frames_in_use(), 0, "backing frames leaked");
}

type _Unused = HostPlatform<TestFormat, NoClock>;

#[test]
fn two_vcpus_against_slot_churn() {
    run(2, 400, PageSize::Size2M, 1);
}

#[test]
fn four_vcpus_against_slot_churn_4k() {
    run(4, 400, PageSize::Size4K, 2);
}

#[test]
fn eight_vcpus_against_slot_churn() {
    run(8, 300, PageSize::Size2M, 3);
}
