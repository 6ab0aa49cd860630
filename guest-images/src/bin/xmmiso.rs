//! `xmmiso`: vector registers are each vCPU's own. Run with `vcpus=3` on a two-CPU host:
//! Taproot puts vCPU i on CPU i % 2, so vCPUs 0 and 2 time-slice on CPU 0 (vCPU 1 halts).
//! vCPU 0 keeps a marker in XMM0 (and YMM0 where AVX exists) in a loop and bumps a
//! counter; vCPU 2 keeps its own value there and, each time the counter moved since its
//! last look (vCPU 0 ran in between: a host time slice passed), checks that its register
//! still holds its own value and not the marker. After `switches=N` such slices (default
//! 30) it prints `xmmiso: ok` and ends the VM with status 0; a leak or a loss ends it with
//! status 1. AVX (XSETBV to x87|SSE|AVX, read back with XGETBV) is used when CPUID offers
//! XSAVE and AVX, unless `avx=0`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_images::guest_main!(guest);

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use guest_images::logic::cmdline_u64;
    use guest_images::rt::{CPUID1_ECX_AVX, CPUID1_ECX_XSAVE, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_OSXSAVE};
    use guest_images::{println, rt};
    use taproot_guest_abi::status;

    /// XCR0: x87 | SSE | AVX.
    const XCR0_AVX: u64 = 0b111;
    const DEFAULT_SWITCHES: u64 = 30;

    /// Four 64-bit lanes: XMM0 is the low two, YMM0 all four.
    #[repr(C, align(32))]
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    struct Lanes([u64; 4]);

    const MARKER: Lanes =
        Lanes([0x4D41_524B_4552_0001, 0x4D41_524B_4552_0002, 0x4D41_524B_4552_0003, 0x4D41_524B_4552_0004]);
    const OWN: Lanes =
        Lanes([0x5741_5443_4845_5201, 0x5741_5443_4845_5202, 0x5741_5443_4845_5203, 0x5741_5443_4845_5204]);

    /// Bumped by the marker vCPU on every turn of its loop.
    static TURNS: AtomicU64 = AtomicU64::new(0);
    /// Set by the watcher when it is done (the marker vCPU then halts).
    static DONE: AtomicBool = AtomicBool::new(false);

    pub fn guest(boot: &rt::Boot) -> u32 {
        let last = boot.vcpu_count.saturating_sub(1);
        if boot.vcpu_index != 0 && boot.vcpu_index != last {
            rt::halt_forever();
        }
        let avx = enable_vector_state(boot.cmdline());
        if boot.vcpu_index == 0 && last != 0 {
            println!("xmmiso: {} vcpus, avx={avx}", boot.vcpu_count);
            keep_marker(avx)
        } else {
            let switches = cmdline_u64(boot.cmdline(), "switches").unwrap_or(DEFAULT_SWITCHES);
            watch(avx, switches)
        }
    }

    /// Turns SSE on (and AVX where offered and wanted); returns whether AVX is on.
    fn enable_vector_state(cmdline: &str) -> bool {
        let ecx = rt::cpuid_regs(1)[2];
        let want_avx = cmdline_u64(cmdline, "avx") != Some(0);
        let avx = want_avx && ecx & CPUID1_ECX_XSAVE != 0 && ecx & CPUID1_ECX_AVX != 0;
        let mut cr4 = rt::read_cr4() | CR4_OSFXSR | CR4_OSXMMEXCPT;
        if avx {
            cr4 |= CR4_OSXSAVE;
        }
        // SAFETY: PAE stays on; the bits set exist on every x86-64 CPU (OSXSAVE only
        // with CPUID.XSAVE).
        unsafe { rt::write_cr4(cr4) };
        if avx {
            // SAFETY: CR4.OSXSAVE is set and x87|SSE|AVX is a valid XCR0 where AVX exists.
            let xcr0 = unsafe {
                rt::xsetbv(0, XCR0_AVX);
                rt::xcr0()
            };
            if xcr0 != XCR0_AVX {
                println!("xmmiso: FAILED: XGETBV read {xcr0:#x} after XSETBV {XCR0_AVX:#x}");
                rt::exit(status::FAILED);
            }
        }
        avx
    }

    /// Loads `value` into XMM0 (YMM0 with AVX).
    fn load(value: &Lanes, avx: bool) {
        if avx {
            // SAFETY: AVX is on (CR4.OSXSAVE, XCR0.AVX); a 32-byte aligned read.
            unsafe { asm!("vmovdqa ymm0, [{}]", in(reg) value, options(nostack, readonly, preserves_flags)) };
        } else {
            // SAFETY: SSE is on (CR4.OSFXSR); a 16-byte aligned read.
            unsafe { asm!("movdqa xmm0, [{}]", in(reg) value, options(nostack, readonly, preserves_flags)) };
        }
    }

    /// What XMM0 (YMM0 with AVX) holds; the lanes beyond XMM0 are zero without AVX.
    fn store(avx: bool) -> Lanes {
        let mut value = Lanes([0; 4]);
        if avx {
            // SAFETY: as in `load`, a 32-byte aligned write to `value`.
            unsafe { asm!("vmovdqa [{}], ymm0", in(reg) &mut value, options(nostack, preserves_flags)) };
        } else {
            // SAFETY: as in `load`, a 16-byte aligned write to `value`.
            unsafe { asm!("movdqa [{}], xmm0", in(reg) &mut value, options(nostack, preserves_flags)) };
        }
        value
    }

    fn masked(value: Lanes, avx: bool) -> Lanes {
        if avx { value } else { Lanes([value.0[0], value.0[1], 0, 0]) }
    }

    fn keep_marker(avx: bool) -> u32 {
        load(&MARKER, avx);
        while !DONE.load(Ordering::Relaxed) {
            let value = store(avx);
            if value == masked(OWN, avx) {
                println!("xmmiso: FAILED: LEAK: the marker vCPU sees the watcher's value");
                return status::FAILED;
            }
            if value != masked(MARKER, avx) {
                println!("xmmiso: FAILED: the marker vCPU lost its own value: {value:x?}");
                return status::FAILED;
            }
            TURNS.fetch_add(1, Ordering::Relaxed);
        }
        rt::halt_forever()
    }

    fn watch(avx: bool, switches: u64) -> u32 {
        load(&OWN, avx);
        let (mut seen, mut last) = (0, TURNS.load(Ordering::Relaxed));
        while seen < switches {
            let turns = TURNS.load(Ordering::Relaxed);
            if turns == last {
                core::hint::spin_loop();
                continue;
            }
            last = turns;
            seen += 1;
            let value = store(avx);
            if value == masked(MARKER, avx) {
                println!(
                    "xmmiso: FAILED: LEAK: the watcher sees the other vCPU's marker after {seen} slices"
                );
                return status::FAILED;
            }
            if value != masked(OWN, avx) {
                println!("xmmiso: FAILED: the watcher lost its own value after {seen} slices: {value:x?}");
                return status::FAILED;
            }
        }
        DONE.store(true, Ordering::Relaxed);
        println!("xmmiso: ok switches={seen} avx={avx}");
        status::OK
    }
}

#[cfg(target_os = "none")]
use guest::guest;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "xmmiso is a bare-metal guest: cargo build -p guest-images --target x86_64-unknown-none --release"
    );
}
