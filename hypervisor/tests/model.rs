//! Property test: random sequences of slot operations, faults, guest accesses and range
//! invalidations against a simple model of what each gfn holds and must translate to.

mod common;

use common::*;
use hypervisor::addr::{Gfn, GfnRange, PAGE_SIZE};
use hypervisor::memslot::{AsId, SlotError, SlotFlags, SlotId};
use hypervisor::mmu::testfmt::TestFormat;
use hypervisor::mmu::{Access, Fault, MmuConfig, Role};
use proptest::prelude::*;
use std::collections::HashMap;

/// Slots are placed in units of 64 pages within 4096 pages (16 MiB, so 2 MiB chunks occur).
const UNIT: u64 = 64;
const UNITS: u64 = 64;

#[derive(Clone, Debug)]
enum Op {
    Add { id: u32, alt: bool, base: u64, units: u64 },
    Delete { id: u32 },
    Move { id: u32, base: u64 },
    ReadOnly { id: u32, on: bool },
    DirtyLog { id: u32, on: bool },
    Fault { vcpu: usize, gfn: u64, write: bool },
    Switch { vcpu: usize, alt: bool },
    Write { alt: bool, gfn: u64, value: u8 },
    Read { alt: bool, gfn: u64 },
    Discard { alt: bool, gfn: u64, pages: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let gfn = 0..UNIT * UNITS;
    prop_oneof![
        3 => (0..4u32, any::<bool>(), 0..UNITS, 1..20u64).prop_map(|(id, alt, base, units)| Op::Add { id, alt, base, units }),
        1 => (0..4u32).prop_map(|id| Op::Delete { id }),
        1 => (0..4u32, 0..UNITS).prop_map(|(id, base)| Op::Move { id, base }),
        1 => (0..4u32, any::<bool>()).prop_map(|(id, on)| Op::ReadOnly { id, on }),
        1 => (0..4u32, any::<bool>()).prop_map(|(id, on)| Op::DirtyLog { id, on }),
        6 => (0..2usize, gfn.clone(), any::<bool>()).prop_map(|(vcpu, gfn, write)| Op::Fault { vcpu, gfn, write }),
        1 => (0..2usize, any::<bool>()).prop_map(|(vcpu, alt)| Op::Switch { vcpu, alt }),
        3 => (any::<bool>(), gfn.clone(), any::<u8>()).prop_map(|(alt, gfn, value)| Op::Write { alt, gfn, value }),
        3 => (any::<bool>(), gfn.clone()).prop_map(|(alt, gfn)| Op::Read { alt, gfn }),
        1 => (any::<bool>(), gfn, 1..700u64).prop_map(|(alt, gfn, pages)| Op::Discard { alt, gfn, pages }),
    ]
}

#[derive(Clone, Debug)]
struct ModelSlot {
    as_id: AsId,
    base: u64,
    pages: u64,
    flags: SlotFlags,
    /// First byte of each page, by page index in the slot.
    bytes: HashMap<u64, u8>,
}

fn space(alt: bool) -> AsId {
    if alt { AsId::Alternate } else { AsId::Normal }
}

/// The slot `gfn` resolves to in `as_id`: the alternate space overlays the normal one.
fn find(model: &HashMap<u32, ModelSlot>, as_id: AsId, gfn: u64) -> Option<(u32, &ModelSlot)> {
    let own = |space: AsId| {
        model
            .iter()
            .find(|(_, s)| s.as_id == space && s.base <= gfn && gfn < s.base + s.pages)
            .map(|(id, s)| (*id, s))
    };
    match as_id {
        AsId::Normal => own(AsId::Normal),
        AsId::Alternate => own(AsId::Alternate).or_else(|| own(AsId::Normal)),
    }
}

fn overlaps(
    model: &HashMap<u32, ModelSlot>,
    except: Option<u32>,
    as_id: AsId,
    base: u64,
    pages: u64,
) -> bool {
    model.iter().any(|(id, s)| {
        Some(*id) != except && s.as_id == as_id && s.base < base + pages && base < s.base + s.pages
    })
}

fn run(ops: Vec<Op>) {
    let vm = vm_with::<TestFormat>(MmuConfig { zap_batch: 16, ..MmuConfig::default() }, small_pages());
    let mut model: HashMap<u32, ModelSlot> = HashMap::new();
    let mut vcpus = [vm.mmu.create_vcpu(), vm.mmu.create_vcpu()];
    for vcpu in &mut vcpus {
        vcpu.load(Role::new(AsId::Normal)).unwrap();
    }
    for op in ops {
        match op {
            Op::Add { id, alt, base, units } => {
                let (base, pages) = (base * UNIT, units * UNIT);
                let result = vm.mmu.add_slot(spec(id, space(alt), base * PAGE_SIZE, pages * PAGE_SIZE));
                if overlaps(&model, None, space(alt), base, pages) {
                    assert!(matches!(result, Err(SlotError::Overlap { .. })), "{result:?}");
                } else if let std::collections::hash_map::Entry::Vacant(entry) = model.entry(id) {
                    result.unwrap();
                    let slot = ModelSlot {
                        as_id: space(alt),
                        base,
                        pages,
                        flags: SlotFlags::default(),
                        bytes: HashMap::new(),
                    };
                    entry.insert(slot);
                } else {
                    assert_eq!(result, Err(SlotError::DuplicateId));
                }
            }
            Op::Delete { id } => {
                let result = vm.mmu.delete_slot(SlotId(id));
                assert_eq!(result.is_ok(), model.remove(&id).is_some());
            }
            Op::Move { id, base } => {
                let base = base * UNIT;
                let result = vm.mmu.move_slot(SlotId(id), Gfn::new(base).gpa());
                match model.get(&id).cloned() {
                    None => assert_eq!(result, Err(SlotError::UnknownSlot)),
                    Some(s) if overlaps(&model, Some(id), s.as_id, base, s.pages) => {
                        assert!(matches!(result, Err(SlotError::Overlap { .. })), "{result:?}");
                    }
                    Some(_) => {
                        result.unwrap();
                        model.get_mut(&id).unwrap().base = base;
                    }
                }
            }
            Op::ReadOnly { id, on } | Op::DirtyLog { id, on } => {
                let Some(slot) = model.get_mut(&id) else {
                    assert_eq!(
                        vm.mmu.set_slot_flags(SlotId(id), SlotFlags::default()),
                        Err(SlotError::UnknownSlot)
                    );
                    continue;
                };
                match op {
                    Op::ReadOnly { .. } => slot.flags.read_only = on,
                    _ => slot.flags.dirty_log = on,
                }
                vm.mmu.set_slot_flags(SlotId(id), slot.flags).unwrap();
            }
            Op::Fault { vcpu, gfn, write } => {
                let vcpu = &mut vcpus[vcpu];
                let role = vcpu.root().unwrap().role();
                if vcpu.take_reload_request() {
                    vcpu.load(role).unwrap();
                }
                let access = if write { Access::Write } else { Access::Read };
                let result = vcpu.handle_fault(Gfn::new(gfn).gpa(), access).unwrap();
                let expected = match find(&model, role.as_id, gfn) {
                    None => Fault::NotInSlot,
                    Some((_, s)) if write && s.flags.read_only => Fault::WriteToReadOnly,
                    Some(_) => Fault::Installed,
                };
                assert_eq!(result, expected);
                if result == Fault::Installed {
                    let (_, writable) =
                        vm.mmu.translate(vcpu.root().unwrap(), Gfn::new(gfn).gpa()).expect("installed");
                    assert!(writable || !write);
                }
            }
            Op::Switch { vcpu, alt } => {
                vcpus[vcpu].load(Role::new(space(alt))).unwrap();
            }
            Op::Write { alt, gfn, value } => {
                let result = vm.mmu.write_guest(space(alt), Gfn::new(gfn).gpa(), &[value]);
                match find(&model, space(alt), gfn).map(|(id, _)| id) {
                    Some(id) => {
                        result.unwrap();
                        let slot = model.get_mut(&id).unwrap();
                        slot.bytes.insert(gfn - slot.base, value);
                    }
                    None => assert!(result.is_err()),
                }
            }
            Op::Read { alt, gfn } => {
                let mut buf = [0u8];
                let result = vm.mmu.read_guest(space(alt), Gfn::new(gfn).gpa(), &mut buf);
                match find(&model, space(alt), gfn) {
                    Some((_, s)) => {
                        result.unwrap();
                        assert_eq!(
                            buf[0],
                            s.bytes.get(&(gfn - s.base)).copied().unwrap_or(0),
                            "gfn {gfn:#x}"
                        );
                    }
                    None => assert!(result.is_err()),
                }
            }
            Op::Discard { alt, gfn, pages } => {
                vm.mmu.discard_range(space(alt), GfnRange::new(Gfn::new(gfn), Gfn::new(gfn + pages)));
                for slot in model.values_mut().filter(|s| s.as_id == space(alt)) {
                    let base = slot.base;
                    slot.bytes.retain(|page, _| !(gfn <= base + page && base + page < gfn + pages));
                }
            }
        }
        // Every translation in every root maps the frame that backs its gfn now.
        check_translations(&vm.mmu);
        for vcpu in &vcpus {
            let root = vcpu.root().unwrap();
            if root.is_valid() {
                for leaf in vm.mmu.leaves(root) {
                    assert!(
                        find(&model, root.role().as_id, leaf.gfn.raw()).is_some(),
                        "{leaf:?} is in no slot"
                    );
                }
            } else {
                assert!(vm.mmu.leaves(root).is_empty(), "an invalid root still maps memory");
            }
        }
    }
    // Through the translations, each page holds what the model says.
    for vcpu in &mut vcpus {
        vcpu.take_reload_request();
        let role = vcpu.root().unwrap().role();
        vcpu.load(role).unwrap();
        for (_, slot) in model.iter().filter(|(_, s)| s.as_id == role.as_id) {
            for (page, value) in &slot.bytes {
                let gpa = Gfn::new(slot.base + page).gpa();
                assert_eq!(vcpu.handle_fault(gpa, Access::Read).unwrap(), Fault::Installed);
                let (hpa, _) = vm.mmu.translate(vcpu.root().unwrap(), gpa).unwrap();
                let (frame, size) = vm.pages.frame_containing(hpa).unwrap();
                let mut buf = [0u8];
                hypervisor::pages::PageSource::read_frame(
                    &*vm.pages,
                    frame,
                    size,
                    hpa.raw() - frame.raw(),
                    &mut buf,
                );
                assert_eq!(buf[0], *value);
            }
        }
    }
    let pages = vm.pages.clone();
    drop(vcpus);
    drop(vm.mmu);
    assert_eq!(pages.tables_in_use(), 0);
    assert_eq!(pages.all_frames_in_use(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn slots_faults_and_invalidations_match_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops);
    }
}
