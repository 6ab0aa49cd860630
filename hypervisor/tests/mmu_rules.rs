//! One test (at least) per rule of "The TDP MMU: what it must guarantee".

mod common;

use common::*;
use hypervisor::addr::{Gfn, GfnRange, Gpa, PAGE_SIZE, PageSize};
use hypervisor::memslot::{AsId, SlotError, SlotFlags, SlotId, SlotSpec};
use hypervisor::mmu::ept::Ept;
use hypervisor::mmu::host::Event;
use hypervisor::mmu::npt::Npt;
use hypervisor::mmu::testfmt::TestFormat;
use hypervisor::mmu::{Access, Fault, MmuConfig, MmuError, Role, TdpFormat};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn nested() -> Role {
    Role { nested: true, ..Role::new(AsId::Normal) }
}

#[test]
fn a_million_reload_cycles_allocate_one_root_per_role_and_install_nothing_new() {
    let vm = vm();
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, 4 * MIB)).unwrap();
    vm.mmu.add_slot(spec(1, AsId::Alternate, 0, MIB)).unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    let roles = [Role::new(AsId::Normal), Role::new(AsId::Alternate), nested()];
    for role in roles {
        vcpu.load(role).unwrap();
        for gfn in [0, 1, 200] {
            assert_eq!(vcpu.handle_fault(gpa(gfn), Access::Write), Ok(Fault::Installed));
        }
    }
    let warm = vm.mmu.stats();
    assert_eq!(warm.roots_allocated, 3);
    for i in 0..1_000_000u64 {
        // What INIT (unload everything), CR0.WP/CR4 toggles and SMM entry/exit (switch
        // role, keeping the previous root cached) do.
        if i % 4 == 0 {
            vcpu.unload();
        }
        let role = roles[(i % 3) as usize];
        let pointer = vcpu.load(role).unwrap();
        assert_eq!(Some(pointer), vcpu.root_pointer());
        assert_eq!(vcpu.handle_fault(gpa(i % 2), Access::Write), Ok(Fault::Installed));
    }
    let after = vm.mmu.stats();
    assert_eq!(after.roots_allocated, 3, "roots were rebuilt");
    assert_eq!(after.roots_invalidated, 0);
    assert_eq!(after.sptes_installed, warm.sptes_installed, "entries were reinstalled");
    assert_eq!(after.table_pages, warm.table_pages);
    assert!(after.roots_reused >= 1_000_000);
}

#[test]
fn switching_roles_is_a_cache_lookup() {
    let vm = vm();
    let mut vcpu = vm.mmu.create_vcpu();
    let roles = [
        Role::new(AsId::Normal),
        Role::new(AsId::Alternate),
        nested(),
        Role { levels: 5, ..Role::new(AsId::Normal) },
    ];
    for role in roles {
        vcpu.load(role).unwrap();
    }
    let before = vm.mmu.stats();
    // The current root plus three cached: all four roles load without touching the MMU's list.
    for role in roles.iter().rev() {
        vcpu.load(*role).unwrap();
    }
    assert_eq!(vm.mmu.stats().roots_allocated, before.roots_allocated);
    assert_eq!(vm.mmu.stats().roots_allocated, 4);
    assert_eq!(vcpu.load(Role { levels: 3, ..Role::new(AsId::Normal) }), Err(MmuError::UnsupportedLevels));
}

#[test]
fn vcpus_with_the_same_role_share_a_root() {
    let vm = vm();
    let mut a = vm.mmu.create_vcpu();
    let mut b = vm.mmu.create_vcpu();
    assert_eq!(a.load(Role::new(AsId::Normal)), b.load(Role::new(AsId::Normal)));
    assert_ne!(a.load(Role::new(AsId::Alternate)), b.load(Role::new(AsId::Normal)));
    assert_eq!(vm.mmu.stats().roots_allocated, 2);
}

/// Rule 11 with per-vCPU fault counters: every fault is counted once, whether its vCPU is
/// still there or gone, and only where it happened.
#[test]
fn fault_counters_add_up_across_vcpus_and_survive_their_vcpu() {
    let vm = vm();
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, MIB)).unwrap();
    let mut a = vm.mmu.create_vcpu();
    let mut b = vm.mmu.create_vcpu();
    a.load(Role::new(AsId::Normal)).unwrap();
    b.load(Role::new(AsId::Normal)).unwrap();
    for gfn in 0..5 {
        assert_eq!(a.handle_fault(gpa(gfn), Access::Write), Ok(Fault::Installed));
    }
    for gfn in 10..13 {
        assert_eq!(b.handle_fault(gpa(gfn), Access::Write), Ok(Fault::Installed));
    }
    // Already there: a fault, but nothing installed.
    assert_eq!(b.handle_fault(gpa(0), Access::Write), Ok(Fault::Installed));
    assert_eq!(b.handle_fault(Gpa::new(4 * MIB), Access::Read), Ok(Fault::NotInSlot));
    let stats = vm.mmu.stats();
    assert_eq!((stats.faults, stats.sptes_installed, stats.faults_retried), (10, 8, 0));
    drop(a);
    assert_eq!(vm.mmu.stats(), stats, "a's counts stay after a is gone");
    assert_eq!(b.handle_fault(gpa(20), Access::Write), Ok(Fault::Installed));
    drop(b);
    let after = vm.mmu.stats();
    assert_eq!((after.faults, after.sptes_installed), (11, 9));
}

