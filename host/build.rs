//! Builds the engine component (`component/`, for `wasm32-wasip2`) so the
//! host binary can carry it. Set `DARAMJWEE_COMPONENT_WASM` to a prebuilt
//! component file to skip this.

use std::env;
use std::path::{Path, PathBuf};

mod wasm_build;

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

/// Build the engine component into `target_dir`, returning its path.
fn build_component(root: &Path, target_dir: &Path, features: &[&str]) -> PathBuf {
    wasm_build::build_wasm(root, target_dir, &["daramjwee-component"], features)
        .join("daramjwee_component.wasm")
}
