//! `exitbench`: loops of exits of each kind — CPUID (always intercepted), a hypercall
//! (VCPU_COUNT), a port read (the UART scratch register) and an EOI written to the xAPIC
//! page (`eoi_xapic_mmio`: a nested page fault, the instruction fetched, decoded and
//! emulated against the local APIC) — `iters=N` times each
//! (default 10,000), printing the count and, where the TSC is invariant, TSC cycles per
//! exit. Inside an emulator the cycle counts mean little: count instructions there
//! (QEMU `-icount`, Bochs log timestamps). vCPU 0 runs it; other vCPUs halt.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_images::guest_main!(guest);

#[cfg(target_os = "none")]
mod guest {
    use guest_images::logic::{cmdline_u64, per_iteration_x100};
    use guest_images::{println, rt};
    use taproot_guest_abi::{cpuid, hypercall::Hypercall, port, status};

    const DEFAULT_ITERS: u64 = 10_000;
    /// The 16550 scratch register: a device register without side effects.
    const SCRATCH_PORT: u16 = port::COM1_BASE + 7;
    /// The local APIC's EOI register on the xAPIC page (SDM Vol. 3A Table 11-1).
    const XAPIC_EOI: u64 = 0xFEE0_00B0;

    pub fn guest(boot: &rt::Boot) -> u32 {
        if boot.vcpu_index != 0 {
            rt::halt_forever();
        }
        let iters = cmdline_u64(boot.cmdline(), "iters").unwrap_or(DEFAULT_ITERS).max(1);
        // `tsc=1` prints TSC deltas even without an invariant TSC: inside QEMU with
        // `-icount` and in Bochs the TSC counts instructions, which is what benchmarks
        // there want.
        let tsc = rt::has_invariant_tsc() || cmdline_u64(boot.cmdline(), "tsc") == Some(1);
        println!("exitbench: iters={iters} invariant_tsc={tsc}");

        report("cpuid", iters, tsc, || {
            core::hint::black_box(rt::cpuid_regs(cpuid::SIGNATURE_LEAF));
        });
        if boot.under_taproot {
            report("hypercall", iters, tsc, || {
                let _ = core::hint::black_box(rt::hypercall(Hypercall::VcpuCount, [0; 3]));
            });
        } else {
            println!("exitbench: hypercall skipped (not under Taproot)");
        }
        report("pio_in", iters, tsc, || {
            core::hint::black_box(rt::inb(SCRATCH_PORT));
        });
        report("eoi_xapic_mmio", iters, tsc, || {
            // SAFETY: a store of 0 to the EOI register of the identity-mapped xAPIC page
            // (nothing in service: it changes nothing).
            unsafe {
                core::arch::asm!("mov dword ptr [{eoi}], 0", eoi = in(reg) XAPIC_EOI, options(nostack));
            }
        });
        status::OK
    }

    fn report(name: &str, iters: u64, tsc: bool, mut exit_once: impl FnMut()) {
        let start = rt::rdtsc();
        for _ in 0..iters {
            exit_once();
        }
        let cycles = rt::rdtsc().wrapping_sub(start);
        match per_iteration_x100(cycles, iters).filter(|_| tsc) {
            Some(x100) => {
                println!("exitbench: {name} exits={iters} tsc_per_exit={}.{:02}", x100 / 100, x100 % 100)
            }
            None => println!("exitbench: {name} exits={iters} tsc_per_exit=n/a"),
        }
    }
}

#[cfg(target_os = "none")]
use guest::guest;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "exitbench is a bare-metal guest: cargo build -p guest-images --target x86_64-unknown-none --release"
    );
}
