//! Hardware tags (SVM ASIDs, VMX VPIDs), handed out per host CPU at each VM entry, with
//! generations: the scheme of KVM's SVM (`new_asid`, per-CPU `next_asid` and
//! `asid_generation`) and Xen's `hvm_asid`. A tag names a vCPU's translations on one CPU
//! for one generation of that CPU; it is not a resource a VM owns, so the number of VMs does
//! not depend on the tag space.
//!
//! The rules, which [`CpuTags::on_entry`] applies:
//! - Each CPU numbers its tags 1, 2, ... up to its largest ([`CpuTags::new`]); tag 0 is the
//!   host's and never handed out. Within one generation a CPU hands each number out once.
//! - A vCPU keeps its tag while it enters on the CPU and in the generation it got it in.
//!   Entering on another CPU, or after that CPU's generation moved on, or after
//!   [`VcpuTag::forget`] (how a backend turns "flush this vCPU's translations" into "use a
//!   tag that has none"), it takes this CPU's next number.
//! - When a CPU has handed out every number, its generation goes up, numbering restarts at
//!   1 and that entry flushes every tag on the CPU ([`TagFlush::All`]) once. The first entry
//!   on a CPU starts generation 1 the same way, so nothing cached before (firmware, an
//!   earlier boot) is ever reachable under a tag.
//!
//! Why no vCPU can see another's translations, or its own stale ones: a tag is valid only
//! on the CPU and in the generation it was handed out in, where no other vCPU got that
//! number; between two generations everything is flushed. A vCPU that leaves a CPU and
//! comes back takes a fresh number, so translations cached under its old one (which may
//! predate a flush it took elsewhere) are never used again.
//!
//! Backends whose hardware cannot flush every tag at once (VMX with single-context INVVPID
//! only) use [`Rollover::FlushEachNewTag`]: each new number is flushed when handed out
//! instead. A CPU with no tags at all ([`CpuTags::untagged`]) gives every vCPU tag 0: the
//! hardware flushes at each entry (VMX without VPIDs).
//!
//! This is plain data, used by one CPU at a time: the backends keep one [`CpuTags`] per CPU
//! and call it on that CPU just before VM entry; the vCPU loop on a CPU is not preempted
//! between the decision and the entry.

use alloc::vec::Vec;

/// What the entry must flush before it runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagFlush {
    /// Nothing: the tag is the vCPU's own in this generation, or brand new after a full
    /// flush.
    None,
    /// The translations of the returned tag (SVM flush-by-ASID, INVVPID single-context).
    ThisTag,
    /// Every tag's translations on this CPU (SVM TLB_CONTROL flush-all, INVVPID
    /// all-context).
    All,
}

/// The tag an entry uses and what it must flush first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagDecision {
    pub tag: u32,
    pub flush: TagFlush,
}

/// How a CPU makes a reused number safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rollover {
    /// One full flush when the generation goes up.
    FlushAll,
    /// A flush of each number as it is handed out.
    FlushEachNewTag,
}

/// One vCPU's tag: valid on `cpu` during `generation` (0: none yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuTag {
    tag: u32,
    generation: u64,
    cpu: usize,
}

impl VcpuTag {
    /// Drops the tag: the next entry takes a fresh one, under which nothing is cached.
    pub fn forget(&mut self) {
        self.generation = 0;
    }

    /// The tag of the last entry (0 before the first).
    pub fn tag(&self) -> u32 {
        self.tag
    }

    /// Whether this tag was handed out after `before` was taken (a number nothing is
    /// cached under on this CPU, the rules above): the entry took a new number rather than
    /// keeping its own. Tag 0, the untagged host's, is never fresh.
    pub fn is_fresh_since(&self, before: &VcpuTag) -> bool {
        self != before && self.tag != 0
    }
}

/// One CPU's tag numbering.
#[derive(Clone, Debug)]
pub struct CpuTags {
    /// 0 until the first entry.
    generation: u64,
    next: u32,
    max: u32,
    rollover: Rollover,
    flushes: u64,
}

impl CpuTags {
    /// Tags 1 to `max` (at least 1; see [`Self::untagged`] for none).
    pub const fn new(max: u32, rollover: Rollover) -> Self {
        Self { generation: 0, next: 1, max, rollover, flushes: 0 }
    }

