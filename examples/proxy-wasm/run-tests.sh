#!/usr/bin/env bash
# Build the daramjwee proxy-wasm filter with the stable toolchain, then run
# it under a real proxy-wasm host (crates.io proxy-wasm-host on wasmtime),
# whose crate needs a newer rustc and so builds with `cargo +nightly`.
#
#   CARGO_TARGET_DIR             where the filter is built (default: the
#                                workspace's target/)
#   PROXY_WASM_HOST_TARGET_DIR   where the host tests are built (default:
#                                $CARGO_TARGET_DIR/proxy-wasm-host)
#
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

absolute() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}
target="$(absolute "${CARGO_TARGET_DIR:-$root/target}")"
host_target="$(absolute "${PROXY_WASM_HOST_TARGET_DIR:-$target/proxy-wasm-host}")"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "run-tests.sh: installing the nightly toolchain (proxy-wasm-host needs rustc >= 1.96)" >&2
    rustup toolchain install nightly --profile minimal
fi
rustup target add wasm32-wasip1

echo "== building the filter (stable, wasm32-wasip1) into $target" >&2
(cd "$root" && CARGO_TARGET_DIR="$target" cargo build --locked --release \
    --target wasm32-wasip1 -p daramjwee-proxy-wasm)
wasm="$target/wasm32-wasip1/release/daramjwee_proxy_wasm.wasm"
if [[ ! -f "$wasm" ]]; then
    echo "run-tests.sh: the build did not produce $wasm" >&2
    exit 1
fi

echo "== running $wasm under proxy-wasm-host (nightly) from $host_target" >&2
cd "$here/host-test"
CARGO_TARGET_DIR="$host_target" DARAMJWEE_PROXY_WASM="$wasm" \
    cargo +nightly test --locked --release "$@"
