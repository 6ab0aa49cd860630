//! The time-stamp counter.

/// Reads the TSC.
pub fn read() -> u64 {
    // SAFETY: RDTSC has no memory effects; CR4.TSD is never set, so it cannot fault.
    unsafe { core::arch::x86_64::_rdtsc() }
}
