//! Shared set-up for the MMU's host tests.
#![allow(dead_code)]

use hypervisor::addr::{Gfn, Gpa, PAGE_SIZE};
use hypervisor::memslot::{AsId, SlotFlags, SlotId, SlotSpec};
use hypervisor::mmu::host::{EventLog, HostPages, HostPagesConfig, HostPlatform, RecordingFlush};
use hypervisor::mmu::testfmt::TestFormat;
use hypervisor::mmu::{Mmu, MmuConfig, NoClock, Platform, Root, TdpFormat};
use std::sync::Arc;

pub type Test = HostPlatform<TestFormat, NoClock>;

pub struct Vm<P: Platform<Pages = HostPages, Flush = RecordingFlush>> {
    pub mmu: Mmu<P>,
    pub pages: Arc<HostPages>,
    pub flush: Arc<RecordingFlush>,
    pub log: Arc<EventLog>,
}

pub fn vm_with<F: TdpFormat>(config: MmuConfig, pages: HostPagesConfig) -> Vm<HostPlatform<F, NoClock>> {
    let log = EventLog::new();
    let pages = Arc::new(HostPages::with_log(pages, log.clone()));
    let flush = Arc::new(RecordingFlush::with_log(log.clone()));
    let mmu = Mmu::new(config, pages.clone(), flush.clone(), NoClock);
    Vm { mmu, pages, flush, log }
}

pub fn small_pages() -> HostPagesConfig {
    HostPagesConfig { tables: 4096, frames_4k: 1 << 16, frames_2m: 64, frames_1g: 4 }
}

pub fn vm() -> Vm<Test> {
    vm_with::<TestFormat>(MmuConfig::default(), small_pages())
}

pub fn spec(id: u32, as_id: AsId, base: u64, size: u64) -> SlotSpec {
    SlotSpec { id: SlotId(id), as_id, base: Gpa::new(base), size, flags: SlotFlags::default() }
}

pub fn gpa(gfn: u64) -> Gpa {
    Gfn::new(gfn).gpa()
}

/// Every leaf of every root the MMU references must map, page by page, exactly the frame
/// backing that gfn now. Returns how many leaves were checked.
pub fn check_translations<P: Platform>(mmu: &Mmu<P>) -> usize {
    let mut checked = 0;
    for root in mmu.roots() {
        checked += check_root(mmu, &root);
    }
    checked
}

pub fn check_root<P: Platform>(mmu: &Mmu<P>, root: &Root<P>) -> usize {
    let leaves = mmu.leaves(root);
    for leaf in &leaves {
        for page in 0..leaf.size.pages() {
            let gfn = leaf.gfn.add(page);
            let backing = mmu.backing_of(root.role().as_id, gfn);
            assert_eq!(
                backing,
                Some(leaf.hpa.add(page * PAGE_SIZE)),
                "root {} maps {gfn:?} to {:?}, backing is {backing:?}",
                root.id(),
                leaf.hpa.add(page * PAGE_SIZE)
            );
        }
    }
    leaves.len()
}

/// A small deterministic generator (xorshift64*), so tests need no RNG crate API.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `range`.
    pub fn below(&mut self, end: u64) -> u64 {
        self.next() % end
    }

    pub fn range(&mut self, start: u64, end: u64) -> u64 {
        start + self.below(end - start)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
