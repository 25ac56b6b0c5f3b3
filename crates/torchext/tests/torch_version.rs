//! The libtorch version lives in one file, `scripts/torch-version.env`; tch pins one libtorch
//! exactly. This test fails when that file, the workspace's tch requirement, Cargo.lock and
//! the libtorch this build was compiled against disagree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `KEY=VALUE` lines of the version file (comments and blank lines skipped).
fn pinned() -> HashMap<String, String> {
    let path = root().join("scripts/torch-version.env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The version of package `name` in Cargo.lock.
fn locked(name: &str) -> Option<String> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{name}\"") {
            let v = lines.next()?.trim().strip_prefix("version = \"")?;
            return Some(v.trim_end_matches('"').to_owned());
        }
    }
    None
}

#[test]
fn the_linked_libtorch_is_the_pinned_one() {
    let pin = pinned();
    let want = &pin["TORCH_VERSION"];
    let (major, minor, patch) = torchext::torch_version();
    assert_eq!(
        format!("{major}.{minor}.{patch}"),
        *want,
        "this build's libtorch is not the one scripts/torch-version.env pins: run `make setup` \
         (or point LIBTORCH at libtorch {want})"
    );
}

#[test]
fn tch_in_cargo_toml_and_lock_is_the_pinned_one() {
    let pin = pinned();
    let want = &pin["TCH_VERSION"];
    assert_eq!(locked("tch").as_ref(), Some(want), "Cargo.lock's tch");
    assert_eq!(
        locked("torch-sys").as_ref(),
        Some(want),
        "Cargo.lock's torch-sys"
    );
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("tch ="))
        .expect("the workspace names tch");
    assert!(
        line.contains(&format!("\"={want}\"")),
        "Cargo.toml must pin tch exactly to {want} (tch pins one libtorch): {line}"
    );
}
