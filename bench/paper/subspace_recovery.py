"""Claim 3a: L1 principal components describe data with faulty measurements better than L2 ones.

Nominal data: N samples from a random K-dimensional subspace of R^D (coordinates N(0, 1)) plus
N(0, 0.1^2) noise on every entry. A fraction of the samples is then corrupted in one of three ways
(m = median norm of the clean samples, c = magnitude):

* gross points: the sample is replaced by a point of norm c*m in a uniformly random direction;
* structured: the sample is replaced by c*m*t*u + noise, t ~ N(0, 1), with u one random unit vector
  per data set (a second, 1-dimensional subspace the outliers agree on);
* sparse entries: 2 of the D entries of the sample get +-c*m added (a few broken sensors per sample).

Each method's K-dimensional subspace Q is scored by its proximity ``||Q^T Q_nom||_F^2 / K`` to the
nominal one (1 = recovered). No centring: the nominal subspace passes through the origin.

    python bench/paper/subspace_recovery.py [--quick] [--out DIR] [--seed S]

Writes ``paper_subspace_recovery.md``, ``paper_subspace_recovery.png`` (against the outlier fraction)
and ``paper_subspace_magnitude.png`` (against the outlier magnitude at a fixed fraction).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from baselines import pcp_subspace, proximity  # noqa: E402

from l1pca.kernels import DEFAULT_N_INIT, solve  # noqa: E402

NOISE = 0.1
FULL = dict(N=200, D=20, K=3, repeats=20, fractions=tuple(np.round(np.arange(0, 0.41, 0.05), 2)),
            sweep_fraction=0.2, sweep_repeats=10)
QUICK = dict(N=40, D=6, K=2, repeats=2, fractions=(0.0, 0.2, 0.4), sweep_fraction=0.2, sweep_repeats=2)
KINDS = {
    # name: (main magnitude c, magnitudes of the sweep)
    "gross points": (5.0, (1.0, 2.0, 5.0, 10.0, 20.0)),
    "structured (1-D subspace)": (1.5, (0.5, 1.0, 1.5, 2.0, 3.0)),
    "sparse entries (2 per sample)": (5.0, (1.0, 2.0, 5.0, 10.0, 20.0)),
}
QUICK_SWEEP = 2  # magnitudes of the sweep kept in --quick

L1BF = f"L1-BF (n_init={DEFAULT_N_INIT})"
METHODS = [L1BF, "L2-PCA", "fixed-point (Kwak)", "non-greedy (Nie)", "PCP (inexact ALM)"]


def make_data(rng, N, D, K, fraction, kind, c):
    """(X, Q_nom): N x D data with round(fraction * N) corrupted samples."""
    Q_nom = np.linalg.qr(rng.standard_normal((D, K)))[0]
    X = rng.standard_normal((N, K)) @ Q_nom.T + NOISE * rng.standard_normal((N, D))
    m = float(np.median(np.linalg.norm(X, axis=1)))
    n_out = int(round(fraction * N))
    idx = rng.choice(N, n_out, replace=False)
    if kind == "gross points":
        G = rng.standard_normal((n_out, D))
        X[idx] = c * m * G / np.linalg.norm(G, axis=1, keepdims=True)
    elif kind == "structured (1-D subspace)":
        u = rng.standard_normal(D)
        u /= np.linalg.norm(u)
        X[idx] = c * m * rng.standard_normal((n_out, 1)) * u + NOISE * rng.standard_normal((n_out, D))
    elif kind == "sparse entries (2 per sample)":
        for i in idx:
            j = rng.choice(D, 2, replace=False)
            X[i, j] += c * m * rng.choice([-1.0, 1.0], 2)
    else:
        raise ValueError(f"kind={kind!r} is not one of {sorted(KINDS)}")
    return X, Q_nom


def fit(name, X, K, seed):
    if name == "PCP (inexact ALM)":
        return pcp_subspace(X, K)
    if name == L1BF:
        return solve(X, K, method="bitflip", backend="numpy", random_state=seed).components
    method = {"L2-PCA": "l2", "fixed-point (Kwak)": "fixed-point", "non-greedy (Nie)": "non-greedy"}[name]
    return solve(X, K, method=method).components


def evaluate(args, cfg, kind, fraction, c, repeats, label, sw):
    prox = {m: [] for m in METHODS}
    for rep in range(repeats):
        rng = common.rng_for(args.seed, label, kind, c, fraction, rep)
        X, Q_nom = make_data(rng, cfg["N"], cfg["D"], cfg["K"], fraction, kind, c)
        for m in METHODS:
            with sw(m):
                Q = fit(m, X, cfg["K"], seed=rep)
            prox[m].append(proximity(Q, Q_nom))
    return {m: np.array(v) for m, v in prox.items()}


def plot(args, results, xkey, xlabel, title, fname, logx=False):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.0 * len(results), 4.0), sharey=True,
                             squeeze=False)
    for ax, (kind, rows) in zip(axes.flat, results.items()):
        xs = np.array([r[xkey] for r in rows], dtype=float)
        span = np.ptp(np.log(xs)) if logx and len(xs) > 1 else np.ptp(xs)
        for j, m in enumerate(METHODS):
            mean = np.array([r["prox"][m].mean() for r in rows])
            std = np.array([r["prox"][m].std(ddof=1) if r["prox"][m].size > 1 else 0.0 for r in rows])
            off = 0.008 * span * (j - len(METHODS) / 2)
            x = xs * np.exp(off) if logx else xs + off
            ax.errorbar(x, mean, yerr=std, label=m, capsize=2, markersize=5, **common.style(m))
        sub = f" ({rows[0]['label']})" if rows and rows[0].get("label") else ""
        ax.set_title(f"{kind}{sub}", fontsize=10)
        ax.set_xlabel(xlabel)
        if logx:
            ax.set_xscale("log")
            ax.minorticks_off()  # only the measured magnitudes are labelled
            ax.set_xticks(xs)
            ax.set_xticklabels([f"{v:g}" for v in xs])
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("subspace proximity ||Q^T Q_nom||_F^2 / K")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(METHODS), frameon=False,
               bbox_to_anchor=(0.5, -0.08))
    fig.suptitle(title)
    fig.tight_layout()
    return common.save_figure(fig, args, fname)


def table(rows, xkey, xname):
    out = []
    for r in rows:
        best = max(METHODS, key=lambda m: r["prox"][m].mean())
        cells = []
        for m in METHODS:
            s = common.mean_std(r["prox"][m])
            cells.append(f"**{s}**" if m == best else s)
        out.append([f"{r[xkey]:g}"] + cells)
    return common.md_table([xname] + [f"{m}" for m in METHODS], out)


def main(argv=None):
    args = common.parse_args(__doc__.splitlines()[0], argv)
    t0 = common.setup(args)
    cfg = QUICK if args.quick else FULL
    sw = common.Stopwatch()
    by_fraction, by_magnitude = {}, {}
    for kind, (c, sweep) in KINDS.items():
        by_fraction[kind] = []
        for f in cfg["fractions"]:
            prox = evaluate(args, cfg, kind, f, c, cfg["repeats"], "fraction", sw)
            by_fraction[kind].append(dict(fraction=f, prox=prox, label=f"c = {c:g}"))
            print(f"{kind:30s} f={f:.2f} " + " ".join(f"{m.split(' (')[0]}={v.mean():.3f}"
                                                      for m, v in prox.items()), file=sys.stderr)
        by_magnitude[kind] = []
        for cc in (sweep[:QUICK_SWEEP] if args.quick else sweep):
            prox = evaluate(args, cfg, kind, cfg["sweep_fraction"], cc, cfg["sweep_repeats"],
                            "magnitude", sw)
            by_magnitude[kind].append(dict(magnitude=cc, prox=prox,
                                           label=f"{100 * cfg['sweep_fraction']:.0f}% outliers"))
    figures = [
        (plot(args, by_fraction, "fraction", "fraction of samples that are outliers",
              f"Recovery of the nominal {cfg['K']}-D subspace in R^{cfg['D']} (N = {cfg['N']}; "
              f"mean ± std over {cfg['repeats']} data sets)", "paper_subspace_recovery.png"),
         "proximity against outlier fraction"),
        (plot(args, by_magnitude, "magnitude", "outlier magnitude c (multiples of the median clean norm)",
              f"Recovery against outlier magnitude at {100 * cfg['sweep_fraction']:.0f}% outliers "
              f"(mean ± std over {cfg['sweep_repeats']} data sets)", "paper_subspace_magnitude.png",
              logx=True),
         "proximity against outlier magnitude"),
    ]
    sections = []
    for kind, rows in by_fraction.items():
        sections.append((f"{kind}, c = {KINDS[kind][0]:g}: proximity (mean ± std) against outlier "
                         "fraction", table(rows, "fraction", "outlier fraction")))
    for kind, rows in by_magnitude.items():
        sections.append((f"{kind}, {100 * cfg['sweep_fraction']:.0f}% outliers: proximity against "
                         "magnitude c", table(rows, "magnitude", "magnitude c")))
    cost_rows = [[m, len(sw.times[m]), f"{sw.median_ms(m):.2f}",
                  f"{np.median(np.array(sw.times[m]) / np.array(sw.times['L2-PCA'])):.0f}x"]
                 for m in METHODS]
    sections.append(("Cost", common.md_table(
        ["method", "fits", "median time per fit (ms)", "median time / L2-PCA time, same data"],
        cost_rows)))
    setup = common.setup_lines(args, [
        ("data", f"N = {cfg['N']} samples, D = {cfg['D']} features, nominal K = {cfg['K']}-dimensional "
                 f"subspace (random, orthonormal basis Q_nom), coordinates N(0, 1), noise "
                 f"N(0, {NOISE}^2) per entry"),
        ("outliers", "fraction f of the samples (chosen at random) corrupted as described above; "
                     "magnitude c in multiples of the median clean sample norm m; "
                     + "; ".join(f"{k}: c = {v[0]:g}" for k, v in KINDS.items())),
        ("fractions", f"{', '.join(f'{f:g}' for f in cfg['fractions'])}; {cfg['repeats']} data sets each"),
        ("magnitude sweep", f"f = {cfg['sweep_fraction']:g}, {cfg['sweep_repeats']} data sets per "
                            "magnitude"),
        ("methods", f"`solve(X, K, method=...)` for L1-BF (default n_init={DEFAULT_N_INIT}, numpy "
                    "backend), L2-PCA, Kwak, Nie; PCP = principal component pursuit by inexact ALM "
                    "(bench/paper/baselines.py, lambda = 1/sqrt(max(N, D)), tol 1e-7), subspace = "
                    "top-K right singular vectors of its low-rank part"),
        ("score", "proximity ||Q^T Q_nom||_F^2 / K in [0, 1]; best mean per row in bold"),
    ], time.perf_counter() - t0)
    intro = ("Claim (brief, section L1-BF): *L1 components describe data with faulty measurements "
             "better than L2 components.* Here: how close each method's subspace stays to the "
             "nominal one as outliers are added.")
    common.write_report(args, "subspace_recovery", "Subspace recovery under outliers", intro, setup,
                        sections, figures)


if __name__ == "__main__":
    main()
