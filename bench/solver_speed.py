"""Solver speed: the default L1-BF fit beside scikit-learn's ``PCA(K).fit``, and the GPU rows.

Sections (issue 29):

1. The grid: N in {1e3, 1e4, 1e5}, D in {30, 100}, K in {1, 2, 3, 5}, on structured data (a rank-5
   signal, unit noise, 5% gross outliers) and on a flat spectrum (variances 1.0 down to 0.81, 2%
   gross outliers). Per point, side by side in one process with one BLAS thread for both:
   ``PCA(K).fit(X)`` (median of its runs, taken before and after each fit), the default
   ``solve(X, K, random_state=0)``, one start (``n_init=1``), and all eight starts
   (``n_agree=0``: the default before the start rule; run only where the rule stopped early,
   elsewhere it is the same work and shows as "="). Ratios to PCA, flip steps, starts kept. Each
   fit runs in a forked child killed after ``--cap`` seconds (reported as a miss, "> cap").
2. Growth in N: the exponent p of time ~ N^p per (data, D, K), from the grid.
3. Quality at scale: the default's objective against the best of 32 starts (``n_init=32,
   n_agree=0``, the same first starts), on the cheaper grid points and two seeds; the target is
   within 1e-6 (relative) in at least 95% of cases.
4. Batched throughput (CPU): many 64 x 16, K=2 matrices, a loop of ``solve`` against
   ``solve_batch`` on NumPy and on JAX.
5. Targets: each of the issue's speed and quality targets, met or missed, with its numbers.

``--preset gpu`` runs only the GPU rows (JAX and CuPy, whichever are usable): 4096 fits of
64 x 16, K=2 in one ``solve_batch`` call, and a few large single fits beside ``PCA(K).fit`` on the
host; without a GPU it says so and exits 0 (``bench/gpu_check.sh`` calls it).

Prints tables and writes ``bench/results/solver_speed.md`` (the GPU preset:
``bench/results/solver_speed_gpu_<device>.md``).

    python bench/solver_speed.py [--quick] [--repeats 3] [--cap 60] [--sections 1,2,3,4,5]
    python bench/solver_speed.py --preset gpu
"""
from __future__ import annotations

import os

# One BLAS thread for both sides, set before NumPy loads its BLAS.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from l1pca.kernels import DEFAULT_N_INIT, backends, options, solve, solve_batch  # noqa: E402

# A --baseline checkout may predate the start rule.
DEFAULT_N_AGREE = getattr(options, "DEFAULT_N_AGREE", 0)

RESULTS = Path(__file__).parent / "results"
QUALITY_RTOL = 1e-6


