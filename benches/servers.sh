# Sourced by the benchmark scripts that start servers: a temporary
# directory `$tmp` (mode 755: nginx and Varnish workers read it as other
# users), the `pids` they start, and on exit every one of them stopped
# (TERM, then KILL after 5 s) and `$tmp` removed unless `keep` is 1.
# Needs `log` and `keep` defined first; `$1` names the directory. Also
# `install_missing PKG:CMD...`: apt-installs the packages whose command is
# missing (as root).

tmp=$(mktemp -d "/tmp/$1.XXXXXX")
chmod 755 "$tmp"
pids=()

cleanup() {
    local rc=$?
    set +e
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ "$keep" = 1 ]; then
        log "kept $tmp"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install_missing() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair#*:}" >/dev/null || missing+=("${pair%%:*}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}
