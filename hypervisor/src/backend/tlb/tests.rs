use super::*;
use crate::backend::tags::tests::Rng;
use crate::backend::tags::{CpuTags, Rollover, VcpuTag};
use std::collections::HashMap;
use std::vec::Vec;

/// VMX as Bochs and most CPUs offer it: INVEPT single- and all-context.
const VMX: FlushOffer = FlushOffer { root: true, all: true, tag_covers_tdp: false };
/// VMX with INVEPT all-context only.
const VMX_ALL_ONLY: FlushOffer = FlushOffer { root: false, all: true, tag_covers_tdp: false };
/// VMX with INVEPT single-context only.
const VMX_SINGLE_ONLY: FlushOffer = FlushOffer { root: true, all: false, tag_covers_tdp: false };
/// SVM with flush-by-ASID (real AMD CPUs).
const SVM: FlushOffer = FlushOffer { root: true, all: true, tag_covers_tdp: true };
/// SVM without flush-by-ASID (QEMU TCG).
const SVM_NO_FLUSH_BY_ASID: FlushOffer = FlushOffer { root: false, all: true, tag_covers_tdp: true };

const KEPT: TagChoice = (TagDecision { tag: 1, flush: TagFlush::None }, false);
const FRESH: TagChoice = (TagDecision { tag: 2, flush: TagFlush::None }, true);

#[test]
fn entering_again_with_the_same_root_on_the_same_cpu_flushes_nothing() {
    let mut tracker = RootTracker::default();
    assert!(tracker.on_entry(0, 0x1000, false), "the first entry: the root's provenance is unknown");
    for _ in 0..3 {
        assert!(!tracker.on_entry(0, 0x1000, false));
    }
    assert!(tracker.on_entry(0, 0x1000, true), "the MMU asked");
    assert!(tracker.on_entry(0, 0x2000, false), "an address-space switch");
    assert!(tracker.on_entry(0, 0x1000, false), "a cached root loaded again");
    assert!(tracker.on_entry(1, 0x1000, false), "the same root on another CPU");
    tracker.forget();
    assert!(tracker.on_entry(1, 0x1000, false), "after forget");
    for offer in [VMX, SVM, SVM_NO_FLUSH_BY_ASID] {
        let flush = entry_flush(false, offer, |drop| {
            assert!(!drop);
            KEPT
        });
        assert_eq!(flush.tdp, TdpFlush::None);
    }
}

#[test]
fn vmx_flushes_single_context_of_the_new_root_and_all_context_only_without_it() {
    assert_eq!(entry_flush(true, VMX, |_| KEPT).tdp, TdpFlush::Root, "never all-context when single exists");
    assert_eq!(entry_flush(true, VMX_SINGLE_ONLY, |_| KEPT).tdp, TdpFlush::Root);
    assert_eq!(entry_flush(true, VMX_ALL_ONLY, |_| KEPT).tdp, TdpFlush::All);
    // A new VPID does not tag guest-physical translations: it is no substitute.
    assert_eq!(entry_flush(true, VMX, |_| FRESH).tdp, TdpFlush::Root);
    assert_eq!(
        entry_flush(true, VMX_ALL_ONLY, |drop| {
            assert!(!drop, "VMX never drops its VPID for an EPT flush");
            FRESH
        })
        .tdp,
        TdpFlush::All
    );
}

#[test]
fn svm_flushes_its_asid_on_an_ncr3_change_or_takes_a_new_one_without_flush_by_asid() {
    assert_eq!(
        entry_flush(true, SVM, |drop| {
            assert!(!drop);
            KEPT
        })
        .tdp,
        TdpFlush::Root
    );
    let flush = entry_flush(true, SVM_NO_FLUSH_BY_ASID, |drop| {
        assert!(drop, "without flush-by-ASID a new ASID is the flush");
        FRESH
    });
    assert_eq!(flush.tdp, TdpFlush::None, "nothing is cached under a fresh ASID");
    // A fresh ASID (after a migration) needs no flush either, with or without flush-by-ASID.
    assert_eq!(entry_flush(true, SVM, |_| FRESH).tdp, TdpFlush::None);
}

#[test]
fn one_tlb_control_value_carries_the_larger_flush() {
    assert_eq!(combined(TdpFlush::None, TagFlush::None), TdpFlush::None);
    assert_eq!(combined(TdpFlush::Root, TagFlush::None), TdpFlush::Root);
    assert_eq!(combined(TdpFlush::None, TagFlush::ThisTag), TdpFlush::Root);
    assert_eq!(combined(TdpFlush::Root, TagFlush::All), TdpFlush::All);
    assert_eq!(combined(TdpFlush::All, TagFlush::None), TdpFlush::All);
}

