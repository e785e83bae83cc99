//! Bakes a hash of the engine's sources into the library (`ztp_source_hash`), so the
//! Go tests can tell a library built from other sources (go-module/main_test.go hashes
//! the same files the same way).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The files that make the library, relative to the repository root.
fn sources(root: &Path) -> Vec<String> {
    let mut files = vec![
        "Cargo.lock".to_owned(),
        "Cargo.toml".to_owned(),
        "rust/core/Cargo.toml".to_owned(),
        "rust/ffi/Cargo.toml".to_owned(),
    ];
    for dir in ["rust/core/src", "rust/ffi/src"] {
        walk(root, &root.join(dir), &mut files);
    }
    files.sort();
    files
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("a source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).expect("below the root");
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

fn main() {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut h = Sha256::new();
    for rel in sources(&root) {
        let content = std::fs::read(root.join(&rel)).expect("a source file");
        h.update(rel.as_bytes());
        h.update([0]);
        h.update((content.len() as u64).to_le_bytes());
        h.update(&content);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=ZTP_SOURCE_HASH={hex}");
    for p in [
        "Cargo.lock",
        "Cargo.toml",
        "rust/core/Cargo.toml",
        "rust/core/src",
        "rust/ffi/Cargo.toml",
        "rust/ffi/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
}
