#!/usr/bin/env bash
# Compare `daramjwee serve` with nginx proxy_cache and Varnish in front of the
# same origin, with nginx serving the files statically as the ceiling.
#
#   benches/http_compare.sh [--daramjwee PATH] [--duration 10s] [--connections 64]
#       [--miss-connections 32] [--threads 2] [--rounds 3] [--stampede 1000] [--stampede-secs 1] [--tier SPEC]...
#       [--quick] [--keep]
#
# Scenarios, each through every server, all on 127.0.0.1:
#   hot-4KiB, hot-1MiB  wrk --latency for --duration after warming: req/s, p50, p99;
#                       --rounds times, the servers taking turns, so that a slow
#                       spell of a shared machine falls on all of them alike: the
#                       table has each server's median (of req/s, p50, p99 apart),
#                       and the req/s of every round are printed under it
#   miss-4KiB           wrk for --duration, --miss-connections connections, every request
#                       a key no server has seen (benches/wrk/miss.lua): 4 KiB fetched from
#                       the origin and stored as usual; static is the origin asked directly
#   zipf-4KiB           the same, keys drawn from a Zipf distribution (exponent 0.9) over
#                       100 000 keys (benches/wrk/zipf.lua): a mix of hits and misses, the
#                       keys the same across rounds, so later rounds are warmer
#   stampede            --stampede concurrent GETs of one never-seen key (the origin
#                       takes about --stampede-secs to send it); origin fetches of that
#                       key counted in the origin's access log (target: 1)
#   cold-1GiB           one cold GET of a 1 GiB object, body discarded: transfer rate and
#                       the peak RSS (VmHWM, reset first) of the server's processes
#                       (target for daramjwee: < 64 MiB)
# Ratios are daramjwee over each other server, from this run. Targets are reported,
# not asserted: the exit status is 0 when the run completed.
#
# Runs as root: installs nginx, varnish and wrk with apt when missing. daramjwee is
# `--daramjwee`, else $DARAMJWEE, else ${CARGO_TARGET_DIR:-target}/release/daramjwee;
# it is skipped, saying so, when that binary is missing or has no `serve` command. Its
# default tiers are mem:256MiB:s3fifo and file:TMP/daramjwee-file:4GiB:s3fifo (the
# 1 GiB object is larger than either tier keeps, so the RSS figure measures streaming,
# not storage); `--tier` replaces them. --stampede-secs is whole seconds. --quick
# sets --duration 2s. --keep leaves the temporary directory (logs, wrk output).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
helper="$here/http_compare.py"
cmdline=$(printf '%q ' "$0" "$@")

duration=10s
connections=64
threads=2
miss_connections=32
rounds=3
stampede_n=1000
stampede_secs=1
keep=0
quick=0
djw="${DARAMJWEE:-${CARGO_TARGET_DIR:-$repo/target}/release/daramjwee}"
tiers=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --daramjwee) djw="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --connections) connections="$2"; shift 2 ;;
        --miss-connections) miss_connections="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --stampede) stampede_n="$2"; shift 2 ;;
        --stampede-secs) stampede_secs="$2"; shift 2 ;;
        --tier) tiers+=("$2"); shift 2 ;;
        --quick) quick=1; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ "$quick" = 1 ] && duration=2s
for v in connections miss_connections threads rounds stampede_n stampede_secs; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { f=${v%_n}; echo "--${f//_/-}: '${!v}' is not a positive whole number" >&2; exit 2; }
done
[[ "$duration" =~ ^[1-9][0-9]*[smh]?$ ]] || { echo "--duration: '$duration' is not like 10s, 2m" >&2; exit 2; }

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (installs packages; nginx and varnishd drop to their users)"
command -v python3 >/dev/null || die "python3 is needed"
command -v curl >/dev/null || die "curl is needed"

# shellcheck source=benches/servers.sh
source "$here/servers.sh" http_compare

install_missing nginx:nginx varnish:varnishd wrk:wrk

have_djw=0
if [ -x "$djw" ] && "$djw" serve --help >/dev/null 2>&1; then
    have_djw=1
elif [ -x "$djw" ]; then
    log "daramjwee skipped: $djw has no 'serve' command"
