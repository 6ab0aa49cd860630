//! Bare-metal helpers both backends use: libos's clock, the host's CPUID, runs of frames
//! for control structures, and the direct map that backs the MMU's pages.

mod direct_map;
mod frames;

pub use direct_map::DirectMap;
pub use frames::Frames;

/// libos's monotonic clock, for the MMU's zap timings.
#[derive(Default, Clone, Copy)]
pub struct LibosClock;

impl crate::mmu::Clock for LibosClock {
    fn now_ns(&self) -> u64 {
        libos::time::now_ns()
    }
}

/// The host's CPUID for `leaf`/`subleaf`, as `[eax, ebx, ecx, edx]`.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The `max_tag=N` setting of the image's command line: the largest hardware tag (ASID,
/// VPID) to hand out, so tests can force rollovers with few tags.
pub fn max_tag_setting() -> Option<u32> {
    libos::cmdline::value(libos::boot_info().cmdline(), "max_tag").and_then(|n| n.parse().ok())
}