    /// No tags: every entry uses tag 0.
    pub const fn untagged() -> Self {
        Self::new(0, Rollover::FlushAll)
    }

    /// The tag for `vcpu` entering on `cpu` (this CPU), and what to flush first.
    pub fn on_entry(&mut self, cpu: usize, vcpu: &mut VcpuTag) -> TagDecision {
        if self.max == 0 {
            *vcpu = VcpuTag { tag: 0, generation: 0, cpu };
            return TagDecision { tag: 0, flush: TagFlush::None };
        }
        if vcpu.generation != 0 && vcpu.generation == self.generation && vcpu.cpu == cpu {
            return TagDecision { tag: vcpu.tag, flush: TagFlush::None };
        }
        let rolled_over = self.generation == 0 || self.next > self.max;
        if rolled_over {
            self.generation += 1;
            self.next = 1;
        }
        let flush = match (self.rollover, rolled_over) {
            (Rollover::FlushEachNewTag, _) => TagFlush::ThisTag,
            (Rollover::FlushAll, true) => TagFlush::All,
            (Rollover::FlushAll, false) => TagFlush::None,
        };
        if flush != TagFlush::None {
            self.flushes += 1;
        }
        let tag = self.next;
        self.next += 1;
        *vcpu = VcpuTag { tag, generation: self.generation, cpu };
        TagDecision { tag, flush }
    }

    /// The current generation: 1 after the first entry, one more per rollover.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Flushes this numbering asked for (full ones at rollovers, per-tag ones with
    /// [`Rollover::FlushEachNewTag`]).
    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    /// The largest tag handed out.
    pub fn max(&self) -> u32 {
        self.max
    }
}

/// The largest tag to hand out: the hardware's last (`hardware_tags` counts tag 0, the
/// host's), lowered by the `max_tag=N` setting of the command line (at least 1, so a
/// setting never turns tags off). 0 when the hardware has none.
pub fn largest_tag(hardware_tags: u32, setting: Option<u32>) -> u32 {
    let hardware = hardware_tags.saturating_sub(1);
    match setting {
        Some(max) if hardware > 0 => max.clamp(1, hardware),
        _ => hardware,
    }
}

/// How a backend's CPUs number their tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagConfig {
    pub cpus: usize,
    /// 0: untagged.
    pub max: u32,
    pub rollover: Rollover,
}

/// One CPU's numbering, as `/v1/info` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagStats {
    pub cpu: u32,
    pub max_tag: u32,
    pub generation: u64,
    pub flushes: u64,
}

/// Every CPU's numbering, for a backend's static: set up by the first entry (or the first
/// look at the stats) from the backend's `config`. Each CPU's lock is taken by that CPU at
/// entry and by stats readers, never by an interrupt handler, so it is never contended for
/// long.
pub struct TagSpace {
    config: fn() -> TagConfig,
    cpus: spin::Once<Vec<spin::Mutex<CpuTags>>>,
}

impl TagSpace {
    pub const fn new(config: fn() -> TagConfig) -> Self {
        Self { config, cpus: spin::Once::new() }
    }

    fn cpus(&self) -> &[spin::Mutex<CpuTags>] {
        self.cpus.call_once(|| {
            let config = (self.config)();
            let numbering =
                if config.max == 0 { CpuTags::untagged() } else { CpuTags::new(config.max, config.rollover) };
            (0..config.cpus).map(|_| spin::Mutex::new(numbering.clone())).collect()
        })
    }

    /// [`CpuTags::on_entry`] on `cpu`, which must be the calling CPU.
    pub fn on_entry(&self, cpu: usize, vcpu: &mut VcpuTag) -> TagDecision {
        self.cpus()[cpu].lock().on_entry(cpu, vcpu)
    }

    pub fn stats(&self) -> Vec<TagStats> {
        self.cpus()
            .iter()
            .enumerate()
            .map(|(cpu, tags)| {
                let tags = tags.lock();
                TagStats {
                    cpu: cpu as u32,
                    max_tag: tags.max(),
                    generation: tags.generation(),
                    flushes: tags.flushes(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests;
