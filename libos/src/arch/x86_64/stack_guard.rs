//! Stack overflow detection without guard pages (the direct map uses 2 MiB pages): the
//! lowest bytes of every CPU stack hold a canary, checked at each timer interrupt. A CPU
//! that ran off its stack has already written over whatever lies below (the boot page
//! tables, for the boot CPU, or another frame), so this cannot make the overflow safe; it
//! makes it loud, naming the CPU, instead of a mystery fault later.

use super::percpu::PerCpu;
use core::sync::atomic::Ordering;

/// Bytes of canary at the bottom of each stack.
const CANARY_WORDS: usize = 8;
const CANARY: u64 = 0x57AC_CA4A_1B0F_F5E7;

/// Writes the canary at `stack_bottom` and records it for `cpu`.
pub fn install(cpu: &PerCpu, stack_bottom: u64) {
    // SAFETY: `stack_bottom` is the lowest address of a stack this CPU will use, identity
    // mapped and owned by it; the canary occupies its first 64 bytes, which the stack only
    // reaches when it has already overflowed.
    unsafe {
        let words = stack_bottom as *mut u64;
        for i in 0..CANARY_WORDS {
            words.add(i).write_volatile(CANARY);
        }
    }
    cpu.stack_bottom.store(stack_bottom, Ordering::Release);
}

/// Whether `cpu`'s canary is intact (true when none is installed).
pub fn is_intact(cpu: &PerCpu) -> bool {
    let bottom = cpu.stack_bottom.load(Ordering::Acquire);
    if bottom == 0 {
        return true;
    }
    // SAFETY: `bottom` was recorded by `install` for a stack that is never freed while its
    // CPU runs.
    (0..CANARY_WORDS).all(|i| unsafe { (bottom as *const u64).add(i).read_volatile() } == CANARY)
}

/// The boot CPU's stack, from the entry stub.
pub fn install_boot(cpu: &PerCpu) {
    unsafe extern "C" {
        static boot_stack_bottom: u8;
    }
    install(cpu, &raw const boot_stack_bottom as u64);
}
