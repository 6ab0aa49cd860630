//! Links the bare-metal image with libos's linker script (only for the `taproot` binary
//! on the bare-metal target; host builds of the library and tests are untouched).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        let script = std::path::Path::new(&manifest).join("../libos/link.ld");
        println!("cargo::rustc-link-arg-bin=taproot=-T{}", script.display());
        println!("cargo::rustc-link-arg-bin=taproot=-zmax-page-size=4096");
        println!("cargo::rerun-if-changed={}", script.display());
    }
}
