//! Builds the example components (`examples/wasi-http`, `examples/spin`)
//! for `wasm32-wasip2`, so that the tests run them in a stock wasmtime
//! and check their imports.

use std::env;
use std::path::PathBuf;

#[path = "../host/wasm_build.rs"]
mod wasm_build;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("tests/ sits in the workspace");
    for watched in [
        "examples",
        "component/src",
        "component/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let dir = wasm_build::build_wasm(
        root,
        &out.join("examples"),
        &["daramjwee-wasi-http", "daramjwee-spin"],
        &[],
    );
    for (var, file) in [
        ("DARAMJWEE_WASI_HTTP_WASM", "daramjwee_wasi_http.wasm"),
        ("DARAMJWEE_SPIN_WASM", "daramjwee_spin.wasm"),
    ] {
        println!("cargo:rustc-env={var}={}", dir.join(file).display());
    }
}
