//! `cpuid`: prints the CPUID leaves the hypervisor's policy shapes (the feature leaves, the
//! PMU and XSAVE leaves, the hypervisor leaves including the timing leaf 4000_0010h, and
//! SVM's leaf) as `cpuid <leaf>.<subleaf>: eax=.. ebx=.. ecx=.. edx=..`, then `cpuid:
//! done`, and exits 0. The tests compare the lines with the policy.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_images::guest_main!(guest);

/// The leaves printed, all at subleaf 0.
#[cfg(target_os = "none")]
const LEAVES: [u32; 12] = [
    0x0,
    0x1,
    0x7,
    0xA,
    0xD,
    0x4000_0000,
    0x4000_0001,
    0x4000_0010,
    0x8000_0000,
    0x8000_0001,
    0x8000_0007,
    0x8000_000A,
];

#[cfg(target_os = "none")]
fn guest(boot: &guest_images::rt::Boot) -> u32 {
    use guest_images::println;
    if boot.vcpu_index != 0 {
        guest_images::rt::halt_forever();
    }
    for leaf in LEAVES {
        let [a, b, c, d] = guest_images::rt::cpuid_regs(leaf);
        println!("cpuid {leaf:#010x}.0: eax={a:#010x} ebx={b:#010x} ecx={c:#010x} edx={d:#010x}");
    }
    println!("cpuid: done");
    taproot_guest_abi::status::OK
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "cpuid is a bare-metal guest: cargo build -p guest-images --target x86_64-unknown-none --release"
    );
}