else
    log "daramjwee skipped: no binary at $djw"
fi

# Sockets: 1000 clients plus as many upstream connections per proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"


read -r p_origin p_static p_nginx p_varnish p_djw p_metrics < <(python3 "$helper" ports 6)
run_id=$(date +%s)-$$

log "generating objects in $tmp/files"
mkdir -p "$tmp/files"
head -c 4096 /dev/urandom >"$tmp/files/obj4k"
head -c $((1 << 20)) /dev/urandom >"$tmp/files/obj1m"
head -c $((256 << 10)) /dev/urandom >"$tmp/files/obj256k"
# Sparse: the bytes do not matter, only that 1 GiB crosses each server.
truncate -s 1G "$tmp/files/obj1g"
cat "$tmp/files/obj1g" >/dev/null # into the page cache, so no server pays for that first read
chmod -R a+rX "$tmp/files"

worker_user=www-data
id "$worker_user" >/dev/null 2>&1 || worker_user=nobody

# nginx_conf DIR SERVER_BLOCK [HTTP_EXTRA]
nginx_conf() {
    local dir=$1 server=$2 extra=${3:-}
    mkdir -p "$dir/tmp"
    chown -R "$worker_user" "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
user $worker_user;
worker_processes auto;
worker_rlimit_nofile 65536;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16384; }
http {
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    $extra
    server {
        $server
    }
}
EOF
}

start() { # NAME CMD...
    local name=$1
    shift
    "$@" >"$tmp/$name.out" 2>&1 &
    pids+=($!)
    eval "pid_$name=$!"
}

wait_port() { # NAME PORT
    local name=$1 port=$2
    for _ in $(seq 100); do
        if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then return 0; fi
        local pid_var="pid_$name"
        kill -0 "${!pid_var}" 2>/dev/null || { cat "$tmp/$name.out" >&2; die "$name exited at start"; }
        sleep 0.1
    done
    cat "$tmp/$name.out" >&2
    die "$name did not listen on $port"
}

# Origin: the files, fresh for an hour by their Cache-Control (as a site
# serving static objects says; without it a cache that follows RFC 9111
# gives a just-written file a near-zero heuristic lifetime), with a slow
# path for the stampede and an access log to count fetches.
# nginx lets limit_rate*(elapsed+1) bytes through, so S bytes take about S/rate-1 seconds.
rate=$(( (256 << 10) / (stampede_secs + 1) ))
nginx_conf "$tmp/origin" "
        listen 127.0.0.1:$p_origin backlog=4096;
        root $tmp/files;
        add_header Cache-Control \"max-age=3600\";
        access_log $tmp/origin-access.log fetch;
        location /slow/ { alias $tmp/files/; limit_rate $rate; }
" "log_format fetch '\$request_uri \$status \$body_bytes_sent';"
start origin nginx -p "$tmp/origin" -e "$tmp/origin/error.log" -c "$tmp/origin/nginx.conf" -g 'daemon off;'

# Ceiling: the same files, served statically.
nginx_conf "$tmp/static" "
        listen 127.0.0.1:$p_static backlog=4096;
        root $tmp/files;
        location /slow/ { alias $tmp/files/; }
        add_header Cache-Status static;
"
start static nginx -p "$tmp/static" -e "$tmp/static/error.log" -c "$tmp/static/nginx.conf" -g 'daemon off;'

# nginx proxy_cache.
mkdir -p "$tmp/nginx/cache"
chown "$worker_user" "$tmp/nginx/cache"
nginx_conf "$tmp/nginx" "
        listen 127.0.0.1:$p_nginx backlog=4096;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_cache bench;
            proxy_cache_key \$request_uri;
            proxy_cache_valid 200 1d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_cache_lock_age 60s;
            add_header Cache-Status \"nginx; \$upstream_cache_status\";
        }
" "
    upstream origin { server 127.0.0.1:$p_origin; keepalive 64; }
    proxy_cache_path $tmp/nginx/cache levels=1:2 keys_zone=bench:64m max_size=4g inactive=1d use_temp_path=off;"
start nginx nginx -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf" -g 'daemon off;'