/// A model of the nested TLBs of a few CPUs under the decision above. Root tables come
/// from a small pool of addresses, so a table freed by one VM serves the next VM (or
/// another root of the same VM) soon; each (re)use and each MMU flush request gives the
/// root's contents a new version. vCPUs of two VMs switch roots, migrate, and are
/// replaced by new vCPUs of a new VM (destroy). At every entry, nothing the entry can
/// reach on its CPU may be an older version of the root it enters with, or another root's.
///
/// What an entry can reach: on VMX what is cached under its EPTP's table (EP4TA) on that
/// CPU; on SVM what is cached under its ASID on that CPU, whatever nCR3 it was cached with.
fn check_model(offer: FlushOffer, seed: u64, track_roots: bool) {
    const CPUS: usize = 2;
    const VCPUS: usize = 4;
    const TABLES: u64 = 3;
    let mut rng = Rng(seed);
    let rollover = Rollover::FlushAll;
    let mut cpus: Vec<CpuTags> = (0..CPUS).map(|_| CpuTags::new(3, rollover)).collect();
    // Each table address: its current version (bumped on reuse and on flush requests).
    let mut version: HashMap<u64, u64> = (0..TABLES).map(|t| (t, 0)).collect();
    struct Vcpu {
        tag: VcpuTag,
        tracker: RootTracker,
        root: u64,
        requested: bool,
    }
    let new_vcpu =
        |root| Vcpu { tag: VcpuTag::default(), tracker: RootTracker::default(), root, requested: true };
    let mut vcpus: Vec<Vcpu> = (0..VCPUS).map(|i| new_vcpu(i as u64 % TABLES)).collect();
    // The TLB: (cpu, key) -> (table, version) pairs cached, where the key is the table on
    // VMX and the tag on SVM.
    let mut tlb: HashMap<(usize, u64), Vec<(u64, u64)>> = HashMap::new();
    for _ in 0..20_000 {
        let v = rng.below(VCPUS);
        match rng.below(8) {
            0 => {
                // A zap: every vCPU is asked to flush; the root's contents change.
                let table = rng.below(TABLES as usize) as u64;
                *version.get_mut(&table).unwrap() += 1;
                vcpus.iter_mut().for_each(|vcpu| vcpu.requested = true);
                continue;
            }
            1 => {
                // The vCPU loads another root (address-space switch, cached root).
                vcpus[v].root = rng.below(TABLES as usize) as u64;
                continue;
            }
            2 => {
                // The VM of this vCPU is destroyed and a new one takes its place; its root
                // table is freed and reused (maybe by the new vCPU) with new contents.
                // A table is freed only when no vCPU holds it, and only through the flush
                // hook of the VM that held it (`Root`'s drop), which asks each of its vCPUs
                // to flush; the next VM's vCPUs are new, or see the table as a new root.
                let table = vcpus[v].root;
                vcpus[v] = new_vcpu(rng.below(TABLES as usize) as u64);
                if vcpus.iter().all(|vcpu| vcpu.root != table) {
                    *version.get_mut(&table).unwrap() += 1;
                    vcpus.iter_mut().for_each(|vcpu| vcpu.requested = true);
                }
                continue;
            }
            _ => {}
        }
        let cpu = rng.below(CPUS);
        let vcpu = &mut vcpus[v];
        let requested = core::mem::take(&mut vcpu.requested);
        let stale = vcpu.tracker.on_entry(cpu, vcpu.root, requested) && (track_roots || requested);
        let flush = entry_flush(stale, offer, |drop| {
            if drop {
                vcpu.tag.forget();
            }
            let before = vcpu.tag;
            let decision = cpus[cpu].on_entry(cpu, &mut vcpu.tag);
            (decision, vcpu.tag.is_fresh_since(&before))
        });
        let key = if offer.tag_covers_tdp { flush.tag.tag as u64 } else { vcpu.root };
        if offer.tag_covers_tdp && flush.tag.flush == TagFlush::All {
            tlb.retain(|(c, _), _| *c != cpu);
        }
        match flush.tdp {
            TdpFlush::All => tlb.retain(|(c, _), _| *c != cpu),
            TdpFlush::Root => {
                tlb.remove(&(cpu, key));
            }
            TdpFlush::None => {}
        }
        let current = (vcpu.root, version[&vcpu.root]);
        let cached = tlb.entry((cpu, key)).or_default();
        for seen in cached.iter() {
            assert_eq!(
                *seen, current,
                "vCPU {v} on cpu {cpu} reaches stale translations (seed {seed}, {offer:?})"
            );
        }
        if !cached.contains(&current) {
            cached.push(current);
        }
    }
}

#[test]
fn no_entry_reaches_translations_of_an_older_or_other_root() {
    for seed in 1..=20 {
        for offer in [VMX, VMX_ALL_ONLY, VMX_SINGLE_ONLY, SVM, SVM_NO_FLUSH_BY_ASID] {
            check_model(offer, seed, true);
        }
    }
}

/// The decision as the backends had it before: flush on the MMU's request only, whatever
/// root the entry uses. The model must catch it on every backend (what makes it worth
/// having).
#[test]
fn the_model_catches_entries_that_ignore_a_root_change() {
    for offer in [VMX, VMX_ALL_ONLY, SVM, SVM_NO_FLUSH_BY_ASID] {
        let caught =
            (1..=20).any(|seed| std::panic::catch_unwind(|| check_model(offer, seed, false)).is_err());
        assert!(caught, "{offer:?}");
    }
}