def structured(N, D, seed=0):
    """A rank-5 signal (scales 6, 5, 4, 3, 2) in unit noise, plus 5% gross outliers (scale 20)."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((D, 5)))[0]
    X = (rng.standard_normal((N, 5)) * [6.0, 5.0, 4.0, 3.0, 2.0]) @ U.T + rng.standard_normal((N, D))
    m = N // 20
    X[:m] += 20.0 * rng.standard_normal((m, D))
    return X


def flat(N, D, seed=0):
    """Variances 1.0 down to 0.81 (no direction stands out) plus 2% gross outliers (scale 20): the
    L1 components are set by the noise, and starts end at different local optima."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D)) * np.sqrt(np.linspace(1.0, 0.81, D))
    X[: N // 50] += 20.0 * rng.standard_normal((N // 50, D))
    return X


KINDS = {"structured": structured, "flat": flat}


def pca_time(X, K, runs):
    times = []
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        PCA(K).fit(X)
        times.append(time.perf_counter() - t0)
    return times


class Fits:
    """Timed ``solve`` calls in a worker process (spawned, so JAX threads in this one do not matter)
    that is killed when a fit runs past its cap, and started again for the next one. The worker
    builds the data itself from (kind, N, D, seed) and keeps the last matrix."""

    def __init__(self, path=None):
        self.ctx = mp.get_context("spawn")
        self.proc, self.path = None, path

    def _start(self):
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.path), daemon=True)
        self.proc.start()

    def run(self, kind, N, D, K, seed, cap, **options):
        """``(seconds, info)`` of ``solve(X, K, random_state=0, **options)``, or ``(None, None)``
        past ``cap`` seconds."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send((kind, N, D, K, seed, options))
        if not self.conn.poll(cap + 10.0):  # + the time to build the matrix
            self.close()
            return None, None
        dt, info = self.conn.recv()
        return (dt, info) if dt <= cap else (None, None)

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
            self.proc = None


def _worker(conn, path=None):
    import importlib

    fit = solve
    if path:
        # The child was prepared with this module, so it holds the working tree's l1pca: drop it
        # and import the baseline's.
        import sys

        for name in [m for m in sys.modules if m == "l1pca" or m.startswith("l1pca.")]:
            del sys.modules[name]
        sys.path.insert(0, path)
        fit = importlib.import_module("l1pca.kernels").solve
        assert fit.__module__.startswith("l1pca.kernels")
        print(f"baseline worker: {importlib.import_module('l1pca.kernels.solve').__file__}", flush=True)
    # The compiled loop (where this checkout has one) loaded before the clock starts, as in a
    # process that has fitted before; then first-call costs (imports, BLAS set-up).
    warm = getattr(importlib.import_module("l1pca.kernels.backends"), "warm_compiled_loop", None)
    if warm is not None:
        warm(background=False)
    if path and warm is not None:
        # The warm-up's child imports the installed l1pca, and Numba's cache is keyed by the
        # source path: compile the baseline's own loop here, before any clock starts.
        importlib.import_module("l1pca.kernels.bitflip_numba").warm_up()
    fit(structured(200, 10), 2, random_state=0)
    last = None
    while True:
        kind, N, D, K, seed, options = conn.recv()
        if last is None or last[0] != (kind, N, D, seed):
            last = ((kind, N, D, seed), KINDS[kind](N, D, seed))
        X = last[1]
        gc.collect()
        t0 = time.perf_counter()
        res = fit(X, K, random_state=0, **options)
        dt = time.perf_counter() - t0
        conn.send((dt, dict(n_flips=res.n_flips, objective=res.objective,
                            n_starts=getattr(res, "n_starts", options.get("n_init", DEFAULT_N_INIT)))))


def fmt_s(t):
    return "—" if t is None else (f"{t:.3f}" if t < 10 else f"{t:.1f}")


def fmt_ratio(t, base, cap=None):
    if t is None:
        return f"> {cap / base:.0f}x" if cap else "—"
    return f"{t / base:.1f}x" if t / base < 100 else f"{t / base:.0f}x"


def grid(fits, before, Ns, Ds, Ks, kinds, repeats, cap, out):
    """Section 1; returns the rows for sections 2, 3 and 5."""
    out.append("## 1. The default fit beside `PCA(K).fit`\n")
    out.append(f"Ratios: L1-BF time / `PCA(K).fit` time, same process, one BLAS thread. `default`: "
               f"`solve(X, K, random_state=0)` (n_init={DEFAULT_N_INIT}, n_agree={DEFAULT_N_AGREE}); "
               "`1 start`: n_init=1; `before`: the default fit of the `--baseline` checkout. "
               "`steps`: flip steps of the default over its "
               f"starts (of one start). A fit past {cap:.0f} s is stopped (`> cap`).\n")
    out.append("| data | N | D | K | PCA (ms) | default (s) | default / PCA | starts | steps | "
               "1 start / PCA | steps (1 start) | before / PCA |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for kind in kinds:
        for N in Ns:
            for D in Ds:
                for K in Ks:
                    X = KINDS[kind](N, D)
                    pca = pca_time(X, K, repeats)
                    one, one_info = fits.run(kind, N, D, K, 0, cap, n_init=1)
                    pca += pca_time(X, K, repeats)
                    if one is not None and one * DEFAULT_N_INIT > 4 * cap:
                        dflt, info = None, None  # eight such starts cannot finish: do not wait
                    else:
                        dflt, info = fits.run(kind, N, D, K, 0, cap)
                    pca += pca_time(X, K, repeats)
                    # Every point: the baseline's starts differ (restarts from the best so far
                    # replaced independent random starts, l1pca.kernels.starts).
                    old = None
                    if before is not None:
                        old, _ = before.run(kind, N, D, K, 0, cap)
                        pca += pca_time(X, K, repeats)
                    p = float(np.median(pca))
                    row = dict(kind=kind, N=N, D=D, K=K, pca=p, default=dflt, one=one, before=old,
                               info=info, one_info=one_info)
                    rows.append(row)
                    all8 = "—" if before is None else fmt_ratio(old, p, cap)
                    line = (f"| {kind} | {N:.0e} | {D} | {K} | {1e3 * p:.1f} | {fmt_s(dflt)} | "
                            f"{fmt_ratio(dflt, p, cap)} | {info['n_starts'] if info else '—'} | "
                            f"{info['n_flips'] if info else '—'} | {fmt_ratio(one, p, cap)} | "
                            f"{one_info['n_flips'] if one_info else '—'} | {all8} |")
                    out.append(line)
                    print(line, flush=True)
                    del X
    out.append("")
    return rows


def growth(rows, out):
    """Section 2: time ~ N^p fitted per (data, D, K) over the grid's N."""
    out.append("## 2. Growth in N\n")
    out.append("Exponent p of time ~ N^p over N in the grid (least squares on logs; points past the "
               "cap left out), for the default fit and for `PCA(K).fit`.\n")
    out.append("| data | D | K | p default | p 1 start | p PCA |")
    out.append("|---|---|---|---|---|---|")
    keys = sorted({(r["kind"], r["D"], r["K"]) for r in rows},
                  key=lambda k: (k[0] != "structured", k[1], k[2]))
    for kind, D, K in keys:
        sel = [r for r in rows if (r["kind"], r["D"], r["K"]) == (kind, D, K)]

        def fit(field, sel=sel):
            pts = [(r["N"], r[field]) for r in sel if r[field] is not None]
            if len(pts) < 2:
                return "—"
            n, t = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            return f"{np.polyfit(n, t, 1)[0]:.2f}"
        out.append(f"| {kind} | {D} | {K} | {fit('default')} | {fit('one')} | {fit('pca')} |")
    out.append("")
    print("\n".join(out[-len(keys) - 1:]), flush=True)


