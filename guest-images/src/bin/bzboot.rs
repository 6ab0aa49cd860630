//! `bzboot`: the guest xtask wraps into a bzImage (a setup header before the image, whose
//! Linux 64-bit entry lies at 1 MiB + 0x200). It checks what the Linux boot protocol
//! promises at that entry: 64-bit mode (EFER.LMA, CR0.PG, CS = `__BOOT_CS`) at load
//! address + 0x200, `rsi` = `boot_params` with the "HdrS" header, and it prints the
//! command line, the e820 map and the initrd (address, size, FNV-1a of its bytes) for the
//! test to compare; exits 0 when the entry state is right and an initrd was given.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_images::guest_main!(guest);

#[cfg(target_os = "none")]
fn guest(boot: &guest_images::rt::Boot) -> u32 {
    use guest_images::println;
    use guest_images::rt::{self, Protocol};
    use taproot_guest_abi::boot::linux as bp;
    use taproot_guest_abi::status;

    /// Where the protected-mode kernel loads (a non-relocatable bzImage: 1 MiB).
    const LOAD_GPA: u64 = 0x10_0000;
    const CR0_PG: u64 = 1 << 31;
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;

    let Some(entry) = rt::linux_entry().filter(|_| boot.protocol == Protocol::Linux) else {
        println!("bzboot: not entered through the Linux 64-bit entry (booted by {})", boot.protocol.name());
        return status::FAILED;
    };
    println!(
        "bzboot: entry rip {:#x} cs {:#x} efer {:#x} cr0 {:#x} rsi {:#x}",
        entry.rip, entry.cs, entry.efer, entry.cr0, entry.rsi
    );
    let mut ok = true;
    let mut check = |good: bool, what: &str| {
        if !good {
            println!("bzboot: FAILED: {what}");
            ok = false;
        }
    };
    check(entry.rip == LOAD_GPA + bp::ENTRY64_OFFSET, "entry at load address + 0x200");
    check(entry.cs == u64::from(bp::BOOT_CS), "CS is __BOOT_CS");
    check(entry.efer & (EFER_LME | EFER_LMA) == EFER_LME | EFER_LMA, "EFER.LME and LMA set");
    check(entry.cr0 & CR0_PG != 0, "paging on");
    check(
        entry.rsi == u64::from(boot.boot_info) && boot.initrd().is_some(),
        "rsi = boot_params with an initrd",
    );
    println!("bzboot: cmdline {:?}", boot.cmdline());
    println!("bzboot: ram ends at {:#x}", boot.ram_end_from(rt::image_end()).unwrap_or(0));
    print_e820(u64::from(boot.boot_info));
    match boot.initrd() {
        Some((gpa, size)) if gpa % 4096 == 0 && gpa >= rt::image_end() => {
            // SAFETY: the loader placed `size` initrd bytes at `gpa`, in guest RAM, which
            // the runtime identity-maps (below 4 GiB) and nothing else uses.
            let bytes = unsafe { core::slice::from_raw_parts(gpa as *const u8, size as usize) };
            println!(
                "bzboot: initrd at {gpa:#x} size {size} fnv1a {:#018x}",
                guest_images::logic::fnv1a64(bytes)
            );
        }
        other => {
            check(false, if other.is_some() { "initrd page-aligned above the image" } else { "an initrd" })
        }
    }
    if ok { status::OK } else { status::FAILED }
}

/// Prints boot_params' e820 map on one line: `start-end kind` per entry.
#[cfg(target_os = "none")]
fn print_e820(boot_params: u64) {
    use core::fmt::Write as _;
    use taproot_guest_abi::boot::linux as bp;
    let mut console = guest_images::rt::Console::lock();
    let _ = console.write_str("bzboot: e820");
    // SAFETY: boot_params is 4 KiB at a mapped gpa ("HdrS" checked by the caller's
    // `initrd` path; a wrong map only prints wrong numbers).
    let entries = unsafe { core::ptr::read_volatile((boot_params + bp::E820_ENTRIES as u64) as *const u8) };
    for i in 0..usize::from(entries).min(bp::E820_MAX_ENTRIES) {
        let at = boot_params + (bp::E820_TABLE + i * bp::E820_ENTRY_SIZE) as u64;
        // SAFETY: as above: inside boot_params.
        let (start, len, kind) = unsafe {
            (
                core::ptr::read_unaligned(at as *const u64),
                core::ptr::read_unaligned((at + 8) as *const u64),
                core::ptr::read_unaligned((at + 16) as *const u32),
            )
        };
        let _ =
            write!(console, " {start:#x}-{:#x} {}", start + len, if kind == 1 { "ram" } else { "reserved" });
    }
    let _ = console.write_str("\n");
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "bzboot is a bare-metal guest (wrapped into a bzImage by xtask): cargo build -p guest-images --target x86_64-unknown-none --release"
    );
}
