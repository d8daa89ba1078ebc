"""Small fits side by side with scikit-learn's PCA: the targets of issue 29's compiled search loop.

Rows (one BLAS thread for everything; each row's functions timed in rounds, one call of each per
round in a rotating order, medians):

* a lone 64 x 16, K = 2 default fit, ``solve(X, 2, random_state=0)``, against ``PCA(2).fit(X)``
  (target: within 5x), with the NumPy reference (``backend="numpy"``) beside it;
* a batch of ``--batch`` such fits: the host path (``backend="auto"``: the compiled loop per fit)
  against today's batched JAX call (``solve_batch(..., backend="jax")`` after its compile), per fit
  (target: at least as fast), three rounds of each;
* 569 x 30, K = 3 (``load_breast_cancer``) default fit against ``PCA(3).fit`` (target: within
  10x), on the raw data (what ``solve`` gets) and median-centred (what ``L1PCA`` fits); and the
  estimator's whole default ``L1PCA(3).fit`` (centring and the robust detector) and its plain fit.

Prints a table and writes ``bench/results/small_fits.md`` (``--out``). ``--gpu`` adds the batch on
JAX and the lone fits on CuPy where a GPU is usable (``bench/gpu_check.sh``).

    OMP_NUM_THREADS=1 python bench/small_fits.py [--batch 4096] [--repeats 20]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from l1pca.kernels import backends, solve, solve_batch  # noqa: E402


def side_by_side(fns, repeats):
    """Median milliseconds of each function, timed in rounds: one call of each per round, in an
    order that rotates, so that load from other processes falls on all of them alike."""
    for fn in fns:
        fn()  # warm: caches, compiled code
    times = [[] for _ in fns]
    for r in range(repeats):
        order = list(range(len(fns)))
        order = order[r % len(fns):] + order[:r % len(fns)]
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return [1e3 * float(np.median(t)) for t in times]


def run(batch, repeats, gpu):
    rows = []
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 16))
    fns = [lambda: PCA(2).fit(X), lambda: solve(X, 2, random_state=0)]
    names = ["solve (auto: compiled loop)"]
    if gpu and backends.cupy_usable():
        fns.append(lambda: solve(X, 2, random_state=0, backend="cupy"))
        names.append("solve (backend='cupy')")
    pca, *ours = side_by_side(fns, repeats)
    for name, ms in zip(names, ours):
        rows.append(("lone 64 x 16, K=2", "PCA(2).fit", pca, name, ms, 5.0 if "auto" in name else None))
    pca, ref = side_by_side([lambda: PCA(2).fit(X), lambda: solve(X, 2, random_state=0, backend="numpy")],
                            max(3, repeats // 5))
    rows.append(("lone 64 x 16, K=2", "PCA(2).fit", pca, "solve (backend='numpy')", ref, None))

    Xs = [rng.standard_normal((64, 16)) for _ in range(batch)]
    where = "GPU" if backends.jax_gpu_usable() and not backends._force_cpu() else "CPU"
    # Rounds of the whole batch on each path (the JAX program compiles in the warm-up call).
    jax, host = side_by_side([lambda: solve_batch(Xs, 2, random_state=0, backend="jax"),
                              lambda: solve_batch(Xs, 2, random_state=0)], 3)
    rows.append((f"batch of {batch} 64 x 16, K=2 (per fit)", f"solve_batch(backend='jax', {where})",
                 jax / batch, "solve_batch (auto: compiled loop)", host / batch, 1.0))

    data = load_breast_cancer().data
    for name, Xb in (("raw", data), ("median-centred", data - np.median(data, axis=0))):
        pca3, fit = side_by_side([lambda Xb=Xb: PCA(3).fit(Xb), lambda Xb=Xb: solve(Xb, 3, random_state=0)],
                                 max(3, repeats // 2))
        rows.append((f"569 x 30, K=3 ({name})", "PCA(3).fit", pca3, "solve (auto)", fit, 10.0))
    # What a user of the estimator gets by default: median centring, then the robust detector
    # (docs/decisions/0013-robust-detection.md); and the paper's plain fit through the estimator.
    from l1pca.kernels import L1PCA

    for name, est in (("L1PCA(3).fit (default: robust)", lambda: L1PCA(3, random_state=0)),
                      ("L1PCA(3, plain).fit", lambda: L1PCA(3, random_state=0, support_fraction=None,
                                                             cell_robust=False))):
        pca3, fit = side_by_side([lambda: PCA(3).fit(data), lambda est=est: est().fit(data)],
                                 max(3, repeats // 2))
        rows.append(("569 x 30, K=3 (raw)", "PCA(3).fit", pca3, name, fit, None))
    return rows


def table(rows):
    lines = ["| problem | baseline | baseline ms | ours | ours ms | ratio | target |",
             "|---|---|---|---|---|---|---|"]
    for prob, bname, b, oname, o, target in rows:
        ratio = o / b
        tgt = "-" if target is None else f"<= {target:g}x ({'met' if ratio <= target else 'NOT met'})"
        lines.append(f"| {prob} | {bname} | {b:.3f} | {oname} | {o:.3f} | {ratio:.2f}x | {tgt} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096, help="fits in the batch row")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs per lone row (median)")
    ap.add_argument("--gpu", action="store_true", help="also the GPU backends, where usable")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "small_fits.md"))
    args = ap.parse_args(argv)
    from _report import machine, machine_sentence

    rows = run(args.batch, args.repeats, args.gpu)
    report = f"""# Small fits against scikit-learn's PCA

{machine_sentence(machine(), backends.device_description() if args.gpu else None)}One BLAS
thread; numba {_numba_version()}. Default fits (8 starts at most, pair moves); ratios are ours
over the baseline (lower is better). Command: `python bench/small_fits.py --batch {args.batch}
--repeats {args.repeats}`.

{table(rows)}
"""
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)


def _numba_version():
    try:
        import numba

        return numba.__version__
    except ImportError:
        return "absent"


if __name__ == "__main__":
    main()