# Varnish, malloc storage large enough for everything including the 1 GiB object.
cat >"$tmp/varnish.vcl" <<EOF
vcl 4.1;
backend origin { .host = "127.0.0.1"; .port = "$p_origin"; }
sub vcl_recv { return (hash); }
sub vcl_hash { hash_data(req.url); return (lookup); }
sub vcl_backend_response {
    set beresp.ttl = 1d;
    set beresp.do_stream = true;
}
sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.Cache-Status = "varnish; hit";
    } else {
        set resp.http.Cache-Status = "varnish; fwd=miss";
    }
}
EOF
chmod 644 "$tmp/varnish.vcl"
start varnish varnishd -F -n "$tmp/varnish" -a "127.0.0.1:$p_varnish" -f "$tmp/varnish.vcl" \
    -s malloc,2G -p thread_pool_min=200 -p thread_pool_max=5000 -p listen_depth=4096

servers=(static nginx varnish)
declare -A port=([static]=$p_static [nginx]=$p_nginx [varnish]=$p_varnish)

if [ "$have_djw" = 1 ]; then
    if [ ${#tiers[@]} -eq 0 ]; then
        tiers=("mem:256MiB:s3fifo" "file:$tmp/daramjwee-file:4GiB:s3fifo")
    fi
    mkdir -p "$tmp/daramjwee-file"
    tier_args=()
    for t in "${tiers[@]}"; do tier_args+=(--tier "$t"); done
    # Per-request log lines off (RUST_LOG=warn), as the peers' access logs are.
    start daramjwee env RUST_LOG=warn "$djw" serve --listen "127.0.0.1:$p_djw" --origin "http://127.0.0.1:$p_origin" \
        "${tier_args[@]}" --fresh-for 1h --metrics-listen "127.0.0.1:$p_metrics"
    servers+=(daramjwee)
    port[daramjwee]=$p_djw
fi

wait_port origin "$p_origin"
for s in "${servers[@]}"; do wait_port "$s" "${port[$s]}"; done
log "listening: origin $p_origin, ${servers[*]/%/} on $(for s in "${servers[@]}"; do printf '%s ' "${port[$s]}"; done)"

results="$tmp/results"
: >"$results"
record() { echo "$1 $2 $3 $4" >>"$results"; }
json() { python3 -c 'import json,sys; v=json.load(sys.stdin)'"$1"'; print("-" if v is None else v)'; }
fetches() { grep -cF -- "$1" "$tmp/origin-access.log" || true; }

# Warm: two GETs per object and server; the second should be a hit.
for s in "${servers[@]}"; do
    for obj in obj4k obj1m; do
        url="http://127.0.0.1:${port[$s]}/$obj?via=$s"
        curl -sf -o /dev/null --max-time 30 "$url" || die "warming $s $obj failed"
        st=$(curl -sf -o /dev/null -D - --max-time 30 "$url" | tr -d '\r' | sed -n 's/^[Cc]ache-[Ss]tatus: //p')
        log "warm $s /$obj: second GET Cache-Status: ${st:-none}"
    done
done

rounds_file="$tmp/rounds"
: >"$rounds_file"
# wrk_rounds SCENARIO CONNECTIONS PATH [WRK_ARG...]: --rounds rounds of wrk
# against PATH on every server in turn (the servers take turns so a slow
# spell falls on all alike), each round's req/s, p50 and p99 recorded,
# then the scenario's medians.
wrk_rounds() {
    local scenario=$1 conns=$2 path=$3
    shift 3
    for round in $(seq "$rounds"); do
        for s in "${servers[@]}"; do
            url="http://127.0.0.1:${port[$s]}${path//@SERVER@/$s}"
            out="$tmp/wrk-$s-$scenario-$round.txt"
            log "wrk $scenario $s (round $round of $rounds): -t$threads -c$conns -d$duration $*"
            if timeout 300 wrk -t"$threads" -c"$conns" -d"$duration" --latency "$@" "$url" >"$out" 2>&1; then
                r=$(python3 "$helper" wrk "$out")
                for m in rps:req/s p50_ms:p50-ms p99_ms:p99-ms; do
                    echo "$scenario ${m#*:} $s $(json "[\"${m%%:*}\"]" <<<"$r")" >>"$rounds_file"
                done
                errs=$(json '["errors"]' <<<"$r")
                [ "$errs" = 0 ] || log "wrk $scenario $s: $errs errors"
            else
                log "wrk $scenario $s failed:"; cat "$out" >&2
            fi
            sleep 1
        done
    done
    python3 "$helper" medians "$rounds_file" "$scenario" >>"$results"
}

for obj in obj4k obj1m; do
    scenario=hot-4KiB
    [ "$obj" = obj1m ] && scenario=hot-1MiB
    wrk_rounds "$scenario" "$connections" "/$obj?via=@SERVER@"
    for s in "${servers[@]}"; do
        [ "$s" = static ] || record "$scenario" origin-fetches "$s" "$(fetches "/$obj?via=$s ")"
    done
done

# Stampede: every client asks for one key that no cache has seen.
for s in "${servers[@]}"; do
    [ "$s" = static ] && continue
    key="/slow/obj256k?via=$s&stampede=$run_id"
    log "stampede $s: $stampede_n concurrent GETs of $key"
    r=$(timeout 300 python3 "$helper" stampede "http://127.0.0.1:${port[$s]}$key" "$stampede_n" 120) || r='{}'
    log "stampede $s: $r"
    sleep 0.5
    record stampede origin-fetches "$s" "$(fetches "$key ")"
    record stampede ok-responses "$s" "$(json '.get("ok")' <<<"$r")"
    record stampede wall-s "$s" "$(json '.get("wall_s")' <<<"$r")"
done

# One cold 1 GiB object per server, body discarded; peak RSS of its processes.
for s in "${servers[@]}"; do
    pid_var="pid_$s"
    main=${!pid_var}
    # nginx workers and the Varnish cache process are children of the started process.
    mapfile -t kids < <(pgrep -P "$main" || true)
    procs=("$main" "${kids[@]}")
    url="http://127.0.0.1:${port[$s]}/obj1g?via=$s&rss=$run_id"
    log "cold-1GiB $s (pids ${procs[*]})"
    r=$(timeout 600 python3 "$helper" stream "$url" "${procs[@]}") || r='{}'
    log "cold-1GiB $s: $r"
    record cold-1GiB MiB/s "$s" "$(json '.get("mib_s")' <<<"$r")"
    record cold-1GiB peak-RSS-MiB "$s" "$(json '.get("hwm_mib")' <<<"$r")"
    [ "$s" = static ] || record cold-1GiB origin-fetches "$s" "$(fetches "/obj1g?via=$s&rss=$run_id ")"
done

# Misses, then a Zipf mix: keys from a wrk script, 4 KiB objects. Last, as
# they fill the caches: the cold 1 GiB's peak RSS is measured before.
wrk_rounds miss-4KiB "$miss_connections" "/obj4k?via=@SERVER@&miss-4KiB=$run_id" -s "$here/wrk/miss.lua"
wrk_rounds zipf-4KiB "$miss_connections" "/obj4k?via=@SERVER@&zipf-4KiB=$run_id" -s "$here/wrk/zipf.lua"

if [ "$have_djw" = 1 ]; then
    log "daramjwee metrics (http://127.0.0.1:$p_metrics/metrics):"
    curl -s --max-time 5 "http://127.0.0.1:$p_metrics/metrics" | head -60 >&2 || log "no metrics answered"
fi

echo
echo "command: $cmdline"
echo "wrk: -t$threads -c$connections -d$duration --latency, $rounds rounds (medians); stampede: $stampede_n clients, origin ~${stampede_secs}s per fetch; $(nproc) cores"
[ "$have_djw" = 1 ] || echo "daramjwee: skipped ($djw has no serve command or is missing)"
echo
python3 "$helper" table "$results"
echo
echo "req/s of each round (server: round 1, 2, ...):"
python3 "$helper" rounds "$rounds_file"
echo
echo "p50/p99 in ms; peak-RSS-MiB is the largest VmHWM of any one of the server's processes during"
echo "that transfer (Varnish keeps the object in malloc storage, so its figure includes it)."
