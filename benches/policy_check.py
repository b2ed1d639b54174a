#!/usr/bin/env python3
"""Compare daramjwee's eviction policies with libCacheSim's on the same traces.

Generates deterministic traces (Zipf alpha 0.8 and 1.0, and Zipf 0.8 with
periodic long scans of one-time keys), each with unit sizes and with byte
sizes, replays them through `daramjwee sim --policy P --capacity N TRACE` and
through libCacheSim (PyPI `libcachesim`: LRU, S3FIFO with small_size_ratio=0.1,
ghost_size_ratio=0.9, move_to_main_threshold=2, Sieve), prints a table of miss
ratios and exits non-zero if any pair differs by more than 0.5 percentage
points.

    python3 benches/policy_check.py [--requests N | --large] [--daramjwee PATH]

The daramjwee binary is `--daramjwee`, else $DARAMJWEE, else
target/release/daramjwee in the repository. Needs python3 with only the
standard library and libcachesim.
"""

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import libcachesim as lcs

TOLERANCE_PP = 0.5
POLICIES = ["lru", "s3fifo", "sieve"]
CACHE_FRACTIONS = [0.01, 0.1]


def zipf_ranks(rnd, n_objects, alpha, count):
    """`count` draws of ranks 0..n_objects-1 with P(rank k) ~ 1/(k+1)^alpha."""
    cum = list(itertools.accumulate((k + 1) ** -alpha for k in range(n_objects)))
    return rnd.choices(range(n_objects), cum_weights=cum, k=count)


def object_sizes(seed, n):
    """Byte sizes: log-normal around a few KiB with a long tail, at least 1."""
    rnd = random.Random(seed)
    return [max(1, min(1 << 20, int(rnd.lognormvariate(7.5, 1.2)))) for _ in range(n)]


def make_trace(kind, n_requests, seed):
    """Returns (object ids per request, number of objects in the Zipf universe).

    Object ids 0..n_objects-1 are the Zipf universe (ranks shuffled so
    popularity is not ordered by id); one-time scan keys come after it."""
    rnd = random.Random(seed)
    n_objects = max(1000, n_requests // 10)
    perm = list(range(n_objects))
    rnd.shuffle(perm)
    if kind == "zipf-0.8":
        ranks = zipf_ranks(rnd, n_objects, 0.8, n_requests)
        return [perm[r] for r in ranks], n_objects
    if kind == "zipf-1.0":
        ranks = zipf_ranks(rnd, n_objects, 1.0, n_requests)
        return [perm[r] for r in ranks], n_objects
    if kind == "scan":
        # Every `period` requests, a scan of `scan_len` keys never seen
        # before or again; scan_len is well above the larger cache size.
        period = max(100, n_requests // 10)
        scan_len = max(50, n_requests // 40)
        ranks = iter(zipf_ranks(rnd, n_objects, 0.8, n_requests))
        ids, next_scan_key = [], n_objects
        while len(ids) < n_requests:
            for _ in range(period - scan_len):
                ids.append(perm[next(ranks)])
            for _ in range(scan_len):
                ids.append(next_scan_key)
                next_scan_key += 1
        return ids[:n_requests], n_objects
    raise ValueError(kind)


def write_trace(path, ids, sizes):
    with open(path, "w") as f:
        if sizes is None:
            f.writelines(f"{i}\n" for i in ids)
        else:
            f.writelines(f"{i},{sizes[i]}\n" for i in ids)


def libcachesim_misses(policy, capacity, ids, sizes):
    if policy == "lru":
        cache = lcs.LRU(capacity)
    elif policy == "s3fifo":
        cache = lcs.S3FIFO(capacity, small_size_ratio=0.1, ghost_size_ratio=0.9, move_to_main_threshold=2)
    elif policy == "sieve":
        cache = lcs.Sieve(capacity)
    else:
        raise ValueError(policy)
    req = lcs.Request()
    req.obj_size = 1
    get = cache.get
    misses = 0
    for i in ids:
        req.obj_id = i
        if sizes is not None:
            req.obj_size = sizes[i]
        if not get(req):
            misses += 1
    return misses


def daramjwee_misses(binary, policy, capacity, trace_path, n_requests):
    out = subprocess.run(
        [binary, "sim", "--policy", policy, "--capacity", str(capacity), trace_path],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"{binary} sim failed ({out.returncode}): {out.stderr.strip()}")
    lines = out.stdout.strip().splitlines()
    if not lines:
        sys.exit(f"{binary} sim printed nothing")
    report = json.loads(lines[-1])
    if report.get("policy") != policy or report.get("requests") != n_requests:
        sys.exit(f"{binary} sim: unexpected report {lines[-1]}")
    return report["misses"]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000, help="requests per trace (default 200000)")
    parser.add_argument("--large", action="store_true", help="2,000,000 requests per trace")
    parser.add_argument(
        "--daramjwee",
        default=os.environ.get("DARAMJWEE", os.path.join(root, "target", "release", "daramjwee")),
        help="daramjwee binary (default $DARAMJWEE or target/release/daramjwee)",
    )
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    n_requests = 2_000_000 if args.large else args.requests
    if n_requests < 1000:
        parser.error("--requests must be at least 1000")
    if not os.access(args.daramjwee, os.X_OK):
        parser.error(f"no daramjwee binary at {args.daramjwee} (use --daramjwee or DARAMJWEE)")

    header = (
        f"{'trace':<10} {'sizes':<5} {'capacity':>11} {'policy':<7}"
        f" {'daramjwee':>9} {'libCacheSim':>11} {'diff pp':>8} {'misses diff':>11}"
    )
    print(header)
    print("-" * len(header))
    worst, failures = 0.0, []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for t, trace_kind in enumerate(["zipf-0.8", "zipf-1.0", "scan"]):
            ids, n_objects = make_trace(trace_kind, n_requests, args.seed + t)
            for sized in (False, True):
                sizes = object_sizes(args.seed + 100 + t, max(ids) + 1) if sized else None
                path = os.path.join(tmp, f"{trace_kind}-{'bytes' if sized else 'unit'}.trace")
                write_trace(path, ids, sizes)
                universe = sum(sizes[:n_objects]) if sized else n_objects
                for fraction in CACHE_FRACTIONS:
                    capacity = max(1, int(universe * fraction))
                    for policy in POLICIES:
                        our_misses = daramjwee_misses(args.daramjwee, policy, capacity, path, n_requests)
                        ref_misses = libcachesim_misses(policy, capacity, ids, sizes)
                        ours, ref = our_misses / n_requests, ref_misses / n_requests
                        diff = (ours - ref) * 100
                        worst = max(worst, abs(diff))
                        flag = ""
                        if abs(diff) > TOLERANCE_PP:
                            failures.append((trace_kind, sized, capacity, policy))
                            flag = "  <-- over tolerance"
                        print(
                            f"{trace_kind:<10} {'bytes' if sized else 'unit':<5} {capacity:>11} {policy:<7}"
                            f" {ours:>9.4f} {ref:>11.4f} {diff:>+8.3f} {our_misses - ref_misses:>+11d}{flag}",
                            flush=True,
                        )
    print(f"\n{n_requests} requests per trace; largest difference {worst:.3f} pp "
          f"(tolerance {TOLERANCE_PP} pp); {time.monotonic() - started:.0f} s")
    if failures:
        print(f"{len(failures)} comparisons over tolerance", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