def quality(fits, cases, cap, out, before=None):
    """Section 3: the default's objective against the best of 32 starts."""
    out.append("## 3. Quality at scale: the default against the best of 32 starts\n")
    out.append(f"`solve(X, K, random_state=0)` against `solve(X, K, random_state=0, n_init=32)` (its "
               f"first 8 starts are the default's). A case counts when the default is within "
               f"{QUALITY_RTOL:g} (relative) of the best of 32 (or of a better answer another column "
               "found). Also shown: the start rule `n_agree=2` "
               "(starts stop once two end at the best so far; `kept`: how many ran), one start, and "
               "the `--baseline` checkout's default (`before`, its own starts).\n")
    out.append("| data | N | D | K | seed | default gap | n_agree=2 gap | kept | 1 start gap | before gap |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for kind, N, D, K, seed in cases:
        _, best = fits.run(kind, N, D, K, seed, cap, n_init=32)
        if best is None:
            out.append(f"| {kind} | {N:.0e} | {D} | {K} | {seed} | 32 starts past the cap | | | |")
            continue
        _, d = fits.run(kind, N, D, K, seed, cap)
        _, e = fits.run(kind, N, D, K, seed, cap, n_agree=2)
        _, o = fits.run(kind, N, D, K, seed, cap, n_init=1)
        if d is None or e is None or o is None:
            out.append(f"| {kind} | {N:.0e} | {D} | {K} | {seed} | a fit past the cap | | | |")
            continue
        b = before.run(kind, N, D, K, seed, cap)[1] if before is not None else None
        ref = max(best["objective"], d["objective"], e["objective"], b["objective"] if b else 0.0)

        def gap(r, ref=ref):
            return (ref - r["objective"]) / ref
        results.append(dict(kind=kind, N=N, D=D, K=K, seed=seed, gap=gap(d), gap8=gap(e), gap1=gap(o),
                            gap_before=gap(b) if b else None))
        out.append(f"| {kind} | {N:.0e} | {D} | {K} | {seed} | {gap(d):.1e} | {gap(e):.1e} | "
                   f"{e['n_starts']} | {gap(o):.1e} | {f'{gap(b):.1e}' if b else '—'} |")
        print(out[-1], flush=True)
    if results:
        def share(field, sel):
            have = [r for r in sel if r[field] is not None]
            if not have:
                return "—"
            mean = np.mean([r[field] for r in have])
            return f"{sum(r[field] <= QUALITY_RTOL for r in have)}/{len(have)} (mean gap {mean:.1e})"
        out.append("")
        out.append("| cases | default within 1e-6 | n_agree=2 within 1e-6 | 1 start within 1e-6 | "
                   "before within 1e-6 |")
        out.append("|---|---|---|---|---|")
        for name, sel in (("all", results),
                          *((k, [r for r in results if r["kind"] == k]) for k in KINDS),
                          ("K = 1", [r for r in results if r["K"] == 1]),
                          ("K >= 2", [r for r in results if r["K"] >= 2])):
            if sel:
                out.append(f"| {name} | {share('gap', sel)} | {share('gap8', sel)} | {share('gap1', sel)} "
                           f"| {share('gap_before', sel)} |")
    out.append("")
    return results


def batched(count, shape, K, repeats, out):
    """Section 4: many small fits, a loop of solve against solve_batch on each CPU path."""
    rng = np.random.default_rng(1)
    Xs = [rng.standard_normal(shape) + rng.standard_t(2, shape) for _ in range(count)]
    out.append(f"## 4. Batched throughput: {count} matrices {shape[0]} x {shape[1]}, K={K}, defaults\n")
    out.append("| path | total (s) | matrices / s | speed-up over the loop |")
    out.append("|---|---|---|---|")
    loop = _timed(lambda: [solve(X, K, random_state=0, backend="numpy") for X in Xs], 1)
    rows = [("Python loop of solve (numpy)", loop),
            ("solve_batch numpy", _timed(lambda: solve_batch(Xs, K, random_state=0, backend="numpy"), 1))]
    solve_batch(Xs[:64], K, random_state=0, backend="jax")  # compile this bucket
    rows.append(("solve_batch jax (cpu)",
                 _timed(lambda: solve_batch(Xs, K, random_state=0, backend="jax"), repeats)))
    for name, t in rows:
        out.append(f"| {name} | {t:.3f} | {count / t:.0f} | {loop / t:.2f}x |")
    out.append("")
    print("\n".join(out[-len(rows) - 1:]), flush=True)


def _timed(fn, repeats):
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def targets(rows, qual, out):
    """Section 5: the issue's targets, met or missed."""
    out.append("## 5. Targets\n")
    done = list(rows)

    def worst(sel):
        vals = [(r["default"] / r["pca"] if r["default"] is not None else float("inf"), r) for r in sel]
        return max(vals, key=lambda v: v[0]) if vals else (float("nan"), None)

    def where(r):
        return f"{r['kind']} {r['N']:.0e} x {r['D']}, K={r['K']}" if r else "—"

    lines = []
    for name, sel, limit in (
            ("structured, K=1: default within 5x", [r for r in done if r["kind"] == "structured"
                                                     and r["K"] == 1], 5),
            ("structured, every K: default within 10x", [r for r in done if r["kind"] == "structured"], 10),
            ("flat spectrum: default within 30x", [r for r in done if r["kind"] == "flat"], 30)):
        if not sel:
            continue
        ok = [r for r in sel if r["default"] is not None and r["default"] / r["pca"] <= limit]
        w, wr = worst(sel)
        lines.append(f"- {name}: {len(ok)}/{len(sel)} points met; worst {where(wr)} at "
                     f"{'past the cap' if w == float('inf') else f'{w:.0f}x'}.")
    if qual:
        q = sum(r["gap"] <= QUALITY_RTOL for r in qual)
        q8 = sum(r["gap8"] <= QUALITY_RTOL for r in qual)
        lines.append(f"- Default within {QUALITY_RTOL:g} of the best of 32 starts in >= 95% of cases: "
                     f"{q}/{len(qual)} ({100 * q / len(qual):.0f}%; with n_agree=2: {q8}/{len(qual)}).")
    lines.append("- The small-problem grid (default >= 99% exact hits, n_init=1 >= 90%): "
                 "`bench/results/optimality.md`.")
    out.extend(lines)
    out.append("")
    print("\n".join(lines), flush=True)


def quality_cases(Ns, Ds, Ks, seeds):
    return [(kind, N, D, K, s) for kind in KINDS for N in Ns for D in Ds for K in Ks for s in seeds]


def gpu_rows(out, count=4096, repeats=3):
    """The GPU preset: batched small fits and a few large fits, per usable GPU backend."""
    gpus = backends.gpu_backends()
    if not gpus:
        print("solver_speed --preset gpu: no usable GPU backend (JAX on a GPU or CuPy with CUDA) on "
              f"this machine ({backends.device_description()}); skipping the GPU rows.")
        return False
    out.append(f"## GPU: {backends.device_description()}\n")
    out.append(f"Backends: {', '.join(gpus)}. Defaults (n_init={DEFAULT_N_INIT}, "
               f"n_agree={DEFAULT_N_AGREE}); medians of {repeats} runs after one warm-up call.\n")
    rng = np.random.default_rng(1)
    Xs = [rng.standard_normal((64, 16)) + rng.standard_t(2, (64, 16)) for _ in range(count)]
    out.append(f"### Batched: matrices 64 x 16, K=2, one `solve_batch` call ({count} on JAX; CuPy "
               "searches one matrix at a time, so it gets a sixteenth of them)\n")
    out.append("| backend | matrices | total (s) | matrices / s |")
    out.append("|---|---|---|---|")
    for name in gpus:
        part = Xs if name == "jax" else Xs[: max(1, count // 16)]
        solve_batch(part[:64], 2, random_state=0, backend=name)
        t = _timed(lambda name=name, part=part: solve_batch(part, 2, random_state=0, backend=name),
                   repeats)
        out.append(f"| {name} | {len(part)} | {t:.3f} | {len(part) / t:.0f} |")
        print(out[-1], flush=True)
    out.append("\n### Large single fits against `PCA(K).fit` on the host (one BLAS thread)\n")
    out.append("| data | N | D | K | backend | PCA (ms) | L1-BF (s) | ratio | steps | starts |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for kind, N, D, K in (("structured", 100_000, 100, 1), ("structured", 100_000, 30, 2),
                          ("flat", 100_000, 30, 1)):
        X = KINDS[kind](N, D)
        p = float(np.median(pca_time(X, K, repeats)))
        for name in gpus:
            solve(X, K, random_state=0, backend=name)  # compile / warm up
            t0 = time.perf_counter()
            res = solve(X, K, random_state=0, backend=name)
            t = time.perf_counter() - t0
            out.append(f"| {kind} | {N:.0e} | {D} | {K} | {name} | {1e3 * p:.1f} | {t:.3f} | "
                       f"{t / p:.1f}x | {res.n_flips} | {res.n_starts} |")
            print(out[-1], flush=True)
        del X
    out.append("")
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    ap.add_argument("--preset", choices=["full", "session", "gpu"], default="full",
                    help="gpu: only the GPU rows (JAX, CuPy), skipped with a message without a GPU; "
                         "session: the same as full (the name make bench uses)")
    ap.add_argument("--repeats", type=int, default=3, help="PCA runs per measurement round")
    ap.add_argument("--cap", type=float, default=60.0, help="seconds before a fit is stopped")
    ap.add_argument("--sections", default="1,2,3,4,5",
                    help="comma-separated sections to run; a subset replaces them in --out")
    ap.add_argument("--out", default=None, help="report path (default under bench/results)")
    ap.add_argument("--baseline", default=None,
                    help="a folder holding an earlier checkout as an importable l1pca package "
                         "(l1pca/__init__.py, l1pca/kernels/...): its default fit is timed beside")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    head = ["# Solver speed\n",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, GPU backends: "
            f"{', '.join(backends.gpu_backends()) or 'none'} ({backends.device_description()}); "
            f"numpy {np.__version__}; BLAS threads: OMP={os.environ['OMP_NUM_THREADS']}, "
            f"OPENBLAS={os.environ['OPENBLAS_NUM_THREADS']}, MKL={os.environ['MKL_NUM_THREADS']}.\n"]
    out = list(head)
    if args.preset == "gpu":
        if not gpu_rows(out, count=256 if args.quick else 4096, repeats=1 if args.quick else 2):
            return 0
        slug = re.sub(r"[^a-z0-9]+", "_", backends.device_description().lower()).strip("_")
        path = Path(args.out) if args.out else RESULTS / f"solver_speed_gpu_{slug}.md"
        out.append(f"Total run time {time.perf_counter() - t0:.0f} s.")
        path.write_text("\n".join(out) + "\n")
        print(f"wrote {path}")
        return 0
    sections = {int(x) for x in args.sections.split(",")}
    if args.quick:
        Ns, Ds, Ks, qcases, count = [500, 2000], [10], [1, 2], quality_cases([500], [10], [1, 2], [0]), 32
    else:
        Ns, Ds, Ks, count = [1000, 10_000, 100_000], [30, 100], [1, 2, 3, 5], 1024
        qcases = (quality_cases([1000], [30, 100], [1, 2, 3, 5], [0, 1])
                  + quality_cases([10_000], [30], [1, 2], [0, 1])
                  + quality_cases([10_000], [100], [1], [0, 1]))
    rows, qual = [], []
    fits = Fits()
    before = Fits(str(Path(args.baseline).resolve())) if args.baseline else None
    try:
        if 1 in sections:
            rows = grid(fits, before, Ns, Ds, Ks, list(KINDS), args.repeats, args.cap, out)
        if 2 in sections and rows:
            growth(rows, out)
        if 3 in sections:
            qual = quality(fits, qcases, args.cap, out, before)
    finally:
        fits.close()
        if before is not None:
            before.close()
    if 4 in sections:
        batched(count, (64, 16), 2, 1 if args.quick else args.repeats, out)
    if 5 in sections:
        targets(rows, qual, out)
    out.append(f"Total run time {time.perf_counter() - t0:.0f} s.")
    report = "\n".join(out) + "\n"
    path = Path(args.out) if args.out else (None if args.quick else RESULTS / "solver_speed.md")
    if path is not None:
        if sections != {1, 2, 3, 4, 5} and path.exists():
            report = _replace_sections(path.read_text(), report, sections)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report)
        print(f"wrote {path}")
    return 0


def _replace_sections(old, new, sections):
    """The report ``old`` with the sections in ``sections`` taken from ``new`` (the others kept)."""
    for k in sorted(sections):
        pat = re.compile(rf"^## {k}\. .*?(?=^## |^Total run time|\Z)", re.M | re.S)
        fresh = pat.search(new)
        if fresh is None:
            continue
        if pat.search(old) is None:
            old = old.replace("Total run time", fresh.group(0) + "Total run time", 1)
        else:
            old = pat.sub(lambda _, f=fresh: f.group(0), old, count=1)
    return old


if __name__ == "__main__":
    raise SystemExit(main())
