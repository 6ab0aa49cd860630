//! `hello`: prints a line through the 16550 and exits 0 through port 0xF4.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_images::guest_main!(guest);

#[cfg(target_os = "none")]
fn guest(boot: &guest_images::rt::Boot) -> u32 {
    use guest_images::println;
    if boot.vcpu_index != 0 {
        guest_images::rt::halt_forever();
    }
    println!("hello from taproot guest");
    taproot_guest_abi::status::OK
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "hello is a bare-metal guest: cargo build -p guest-images --target x86_64-unknown-none --release"
    );
}
