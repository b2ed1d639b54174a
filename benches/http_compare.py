#!/usr/bin/env python3
"""Helpers for benches/http_compare.sh: free ports, wrk output parsing, the
cold stampede client, 1 GiB streaming with peak-RSS sampling, and the final
table. Standard library only.

    http_compare.py ports N
    http_compare.py wrk FILE                      -> JSON {rps, p50_ms, p99_ms}
    http_compare.py stampede URL N [TIMEOUT]      -> JSON
    http_compare.py stream URL PID... [--]        -> JSON {bytes, secs, mib_s, hwm_mib}
    http_compare.py medians ROUNDS SCENARIO       -> lines: scenario metric server median
    http_compare.py rounds ROUNDS                 (each server's req/s, round by round)
    http_compare.py table RESULTS                 (lines: scenario metric server value)
"""

import http.client
import json
import os
import socket
import sys
import subprocess
import threading
import time
import urllib.parse
from collections import Counter


def ports(n):
    socks = []
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        out.append(s.getsockname()[1])
    for s in socks:
        s.close()
    print(" ".join(map(str, out)))


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text):
    for unit in ("us", "ms", "s", "m", "h"):
        if text.endswith(unit):
            number = text[: -len(unit)]
            try:
                return float(number) * UNITS_MS[unit]
            except ValueError:
                continue
    raise ValueError(f"unparsable latency {text!r}")


def parse_wrk(path):
    result = {"rps": None, "p50_ms": None, "p99_ms": None, "errors": 0}
    in_dist = False
    with open(path) as f:
        for line in f:
            words = line.split()
            if line.startswith("  Latency Distribution"):
                in_dist = True
                continue
            if in_dist and len(words) == 2 and words[0].endswith("%"):
                if words[0] == "50%":
                    result["p50_ms"] = to_ms(words[1])
                elif words[0] == "99%":
                    result["p99_ms"] = to_ms(words[1])
                continue
            in_dist = False
            if line.startswith("Requests/sec:"):
                result["rps"] = float(words[1])
            elif "Non-2xx or 3xx responses:" in line:
                result["errors"] += int(words[-1])
            elif line.strip().startswith("Socket errors:"):
                # "Socket errors: connect 0, read 0, write 0, timeout 0"
                nums = [int(w.strip(",")) for w in words if w.strip(",").isdigit()]
                result["errors"] += sum(nums)
    print(json.dumps(result))


def stampede(url, n, timeout):
    """n threads each open a connection, wait on one barrier, then all send
    the same GET at once and read the whole response."""
    u = urllib.parse.urlsplit(url)
    target = u.path + ("?" + u.query if u.query else "")
    threading.stack_size(256 * 1024)
    barrier = threading.Barrier(n + 1)
    statuses = Counter()
    cache_status = Counter()
    sizes = Counter()
    errors = Counter()
    lock = threading.Lock()
    finish = []

    def worker():
        conn = None
        try:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
            conn.connect()
        except OSError as e:
            with lock:
                errors[f"connect: {e.__class__.__name__}"] += 1
            conn = None
        try:
            barrier.wait(timeout=timeout)
        except threading.BrokenBarrierError:
            pass
        if conn is None:
            return
        try:
            conn.request("GET", target)
            resp = conn.getresponse()
            size = 0
            while True:
                chunk = resp.read(65536)
                if not chunk:
                    break
                size += len(chunk)
            with lock:
                statuses[resp.status] += 1
                cache_status[resp.getheader("Cache-Status", "-")] += 1
                sizes[size] += 1
                finish.append(time.monotonic())
        except (OSError, http.client.HTTPException) as e:
            with lock:
                errors[f"request: {e.__class__.__name__}"] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    try:
        barrier.wait(timeout=timeout)
    except threading.BrokenBarrierError:
        errors["barrier broken"] += 1
    start = time.monotonic()
    for t in threads:
        t.join(timeout)
    wall = (max(finish) - start) if finish else None
    print(
        json.dumps(
            {
                "requests": n,
                "ok": statuses.get(200, 0),
                "statuses": {str(k): v for k, v in statuses.items()},
                "cache_status": dict(cache_status.most_common(4)),
                "sizes": {str(k): v for k, v in sizes.items()},
                "errors": dict(errors),
                "wall_s": wall,
            }
        )
    )


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def stream(url, pids):
    """GET url once, discarding the body, and report the peak RSS (VmHWM) of
    the largest of pids. VmHWM is reset first (clear_refs 5, needs root) so the
    figure covers this transfer only; VmRSS is also sampled in case the reset
    is not permitted."""
    reset = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            reset = False
    peak_rss = {pid: status_kib(pid, "VmRSS") or 0 for pid in pids}
    before = dict(peak_rss)
    done = threading.Event()

    def sampler():
        while not done.is_set():
            for pid in pids:
                v = status_kib(pid, "VmRSS")
                if v is not None and v > peak_rss[pid]:
                    peak_rss[pid] = v
            time.sleep(0.01)

    t = threading.Thread(target=sampler, daemon=True)
    t.start()
    # curl rather than http.client: a Python reader tops out below what the
    # servers can send, and the transfer rate is reported too.
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "--max-time", "300", "-H", "Connection: close",
         "-w", "%{http_code} %{size_download} %{time_total} %header{cache-status}\n", url],
        capture_output=True, text=True, check=False,
    )
    done.set()
    t.join()
    fields = out.stdout.split(None, 3)
    if out.returncode != 0 or len(fields) < 3:
        sys.exit(f"curl {url} failed ({out.returncode}): {out.stdout} {out.stderr}")
    status, size, secs = int(fields[0]), int(fields[1]), float(fields[2])
    cache_status = fields[3].strip() if len(fields) > 3 else "-"
    hwm = {pid: status_kib(pid, "VmHWM") or 0 for pid in pids}
    peak = max(max(hwm.values()), max(peak_rss.values())) if reset else max(peak_rss.values())
    print(
        json.dumps(
            {
                "status": status,
                "cache_status": cache_status,
                "bytes": size,
                "secs": secs,
                "mib_s": size / secs / 2**20 if secs > 0 else None,
                "hwm_mib": peak / 1024,
                "rss_before_mib": max(before.values()) / 1024,
                "hwm_reset": reset,
                "processes": len(pids),
            }
        )
    )


