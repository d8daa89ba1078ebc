"""Exact-hit rate and objective ratio to the exact optimum, per method, on small problems.

Grid: N in 8..16, D in 2..8, K in 1..3, Gaussian and outlier-contaminated data, ``--repeats``
matrices per cell; cells the exact solver refuses (its candidate limit) are listed as skipped.
A hit is an objective within 1e-9 (relative) of the exact optimum.

Prints a table and writes ``bench/results/optimality.md``. Targets from the issue: default
``bitflip`` >= 99% hits, ``bitflip`` with n_init=1 >= 90%.

    python bench/optimality.py [--repeats 20] [--quick]
"""
from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from l1pca.kernels import DEFAULT_N_INIT, solve

METHODS = [
    ("bitflip (n_init=1)", dict(method="bitflip", n_init=1)),
    (f"bitflip (default, n_init={DEFAULT_N_INIT})", dict(method="bitflip")),
    # The opt-in start rule (l1pca.kernels.starts): starts stop once 2 (3) end at the best so far.
    ("bitflip, n_agree=2", dict(method="bitflip", n_agree=2)),
    ("bitflip, n_agree=3", dict(method="bitflip", n_agree=3)),
    ("bitflip, no pair moves (n_init=1)", dict(method="bitflip", n_init=1, pair_moves=False)),
    ("paper's L1-BF: single flips only (n_init=1)",
     dict(method="bitflip", n_init=1, warm_start=False, pair_moves=False)),
    ("fixed-point (Kwak)", dict(method="fixed-point")),
    ("non-greedy (Nie)", dict(method="non-greedy")),
    ("l2 (SVD)", dict(method="l2")),
]
HIT_RTOL = 1e-9


def make_data(kind, N, D, rng):
    X = rng.standard_normal((N, D))
    if kind == "outliers":
        # A nominal low-rank structure plus 20% gross outliers (heavy scale, random directions).
        basis = rng.standard_normal((2, D))
        X = rng.standard_normal((N, 2)) @ basis + 0.3 * rng.standard_normal((N, D))
        n_out = max(1, N // 5)
        X[:n_out] = 10.0 * rng.standard_normal((n_out, D))
    elif kind == "heavy-tailed":
        X = rng.standard_t(df=1.5, size=(N, D))
    return X


def run(repeats, Ns, Ds, Ks, kinds, seed=0):
    stats = defaultdict(lambda: {"hits": 0, "n": 0, "ratio": [], "time": []})
    skipped = []
    rng = np.random.default_rng(seed)
    for K in Ks:
        for N in Ns:
            for D in Ds:
                if K > min(N, D):
                    continue
                for kind in kinds:
                    for r in range(repeats):
                        X = make_data(kind, N, D, rng)
                        try:
                            opt = solve(X, K, method="exact").objective
                        except ValueError:
                            skipped.append((N, D, K, kind))
                            break
                        for name, kw in METHODS:
                            t0 = time.perf_counter()
                            res = solve(X, K, random_state=r, backend="numpy", **kw) \
                                if kw["method"] == "bitflip" else solve(X, K, **kw)
                            dt = time.perf_counter() - t0
                            for key in ((name, K), (name, "all")):
                                s = stats[key]
                                s["n"] += 1
                                s["hits"] += res.objective >= opt * (1 - HIT_RTOL)
                                s["ratio"].append(res.objective / opt)
                                s["time"].append(dt)
    return stats, sorted(set(skipped))


def table(stats, Ks):
    lines = ["| method | K | problems | exact hits | mean ratio to optimum | worst ratio "
             "| median time (ms) |",
             "|---|---|---|---|---|---|---|"]
    for name, _ in METHODS:
        for K in list(Ks) + ["all"]:
            s = stats.get((name, K))
            if not s or not s["n"]:
                continue
            lines.append(
                f"| {name} | {K} | {s['n']} | {100 * s['hits'] / s['n']:.1f}% | "
                f"{np.mean(s['ratio']):.6f} | {np.min(s['ratio']):.4f} | {1e3 * np.median(s['time']):.2f} |"
            )
    return "\n".join(lines)


def targets(stats):
    """The issue's targets against the measured rates, in words."""
    def rate(name, K="all"):
        s = stats.get((name, K))
        return 100 * s["hits"] / s["n"] if s and s["n"] else float("nan")

    default = f"bitflip (default, n_init={DEFAULT_N_INIT})"
    single = "bitflip (n_init=1)"
    d, o = rate(default), rate(single)
    per_k = ", ".join(f"K={K}: {rate(single, K):.1f}%" for K in (1, 2, 3) if (single, K) in stats)
    return (f"Targets: default `bitflip` >= 99% exact hits: {d:.1f}% ({'met' if d >= 99 else 'NOT met'}). "
            f"`n_init=1` >= 90%: {o:.1f}% overall ({'met' if o >= 90 else 'NOT met'}; {per_k}). "
            "A single start ends at a single-flip local optimum that is also two-flip optimal among "
            "its 16 most promising bits (pair moves); for K > 1 the landscape has more local optima, "
            "which is why the default uses 8 starts. The start rule `n_agree` (stop once that many "
            "starts end at the best so far) loses hits here, which is why it is off by default "
            "(docs/decisions/0012-default-starts.md).")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20, help="matrices per (N, D, K, kind) cell")
    ap.add_argument("--quick", action="store_true", help="tiny grid, for smoke tests")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "optimality.md"))
    args = ap.parse_args(argv)
    if args.quick:
        Ns, Ds, Ks, kinds, repeats = [8], [3], [1, 2], ["gaussian"], 2
    else:
        Ns, Ds, Ks, kinds, repeats = [8, 10, 12, 14, 16], [2, 4, 6, 8], [1, 2, 3], \
            ["gaussian", "heavy-tailed", "outliers"], args.repeats
    t0 = time.perf_counter()
    stats, skipped = run(repeats, Ns, Ds, Ks, kinds)
    body = table(stats, Ks)
    skip_txt = ", ".join(f"N={n} D={d} K={k} ({kind})" for n, d, k, kind in skipped) or "none"
    report = f"""# Optimality of L1-BF against the exact optimum

Set-up: N in {Ns}, D in {Ds}, K in {Ks}, data {kinds} (outliers: rank-2 signal + noise, 20% of
rows replaced by gross outliers; heavy-tailed: Student t, 1.5 degrees of freedom), {repeats}
matrices per cell, seed 0; the optimum from `method="exact"`. A hit: objective >= optimum * (1 - {HIT_RTOL}).
Times are per solve on one core of this machine ({platform.processor() or platform.machine()},
numpy {np.__version__}), medians; run time {time.perf_counter() - t0:.0f} s.

Cells skipped because the exact solver refuses them (above its candidate limit): {skip_txt}.

{body}

{targets(stats)}
"""
    print(report)
    if not args.quick or args.out != ap.get_default("out"):
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
