"""Claim 1: L1-BF finds the exact L1 principal components with high frequency, at low cost.

For i.i.d. standard Gaussian data X (N x D, the paper's set-up) on a grid of (N, D, K), every method's
objective ``||X Q||_1`` is compared with the exact optimum (``method="exact"``, the oracle). A hit is
an objective within 1e-9 (relative) of the optimum. Cells the exact solver refuses (its candidate
limit) or that would take longer than this benchmark's per-instance budget are listed as skipped with
the reason. Methods: L1-BF with one start and with the default starts, the fixed-point iterations of
Kwak (greedy) and Nie (non-greedy), L2-PCA, and the SDP relaxation with randomized rounding.

    python bench/paper/optimality.py [--quick] [--out DIR] [--seed S]

Writes ``paper_optimality.md``, ``paper_optimality_hits.png`` and ``paper_optimality_cost.png``.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from baselines import sdp_l1pca  # noqa: E402

from l1pca.kernels import DEFAULT_N_INIT, solve  # noqa: E402
from l1pca.kernels.exact import MAX_CANDIDATES, plan  # noqa: E402
from l1pca.kernels.reduce import reduce_rank  # noqa: E402

HIT_RTOL = 1e-9
FULL = dict(Ns=(8, 12, 16, 20, 30, 40), Ds=(3, 4, 5), Ks=(1, 2, 3), repeats=100)
QUICK = dict(Ns=(6, 8), Ds=(3,), Ks=(1, 2), repeats=3)
MAX_EXACT_S = 0.4
"""Per-instance budget of the oracle (estimated, see :func:`exact_cost_s`); costlier cells are skipped."""
SDP_ROUNDS = 100

L1BF_DEFAULT = f"L1-BF (n_init={DEFAULT_N_INIT}, default)"
METHODS = ["L1-BF (n_init=1)", L1BF_DEFAULT, "fixed-point (Kwak)", "non-greedy (Nie)", "L2-PCA",
           "SDP + rounding"]


def exact_cost_s(N, D, K, rng):
    """(plan, estimated seconds) of the exact search for an N x D Gaussian matrix and K components.

    The estimate is a model fitted on this machine: ~150 us per hyperplane-arrangement ray (the
    candidate construction of the polynomial search loops over rays in Python) plus ~0.25 us per
    evaluated sign matrix for K <= 2 and ~1 us for K = 3. Raises ValueError where the kernel refuses.
    """
    X = rng.standard_normal((N, D))
    p = plan(reduce_rank(X), K)
    r = min(N, D)
    rays = math.comb(N, r - 1) if p.strategy == "polynomial" else 0
    return p, 1.5e-4 * rays + (2.5e-7 if K <= 2 else 1e-6) * p.n_evaluations


def run_method(name, X, K, rng):
    if name == "SDP + rounding":
        Q = sdp_l1pca(X, K, rng, n_rounds=SDP_ROUNDS)
        return float(np.abs(X @ Q).sum())
    if name.startswith("L1-BF"):
        n_init = 1 if name == "L1-BF (n_init=1)" else DEFAULT_N_INIT
        seed = int(rng.integers(2**31))
        return solve(X, K, method="bitflip", n_init=n_init, backend="numpy", random_state=seed).objective
    method = {"fixed-point (Kwak)": "fixed-point", "non-greedy (Nie)": "non-greedy", "L2-PCA": "l2"}[name]
    return solve(X, K, method=method).objective


def run(args, cfg):
    cells, skipped = [], []
    for K in cfg["Ks"]:
        for D in cfg["Ds"]:
            for N in cfg["Ns"]:
                if K > min(N, D):
                    continue
                try:
                    p, est = exact_cost_s(N, D, K, common.rng_for(args.seed, "plan", N, D, K))
                except ValueError:
                    skipped.append((N, D, K, f"exact refuses: more than {MAX_CANDIDATES:.0e} sign "
                                              "matrices (kernel limit)"))
                    continue
                if est > MAX_EXACT_S:
                    skipped.append((N, D, K, f"exact feasible ({p.strategy}, {p.n_evaluations:.2g} "
                                              f"evaluations) but ~{est:.2f} s per instance, over this "
                                              f"benchmark's {MAX_EXACT_S} s budget"))
                    continue
                cells.append(dict(N=N, D=D, K=K, strategy=p.strategy, evals=p.n_evaluations))
    for cell in cells:
        N, D, K = cell["N"], cell["D"], cell["K"]
        ratios = {m: [] for m in METHODS}
        sw = common.Stopwatch()
        for rep in range(cfg["repeats"]):
            rng = common.rng_for(args.seed, "data", N, D, K, rep)
            X = rng.standard_normal((N, D))
            with sw("exact"):
                opt = solve(X, K, method="exact").objective
            for m in METHODS:
                with sw(m):
                    obj = run_method(m, X, K, common.rng_for(args.seed, "method", m, N, D, K, rep))
                ratios[m].append(obj / opt)
        cell["ratios"] = {m: np.array(v) for m, v in ratios.items()}
        cell["times"] = {m: np.array(v) for m, v in sw.times.items()}
        hits = {m: float(np.mean(v >= 1 - HIT_RTOL)) for m, v in cell["ratios"].items()}
        print(f"N={N:3d} D={D} K={K}: " + "  ".join(f"{m.split(' (')[0]}={100 * h:.0f}%"
                                                   for m, h in hits.items()), file=sys.stderr)
    return cells, skipped


def hit_count(r):
    return int(np.sum(r >= 1 - HIT_RTOL))


def summary_tables(cells):
    rows = []
    for m in METHODS:
        r = np.concatenate([c["ratios"][m] for c in cells])
        rel = np.concatenate([c["times"][m] / c["times"]["L2-PCA"] for c in cells])
        t = np.concatenate([c["times"][m] for c in cells])
        h = hit_count(r)
        lo, hi = common.wilson(h, r.size)
        rows.append([m, r.size, f"{100 * h / r.size:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]",
                     f"{r.mean():.5f}", f"{r.min():.4f}", f"{1e3 * np.median(t):.2f}",
                     f"{np.median(rel):.0f}x"])
    t = np.concatenate([c["times"]["exact"] for c in cells])
    rel = np.concatenate([c["times"]["exact"] / c["times"]["L2-PCA"] for c in cells])
    rows.append(["exact (oracle)", t.size, "100% (by definition)", "1", "1",
                 f"{1e3 * np.median(t):.2f}", f"{np.median(rel):.0f}x"])
    overall = common.md_table(
        ["method", "instances", "exact hits [95% CI]", "mean ratio to optimum", "worst ratio",
         "median time (ms)", "median time / L2-PCA time"], rows)
    Ks = sorted({c["K"] for c in cells})
    rows = []
    for m in METHODS:
        row = [m]
        for K in Ks:
            r = np.concatenate([c["ratios"][m] for c in cells if c["K"] == K])
            row.append(f"{100 * hit_count(r) / r.size:.1f}% / {r.mean():.4f}")
        rows.append(row)
    by_k = common.md_table(["method"] + [f"K={K}: hits / mean ratio" for K in Ks], rows)
    rows = []
    for bf in ("L1-BF (n_init=1)", L1BF_DEFAULT):
        a = np.concatenate([c["ratios"][bf] for c in cells])
        for m in METHODS[2:]:
            b = np.concatenate([c["ratios"][m] for c in cells])
            win, loss = a > b * (1 + HIT_RTOL), a < b * (1 - HIT_RTOL)
            rows.append([bf, m, f"{100 * win.mean():.1f}%", f"{100 * (~win & ~loss).mean():.1f}%",
                         f"{100 * loss.mean():.1f}%", f"{int(loss.sum())}"])
    head_to_head = common.md_table(["L1-BF", "against", "L1-BF higher", "equal (1e-9)", "L1-BF lower",
                                    "instances L1-BF lower"], rows)
    return overall, by_k, head_to_head


def cell_table(cells):
    rows = []
    for c in cells:
        row = [c["N"], c["D"], c["K"], c["strategy"], len(c["ratios"][METHODS[0]])]
        row += [f"{100 * hit_count(c['ratios'][m]) / len(c['ratios'][m]):.0f}" for m in METHODS]
        row += [f"{c['ratios'][L1BF_DEFAULT].min():.4f}", f"{1e3 * np.median(c['times']['exact']):.1f}",
                f"{1e3 * np.median(c['times'][L1BF_DEFAULT]):.2f}"]
        rows.append(row)
    short = {"L1-BF (n_init=1)": "BF n1", L1BF_DEFAULT: f"BF n{DEFAULT_N_INIT}",
             "fixed-point (Kwak)": "Kwak", "non-greedy (Nie)": "Nie", "L2-PCA": "L2",
             "SDP + rounding": "SDP"}
    return common.md_table(
        ["N", "D", "K", "exact search", "instances"] + [f"{short[m]} hit %" for m in METHODS]
        + [f"BF n{DEFAULT_N_INIT} worst ratio", "exact ms (median)", f"BF n{DEFAULT_N_INIT} ms (median)"],
        rows)


def plot_hits(args, cells, cfg):
    import matplotlib.pyplot as plt

    panels = sorted({(c["K"], c["D"]) for c in cells})
    panels = [p for p in panels if sum(1 for c in cells if (c["K"], c["D"]) == p) >= 2] or panels
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.6 * nrow), squeeze=False, sharey=True)
    for ax, (K, D) in zip(axes.flat, panels):
        sel = sorted((c for c in cells if (c["K"], c["D"]) == (K, D)), key=lambda c: c["N"])
        Ns = np.array([c["N"] for c in sel])
        for j, m in enumerate(METHODS):
            n = len(sel[0]["ratios"][m])
            h = np.array([hit_count(c["ratios"][m]) for c in sel])
            lo, hi = np.array([common.wilson(k, n) for k in h]).T
            p = h / n
            x = Ns * (1 + 0.012 * (j - len(METHODS) / 2))  # small dodge so error bars do not overlap
            yerr = 100 * np.clip([p - lo, hi - p], 0.0, None)  # rounding can leave -1e-16 at p = 0 or 1
            ax.errorbar(x, 100 * p, yerr=yerr, label=m, capsize=2,
                        markersize=5, **common.style(m))
        ax.set_title(f"D = {D}, K = {K}")
        ax.set_xlabel("number of samples N")
        ax.set_ylim(-3, 103)
        ax.set_xticks(Ns)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("exact-hit rate (%)")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False,
               bbox_to_anchor=(0.5, -0.07 if nrow > 1 else -0.14))
    fig.suptitle(f"How often each method reaches the exact L1-PCA optimum (Gaussian X, "
                 f"{cfg['repeats']} instances per point, 95% Wilson intervals)")
    fig.tight_layout()
    return common.save_figure(fig, args, "paper_optimality_hits.png")


def plot_cost(args, cells, cfg):
    import matplotlib.pyplot as plt

    panels = [(K, 3) for K in sorted({c["K"] for c in cells})
              if sum(1 for c in cells if (c["K"], c["D"]) == (K, 3)) >= 1]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False, sharey=True)
    for ax, (K, D) in zip(axes.flat, panels):
        sel = sorted((c for c in cells if (c["K"], c["D"]) == (K, D)), key=lambda c: c["N"])
        Ns = [c["N"] for c in sel]
        for m in METHODS + ["exact"]:
            med = [1e3 * np.median(c["times"][m]) for c in sel]
            q1 = [1e3 * np.percentile(c["times"][m], 25) for c in sel]
            q3 = [1e3 * np.percentile(c["times"][m], 75) for c in sel]
            st = common.style(m) or dict(color="black", marker=".", linestyle="--")
            ax.errorbar(Ns, med, yerr=[np.subtract(med, q1), np.subtract(q3, med)], capsize=2,
                        label=m if m != "exact" else "exact (oracle)", **st)
        ax.set_yscale("log")
        ax.set_xticks(Ns)
        ax.set_title(f"D = {D}, K = {K}")
        ax.set_xlabel("number of samples N")
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("time per instance (ms, median, IQR bars)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False, bbox_to_anchor=(0.5, -0.16))
    fig.suptitle("Cost of each method, measured side by side (one BLAS thread)")
    fig.tight_layout()
    return common.save_figure(fig, args, "paper_optimality_cost.png")


def main(argv=None):
    args = common.parse_args(__doc__.splitlines()[0], argv)
    t0 = common.setup(args)
    cfg = QUICK if args.quick else FULL
    cells, skipped = run(args, cfg)
    overall, by_k, head_to_head = summary_tables(cells)
    beaten = sum(int(np.sum(c["ratios"][m] > 1 + HIT_RTOL)) for c in cells for m in METHODS)
    figures = [(plot_hits(args, cells, cfg), "exact-hit rate against N"),
               (plot_cost(args, cells, cfg), "time per instance against N")]
    skipped_table = common.md_table(["N", "D", "K", "why skipped"], [list(s) for s in skipped]) \
        if skipped else "None."
    setup = common.setup_lines(args, [
        ("data", "X with i.i.d. N(0, 1) entries, N samples x D features, no centring "
                 "(the objective is ||X Q||_1 of the matrix as given)"),
        ("grid", f"N in {cfg['Ns']}, D in {cfg['Ds']}, K in {cfg['Ks']}; {len(cells)} cells run, "
                 f"{len(skipped)} skipped (listed below)"),
        ("instances", f"{cfg['repeats']} independent matrices per cell"),
        ("oracle", "`solve(X, K, method='exact')`; a hit is an objective >= (1 - 1e-9) x optimum"),
        ("L1-BF", f"`solve(..., method='bitflip', backend='numpy')` with n_init=1 (the L2-PCA start "
                  f"only) and the default n_init={DEFAULT_N_INIT}; a fresh seed per instance"),
        ("SDP + rounding", f"max tr(X X^T Z), diag Z = 1, Z PSD (cvxpy, SCS), best of {SDP_ROUNDS} "
                           "Gaussian roundings; for K > 1 greedily, one SDP per component on the "
                           "deflated data"),
        ("timing", "wall time of each call, all methods on the same instance one after another; "
                   "the relative column is the median over instances of (method time / L2-PCA time)"),
    ], time.perf_counter() - t0)
    intro = (
        "Claim (brief, section L1-BF): *L1-BF reaches the exact optimum with high frequency and a "
        "higher metric than any known method of comparable cost.* Ratio = objective / exact "
        "optimum (1 is optimal). Sanity check: instances where a method exceeded the oracle by more "
        f"than 1e-9 relative: **{beaten}** (must be 0)."
    )
    common.write_report(args, "optimality", "Optimality of L1-BF against the exact optimum", intro,
                        setup, [("All cells pooled", overall), ("By number of components", by_k),
                                ("L1-BF against each baseline, instance by instance", head_to_head),
                                ("Per cell (hit rates in %)", cell_table(cells)),
                                ("Skipped cells", skipped_table)], figures)


if __name__ == "__main__":
    main()
