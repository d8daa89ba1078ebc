"""JAX's CPU thread pool and the batched L1-BF fits: time and CPU per ``fit_many`` call with the pool
at one thread (``init_jax_cpu(1)``, what ``l1pca serve --solver-threads 1`` does, the default) and
at XLA's default (one thread per CPU, ``--solver-threads 0``).

Each measurement runs in a fresh interpreter (the pool is sized when JAX starts, once per process);
the two pool sizes alternate, ``--rounds`` times, so that their ratio is side by side on a noisy
machine. Per call: wall time and the process's CPU time (all its threads), medians over rounds.

    python bench/solver_threads.py            # writes bench/results/solver_threads.{md,json}
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from _report import machine, machine_sentence, write_results

ROOT = Path(__file__).resolve().parents[1]

CASES = [  # (rows, cols, K, matrices per fit_many call)
    (64, 16, 2, 1),
    (64, 16, 2, 16),
    (256, 16, 2, 16),
    (2000, 32, 2, 8),
    (20000, 50, 2, 1),
]

_WORKER = r"""
import json, os, sys, time
threads = None if sys.argv[1] == "default" else int(sys.argv[1])
from l1pca.kernels.backends import init_jax_cpu
init_jax_cpu(threads)
import numpy as np
from l1pca.kernels.fitting import fit_many
rows, cols, K, b, seconds = (float(v) if i == 4 else int(v) for i, v in enumerate(sys.argv[2:7]))
rng = np.random.default_rng(0)
Xs = [rng.standard_normal((rows, cols)) for _ in range(b)]
fit = lambda: fit_many(Xs, K, seeds=list(range(b)), backend="jax")
fit(); fit()  # compile, then one warm call
n, w0, c0 = 0, time.perf_counter(), time.process_time()
while n < 2 or time.perf_counter() - w0 < seconds:
    fit(); n += 1
print(json.dumps({"wall_ms": 1e3 * (time.perf_counter() - w0) / n,
                  "cpu_ms": 1e3 * (time.process_time() - c0) / n, "calls": n}))
"""


def run_one(pool, case, seconds):
    out = subprocess.run([sys.executable, "-c", _WORKER, pool, *map(str, case), str(seconds)],
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0, help="timed loop per measurement")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "solver_threads"))
    args = p.parse_args(argv)
    pools = ["1", "default"]
    rows = []
    for case in CASES:
        got = {pool: [] for pool in pools}
        for _ in range(args.rounds):
            for pool in pools:
                got[pool].append(run_one(pool, case, args.seconds))
        med = {pool: {k: float(np.median([r[k] for r in got[pool]])) for k in ("wall_ms", "cpu_ms")}
               for pool in pools}
        rows.append({"case": case, "runs": got, "median": med})
        r, c, K, b = case
        print(f"{r}x{c} K={K} b={b}: one thread {med['1']['wall_ms']:.2f} ms wall "
              f"{med['1']['cpu_ms']:.2f} ms CPU; XLA default {med['default']['wall_ms']:.2f} / "
              f"{med['default']['cpu_ms']:.2f}", flush=True)
    info = machine()
    result = {"machine": info, "rounds": args.rounds, "seconds": args.seconds, "cases": rows}
    lines = [
        "# JAX's CPU pool and batched L1-BF: `bench/solver_threads.py`", "",
        machine_sentence(info) +
        f"`fit_many(..., backend=\"jax\")` of random Gaussian matrices in a loop for {args.seconds:g} s "
        f"after the compile, in a fresh interpreter per measurement; the two pool sizes alternate, "
        f"{args.rounds} rounds; medians. CPU is the process's, all threads.", "",
        "| matrices per call | one thread: ms / call | CPU ms / call | XLA default "
        f"({info['cpus']} threads): ms / call | CPU ms / call | time ratio | CPU ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r, c, K, b = row["case"]
        one, dflt = row["median"]["1"], row["median"]["default"]
        lines.append(f"| {b} x ({r} x {c}), K={K} | {one['wall_ms']:.2f} | {one['cpu_ms']:.2f} | "
                     f"{dflt['wall_ms']:.2f} | {dflt['cpu_ms']:.2f} | "
                     f"{one['wall_ms'] / dflt['wall_ms']:.2f} | {one['cpu_ms'] / dflt['cpu_ms']:.2f} |")
    lines += ["", "Ratios below 1: the one-thread pool is faster / cheaper. `l1pca serve "
              "--solver-threads` (default 1; 0 = XLA's default) sets the pool of the server and of "
              "each solver process (`l1pca.kernels.backends.init_jax_cpu`).", ""]
    write_results(args.out, result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
