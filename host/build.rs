//! Builds the engine component (`component/`, for `wasm32-wasip2`) so the
//! host binary can carry it. Set `DARAMJWEE_COMPONENT_WASM` to a prebuilt
//! component file to skip this.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    println!("cargo:rerun-if-env-changed=DARAMJWEE_COMPONENT_WASM");
    if let Ok(prebuilt) = env::var("DARAMJWEE_COMPONENT_WASM") {
        println!("cargo:rustc-env=DARAMJWEE_COMPONENT_WASM={prebuilt}");
        return;
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("host/ sits in the workspace");
    for watched in ["component/src", "component/Cargo.toml", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let wasm = build_component(root, &out.join("component"), &[]);
    println!(
        "cargo:rustc-env=DARAMJWEE_COMPONENT_WASM={}",
        wasm.display()
    );
    if env::var_os("CARGO_FEATURE_FAULT_INJECTION").is_some() {
        let faulty = build_component(root, &out.join("component-faults"), &["fault-injection"]);
        println!(
            "cargo:rustc-env=DARAMJWEE_FAULTY_COMPONENT_WASM={}",
            faulty.display()
        );
    }
}

/// Build the component crate for wasm into `target_dir`, returning the
/// `.wasm` path.
fn build_component(root: &Path, target_dir: &Path, features: &[&str]) -> PathBuf {
    ensure_target();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "daramjwee-component",
            "--target",
            TARGET,
        ])
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
    let status = cmd
        .status()
        .expect("cannot run cargo to build the engine component");
    assert!(
        status.success(),
        "building the engine component for {TARGET} failed"
    );
    target_dir
        .join(TARGET)
        .join("release")
        .join("daramjwee_component.wasm")
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
