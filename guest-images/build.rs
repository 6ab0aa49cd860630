//! Links the guests with `link.ld` (at 1 MiB, identity-mapped) when they are built for bare
//! metal; host builds (the library's tests, the binaries' host stubs) are untouched.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        let script = std::path::Path::new(&manifest).join("link.ld");
        println!("cargo::rustc-link-arg-bins=-T{}", script.display());
        println!("cargo::rustc-link-arg-bins=-zmax-page-size=4096");
        println!("cargo::rerun-if-changed={}", script.display());
    }
}