SERVERS = ["static", "nginx", "varnish", "daramjwee"]
RATIO_METRICS = {"req/s", "p50-ms", "p99-ms", "wall-s", "MiB/s", "peak-RSS-MiB"}
RATIOS = [("nginx", "d/nginx"), ("varnish", "d/varnish"), ("static", "d/static")]


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v == int(v):
        return f"{int(v)}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def table(path):
    rows = {}
    order = []
    with open(path) as f:
        for line in f:
            parts = line.split(None, 3)
            if len(parts) != 4:
                continue
            scenario, metric, server, value = parts
            key = (scenario, metric)
            if key not in rows:
                rows[key] = {}
                order.append(key)
            value = value.strip()
            try:
                rows[key][server] = float(value)
            except ValueError:
                rows[key][server] = value
    header = ["scenario", "metric"] + SERVERS + [r for _, r in RATIOS]
    body = []
    for key in order:
        vals = rows[key]
        line = [key[0], key[1]] + [fmt(vals.get(s)) for s in SERVERS]
        d = vals.get("daramjwee") if key[1] in RATIO_METRICS else None
        for other, _ in RATIOS:
            o = vals.get(other)
            if isinstance(d, float) and isinstance(o, float) and o != 0:
                line.append(f"{d / o:.2f}x")
            else:
                line.append("-")
        body.append(line)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    for r in [header] + body:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def read_rounds(path):
    """Lines `scenario metric server value`, in the order written: the
    values of each (scenario, metric, server), one per round."""
    values = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                continue
            try:
                value = float(parts[3])
            except ValueError:
                continue
            values.setdefault(tuple(parts[:3]), []).append(value)
    return values


def median(xs):
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def medians(path, scenario):
    for (sc, metric, server), xs in read_rounds(path).items():
        if sc == scenario:
            print(f"{sc} {metric} {server} {median(xs)}")


def rounds(path):
    for (sc, metric, server), xs in read_rounds(path).items():
        if metric == "req/s":
            print(f"  {sc:9} {server:10} " + ", ".join(fmt(x) for x in xs))


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd = argv[1]
    if cmd == "ports":
        ports(int(argv[2]))
    elif cmd == "wrk":
        parse_wrk(argv[2])
    elif cmd == "stampede":
        stampede(argv[2], int(argv[3]), float(argv[4]) if len(argv) > 4 else 60.0)
    elif cmd == "stream":
        stream(argv[2], [int(p) for p in argv[3:]])
    elif cmd == "medians":
        medians(argv[2], argv[3])
    elif cmd == "rounds":
        rounds(argv[2])
    elif cmd == "table":
        table(argv[2])
    else:
        sys.exit(f"unknown command {cmd!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
