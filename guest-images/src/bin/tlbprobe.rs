//! `tlbprobe`: a missing cross-CPU TLB flush after a zap. vCPU 0 spins reading a page
//! without exiting; vCPU 1 writes a marker into it, waits until vCPU 0 has seen the
//! marker (so vCPU 0's TLB holds the translation), calls DISCARD_PAGE on it and, when the
//! hypercall has returned, says so. From then on vCPU 0 must read the new, zeroed page
//! within a bounded number of reads. PASS exits 0, FAIL exits 1.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_images::guest_main!(guest);

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use guest_images::{println, rt};
    use taproot_guest_abi::hypercall::Hypercall;
    use taproot_guest_abi::status;

    const MARKER: u64 = 0x7A97_0075_DEAD_BEEF;
    /// Reads of the stale page allowed after the hypercall returned. With the flush the
    /// first read after seeing `DONE` is already fresh; without it the stale translation
    /// lives until the next exit of vCPU 0 (a host timer tick: millions of reads).
    const STALE_READS_ALLOWED: u64 = 1_000;
    /// Bound of every wait, so a guest whose partner never runs ends instead of hanging.
    const WAIT_LIMIT: u64 = 2_000_000_000;
    /// Spins vCPU 1 lets vCPU 0 read the page before it discards it.
    const SETTLE_SPINS: u32 = 100_000;

    /// The probed page: 4 KiB-aligned, nothing else in it, since DISCARD_PAGE zeroes it.
    #[repr(C, align(4096))]
    struct Page([AtomicU64; 512]);
    static PROBE: Page = Page([const { AtomicU64::new(0) }; 512]);

    /// vCPU 0 has seen the marker.
    static SEEN: AtomicU32 = AtomicU32::new(0);
    /// vCPU 1's hypercall returned: 1 = Ok, 2 = error.
    static DONE: AtomicU32 = AtomicU32::new(0);

    pub fn guest(boot: &rt::Boot) -> u32 {
        match boot.vcpu_index {
            _ if boot.vcpu_count < 2 || !boot.under_taproot => {
                println!("tlbprobe: FAIL: needs 2 vcpus under Taproot (has {})", boot.vcpu_count);
                status::FAILED
            }
            0 => reader(),
            1 => discarder(),
            _ => rt::halt_forever(),
        }
    }

    fn reader() -> u32 {
        let word = &PROBE.0[0];
        let mut waited = 0u64;
        while word.load(Ordering::Acquire) != MARKER {
            waited += 1;
            if waited == WAIT_LIMIT {
                println!("tlbprobe: FAIL: vcpu 1 never wrote the marker");
                return status::FAILED;
            }
            core::hint::spin_loop();
        }
        SEEN.store(1, Ordering::Release);
        let mut reads = 0u64;
        let mut stale_after_done = 0u64;
        loop {
            // DONE first, then the page: a stale read that follows a DONE read happened
            // after the hypercall returned.
            let done = DONE.load(Ordering::Acquire);
            let value = word.load(Ordering::Acquire);
            reads += 1;
            if value == 0 {
                if done == 2 {
                    break;
                }
                println!(
                    "tlbprobe: PASS: page read as zero after {reads} reads, {stale_after_done} stale after the discard returned"
                );
                return status::OK;
            }
            if done == 2 {
                println!("tlbprobe: FAIL: DISCARD_PAGE returned an error");
                return status::FAILED;
            }
            if done == 1 {
                stale_after_done += 1;
                if stale_after_done > STALE_READS_ALLOWED {
                    println!(
                        "tlbprobe: FAIL: {stale_after_done} reads still saw the old page after DISCARD_PAGE returned"
                    );
                    return status::FAILED;
                }
            }
            if reads == WAIT_LIMIT {
                println!("tlbprobe: FAIL: vcpu 1 never finished DISCARD_PAGE");
                return status::FAILED;
            }
        }
        println!("tlbprobe: FAIL: DISCARD_PAGE returned an error");
        status::FAILED
    }

    fn discarder() -> ! {
        PROBE.0[0].store(MARKER, Ordering::Release);
        let mut waited = 0u64;
        while SEEN.load(Ordering::Acquire) == 0 && waited < WAIT_LIMIT {
            waited += 1;
            core::hint::spin_loop();
        }
        for _ in 0..SETTLE_SPINS {
            core::hint::spin_loop();
        }
        let gpa = PROBE.0.as_ptr() as u64;
        let result = rt::hypercall(Hypercall::DiscardPage, [gpa, 0, 0]);
        if let Err(e) = result {
            println!("tlbprobe: vcpu 1: DISCARD_PAGE({gpa:#x}) failed: {e}");
        }
        DONE.store(if result.is_ok() { 1 } else { 2 }, Ordering::Release);
        rt::halt_forever()
    }
}

#[cfg(target_os = "none")]
use guest::guest;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "tlbprobe is a bare-metal guest: cargo build -p guest-images --target x86_64-unknown-none --release"
    );
}