#[test]
fn adding_a_slot_invalidates_nothing() {
    let vm = vm();
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, MIB)).unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    assert_eq!(vcpu.handle_fault(gpa(3), Access::Read), Ok(Fault::Installed));
    assert_eq!(vcpu.handle_fault(Gpa::new(2 * MIB), Access::Read), Ok(Fault::NotInSlot));
    let flushes = vm.flush.flushes();
    vm.mmu.add_slot(spec(1, AsId::Normal, 2 * MIB, MIB)).unwrap();
    let root = vcpu.root().unwrap().clone();
    assert!(root.is_valid());
    assert!(!vcpu.is_reload_requested());
    assert_eq!(vm.mmu.stats().roots_invalidated, 0);
    assert_eq!(vm.flush.flushes(), flushes);
    assert!(vm.mmu.translate(&root, gpa(3)).is_some());
    assert_eq!(vcpu.handle_fault(Gpa::new(2 * MIB), Access::Read), Ok(Fault::Installed));
}

#[test]
fn deleting_a_slot_invalidates_every_root_zaps_each_once_and_leaves_no_entry_into_it() {
    let vm = vm();
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, 2 * MIB)).unwrap();
    vm.mmu.add_slot(spec(1, AsId::Normal, 4 * MIB, 2 * MIB)).unwrap();
    vm.mmu.add_slot(spec(2, AsId::Alternate, 0, 2 * MIB)).unwrap();
    let mut vcpus: Vec<_> = (0..3).map(|_| vm.mmu.create_vcpu()).collect();
    let roles = [Role::new(AsId::Normal), Role::new(AsId::Alternate), nested()];
    for (vcpu, role) in vcpus.iter_mut().zip(roles) {
        vcpu.load(role).unwrap();
        for gfn in (0..512).step_by(7).chain((1024..1536).step_by(5)) {
            vcpu.handle_fault(gpa(gfn), Access::Write).unwrap();
        }
    }
    let doomed: Vec<_> = (0..512).filter_map(|g| vm.mmu.backing_of(AsId::Normal, Gfn::new(g))).collect();
    assert!(!doomed.is_empty());
    let roots = vm.mmu.roots();
    assert_eq!(roots.len(), 3);
    let kicks = vm.flush.kicks();

    vm.mmu.delete_slot(SlotId(0)).unwrap();

    for root in &roots {
        assert!(!root.is_valid());
        assert_eq!(root.zap_count(), 1, "root {} zapped {} times", root.id(), root.zap_count());
        assert!(vm.mmu.leaves(root).is_empty(), "an invalidated root still maps memory");
    }
    for frame in &doomed {
        let (frame, size) = vm.pages.frame_containing(*frame).unwrap();
        assert!(!vm.pages.is_frame_allocated(frame, size), "the deleted slot's backing was not freed");
    }
    assert!(vm.mmu.roots().is_empty(), "the MMU kept a reference to a zapped root");
    for vcpu in &vcpus {
        assert!(vcpu.take_reload_request());
    }
    assert_eq!(vm.flush.kicks(), kicks + 1);
    assert_eq!(vm.mmu.stats().roots_invalidated, 3);
    // A later delete does not zap those roots again.
    vm.mmu.delete_slot(SlotId(1)).unwrap();
    for root in &roots {
        assert_eq!(root.zap_count(), 1);
    }
}

#[test]
fn zap_returns_only_after_flush_and_frees_only_after_it() {
    let vm = vm();
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, 2 * MIB)).unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    for gfn in 0..64 {
        vcpu.handle_fault(gpa(gfn), Access::Write).unwrap();
    }
    vcpu.report_offline();
    vm.log.clear();
    vm.mmu.delete_slot(SlotId(0)).unwrap();
    vcpu.unload();
    vm.mmu.reclaim();
    let events = vm.log.events();
    let first_flush = events.iter().position(|e| matches!(e, Event::Flush(_))).expect("no flush");
    let first_free = events
        .iter()
        .position(|e| matches!(e, Event::FrameFreed(_) | Event::TableFreed(_)))
        .expect("nothing freed");
    assert!(first_flush < first_free, "{events:?}");
    // The root's own table is retired when its last reference goes, through its own flush.
    let root = events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Flush(hypervisor::mmu::FlushScope::Root(root)) => Some(*root),
            _ => None,
        })
        .unwrap();
    let root_flush =
        events.iter().rposition(|e| *e == Event::Flush(hypervisor::mmu::FlushScope::Root(root))).unwrap();
    let root_free = events.iter().position(|e| *e == Event::TableFreed(root)).expect("root table not freed");
    assert!(root_flush < root_free, "{events:?}");
    assert_eq!(events.iter().filter(|e| matches!(e, Event::TableFreed(_))).count(), 3, "{events:?}");
}

