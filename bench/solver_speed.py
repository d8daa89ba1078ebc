"""Solver speed: L1-BF fit time beside scikit-learn's PCA, and batched throughput per backend.

0. The issue's targets at N=1e5, D=100, K=1 on two kinds of data (a planted subspace, and a flat
   spectrum where the L1 component is far from the L2 one), runs interleaved.
1. Single fits: N from 1e3 to 1e6 (as memory allows), D in {10, 100, 1000}, K in {1, 5}; L1-BF
   (n_init=1 and the default) on NumPy and JAX, against ``PCA(svd_solver="full")`` and ``PCA()``
   (which uses the covariance eigendecomposition for tall matrices). Medians of ``--repeats`` runs
   measured side by side; JAX after one warm-up call (compile time reported separately).
2. Growth in N at D=10, K=1: fitted exponent of time ~ N^p for L1-BF and the SVD.
3. Batched throughput: 4096 matrices of 64 x 16, K=2: a Python loop of ``solve`` against
   ``solve_batch`` on NumPy and on JAX (GPU backends too where present).
4. Where ``backend="auto"`` should switch to JAX on the CPU: time per matrix against batch size.

Prints tables and writes ``bench/results/solver_speed.md``. ``--sections 3,4`` runs only those
sections and replaces them in the existing report (each marked with the date it was re-run), for a
change that touches only the batched path.

    python bench/solver_speed.py [--quick] [--repeats 3] [--sections 3,4]
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import re
import time
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from l1pca.kernels import DEFAULT_N_INIT, backends, solve, solve_batch


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def data(N, D, seed=0):
    rng = np.random.default_rng(seed)
    # Decaying spectrum plus 2% gross outliers. The top variances are nearly equal (3.0, 2.97, ...),
    # so the L1 component is set by the noise and lies far from the L2 one (about 1 rad at N = 1e5,
    # D = 100): a hard case for the search, which walks that far.
    X = rng.standard_normal((N, D)) * np.linspace(3.0, 0.5, D)
    X[: N // 50] += 20.0 * rng.standard_normal((N // 50, D))
    return X


def planted(N, D, seed=0):
    """A rank-5 signal (scales 6, 5, 4, 3, 2) in unit noise, plus 2% gross outliers: a subspace to
    find, the workload L1-PCA is for."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((D, 5)))[0]
    X = (rng.standard_normal((N, 5)) * [6.0, 5.0, 4.0, 3.0, 2.0]) @ U.T + rng.standard_normal((N, D))
    X[: N // 50] += 20.0 * rng.standard_normal((N // 50, D))
    return X


def targets(N, D, repeats, out):
    """The issue's targets, on both kinds of data, runs interleaved (PCA full, PCA(), L1-BF)."""
    out.append(f"## 0. The targets: N={N:.0e}, D={D}, K=1, L1-BF numpy n_init=1\n")
    out.append(f"Medians of {repeats} interleaved runs. Targets: within 2x of `PCA(svd_solver=\"full\")`"
               " and within 3x of `PCA()`. `angle`: between the L2 and the L1 component (how far the "
               "search walks from its L2 start).\n")
    out.append("| data | PCA full (s) | PCA default (s) | L1-BF (s) | ratio to full | ratio to default | "
               "steps | angle (rad) |")
    out.append("|---|---|---|---|---|---|---|---|")
    for name, make in (("planted rank 5 + 2% outliers", planted), ("flat spectrum + 2% outliers", data)):
        X = make(N, D)
        runs = {"full": [], "default": [], "l1": []}
        fns = {"full": lambda X=X: PCA(1, svd_solver="full").fit(X), "default": lambda X=X: PCA(1).fit(X),
               "l1": lambda X=X: solve(X, 1, n_init=1, backend="numpy")}
        res = None
        for _ in range(repeats):
            for key, fn in fns.items():
                t, got = timed(fn, 1)
                runs[key].append(t)
                if key == "l1":
                    res = got
        full, dflt, one = (float(np.median(runs[k])) for k in ("full", "default", "l1"))
        l2 = PCA(1, svd_solver="full").fit(X).components_[0]
        angle = float(np.arccos(min(1.0, abs(l2 @ res.components[:, 0]))))
        out.append(f"| {name} | {full:.3f} | {dflt:.3f} | {one:.3f} | {one / full:.2f} | {one / dflt:.2f} | "
                   f"{res.n_flips} | {angle:.2f} |")
    out.append("")
    print("\n".join(out[-5:]), flush=True)


def single_fits(grid, repeats, out):
    out.append("## 1. Single fits against scikit-learn's PCA\n")
    out.append("| N | D | K | PCA full (s) | PCA default (s) | L1-BF numpy n_init=1 (s) | ratio to full | "
               "ratio to default | L1-BF numpy default n_init (s) | L1-BF jax n_init=1 (s) | "
               "jax compile (s) | flips |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for N, D, K in grid:
        X = data(N, D)
        full = (timed(lambda X=X, K=K: PCA(K, svd_solver="full").fit(X), repeats)[0]
                if N * D <= 2e7 else float("nan"))
        dflt = timed(lambda X=X, K=K: PCA(K).fit(X), repeats)[0]
        one, res = timed(lambda X=X, K=K: solve(X, K, n_init=1, backend="numpy"), repeats)
        many = timed(lambda X=X, K=K: solve(X, K, backend="numpy"), 1)[0] if N * D <= 1e6 else float("nan")
        t0 = time.perf_counter()
        solve(X, K, n_init=1, backend="jax")
        first = time.perf_counter() - t0
        jx = timed(lambda X=X, K=K: solve(X, K, n_init=1, backend="jax"), repeats)[0]
        fmt = lambda v: "—" if np.isnan(v) else f"{v:.3f}"  # noqa: E731
        row = (f"| {N:.0e} | {D} | {K} | {fmt(full)} | {fmt(dflt)} | {one:.3f} | "
               f"{fmt(one / full) if not np.isnan(full) else '—'} | {one / dflt:.2f} | {fmt(many)} | "
               f"{jx:.3f} | {max(first - jx, 0):.2f} | {res.n_flips} |")
        out.append(row)
        print(row, flush=True)
        del X
    out.append("")


def growth(Ns, repeats, out):
    out.append("## 2. Growth in N (D=10, K=1, n_init=1)\n")
    out.append("| N | L1-BF numpy (s) | PCA full (s) |")
    out.append("|---|---|---|")
    t_bf, t_svd = [], []
    for N in Ns:
        X = data(N, 10)
        a = timed(lambda X=X: solve(X, 1, n_init=1, backend="numpy"), repeats)[0]
        b = timed(lambda X=X: PCA(1, svd_solver="full").fit(X), repeats)[0]
        t_bf.append(a)
        t_svd.append(b)
        out.append(f"| {N:.0e} | {a:.4f} | {b:.4f} |")
    p_bf = np.polyfit(np.log(Ns), np.log(t_bf), 1)[0]
    p_svd = np.polyfit(np.log(Ns), np.log(t_svd), 1)[0]
    out.append(f"\nFitted exponent p in time ~ N^p: L1-BF {p_bf:.2f}, SVD {p_svd:.2f} "
               "(1 = linear; quadratic growth would show p near 2).\n")
    print(out[-1], flush=True)


def batched(count, shape, K, repeats, out):
    rng = np.random.default_rng(1)
    Xs = [rng.standard_normal(shape) + rng.standard_t(2, shape) for _ in range(count)]
    out.append(f"## 3. Batched throughput: {count} matrices {shape[0]} x {shape[1]}, K={K}, "
               f"n_init={DEFAULT_N_INIT}\n")
    out.append("| path | total (s) | matrices / s | speed-up over the loop |")
    out.append("|---|---|---|---|")
    loop = timed(lambda: [solve(X, K, random_state=0, backend="numpy") for X in Xs], 1)[0]
    rows = [("Python loop of solve (numpy)", loop)]
    rows.append(("solve_batch numpy",
                 timed(lambda: solve_batch(Xs, K, random_state=0, backend="numpy"), 1)[0]))
    solve_batch(Xs[:64], K, random_state=0, backend="jax")  # compile this bucket
    rows.append(("solve_batch jax (cpu)" if not backends.jax_gpu_usable() else "solve_batch jax (gpu)",
                 timed(lambda: solve_batch(Xs, K, random_state=0, backend="jax"), repeats)[0]))
    if backends.cupy_usable():
        rows.append(("solve_batch cupy",
                     timed(lambda: solve_batch(Xs, K, random_state=0, backend="cupy"), 1)[0]))
    for name, t in rows:
        out.append(f"| {name} | {t:.3f} | {count / t:.0f} | {loop / t:.2f}x |")
    out.append("")
    print("\n".join(out[-len(rows) - 1:]), flush=True)


def crossover(shape, K, sizes, repeats, out):
    rng = np.random.default_rng(2)
    out.append(f"## 4. NumPy against JAX on the CPU by batch size ({shape[0]} x {shape[1]}, K={K})\n")
    out.append("| batch | numpy ms / matrix | jax ms / matrix | faster |")
    out.append("|---|---|---|---|")
    for b in sizes:
        Xs = [rng.standard_normal(shape) for _ in range(b)]
        solve_batch(Xs, K, backend="jax")  # compile
        tn = timed(lambda Xs=Xs: solve_batch(Xs, K, backend="numpy"), repeats)[0] / b
        tj = timed(lambda Xs=Xs: solve_batch(Xs, K, backend="jax"), repeats)[0] / b
        out.append(f"| {b} | {1e3 * tn:.2f} | {1e3 * tj:.2f} | {'jax' if tj < tn else 'numpy'} |")
    out.append(f"\n`backend=\"auto\"` sends CPU batches of >= {backends.JAX_MIN_BATCH} matrices to JAX.\n")
    print("\n".join(out[-len(sizes) - 3:]), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--preset", choices=["full", "session"], default="full",
                    help="session: the cells committed in bench/results (fits the 2-core box in ~10 min)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "solver_speed.md"))
    ap.add_argument("--sections", default="0,1,2,3,4",
                    help="comma-separated sections to run; a subset replaces them in --out")
    args = ap.parse_args(argv)
    sections = {int(x) for x in args.sections.split(",")}
    t0 = time.perf_counter()
    out = ["# Solver speed\n",
           f"Machine: {platform.machine()}, {os.cpu_count()} cores, GPU backends: "
           f"{', '.join(backends.gpu_backends()) or 'none'} ({backends.device_description()}); "
           f"numpy {np.__version__}; medians of {args.repeats} runs unless stated.\n"]
    if args.quick:
        targets(2000, 10, 1, out)
        single_fits([(1000, 10, 1)], 1, out)
        growth([1000, 4000], 1, out)
        batched(32, (64, 16), 2, 1, out)
        crossover((64, 16), 2, [1, 16], 1, out)
    else:
        # N x D up to 1e7 entries (80 MB). K >= 3 evaluates K x K eigenvalue problems (the NumPy
        # path only for candidates its concavity bound keeps; JAX for all of them each step).
        grid = [(1000, 10, 1), (1000, 100, 1), (10_000, 10, 1), (10_000, 100, 1), (10_000, 100, 2),
                (10_000, 100, 3), (10_000, 100, 5), (100_000, 10, 1), (100_000, 100, 1),
                (100_000, 100, 2), (1_000_000, 10, 1)]
        if args.preset == "session":
            grid = [(1000, 10, 1), (10_000, 10, 1), (10_000, 100, 1), (10_000, 100, 2),
                    (10_000, 100, 3), (100_000, 10, 1), (100_000, 100, 1), (100_000, 100, 2),
                    (1_000_000, 10, 1)]
        runs = {
            0: lambda: targets(100_000, 100, max(5, args.repeats), out),
            1: lambda: single_fits(grid, args.repeats, out),
            2: lambda: growth([10_000, 100_000, 1_000_000] if args.preset == "session"
                              else [10_000, 30_000, 100_000, 300_000, 1_000_000], args.repeats, out),
            3: lambda: batched(1024 if args.preset == "session" else 4096, (64, 16), 2,
                               args.repeats, out),
            4: lambda: crossover((64, 16), 2, [1, 4, 16, 64] if args.preset == "session"
                                 else [1, 4, 8, 16, 32, 64, 256], args.repeats, out),
        }
        for k in sorted(sections):
            runs[k]()
        if sections != set(runs):
            return _replace_sections(Path(args.out), out[2:], sections, time.perf_counter() - t0,
                                     args.repeats)
    out.append(f"Total run time {time.perf_counter() - t0:.0f} s.")
    report = "\n".join(out) + "\n"
    if not args.quick or args.out != ap.get_default("out"):
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)


def _replace_sections(path, lines, sections, seconds, repeats):
    """Put the freshly run sections (``## k.`` headings in ``lines``) in place of the same sections of
    the report at ``path``; the others stay as they were."""
    report = path.read_text()
    fresh = "\n".join(lines)
    stamp = (f"\n(Re-run alone on {datetime.date.today()}, medians of {repeats}, {seconds:.0f} s, "
             f"with `--sections {','.join(map(str, sorted(sections)))}`; the other sections are from "
             "the full run.)\n")
    for k in sorted(sections):
        head = re.compile(rf"^## {k}\. .*?(?=^## |^Total run time|\Z)", re.M | re.S)
        new = head.search(fresh)
        if new is None or head.search(report) is None:
            raise SystemExit(f"section {k} missing from the new run or from {path}")
        report = head.sub(lambda _, new=new: new.group(0).rstrip("\n") + "\n" + stamp + "\n", report, count=1)
    path.write_text(report)
    print(f"replaced sections {sorted(sections)} in {path}")
    return 0


if __name__ == "__main__":
    main()
