//! Builds workspace crates for `wasm32-wasip2` from a build script:
//! shared by the host's build script (the engine component it embeds) and
//! the tests' (the example components they run).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target every component is built for.
pub const TARGET: &str = "wasm32-wasip2";

/// Build `packages` of the workspace at `root` for wasm into `target_dir`,
/// returning the directory that holds the `.wasm` files.
pub fn build_wasm(root: &Path, target_dir: &Path, packages: &[&str], features: &[&str]) -> PathBuf {
    ensure_target();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .args(packages.iter().flat_map(|p| ["-p", p]))
        .arg("--target-dir")
        .arg(target_dir);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    // The outer build's flags are for the host, not for wasm.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cannot run cargo to build for wasm");
    assert!(
        status.success(),
        "building {packages:?} for {TARGET} failed"
    );
    target_dir.join(TARGET).join("release")
}

/// Install the wasm target with rustup when it is missing.
fn ensure_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok();
    let installed = sysroot.is_some_and(|o| {
        Path::new(String::from_utf8_lossy(&o.stdout).trim())
            .join("lib/rustlib")
            .join(TARGET)
            .exists()
    });
    if !installed {
        let added = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status();
        assert!(
            added.is_ok_and(|s| s.success()),
            "the {TARGET} target is missing and `rustup target add {TARGET}` failed; install it and build again"
        );
    }
}
