use super::*;
use std::collections::{HashMap, HashSet};
use std::vec::Vec;

fn entry(cpu_tags: &mut CpuTags, cpu: usize, vcpu: &mut VcpuTag) -> TagDecision {
    cpu_tags.on_entry(cpu, vcpu)
}

#[test]
fn the_first_entry_on_a_cpu_starts_generation_one_with_a_full_flush() {
    let mut cpu = CpuTags::new(3, Rollover::FlushAll);
    assert_eq!(cpu.generation(), 0);
    let mut vcpu = VcpuTag::default();
    assert_eq!(entry(&mut cpu, 0, &mut vcpu), TagDecision { tag: 1, flush: TagFlush::All });
    assert_eq!((cpu.generation(), cpu.flushes()), (1, 1));
}

#[test]
fn a_vcpu_keeps_its_tag_on_the_same_cpu_within_a_generation() {
    let mut cpu = CpuTags::new(3, Rollover::FlushAll);
    let (mut a, mut b) = (VcpuTag::default(), VcpuTag::default());
    assert_eq!(entry(&mut cpu, 0, &mut a).tag, 1);
    assert_eq!(entry(&mut cpu, 0, &mut b), TagDecision { tag: 2, flush: TagFlush::None });
    for _ in 0..5 {
        assert_eq!(entry(&mut cpu, 0, &mut a), TagDecision { tag: 1, flush: TagFlush::None });
        assert_eq!(entry(&mut cpu, 0, &mut b), TagDecision { tag: 2, flush: TagFlush::None });
    }
    assert_eq!(cpu.flushes(), 1);
}

#[test]
fn exhaustion_raises_the_generation_with_exactly_one_flush_and_restarts_at_one() {
    let mut cpu = CpuTags::new(2, Rollover::FlushAll);
    let mut vcpus = [VcpuTag::default(); 5];
    let tags: Vec<_> = vcpus.iter_mut().map(|v| entry(&mut cpu, 0, v)).collect();
    assert_eq!(
        tags,
        [
            TagDecision { tag: 1, flush: TagFlush::All },
            TagDecision { tag: 2, flush: TagFlush::None },
            TagDecision { tag: 1, flush: TagFlush::All },
            TagDecision { tag: 2, flush: TagFlush::None },
            TagDecision { tag: 1, flush: TagFlush::All },
        ]
    );
    assert_eq!((cpu.generation(), cpu.flushes()), (3, 3));
    // The first two vCPUs' tags are from an old generation: fresh ones, no extra flush.
    assert_eq!(entry(&mut cpu, 0, &mut vcpus[4]), TagDecision { tag: 1, flush: TagFlush::None });
    assert_eq!(entry(&mut cpu, 0, &mut vcpus[0]), TagDecision { tag: 2, flush: TagFlush::None });
    assert_eq!(entry(&mut cpu, 0, &mut vcpus[1]), TagDecision { tag: 1, flush: TagFlush::All });
    assert_eq!((cpu.generation(), cpu.flushes()), (4, 4));
}

#[test]
fn a_vcpu_migrating_between_cpus_takes_a_fresh_tag_on_each() {
    let mut cpus = [CpuTags::new(8, Rollover::FlushAll), CpuTags::new(8, Rollover::FlushAll)];
    let (mut a, mut b) = (VcpuTag::default(), VcpuTag::default());
    assert_eq!(entry(&mut cpus[0], 0, &mut a).tag, 1);
    assert_eq!(entry(&mut cpus[1], 1, &mut b).tag, 1);
    // `a` moves to CPU 1: its tag there is new, though it is still generation 1 on both.
    assert_eq!(entry(&mut cpus[1], 1, &mut a), TagDecision { tag: 2, flush: TagFlush::None });
    // Back on CPU 0: tag 1 there may cache translations from before a flush it took on
    // CPU 1, so it takes another number.
    assert_eq!(entry(&mut cpus[0], 0, &mut a), TagDecision { tag: 2, flush: TagFlush::None });
    assert_eq!(entry(&mut cpus[1], 1, &mut b), TagDecision { tag: 1, flush: TagFlush::None });
}

#[test]
fn forgetting_a_tag_gives_a_fresh_one_at_the_next_entry() {
    let mut cpu = CpuTags::new(4, Rollover::FlushAll);
    let mut vcpu = VcpuTag::default();
    assert_eq!(entry(&mut cpu, 0, &mut vcpu).tag, 1);
    vcpu.forget();
    assert_eq!(entry(&mut cpu, 0, &mut vcpu), TagDecision { tag: 2, flush: TagFlush::None });
    assert_eq!(vcpu.tag(), 2);
}

#[test]
fn without_a_full_flush_each_new_tag_is_flushed() {
    let mut cpu = CpuTags::new(2, Rollover::FlushEachNewTag);
    let mut vcpus = [VcpuTag::default(); 3];
    for (v, tag) in vcpus.iter_mut().zip([1, 2, 1]) {
        assert_eq!(entry(&mut cpu, 0, v), TagDecision { tag, flush: TagFlush::ThisTag });
    }
    assert_eq!(entry(&mut cpu, 0, &mut vcpus[2]), TagDecision { tag: 1, flush: TagFlush::None });
    assert_eq!((cpu.generation(), cpu.flushes()), (2, 3));
}

