//! Builds the engine component (`component/`, for `wasm32-wasip2`) and
//! its hit path (the same crate with the `hit-path` feature) so the host
//! binary can carry them. Set `DARAMJWEE_COMPONENT_WASM` and
//! `DARAMJWEE_HIT_PATH_WASM` to prebuilt component files to skip this.

use std::env;
use std::path::{Path, PathBuf};

mod wasm_build;

fn main() {
    println!("cargo:rerun-if-env-changed=DARAMJWEE_COMPONENT_WASM");
    println!("cargo:rerun-if-env-changed=DARAMJWEE_HIT_PATH_WASM");
    if let (Ok(engine), Ok(hit_path)) = (
        env::var("DARAMJWEE_COMPONENT_WASM"),
        env::var("DARAMJWEE_HIT_PATH_WASM"),
    ) {
        println!("cargo:rustc-env=DARAMJWEE_COMPONENT_WASM={engine}");
        println!("cargo:rustc-env=DARAMJWEE_HIT_PATH_WASM={hit_path}");
        return;
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("host/ sits in the workspace");
    for watched in ["component/src", "component/Cargo.toml", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    // The builds of each kind share one target directory (and its
    // dependencies); each result is copied out before the next build
    // replaces it. The faulty pair is for the fault-isolation tests.
    let mut builds = vec![
        (
            "component",
            &[][..],
            "engine.wasm",
            "DARAMJWEE_COMPONENT_WASM",
        ),
        (
            "component",
            &["hit-path"][..],
            "hit-path.wasm",
            "DARAMJWEE_HIT_PATH_WASM",
        ),
    ];
    if env::var_os("CARGO_FEATURE_FAULT_INJECTION").is_some() {
        builds.extend([
            (
                "component-faults",
                &["fault-injection"][..],
                "engine-faults.wasm",
                "DARAMJWEE_FAULTY_COMPONENT_WASM",
            ),
            (
                "component-faults",
                &["fault-injection", "hit-path"][..],
                "hit-path-faults.wasm",
                "DARAMJWEE_FAULTY_HIT_PATH_WASM",
            ),
        ]);
    }
    for (dir, features, name, var) in builds {
        let built = build_component(root, &out.join(dir), features);
        let kept = out.join(name);
        std::fs::copy(&built, &kept).expect("cannot copy the built component");
        println!("cargo:rustc-env={var}={}", kept.display());
    }
}

/// Build the engine component into `target_dir`, returning its path.
fn build_component(root: &Path, target_dir: &Path, features: &[&str]) -> PathBuf {
    wasm_build::build_wasm(root, target_dir, &["daramjwee-component"], features)
        .join("daramjwee_component.wasm")
}
