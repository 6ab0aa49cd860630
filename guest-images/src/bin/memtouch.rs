//! `memtouch`: every vCPU writes, then verifies, the pattern over its share of N MiB
//! (`mib=N` on the PVH command line, default 16) starting at the first 2 MiB boundary
//! after the image. vCPU 0 prints the checksum of the whole region, which does not depend
//! on the number of vCPUs, and exits 0; a mismatch exits 1 at once. `passes=N` verifies
//! N times.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_images::guest_main!(guest);

#[cfg(target_os = "none")]
fn guest(boot: &guest_images::rt::Boot) -> u32 {
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use guest_images::logic::{align_up, first_mismatch, pattern, share};
    use guest_images::{println, rt};
    use taproot_guest_abi::status;

    const DEFAULT_MIB: u64 = 16;
    const MIB: u64 = 1 << 20;
    static CHECKSUM: AtomicU64 = AtomicU64::new(0);
    static DONE: AtomicU32 = AtomicU32::new(0);

    let mib = guest_images::logic::cmdline_u64(boot.cmdline(), "mib").unwrap_or(DEFAULT_MIB);
    let start = align_up(rt::image_end(), 2 * MIB);
    let Some(end) = mib.checked_mul(MIB).and_then(|len| start.checked_add(len)) else {
        println!("memtouch: mib={mib} is too large");
        return status::FAILED;
    };
    match boot.ram_end_from(start) {
        Some(ram_end) if end <= ram_end => {}
        Some(ram_end) => {
            println!(
                "memtouch: {mib} MiB from {start:#x} ends at {end:#x}, beyond the RAM that ends at {ram_end:#x}"
            );
            return status::FAILED;
        }
        // No memory map (not a PVH loader we know): trust the command line.
        None => {}
    }
    let mine = share(start..end, boot.vcpu_index, boot.vcpu_count);
    if boot.vcpu_index == 0 {
        println!("memtouch: {} vcpus, {mib} MiB at {start:#x}..{end:#x}", boot.vcpu_count);
    }

    // Words are written and read through raw pointers: this memory is outside every Rust
    // object, owned by this vCPU alone (shares are disjoint).
    let words = (mine.end - mine.start) / 8;
    let base = mine.start as *mut u64;
    let mut sum = 0u64;
    for i in 0..words {
        let addr = mine.start + 8 * i;
        let value = pattern(addr);
        // SAFETY: `addr` lies in this vCPU's share of RAM (checked against the memory map
        // above), identity-mapped, 8-byte aligned, and no other code uses it.
        unsafe { base.add(i as usize).write_volatile(value) };
        sum = sum.wrapping_add(value);
    }
    // Verify page by page, so a mismatch names its address; `passes=N` verifies N times
    // (tests change the hypervisor's mappings while this runs).
    let passes = guest_images::logic::cmdline_u64(boot.cmdline(), "passes").unwrap_or(1).max(1);
    let mut page = [0u64; 512];
    for _ in 0..passes {
        let mut addr = mine.start;
        while addr < mine.end {
            let n = (((mine.end - addr) / 8) as usize).min(page.len());
            for (i, word) in page[..n].iter_mut().enumerate() {
                // SAFETY: as above; the word was written by this vCPU.
                *word = unsafe { (addr as *const u64).add(i).read_volatile() };
            }
            if let Some((at, expected, found)) = first_mismatch(addr, &page[..n]) {
                println!(
                    "memtouch: vcpu {} mismatch at {at:#x}: expected {expected:#018x}, found {found:#018x}",
                    boot.vcpu_index
                );
                return status::FAILED;
            }
            addr += 8 * n as u64;
        }
    }
    CHECKSUM.fetch_add(sum, Ordering::Relaxed);
    DONE.fetch_add(1, Ordering::AcqRel);
    if boot.vcpu_index != 0 {
        rt::halt_forever();
    }
    while DONE.load(Ordering::Acquire) < boot.vcpu_count {
        core::hint::spin_loop();
    }
    println!("memtouch: verified {mib} MiB, checksum {:#018x}", CHECKSUM.load(Ordering::Relaxed));
    status::OK
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "memtouch is a bare-metal guest: cargo build -p guest-images --target x86_64-unknown-none --release"
    );
}