#[test]
fn table_pages_wait_for_every_vcpu_to_pass_a_quiescent_state() {
    let vm = vm();
    // Aligned to 4 KiB only: mapped with 4 KiB leaves, four tables deep.
    vm.mmu.add_slot(spec(0, AsId::Normal, 0x1000, 2 * MIB)).unwrap();
    let mut running = vm.mmu.create_vcpu();
    let idle = vm.mmu.create_vcpu();
    idle.report_offline();
    running.load(Role::new(AsId::Normal)).unwrap();
    running.report_quiescent();
    for gfn in 1..9 {
        assert_eq!(running.handle_fault(gpa(gfn), Access::Read), Ok(Fault::Installed));
    }
    let tables = vm.pages.tables_in_use();
    assert_eq!(tables, 4);
    vm.mmu.delete_slot(SlotId(0)).unwrap();
    // Unlinked and flushed, but `running` has not left guest mode since.
    assert_eq!(vm.pages.tables_in_use(), tables);
    assert_eq!(vm.mmu.stats().table_pages_retired, 3);
    running.report_quiescent();
    vm.mmu.reclaim();
    assert_eq!(vm.pages.tables_in_use(), 1, "only the (invalid, still loaded) root remains");
    assert!(running.take_reload_request());
    running.load(Role::new(AsId::Normal)).unwrap();
    assert_eq!(vm.mmu.stats().roots_freed, 1);
    running.report_quiescent();
    vm.mmu.reclaim();
    assert_eq!(vm.pages.tables_in_use(), 1, "the new root");
}

#[test]
fn an_invalid_root_stays_alive_while_referenced_and_is_never_reused() {
    let vm = vm();
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, MIB)).unwrap();
    vm.mmu.add_slot(spec(1, AsId::Normal, 2 * MIB, MIB)).unwrap();
    let mut a = vm.mmu.create_vcpu();
    let mut b = vm.mmu.create_vcpu();
    a.load(Role::new(AsId::Normal)).unwrap();
    let old = a.root().unwrap().clone();
    vm.mmu.delete_slot(SlotId(1)).unwrap();
    assert!(!old.is_valid());
    // A fault on the invalid root installs nothing.
    assert_eq!(a.handle_fault(gpa(1), Access::Read), Ok(Fault::Retry));
    assert!(vm.mmu.leaves(&old).is_empty());
    b.load(Role::new(AsId::Normal)).unwrap();
    assert_ne!(b.root().unwrap().id(), old.id());
    assert!(a.take_reload_request());
    a.load(Role::new(AsId::Normal)).unwrap();
    assert_eq!(a.root().unwrap().id(), b.root().unwrap().id());
    assert_eq!(vm.mmu.stats().roots_freed, 0, "the test still holds the old root");
    drop(old);
    assert_eq!(vm.mmu.stats().roots_freed, 1);
}

#[test]
fn move_keeps_contents_and_invalidates() {
    let vm = vm();
    vm.mmu.add_slot(spec(7, AsId::Normal, 0x10_0000, MIB)).unwrap();
    vm.mmu.write_guest(AsId::Normal, Gpa::new(0x10_0ffe), b"taproot").unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    vcpu.handle_fault(Gpa::new(0x10_0000), Access::Read).unwrap();
    let frame = vm.mmu.backing_of(AsId::Normal, Gpa::new(0x10_0000).gfn()).unwrap();
    let root = vcpu.root().unwrap().clone();
    vm.mmu.move_slot(SlotId(7), Gpa::new(0x40_0000)).unwrap();
    assert!(!root.is_valid());
    assert_eq!(vcpu.handle_fault(Gpa::new(0x10_0000), Access::Read), Ok(Fault::Retry));
    vcpu.take_reload_request();
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    assert_eq!(vcpu.handle_fault(Gpa::new(0x10_0000), Access::Read), Ok(Fault::NotInSlot));
    assert_eq!(vcpu.handle_fault(Gpa::new(0x40_0000), Access::Read), Ok(Fault::Installed));
    let mut buf = [0u8; 7];
    vm.mmu.read_guest(AsId::Normal, Gpa::new(0x40_0ffe), &mut buf).unwrap();
    assert_eq!(&buf, b"taproot");
    let (hpa, _) = vm.mmu.translate(vcpu.root().unwrap(), Gpa::new(0x40_0000)).unwrap();
    assert_eq!(hpa, frame);
    check_translations(&vm.mmu);
}

