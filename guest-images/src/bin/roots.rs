//! `roots`: the operations that must reuse a vCPU's TDP root rather than rebuild it.
//! vCPU 0 toggles CR0.WP 100,000 times and CR4.PGE 100,000 times, switches to the
//! alternate address space and back through the hypercall, then asks for its vCPU to be
//! reset as INIT would. The reset restarts it at the entry; memory survives, so a phase
//! counter tells it that it has been reset, and it prints what it did and exits 0. Other
//! vCPUs halt.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_images::guest_main!(guest);

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use guest_images::{println, rt};
    use taproot_guest_abi::hypercall::{ADDRESS_SPACE_ALTERNATE, ADDRESS_SPACE_NORMAL, Hypercall};
    use taproot_guest_abi::status;

    const TOGGLES: u32 = 100_000;
    /// Where vCPU 0 is: 0 = first start, 1 = reset requested, 2 = seen the reset.
    /// In .bss, which the loader zeroes once and the runtime never touches.
    static PHASE: AtomicU32 = AtomicU32::new(0);
    static WP_TOGGLES: AtomicU32 = AtomicU32::new(0);
    static PGE_TOGGLES: AtomicU32 = AtomicU32::new(0);
    static SWITCHES: AtomicU32 = AtomicU32::new(0);
    /// Written in the alternate address space, read back in the normal one.
    static TOUCHED: AtomicU64 = AtomicU64::new(0);

    pub fn guest(boot: &rt::Boot) -> u32 {
        if boot.vcpu_index != 0 {
            rt::halt_forever();
        }
        match PHASE.load(Ordering::Relaxed) {
            0 => first_start(boot),
            1 => {
                PHASE.store(2, Ordering::Relaxed);
                println!(
                    "roots: cr0.wp toggles={} cr4.pge toggles={} as switches={} resets=1",
                    WP_TOGGLES.load(Ordering::Relaxed),
                    PGE_TOGGLES.load(Ordering::Relaxed),
                    SWITCHES.load(Ordering::Relaxed),
                );
                status::OK
            }
            phase => {
                println!("roots: started again in phase {phase}: the reset repeats");
                status::FAILED
            }
        }
    }

    fn first_start(boot: &rt::Boot) -> u32 {
        let cr0 = rt::read_cr0();
        for i in 0..TOGGLES {
            // SAFETY: only WP changes; protected mode and paging stay on. The loop ends
            // with WP as it was (TOGGLES is even).
            unsafe { rt::write_cr0(cr0 ^ if i % 2 == 0 { rt::CR0_WP } else { 0 }) };
        }
        WP_TOGGLES.store(TOGGLES, Ordering::Relaxed);
        let cr4 = rt::read_cr4();
        for i in 0..TOGGLES {
            // SAFETY: only PGE changes (each change flushes the TLB); PAE stays on.
            unsafe { rt::write_cr4(cr4 ^ if i % 2 == 0 { rt::CR4_PGE } else { 0 }) };
        }
        PGE_TOGGLES.store(TOGGLES, Ordering::Relaxed);

        if !boot.under_taproot {
            println!(
                "roots: {TOGGLES} CR0.WP and {TOGGLES} CR4.PGE toggles done; not under Taproot, so no hypercalls"
            );
            return status::FAILED;
        }
        for space in [ADDRESS_SPACE_ALTERNATE, ADDRESS_SPACE_NORMAL] {
            if let Err(e) = rt::hypercall(Hypercall::SwitchAddressSpace, [space, 0, 0]) {
                println!("roots: switching to address space {space} failed: {e}");
                return status::FAILED;
            }
            SWITCHES.fetch_add(1, Ordering::Relaxed);
            TOUCHED.fetch_add(space + 1, Ordering::Relaxed);
        }
        if TOUCHED.load(Ordering::Relaxed) != 3 {
            println!("roots: memory written across the address-space switch reads back wrong");
            return status::FAILED;
        }
        PHASE.store(1, Ordering::Relaxed);
        let result = rt::hypercall(Hypercall::ResetVcpu, [0; 3]);
        println!("roots: RESET_VCPU returned {result:?} instead of restarting the vcpu");
        status::FAILED
    }
}

#[cfg(target_os = "none")]
use guest::guest;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "roots is a bare-metal guest: cargo build -p guest-images --target x86_64-unknown-none --release"
    );
}