#[test]
fn untagged_cpus_give_tag_zero() {
    let mut cpu = CpuTags::untagged();
    let mut vcpu = VcpuTag::default();
    for _ in 0..3 {
        assert_eq!(entry(&mut cpu, 0, &mut vcpu), TagDecision { tag: 0, flush: TagFlush::None });
    }
}

/// A small deterministic generator (xorshift64*), also used by `backend::tlb`'s model.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// A model of the TLBs under the allocator and the flush protocol of `vcpu_set`: vCPUs enter
/// on random CPUs; a flush request for a vCPU (an MMU zap) makes its current translations
/// stale, and the backend answers it by forgetting the tag (SVM without flush-by-ASID) or by
/// flushing the tag it keeps. At every entry, what is cached under the entry's tag on that
/// CPU must belong to this vCPU and be current: no other vCPU's translations, none from
/// before a flush request it has seen.
fn check_model(rollover: Rollover, flush_by_tag: bool, seed: u64) {
    const CPUS: usize = 3;
    const VCPUS: usize = 7;
    let mut cpus: Vec<CpuTags> = (0..CPUS).map(|_| CpuTags::new(3, rollover)).collect();
    let mut vcpus = [VcpuTag::default(); VCPUS];
    // Per vCPU: its address-space version (bumped by each flush request) and whether a
    // request is pending.
    let mut version = [0u64; VCPUS];
    let mut pending = [false; VCPUS];
    // The TLB: (cpu, tag) -> the (vcpu, version) pairs cached under it.
    let mut tlb: HashMap<(usize, u32), HashSet<(usize, u64)>> = HashMap::new();
    let mut rng = Rng(seed);
    let mut rollovers = 0;
    for _ in 0..5_000 {
        let v = rng.below(VCPUS);
        if rng.below(4) == 0 {
            version[v] += 1;
            pending[v] = true;
            continue;
        }
        let cpu = rng.below(CPUS);
        let mut flush_own = false;
        if core::mem::take(&mut pending[v]) {
            if flush_by_tag {
                flush_own = true;
            } else {
                vcpus[v].forget();
            }
        }
        let generation = cpus[cpu].generation();
        let decision = cpus[cpu].on_entry(cpu, &mut vcpus[v]);
        assert_ne!(decision.tag, 0, "tag 0 is the host's");
        if cpus[cpu].generation() != generation {
            rollovers += 1;
        }
        match decision.flush {
            TagFlush::All => tlb.retain(|(c, _), _| *c != cpu),
            TagFlush::ThisTag => {
                tlb.remove(&(cpu, decision.tag));
            }
            TagFlush::None => {}
        }
        if flush_own {
            tlb.remove(&(cpu, decision.tag));
        }
        let cached = tlb.entry((cpu, decision.tag)).or_default();
        for &(owner, seen) in cached.iter() {
            assert_eq!(owner, v, "vCPU {v} on cpu {cpu} shares tag {} with vCPU {owner}", decision.tag);
            assert_eq!(seen, version[v], "vCPU {v} on cpu {cpu} sees translations from before a flush");
        }
        cached.insert((v, version[v]));
    }
    assert!(rollovers > 10, "the model must exercise rollovers ({rollovers})");
}

#[test]
fn no_vcpu_sees_another_vcpus_or_stale_translations_under_its_tag() {
    for seed in 1..=20 {
        check_model(Rollover::FlushAll, false, seed);
        check_model(Rollover::FlushAll, true, seed);
        check_model(Rollover::FlushEachNewTag, false, seed);
    }
}

#[test]
fn the_largest_tag_is_the_hardwares_last_lowered_by_the_setting() {
    assert_eq!(largest_tag(16, None), 15);
    assert_eq!(largest_tag(16, Some(2)), 2);
    assert_eq!(largest_tag(16, Some(100)), 15);
    assert_eq!(largest_tag(16, Some(0)), 1, "a setting never turns tags off");
    assert_eq!(largest_tag(0, Some(4)), 0, "no tags without hardware ones");
}

#[test]
fn the_tag_space_reports_each_cpus_generation_and_flushes() {
    let space = TagSpace::new(|| TagConfig { cpus: 2, max: 1, rollover: Rollover::FlushAll });
    let (mut a, mut b) = (VcpuTag::default(), VcpuTag::default());
    for _ in 0..3 {
        space.on_entry(1, &mut a);
        space.on_entry(1, &mut b);
    }
    let stats = space.stats();
    assert_eq!(stats[0], TagStats { cpu: 0, max_tag: 1, generation: 0, flushes: 0 });
    assert_eq!(stats[1], TagStats { cpu: 1, max_tag: 1, generation: 6, flushes: 6 });
}