#[test]
fn bad_slot_requests_are_refused_and_change_nothing() {
    let vm = vm_with::<TestFormat>(MmuConfig { phys_bits: 36, ..MmuConfig::default() }, small_pages());
    vm.mmu.add_slot(spec(1, AsId::Normal, 0x20_0000, MIB)).unwrap();
    vm.mmu.add_slot(spec(2, AsId::Alternate, 0, MIB)).unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    vcpu.handle_fault(Gpa::new(0x20_0000), Access::Write).unwrap();
    let slots = vm.mmu.slots();
    let stats = vm.mmu.stats();
    let cases: [(SlotSpec, SlotError); 7] = [
        (spec(3, AsId::Normal, 0, 0), SlotError::ZeroSize),
        (spec(3, AsId::Normal, 0x800, PAGE_SIZE), SlotError::Misaligned),
        (spec(3, AsId::Normal, 0, PAGE_SIZE + 1), SlotError::Misaligned),
        (spec(3, AsId::Normal, (1 << 36) - PAGE_SIZE, 2 * PAGE_SIZE), SlotError::BeyondAddressWidth),
        (spec(3, AsId::Normal, u64::MAX - 0xfff, PAGE_SIZE * 2), SlotError::BeyondAddressWidth),
        (spec(3, AsId::Normal, 0x2f_f000, 2 * PAGE_SIZE), SlotError::Overlap { with: SlotId(1) }),
        (spec(2, AsId::Normal, 0x80_0000, PAGE_SIZE), SlotError::DuplicateId),
    ];
    for (bad, error) in cases {
        assert_eq!(vm.mmu.add_slot(bad), Err(error), "{bad:?}");
    }
    assert_eq!(vm.mmu.delete_slot(SlotId(9)), Err(SlotError::UnknownSlot));
    assert_eq!(vm.mmu.move_slot(SlotId(9), Gpa::new(0)), Err(SlotError::UnknownSlot));
    assert_eq!(vm.mmu.move_slot(SlotId(2), Gpa::new(0x123)), Err(SlotError::Misaligned));
    assert_eq!(vm.mmu.move_slot(SlotId(2), Gpa::new(1 << 36)), Err(SlotError::BeyondAddressWidth));
    vm.mmu.add_slot(spec(4, AsId::Alternate, 0x20_0000, MIB)).unwrap();
    assert_eq!(vm.mmu.move_slot(SlotId(4), Gpa::new(0x8_0000)), Err(SlotError::Overlap { with: SlotId(2) }));
    vm.mmu.delete_slot(SlotId(4)).unwrap_err_or_ok();
    assert_eq!(vm.mmu.set_slot_flags(SlotId(9), SlotFlags::default()), Err(SlotError::UnknownSlot));
    assert_eq!(vm.mmu.dirty_log(SlotId(1)), Err(SlotError::DirtyLogDisabled));
    assert_eq!(vm.mmu.slots().len(), slots.len());
    for slot in &slots {
        assert!(vm.mmu.slots().contains(slot));
    }
    let after = vm.mmu.stats();
    // Slot 4's delete invalidated; nothing before it did.
    assert_eq!(stats.roots_invalidated, 0);
    assert_eq!(after.roots_allocated, stats.roots_allocated);
}

trait UnwrapErrOrOk {
    fn unwrap_err_or_ok(self);
}

impl<E> UnwrapErrOrOk for Result<(), E> {
    fn unwrap_err_or_ok(self) {}
}

#[test]
fn refused_requests_do_not_invalidate() {
    let vm = vm();
    vm.mmu.add_slot(spec(1, AsId::Normal, 0, MIB)).unwrap();
    vm.mmu.add_slot(spec(2, AsId::Normal, 2 * MIB, MIB)).unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    vcpu.handle_fault(gpa(0), Access::Write).unwrap();
    let before = vm.mmu.stats();
    assert!(vm.mmu.move_slot(SlotId(1), Gpa::new(2 * MIB)).is_err());
    assert!(vm.mmu.add_slot(spec(3, AsId::Normal, MIB / 2, MIB)).is_err());
    assert!(vm.mmu.delete_slot(SlotId(3)).is_err());
    assert!(vcpu.root().unwrap().is_valid());
    assert_eq!(vm.mmu.stats(), before);
}

#[test]
fn read_only_slots_refuse_guest_writes_and_making_one_read_only_invalidates() {
    let vm = vm();
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, MIB)).unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    vcpu.handle_fault(gpa(1), Access::Write).unwrap();
    let root = vcpu.root().unwrap().clone();
    assert!(vm.mmu.translate(&root, gpa(1)).unwrap().1);
    vm.mmu.set_slot_flags(SlotId(0), SlotFlags { read_only: true, dirty_log: false }).unwrap();
    assert!(!root.is_valid());
    vcpu.take_reload_request();
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    assert_eq!(vcpu.handle_fault(gpa(1), Access::Write), Ok(Fault::WriteToReadOnly));
    assert_eq!(vcpu.handle_fault(gpa(1), Access::Read), Ok(Fault::Installed));
    assert!(!vm.mmu.translate(vcpu.root().unwrap(), gpa(1)).unwrap().1);
    // The hypervisor itself may still write it (ROM images).
    vm.mmu.write_guest(AsId::Normal, gpa(1), &[1, 2, 3]).unwrap();
    // Lifting read-only widens permissions: no invalidation, the next write upgrades.
    let invalidated = vm.mmu.stats().roots_invalidated;
    vm.mmu.set_slot_flags(SlotId(0), SlotFlags::default()).unwrap();
    assert_eq!(vm.mmu.stats().roots_invalidated, invalidated);
    assert_eq!(vcpu.handle_fault(gpa(1), Access::Write), Ok(Fault::Installed));
    assert!(vm.mmu.translate(vcpu.root().unwrap(), gpa(1)).unwrap().1);
}

