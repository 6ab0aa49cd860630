//! Links the bare-metal image with libos's linker script (only for the `taproot` binary
//! on the bare-metal target; host builds of the library and tests are untouched).
use std::fmt::Write as _;
use std::path::Path;

/// The guests `guest-images/` builds, embedded into the image when xtask says where they
/// are (`TAPROOT_GUEST_DIR`); host builds and lints get an empty table. `bzboot` is the
/// bzImage xtask wraps (`bzboot.bzimage`), launched with `format=bzimage`.
const GUESTS: [(&str, &str); 12] = [
    ("hello", "hello"),
    ("memtouch", "memtouch"),
    ("roots", "roots"),
    ("tlbprobe", "tlbprobe"),
    ("exitbench", "exitbench"),
    ("cpuid", "cpuid"),
    ("xmmiso", "xmmiso"),
    ("guardrails", "guardrails"),
    ("platform", "platform"),
    ("mmio", "mmio"),
    ("apic", "apic"),
    ("bzboot", "bzboot.bzimage"),
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
    embed_guests();
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        let script = std::path::Path::new(&manifest).join("../libos/link.ld");
        println!("cargo::rustc-link-arg-bin=taproot=-T{}", script.display());
        println!("cargo::rustc-link-arg-bin=taproot=-zmax-page-size=4096");
        println!("cargo::rerun-if-changed={}", script.display());
    }
}

fn embed_guests() {
    println!("cargo::rerun-if-env-changed=TAPROOT_GUEST_DIR");
    let mut table = String::from(
        "/// Embedded guest images: (name, bytes: an ELF, or a bzImage).\npub static GUESTS: &[(&str, &[u8])] = &[\n",
    );
    if let Ok(dir) = std::env::var("TAPROOT_GUEST_DIR") {
        for (name, file) in GUESTS {
            let path = Path::new(&dir).join(file);
            println!("cargo::rerun-if-changed={}", path.display());
            if path.is_file() {
                let path = path.canonicalize().expect("an existing file has a canonical path");
                writeln!(table, "    ({name:?}, include_bytes!({:?})),", path.display().to_string())
                    .expect("writing to a String cannot fail");
            }
        }
    }
    table.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("guests.rs");
    std::fs::write(out, table).expect("OUT_DIR is writable");
}
