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
        for (var, path) in [
            ("DARAMJWEE_COMPONENT_WASM", &engine),
            ("DARAMJWEE_HIT_PATH_WASM", &hit_path),
        ] {
            // Relative paths are taken from `host/`, where this runs; the
            // crate is handed the absolute path, so the file embedded is
            // the one digested.
            let path = std::fs::canonicalize(path)
                .unwrap_or_else(|e| panic!("{var}={path}: cannot find the component: {e}"));
            println!("cargo:rerun-if-changed={}", path.display());
            embed(var, &path);
        }
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
        embed(var, &kept);
    }
}

/// Hands the component file at `path` to the crate as `var`, and a digest
/// of its bytes as `{var}_DIGEST` (16 hex digits), so the binary can name
/// its compiled form without reading the component at every start.
fn embed(var: &str, path: &Path) {
    use std::hash::{DefaultHasher, Hasher};
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("cannot read the component {}: {e}", path.display()));
    let mut h = DefaultHasher::new();
    h.write(&bytes);
    println!("cargo:rustc-env={var}={}", path.display());
    println!("cargo:rustc-env={var}_DIGEST={:016x}", h.finish());
}

/// Build the engine component into `target_dir`, returning its path.
fn build_component(root: &Path, target_dir: &Path, features: &[&str]) -> PathBuf {
    wasm_build::build_wasm(root, target_dir, &["daramjwee-component"], features)
        .join("daramjwee_component.wasm")
}