fn leaf_size<F: TdpFormat>(base: u64, size: u64, probe: u64, move_to: Option<u64>) -> PageSize {
    let vm = vm_with::<F>(MmuConfig::default(), small_pages());
    vm.mmu.add_slot(spec(0, AsId::Normal, base, size)).unwrap();
    if let Some(to) = move_to {
        vm.mmu.move_slot(SlotId(0), Gpa::new(to)).unwrap();
    }
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    assert_eq!(vcpu.handle_fault(Gpa::new(probe), Access::Write), Ok(Fault::Installed));
    let leaves = vm.mmu.leaves(vcpu.root().unwrap());
    assert_eq!(leaves.len(), 1);
    check_root(&vm.mmu, vcpu.root().unwrap());
    leaves[0].size
}

fn huge_pages_where_alignment_allows<F: TdpFormat>() {
    assert_eq!(leaf_size::<F>(GIB, GIB, GIB + 5 * MIB + 4096, None), PageSize::Size1G);
    assert_eq!(leaf_size::<F>(2 * MIB, 4 * MIB, 5 * MIB, None), PageSize::Size2M);
    assert_eq!(leaf_size::<F>(2 * MIB, 4 * MIB + 4096, 5 * MIB, None), PageSize::Size4K);
    assert_eq!(leaf_size::<F>(0x1000, 2 * MIB, 0x2000, None), PageSize::Size4K);
    // Moved to a base aligned only to 4 KiB: the 2 MiB chunks are mapped page by page.
    assert_eq!(leaf_size::<F>(2 * MIB, 4 * MIB, 9 * MIB, Some(8 * MIB - 4096)), PageSize::Size4K);
    assert_eq!(leaf_size::<F>(2 * MIB, 4 * MIB, 9 * MIB, Some(8 * MIB)), PageSize::Size2M);
}

#[test]
fn huge_pages_where_alignment_allows_ept() {
    huge_pages_where_alignment_allows::<Ept>();
}

#[test]
fn huge_pages_where_alignment_allows_npt() {
    huge_pages_where_alignment_allows::<Npt>();
}

#[test]
fn huge_pages_where_alignment_allows_test_format() {
    huge_pages_where_alignment_allows::<TestFormat>();
}

#[test]
fn dirty_log_returns_and_clears_the_bitmap() {
    let vm = vm();
    vm.mmu.add_slot(spec(0, AsId::Normal, 2 * MIB, 2 * MIB)).unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    vcpu.handle_fault(Gpa::new(2 * MIB), Access::Write).unwrap();
    assert_eq!(vm.mmu.leaves(vcpu.root().unwrap())[0].size, PageSize::Size2M);
    vm.mmu.set_slot_flags(SlotId(0), SlotFlags { read_only: false, dirty_log: true }).unwrap();
    assert!(vcpu.root().unwrap().is_valid(), "turning dirty logging on invalidates no root");
    assert!(vm.mmu.leaves(vcpu.root().unwrap()).is_empty());
    let page = |i: u64| Gpa::new(2 * MIB + i * PAGE_SIZE);
    vcpu.handle_fault(page(1), Access::Write).unwrap();
    vcpu.handle_fault(page(70), Access::Write).unwrap();
    vcpu.handle_fault(page(7), Access::Read).unwrap();
    vm.mmu.write_guest(AsId::Normal, page(100), &[9]).unwrap();
    assert!(vm.mmu.leaves(vcpu.root().unwrap()).iter().all(|l| l.size == PageSize::Size4K));
    assert!(!vm.mmu.translate(vcpu.root().unwrap(), page(7)).unwrap().1);
    let log = vm.mmu.dirty_log(SlotId(0)).unwrap();
    assert_eq!(log.len(), 8);
    assert_eq!(log[0], 1 << 1);
    assert_eq!(log[1], (1 << 6) | (1 << (100 - 64)));
    assert!(log[2..].iter().all(|w| *w == 0));
    assert!(vm.mmu.dirty_log(SlotId(0)).unwrap().iter().all(|w| *w == 0));
    // Reported pages were write-protected: the next write faults and is logged again.
    assert!(!vm.mmu.translate(vcpu.root().unwrap(), page(1)).unwrap().1);
    vcpu.handle_fault(page(1), Access::Write).unwrap();
    assert_eq!(vm.mmu.dirty_log(SlotId(0)).unwrap()[0], 1 << 1);
}

