//! Tidy checks over the workspace's sources (style guide §8): every module
//! starts with a `//!` comment saying what it is for.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bindings = crates.parent().unwrap().join("bindings");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(crates).unwrap().chain(std::fs::read_dir(&bindings).unwrap()) {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(files.len() > 20, "found the sources");
    let missing: Vec<_> =
        files.iter().filter(|path| !std::fs::read_to_string(path).unwrap().starts_with("//!")).collect();
    assert!(missing.is_empty(), "modules without a //! comment: {missing:?}");
}

/// The layering of ARCHITECTURE.md: the front ends (`cairn-server`,
/// `cairn-cli`, the Node binding) reach storage only through the service,
/// so they do not depend on the engine crate at all, and name it nowhere.
#[test]
fn front_ends_reach_storage_only_through_the_service() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let node = crates.parent().unwrap().join("bindings").join("node");
    for front_end in [crates.join("cairn-server"), crates.join("cairn-cli"), node] {
        let front_end = front_end.as_path();
        let manifest = std::fs::read_to_string(front_end.join("Cargo.toml")).unwrap();
        assert!(!manifest.contains("cairn-store"), "{} depends on cairn-store", front_end.display());
        assert!(manifest.contains("cairn-service"), "{} uses the service", front_end.display());
        let mut files = Vec::new();
        rust_files(&front_end.join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(!text.contains("cairn_store::"), "{} names cairn_store", file.display());
        }
    }
}
