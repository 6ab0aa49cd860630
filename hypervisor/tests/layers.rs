//! The layering of the hypervisor crate, checked: each top-level module may name only the
//! modules below it (README.md, "Layers"). A `crate::x` path that points up or sideways
//! fails here, before it can grow into a cycle.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Each module and what it may import. Order is bottom to top.
const LAYERS: &[(&str, &[&str])] = &[
    ("addr", &[]),
    ("sync", &[]),
    ("pages", &["addr", "sync"]),
    ("memslot", &["addr", "pages", "sync"]),
    ("mmu", &["addr", "pages", "sync", "memslot"]),
    ("cpuid", &[]),
    ("devices", &["addr"]),
    ("loader", &["addr"]),
    ("firmware", &["addr", "devices"]),
    ("emulate", &["addr"]),
    ("backend", &["addr", "pages", "sync", "memslot", "mmu", "cpuid", "emulate", "devices"]),
    (
        "vm",
        &[
            "addr", "pages", "sync", "memslot", "mmu", "cpuid", "devices", "emulate", "firmware", "loader",
            "backend",
        ],
    ),
    ("api", &["addr", "memslot", "mmu", "devices", "loader", "vm"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The top-level modules a module's files name through `crate::`.
fn imports_of(module: &str) -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&src().join(module), &mut files);
    rust_files(&src().join(format!("{module}.rs")), &mut files);
    assert!(!files.is_empty(), "module {module} has no source files: update LAYERS");
    let mut found = BTreeSet::new();
    for file in files {
        // Comments may point anywhere (a doc link up to a user is not a dependency).
        let text: String = fs::read_to_string(&file)
            .unwrap()
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .map(|line| format!("{line}\n"))
            .collect();
        for (i, _) in text.match_indices("crate::") {
            let before = text[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let name: String =
                text[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && name != module {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let mut wrong = Vec::new();
    for (module, allowed) in LAYERS {
        for import in imports_of(module) {
            if !allowed.contains(&import.as_str()) {
                wrong.push(format!("{module} imports crate::{import}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering:\n{}", wrong.join("\n"));
}

#[test]
fn every_top_level_module_has_a_layer() {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line.trim().strip_prefix("pub mod ").or_else(|| line.trim().strip_prefix("mod "))
        {
            let name = name.trim_end_matches(';');
            assert!(LAYERS.iter().any(|(m, _)| *m == name), "module {name} is not in LAYERS");
        }
    }
}