#[test]
fn range_invalidation_retries_faults_in_range_and_discard_zeroes() {
    let vm = vm();
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, MIB)).unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    vm.mmu.write_guest(AsId::Normal, gpa(10), &[0xaa; 16]).unwrap();
    vm.mmu.write_guest(AsId::Normal, gpa(40), &[0xbb; 16]).unwrap();
    for gfn in 0..64 {
        vcpu.handle_fault(gpa(gfn), Access::Write).unwrap();
    }
    let frames = vm.pages.all_frames_in_use();
    let range = GfnRange::new(Gfn::new(8), Gfn::new(16));
    {
        let invalidation = vm.mmu.begin_invalidation(AsId::Normal, range);
        for gfn in 8..16 {
            assert!(vm.mmu.translate(vcpu.root().unwrap(), gpa(gfn)).is_none(), "not zapped");
            assert_eq!(vcpu.handle_fault(gpa(gfn), Access::Read), Ok(Fault::Retry));
        }
        assert_eq!(vcpu.handle_fault(gpa(20), Access::Read), Ok(Fault::Installed));
        assert!(vm.mmu.translate(vcpu.root().unwrap(), gpa(40)).is_some(), "zapped too much");
        invalidation.discard();
    }
    assert_eq!(vm.pages.all_frames_in_use(), frames - 8);
    assert_eq!(vcpu.handle_fault(gpa(10), Access::Read), Ok(Fault::Installed));
    let mut buf = [1u8; 16];
    vm.mmu.read_guest(AsId::Normal, gpa(10), &mut buf).unwrap();
    assert_eq!(buf, [0; 16]);
    vm.mmu.read_guest(AsId::Normal, gpa(40), &mut buf).unwrap();
    assert_eq!(buf, [0xbb; 16]);
    assert!(vcpu.root().unwrap().is_valid(), "a range invalidation invalidates no root");
    check_translations(&vm.mmu);
}

#[test]
fn address_spaces_are_separate() {
    let vm = vm();
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, MIB)).unwrap();
    vm.mmu.add_slot(spec(1, AsId::Alternate, 0, MIB)).unwrap();
    vm.mmu.write_guest(AsId::Normal, gpa(0), b"normal").unwrap();
    vm.mmu.write_guest(AsId::Alternate, gpa(0), b"smram!").unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Alternate)).unwrap();
    vcpu.handle_fault(gpa(0), Access::Read).unwrap();
    let (hpa, _) = vm.mmu.translate(vcpu.root().unwrap(), gpa(0)).unwrap();
    assert_eq!(Some(hpa), vm.mmu.backing_of(AsId::Alternate, Gfn::new(0)));
    assert_ne!(Some(hpa), vm.mmu.backing_of(AsId::Normal, Gfn::new(0)));
    let mut buf = [0u8; 6];
    vm.mmu.read_guest(AsId::Alternate, gpa(0), &mut buf).unwrap();
    assert_eq!(&buf, b"smram!");
    assert!(vm.mmu.read_guest(AsId::Normal, Gpa::new(MIB), &mut buf).is_err());
}

#[test]
fn the_alternate_space_overlays_normal_memory() {
    let vm = vm();
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, 4 * MIB)).unwrap();
    vm.mmu.write_guest(AsId::Normal, gpa(16), b"normal").unwrap();
    // Without an alternate slot there, the alternate space sees the normal memory.
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Alternate)).unwrap();
    assert_eq!(vcpu.handle_fault(gpa(16), Access::Read).unwrap(), Fault::Installed);
    let (hpa, _) = vm.mmu.translate(vcpu.root().unwrap(), gpa(16)).unwrap();
    assert_eq!(Some(hpa), vm.mmu.backing_of(AsId::Normal, Gfn::new(16)));
    let mut buf = [0u8; 6];
    vm.mmu.read_guest(AsId::Alternate, gpa(16), &mut buf).unwrap();
    assert_eq!(&buf, b"normal");

    // An alternate slot over it hides it: the stale translation is zapped when the slot is
    // added (no root is invalidated), and the next fault maps the alternate slot.
    let invalidated = vm.mmu.stats().roots_invalidated;
    vm.mmu.add_slot(spec(1, AsId::Alternate, 0, 2 * MIB)).unwrap();
    assert_eq!(vm.mmu.stats().roots_invalidated, invalidated);
    assert_eq!(vm.mmu.translate(vcpu.root().unwrap(), gpa(16)), None, "the hidden mapping is gone");
    vcpu.handle_fault(gpa(16), Access::Read).unwrap();
    let (hpa, _) = vm.mmu.translate(vcpu.root().unwrap(), gpa(16)).unwrap();
    assert_eq!(Some(hpa), vm.mmu.backing_of(AsId::Alternate, Gfn::new(16)));
    assert_ne!(Some(hpa), vm.mmu.backing_of(AsId::Normal, Gfn::new(16)));

    // A discard of normal memory reaches alternate roots that map it through the overlay.
    let beyond = 3 * MIB / PAGE_SIZE;
    vcpu.handle_fault(gpa(beyond), Access::Write).unwrap();
    assert!(vm.mmu.translate(vcpu.root().unwrap(), gpa(beyond)).is_some());
    vm.mmu.discard_range(AsId::Normal, GfnRange::new(Gfn::new(beyond), Gfn::new(beyond + 1)));
    assert_eq!(vm.mmu.translate(vcpu.root().unwrap(), gpa(beyond)), None);
    check_translations(&vm.mmu);
}

