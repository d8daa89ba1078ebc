"""A data pipeline's workload: many shapes, no warm-up for them, against a cold and a warm server.

Sends ``Fit`` requests over at least 50 distinct (rows, columns, K) shapes (rows 20-20,000, columns
2-256, K 1-5), in one fixed shuffled order, at concurrency 1, 8 and 32, side by side against:

* **cold**: ``l1pca serve`` started for the level with an empty compile cache (a fresh temporary
  directory) and the default warm-up, measured from the moment it reports SERVING;
* **warm**: one ``l1pca serve`` that has already answered the whole workload once and finished every
  compile it queued (its compile queue drained), so nothing is left to compile.

Reports per level and server: throughput, p50 / p99 latency, errors by status (DEADLINE_EXCEEDED at
the 30 s client timeout included), how many fits ran on the host path while a program compiled and
how many compiles finished, and each cold server's time from start to SERVING. Targets (issue 27):
cold p99 within 1.5x of warm p99, and no DEADLINE_EXCEEDED.

    python bench/service_mixed.py                    # the committed run (about 10 minutes on 2 cores)
    python bench/service_mixed.py --requests 60 --levels 1,8 --shapes 50   # shorter

Writes ``bench/results/service_mixed.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _report import machine, machine_sentence
from l1pca.service import testing
from service_load import run_requests

ROOT = Path(__file__).resolve().parents[1]


def make_shapes(count, seed=0):
    """``count`` distinct (rows, cols, K): rows log-uniform in 20-20,000, columns in 2-256, K in 1-5
    (K <= min(rows, cols)); matrices of more than 400,000 entries are narrowed so that one request
    stays a pipeline's batch, not a bulk job."""
    rng = np.random.default_rng(seed)
    shapes = set()
    # The corners first, so every run covers them.
    for shape in ((20, 2, 1), (20, 256, 5), (20000, 2, 2), (20000, 20, 3), (1000, 256, 1)):
        shapes.add(shape)
    while len(shapes) < count:
        rows = int(round(np.exp(rng.uniform(np.log(20), np.log(20000)))))
        cols = int(round(np.exp(rng.uniform(np.log(2), np.log(256)))))
        cols = max(2, min(cols, 400_000 // rows))
        K = int(rng.integers(1, 6))
        if K <= min(rows, cols):
            shapes.add((rows, cols, K))
    return sorted(shapes)


def make_matrix(rows, cols, K, seed):
    """Structured data as a pipeline sends: rank K + noise + 5% gross outliers."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, K)) @ rng.normal(size=(K, cols)) * 3 + 0.3 * rng.normal(size=(rows, cols))
    bad = max(1, rows // 20)
    X[:bad] += 10 * rng.normal(size=(bad, cols))
    return X


def workload(shapes, n_requests, seed=1):
    """``n_requests`` (matrix, K) in a fixed shuffled order that visits every shape."""
    rng = np.random.default_rng(seed)
    mats = {s: make_matrix(*s, seed=i) for i, s in enumerate(shapes)}
    order = []
    while len(order) < n_requests:
        order += list(rng.permutation(len(shapes)))
    return [(mats[shapes[i]], shapes[i][2]) for i in order[:n_requests]]


def run_level(target, requests, concurrency, timeout_s):
    """The requests at this concurrency, no retries: throughput, p50, p99, max, errors."""
    run = asyncio.run(run_requests(target, requests, concurrency, timeout_s, retry=None))
    lat = run["latencies"]
    return {"ok": len(lat), "errors": run["errors"], "wall_s": run["wall_s"],
            "throughput_rps": len(lat) / run["wall_s"],
            "p50_ms": 1e3 * float(np.percentile(lat, 50)) if lat else float("nan"),
            "p99_ms": 1e3 * float(np.percentile(lat, 99)) if lat else float("nan"),
            "max_ms": 1e3 * max(lat, default=float("nan"))}


def counters(srv):
    m = srv.metrics()
    return {"host_path_fits": testing.sample_sum(m, "l1pca_host_path_fits_total"),
            "compiles": testing.sample_sum(m, "l1pca_compiles_total"),
            "compile_queue": testing.sample_sum(m, "l1pca_compile_queue_depth")}


def start(workdir, cache_dir, log_name):
    t0 = time.perf_counter()
    srv = testing.ServeProcess("--compile-cache-dir", cache_dir, "--max-queue", "4096",
                               workdir=workdir, log_path=Path(workdir) / log_name)
    srv.start(timeout_s=300)
    return srv, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", type=int, default=56, help="distinct shapes (>= 50 for the target)")
    p.add_argument("--requests", type=int, default=120, help="requests per level and server")
    p.add_argument("--levels", default="1,8,32", help="concurrency levels")
    p.add_argument("--timeout-s", type=float, default=30.0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "service_mixed"))
    args = p.parse_args(argv)
    levels = [int(v) for v in args.levels.split(",")]
    shapes = make_shapes(args.shapes)
    requests = workload(shapes, args.requests)
    work = Path(tempfile.mkdtemp(prefix="l1pca-mixed-"))
    results = {"machine": machine(), "shapes": shapes, "requests_per_level": args.requests,
               "timeout_s": args.timeout_s, "levels": []}

    warm, warm_start_s = start(work / "warm", str(work / "warm-cache"), "warm.log")
    try:
        # Warm it: the whole workload once at each level, then wait for its compile queue to drain.
        t0 = time.perf_counter()
        for c in levels:
            run_level(warm.target, workload(shapes, len(shapes), seed=2), c, 600.0)
        testing.wait_until(lambda: counters(warm)["compile_queue"] == 0, timeout=3600, interval=1.0)
        run_level(warm.target, workload(shapes, len(shapes), seed=3), max(levels), 600.0)
        testing.wait_until(lambda: counters(warm)["compile_queue"] == 0, timeout=3600, interval=1.0)
        results["warming_s"] = time.perf_counter() - t0
        print(f"warm server ready after {results['warming_s']:.0f} s of warming", flush=True)
        for c in levels:
            cold, cold_start_s = start(work / f"cold-{c}", str(work / f"cold-cache-{c}"), "cold.log")
            try:
                before = counters(cold)
                cold_run = run_level(cold.target, requests, c, args.timeout_s)
                after = counters(cold)
                cold_run.update(start_to_serving_s=cold_start_s,
                                host_path_fits=after["host_path_fits"] - before["host_path_fits"],
                                compiles=after["compiles"] - before["compiles"])
            finally:
                cold.stop()
            before = counters(warm)
            warm_run = run_level(warm.target, requests, c, args.timeout_s)
            after = counters(warm)
            warm_run.update(host_path_fits=after["host_path_fits"] - before["host_path_fits"],
                            compiles=after["compiles"] - before["compiles"])
            level = {"concurrency": c, "cold": cold_run, "warm": warm_run,
                     "p99_ratio": cold_run["p99_ms"] / warm_run["p99_ms"]}
            results["levels"].append(level)
            print(json.dumps(level), flush=True)
    finally:
        warm.stop()
    Path(args.out + ".json").write_text(json.dumps(results, indent=1) + "\n")
    Path(args.out + ".md").write_text(render(results))
    print(render(results))
    ok = all(lv["p99_ratio"] <= 1.5 and "DEADLINE_EXCEEDED" not in lv["cold"]["errors"]
             for lv in results["levels"])
    return 0 if ok else 1


def render(r):
    rows = ["# Mixed shapes against a cold and a warm server\n",
            machine_sentence(r["machine"]) + f"{len(r['shapes'])} distinct shapes (rows "
            f"{min(s[0] for s in r['shapes'])}-{max(s[0] for s in r['shapes'])}, columns "
            f"{min(s[1] for s in r['shapes'])}-{max(s[1] for s in r['shapes'])}, K 1-5), "
            f"{r['requests_per_level']} `Fit` requests per level and server in one shuffled order, "
            f"client timeout {r['timeout_s']:g} s, no retries. Cold: a fresh `l1pca serve` with an "
            "empty compile cache, measured from SERVING. Warm: a server that answered the workload "
            f"before and drained its compile queue ({r.get('warming_s', float('nan')):.0f} s of "
            "warming). `python bench/service_mixed.py` (issue 27's benchmark).\n",
            "| concurrency | server | start to SERVING (s) | req/s | p50 (ms) | p99 (ms) | max (ms) "
            "| errors | host-path fits | compiles | p99 cold / warm |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for lv in r["levels"]:
        for name in ("cold", "warm"):
            run = lv[name]
            start = f"{run['start_to_serving_s']:.1f}" if "start_to_serving_s" in run else "-"
            errors = ", ".join(f"{k} {v}" for k, v in run["errors"].items()) or "0"
            ratio = f"{lv['p99_ratio']:.2f}x" if name == "cold" else ""
            rows.append(f"| {lv['concurrency']} | {name} | {start} | {run['throughput_rps']:.1f} | "
                        f"{run['p50_ms']:.0f} | {run['p99_ms']:.0f} | {run['max_ms']:.0f} | {errors} | "
                        f"{run['host_path_fits']:.0f} | {run['compiles']:.0f} | {ratio} |")
    rows.append("\nShapes (rows x columns, K): " + ", ".join(f"{a}x{b} K={k}" for a, b, k in r["shapes"]))
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.exit(main())
