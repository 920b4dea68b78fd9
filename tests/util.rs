//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `bulletin` with a clean environment: no `BULLETIN_*` variables, no config
/// file, run in `dir`.
pub fn bulletin(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("bulletin").expect("bulletin binary");
    for (k, _) in std::env::vars() {
        if k.starts_with("BULLETIN_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir).arg("--no-config");
    cmd
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    path
}