/// Found by the model test: through the overlay, a fault must not install a huge leaf of
/// the normal slot over gfns that an alternate slot owns.
#[test]
fn an_overlay_leaf_never_covers_an_alternate_slot() {
    let vm = vm();
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, 2 * MIB)).unwrap();
    vm.mmu.add_slot(spec(1, AsId::Alternate, MIB, 256 * 1024)).unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Alternate)).unwrap();
    assert_eq!(vcpu.handle_fault(gpa(0), Access::Read).unwrap(), Fault::Installed);
    for leaf in vm.mmu.leaves(vcpu.root().unwrap()) {
        assert_eq!(leaf.size, PageSize::Size4K, "{leaf:?}");
    }
    check_translations(&vm.mmu);
}

#[test]
fn destroy_returns_every_table_page_and_frame() {
    let vm = vm();
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, 4 * MIB)).unwrap();
    vm.mmu.add_slot(spec(1, AsId::Alternate, 0, MIB)).unwrap();
    let mut vcpus: Vec<_> = (0..2).map(|_| vm.mmu.create_vcpu()).collect();
    vcpus[0].load(Role::new(AsId::Normal)).unwrap();
    vcpus[1].load(Role::new(AsId::Alternate)).unwrap();
    for gfn in 0..256 {
        vcpus[0].handle_fault(gpa(gfn * 3), Access::Write).unwrap();
        vcpus[1].handle_fault(gpa(gfn), Access::Write).unwrap();
    }
    assert!(vm.pages.tables_in_use() > 0 && vm.pages.all_frames_in_use() > 0);
    let (pages, flush) = (vm.pages.clone(), vm.flush.clone());
    drop(vm.mmu);
    assert_eq!(pages.all_frames_in_use(), 0, "backing outlived destroy");
    drop(vcpus);
    assert_eq!(pages.tables_in_use(), 0);
    assert!(flush.flushes() > 0);
}

#[test]
fn destroy_flushes_the_whole_vm_before_it_frees_any_frame_or_table() {
    let vm = vm();
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, 4 * MIB)).unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    for gfn in 0..64 {
        vcpu.handle_fault(gpa(gfn * 5), Access::Write).unwrap();
    }
    vcpu.report_offline();
    vm.log.clear();
    let log = vm.log.clone();
    drop(vm.mmu);
    drop(vcpu);
    let events = log.events();
    let vm_flush = events
        .iter()
        .position(|e| *e == Event::Flush(hypervisor::mmu::FlushScope::Vm))
        .unwrap_or_else(|| panic!("destroy did not flush the VM: {events:?}"));
    let first_free = events
        .iter()
        .position(|e| matches!(e, Event::FrameFreed(_) | Event::TableFreed(_)))
        .expect("nothing freed");
    assert!(vm_flush < first_free, "{events:?}");
    assert!(events.iter().any(|e| matches!(e, Event::FrameFreed(_))), "{events:?}");
}

#[test]
fn a_walk_reports_each_entry_from_the_top_level_down_to_the_leaf() {
    let vm = vm_with::<Ept>(MmuConfig::default(), small_pages());
    // Aligned to 4 KiB only: 4 KiB leaves, four levels.
    vm.mmu.add_slot(spec(0, AsId::Normal, 0x1000, MIB)).unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    assert!(vcpu.walk(gpa(1)).is_empty(), "no root, no walk");
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    let untouched = vcpu.walk(gpa(1));
    assert_eq!(untouched.len(), 1, "an empty root stops at its first entry: {untouched:?}");
    assert_eq!(untouched[0].entry, 0);
    vcpu.handle_fault(gpa(1), Access::Write).unwrap();
    let steps = vcpu.walk(gpa(1));
    assert_eq!(steps.iter().map(|s| s.level).collect::<Vec<_>>(), [4, 3, 2, 1]);
    let (hpa, _) = vm.mmu.translate(vcpu.root().unwrap(), gpa(1)).unwrap();
    assert_eq!(steps[3].entry & hypervisor::mmu::format::ADDRESS_MASK, hpa.raw());
    assert!(steps[..3].iter().all(|s| s.entry & hypervisor::mmu::ept::LARGE_PAGE == 0));
}

#[test]
fn an_unlocked_translation_agrees_with_the_mmus_at_every_leaf_size() {
    let vm = vm_with::<Ept>(MmuConfig::default(), small_pages());
    vm.mmu.add_slot(spec(0, AsId::Normal, 0x1000, MIB)).unwrap();
    vm.mmu.add_slot(spec(1, AsId::Normal, 2 * MIB, 2 * MIB)).unwrap();
    vm.mmu.add_slot(spec(2, AsId::Normal, GIB, GIB)).unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    let root = vcpu.root().unwrap().clone();
    let unlocked = |gpa: Gpa| {
        hypervisor::mmu::translate_unlocked::<Ept, _>(&*vm.pages, root.table(), root.role().levels, gpa)
    };
    assert_eq!(unlocked(Gpa::new(0x1000)), None, "nothing mapped yet");
    let mut sizes = Vec::new();
    for gpa in [Gpa::new(0x1008), Gpa::new(2 * MIB + 0x3010), Gpa::new(GIB + 5 * MIB + 0x20)] {
        vcpu.handle_fault(gpa, Access::Read).unwrap();
        let (frame, size) = unlocked(gpa).expect("mapped");
        let (hpa, _) = vm.mmu.translate(&root, gpa).unwrap();
        assert_eq!(frame.add(gpa.raw() & (size.bytes() - 1)), hpa);
        sizes.push(size);
    }
    assert_eq!(sizes, [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G]);
}

