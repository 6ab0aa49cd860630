//! Deliberate faults, for testing the exception and NMI paths (`fault=pagefault`,
//! `fault=nmi-console`).

/// A canonical address no page table maps: PML4 slot 128 is never filled (the direct map
/// uses slot 0 and, for RAM above 512 GiB, the next few).
pub const UNMAPPED_ADDRESS: u64 = 0x0000_4000_DEAD_0000;

/// Reads [`UNMAPPED_ADDRESS`]; the page fault stops this CPU with a diagnosis.
pub fn touch_unmapped_memory() {
    // SAFETY: the read faults before it can observe anything; the #PF handler reports it
    // and halts this CPU, so execution never continues past this line.
    let value = unsafe { core::ptr::read_volatile(UNMAPPED_ADDRESS as *const u64) };
    core::hint::black_box(value);
}

/// Sends this CPU an NMI while it holds the console lock (`fault=nmi-console`): the NMI's
/// report cannot be printed in its handler and must come out afterwards (deferred), not
/// be lost. Returns once the NMI has been taken (or after a bounded wait, if the platform
/// never delivers it).
pub fn nmi_while_console_held() {
    use crate::arch::x86_64::{apic, percpu};
    use core::sync::atomic::Ordering;
    let cpu = percpu::current();
    let before = cpu.nmis.load(Ordering::Relaxed);
    crate::drivers::serial::with_console_held(|| {
        apic::send_nmi(cpu.apic_id.load(Ordering::Relaxed));
        let give_up = crate::time::now_ns() + 1_000_000_000;
        while cpu.nmis.load(Ordering::Relaxed) == before && crate::time::now_ns() < give_up {
            core::hint::spin_loop();
        }
    });
}
