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

/// The per-VM tag pool the backends still use (replaced by [`CpuTags`] in the next change).
#[cfg(target_os = "none")]
pub struct TagPool {
    state: spin::Mutex<(u32, alloc::vec::Vec<u32>)>,
}

#[cfg(target_os = "none")]
impl TagPool {
    pub const fn new() -> Self {
        Self { state: spin::Mutex::new((1, alloc::vec::Vec::new())) }
    }

    /// A free tag below `limit`, if any.
    pub fn alloc(&self, limit: u32) -> Option<u32> {
        let mut state = self.state.lock();
        if let Some(tag) = state.1.pop() {
            return Some(tag);
        }
        let tag = state.0;
        if tag >= limit {
            return None;
        }
        state.0 += 1;
        Some(tag)
    }

    pub fn free(&self, tag: u32) {
        self.state.lock().1.push(tag);
    }
}

#[cfg(test)]
mod tests;
