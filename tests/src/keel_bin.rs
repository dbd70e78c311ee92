//! Locating (and if needed building) the `keel` binary.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Path of the `keel` binary: `$KEEL_BIN` if set; else
/// `<workspace>/target/<profile>/keel`, brought up to date once per test
/// process with `cargo build -p keel --bin keel --features failpoints` (a
/// no-op when nothing
/// changed, so tests never run a stale binary). With `KEEL_E2E_NO_BUILD=1`
/// the build only runs when the binary is missing.
pub fn keel_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("KEEL_BIN") {
            return PathBuf::from(bin);
        }
        let release = !cfg!(debug_assertions);
        let bin = target_dir()
            .join(if release { "release" } else { "debug" })
            .join("keel");
        let no_build = std::env::var("KEEL_E2E_NO_BUILD").as_deref() == Ok("1");
        if !bin.exists() || !no_build {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(workspace_root())
                .args(["build", "-p", "keel", "--bin", "keel"])
                // The crash points are inert unless FAILPOINTS names them;
                // the fault campaign arms them.
                .args(["--features", "failpoints"]);
            if release {
                cmd.arg("--release");
            }
            eprintln!("keel-tests: running {cmd:?}");
            let status = cmd.status().expect("run cargo build for keel");
            assert!(
                status.success(),
                "cargo build -p keel --bin keel failed: {status}"
            );
            assert!(
                bin.exists(),
                "{} still missing after cargo build",
                bin.display()
            );
        }
        bin
    })
    .clone()
}
