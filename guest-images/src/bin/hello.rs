//! `hello`: prints a line through the 16550 (with the boot protocol and the command line it
//! was given), and one for its initrd if it was given one (address, size, FNV-1a of the
//! bytes), and exits 0 through port 0xF4.
//!
//! With `echo` on its command line it then reads COM1 by polling LSR (no interrupt) and
//! answers each line typed at its console with `echo: LINE`; the line `hold` makes it stop
//! reading for good (`echo: holding`, then it spins), so the receive FIFO fills; `exit`
//! exits 0.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_images::guest_main!(guest);

#[cfg(target_os = "none")]
fn guest(boot: &guest_images::rt::Boot) -> u32 {
    use guest_images::println;
    if boot.vcpu_index != 0 {
        guest_images::rt::halt_forever();
    }
    // The RAM this image sits in, from the boot information's memory map: what the
    // tests use to see that the map was read, whichever protocol brought it.
    let ram_end = boot.ram_end_from(guest_images::rt::image_end());
    println!(
        "hello from taproot guest (booted by {}, cmdline {:?}, ram ends at {:#x})",
        boot.protocol.name(),
        boot.cmdline(),
        ram_end.unwrap_or(0)
    );
    if let Some((gpa, bytes)) = boot.initrd_bytes() {
        println!(
            "hello: initrd at {gpa:#x} size {} fnv1a {:#018x}",
            bytes.len(),
            guest_images::logic::fnv1a64(bytes)
        );
    }
    if boot.cmdline().split_ascii_whitespace().any(|word| word == "echo") {
        echo();
    }
    taproot_guest_abi::status::OK
}

/// Echo mode: returns on the line `exit`.
#[cfg(target_os = "none")]
fn echo() {
    use guest_images::println;
    use guest_images::rt::Console;
    println!("echo: ready");
    let mut line = guest_images::logic::LineBuffer::<64>::default();
    loop {
        let Some(byte) = Console::lock().try_read() else {
            core::hint::spin_loop();
            continue;
        };
        match line.push(byte) {
            None => {}
            Some(b"exit") => return,
            Some(b"hold") => {
                println!("echo: holding");
                loop {
                    core::hint::spin_loop();
                }
            }
            Some(text) => println!("echo: {}", core::str::from_utf8(text).unwrap_or("(not UTF-8)")),
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "hello is a bare-metal guest: cargo build -p guest-images --target x86_64-unknown-none --release"
    );
}