#[test]
fn faults_outside_slots_and_out_of_memory_are_typed() {
    let vm = vm_with::<TestFormat>(
        MmuConfig::default(),
        hypervisor::mmu::host::HostPagesConfig { tables: 4, frames_4k: 2, frames_2m: 0, frames_1g: 0 },
    );
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, MIB)).unwrap();
    let mut vcpu = vm.mmu.create_vcpu();
    vcpu.load(Role::new(AsId::Normal)).unwrap();
    assert_eq!(vcpu.handle_fault(Gpa::new(1 << 60), Access::Read), Ok(Fault::NotInSlot));
    assert_eq!(vcpu.handle_fault(Gpa::new(MIB), Access::Read), Ok(Fault::NotInSlot));
    assert_eq!(vcpu.handle_fault(gpa(0), Access::Read), Ok(Fault::Installed));
    assert_eq!(vcpu.handle_fault(gpa(1), Access::Read), Ok(Fault::Installed));
    assert_eq!(vcpu.handle_fault(gpa(2), Access::Read), Err(MmuError::OutOfMemory));
    let mut other = vm.mmu.create_vcpu();
    assert_eq!(other.load(Role::new(AsId::Alternate)), Err(MmuError::OutOfMemory));
}

#[test]
fn formats_encode_their_manual_bits() {
    use hypervisor::addr::Hpa;
    let frame = Hpa::new(0x2_0000_0000);
    let ept = Ept::leaf(frame, PageSize::Size2M, true);
    assert_eq!(ept & 0x7, 0x7, "EPT R/W/X");
    assert_eq!((ept >> 3) & 7, 6, "EPT write-back");
    assert_ne!(ept & (1 << 7), 0, "EPT large page");
    assert!(!Ept::is_writable(Ept::with_writable(ept, false)));
    assert_eq!(Ept::leaf_address(ept, PageSize::Size2M), frame);
    assert_eq!(Ept::root_pointer(Hpa::new(0x5000), 4), 0x5000 | 6 | (3 << 3));
    assert_eq!(Ept::root_pointer(Hpa::new(0x5000), 5), 0x5000 | 6 | (4 << 3));
    let npt = Npt::leaf(frame, PageSize::Size1G, false);
    assert_eq!(npt & 0x7, 0x5, "NPT present, read-only, user");
    assert_ne!(npt & (1 << 7), 0, "NPT page size");
    assert_eq!(npt >> 63, 0, "NPT executable");
    assert_eq!(Npt::table(Hpa::new(0x3000)) & 0x7, 0x7);
    for spte in [Ept::FROZEN, Npt::FROZEN, TestFormat::FROZEN] {
        assert!(!Ept::is_present(Ept::FROZEN) && !Npt::is_present(Npt::FROZEN));
        assert!(!TestFormat::is_present(TestFormat::FROZEN));
        assert_ne!(spte, 0);
    }
}

/// An image's zero-filled tail: touched pages read as zeros afterwards, untouched memory
/// is skipped (no frame is allocated for a gigabyte of `p_memsz`), and the bytes around
/// the range keep their values.
#[test]
fn zeroing_guest_memory_writes_touched_pages_and_allocates_nothing_for_untouched_ones() {
    // 2 MiB backing chunks: the touched chunk is one of 512.
    let config = MmuConfig { max_page_size: PageSize::Size2M, ..MmuConfig::default() };
    let vm = vm_with::<TestFormat>(config, small_pages());
    vm.mmu.add_slot(spec(0, AsId::Normal, 0, GIB)).unwrap();
    assert_eq!(vm.pages.all_frames_in_use(), 0);
    vm.mmu.write_guest(AsId::Normal, Gpa::new(0x1ff0), &[0xaa; 0x2020]).unwrap();
    let frames = vm.pages.all_frames_in_use();
    vm.mmu.zero_guest(AsId::Normal, Gpa::new(0x2000), GIB - 0x2000).unwrap();
    assert_eq!(vm.pages.all_frames_in_use(), frames, "untouched memory needs no frame to read as zeros");
    let mut buf = [0u8; 0x2020];
    vm.mmu.read_guest(AsId::Normal, Gpa::new(0x1ff0), &mut buf).unwrap();
    assert_eq!(buf[..0x10], [0xaa; 0x10], "the bytes before the range stay");
    assert!(buf[0x10..].iter().all(|b| *b == 0), "the touched pages in the range read as zeros");
    assert_eq!(
        vm.mmu.zero_guest(AsId::Normal, Gpa::new(GIB - PAGE_SIZE), 2 * PAGE_SIZE),
        Err(hypervisor::mmu::GuestMemoryError::NotInSlot { gpa: Gpa::new(GIB) }),
        "a range that leaves the slot is refused where it leaves"
    );
}
