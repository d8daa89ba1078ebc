"""Faulty-measurement detection on real data: which samples are faulty, and which sensor is off.

Faults are injected into scikit-learn's bundled data sets (a fraction ``FAULT_FRACTION`` of the
samples, chosen at random); every detector is then fitted, unsupervised, on the whole faulty data set
and scores the same samples (higher = more outlying). Fault kinds (s_j = robust standard deviation of
feature j on the clean data):

* whole sample: every feature j of the sample gets N(0, (c s_j)^2) added (``SAMPLE_NOISE`` = c);
* single sensor, offset: one feature j gets +-delta s_j added (``OFFSET`` = delta);
* single sensor, stuck at zero: one feature j reads 0;
* single sensor, sign flip: one feature j reads -x_j.

For stuck-at-zero and sign-flip faults the faulty feature is drawn among those where the fault moves
the reading by at least 3 s_j (a "fault" that leaves the value in its normal range is not one anybody
can find); an offset fault may hit any feature.
Detectors: ``L1PCA`` with its defaults (the robust fit on 75% of the rows, scored by the outlier
map, ``-score_samples``: scikit-learn's detectors are higher = more normal), the paper's plain L1-BF
fit of every row scored by its distance from the subspace (``support_fraction=None,
cell_robust=False``, ``outlier_map(X).od``), the L2-PCA reconstruction error (same K, mean centre),
PyOD's PCA detector, and scikit-learn's EllipticEnvelope, IsolationForest and LocalOutlierFactor,
all with their default settings. For single-sensor faults, the sensor named by the largest
per-entry score (``L1PCA.score_entries``, the standardised cell residuals, of either fit) is
compared with the true one, next to the L2-PCA residual and a model-free robust z-score.
``bench/detection.py`` compares the default with the robust-statistics anchors (ROBPCA, PcaGrid,
DDC).

    python bench/paper/fault_detection.py [--quick] [--out DIR] [--seed S]

Writes ``paper_fault_detection.md``, ``paper_fault_detection.png`` (against the offset size) and
``paper_fault_detection_fraction.png`` (against the fraction of faulty samples).
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.covariance import EllipticEnvelope
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import RobustScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from l1pca.kernels import DEFAULT_N_INIT, L1PCA  # noqa: E402

try:
    from pyod.models.pca import PCA as PyODPCA
    PYOD_ERROR = None
except ImportError as exc:  # pyod is in the bench extra; the quick test runs without it
    PyODPCA, PYOD_ERROR = None, f"{type(exc).__name__}: {exc}"

FAULT_FRACTION = 0.1
SAMPLE_NOISE = 1.0
OFFSET = 6.0
MIN_SHIFT = 3.0
K_VARIANCE, K_MAX = 0.8, 3
"""K: enough L2 components for 80% of the variance, capped (L1-BF costs O(K^3) per candidate flip)."""
DATASETS = {"breast cancer": load_breast_cancer, "wine": load_wine, "digits": load_digits}
KINDS = ["whole sample", "sensor offset", "sensor stuck at 0", "sensor sign flip"]
FULL = dict(repeats=6, offsets=(2.0, 4.0, 8.0, 16.0, 32.0), sweep_repeats=3, subsample=None,
            fractions=(0.05, 0.1, 0.2, 0.3), fraction_offset=8.0)
QUICK = dict(repeats=1, offsets=(32.0,), sweep_repeats=1, subsample=100, k_max=2, fractions=(0.2,),
             fraction_offset=8.0)

L1 = "L1PCA (default)"
L1_PLAIN = f"L1-BF plain fit (n_init={DEFAULT_N_INIT}, OD)"
L2 = "L2-PCA (reconstruction error)"
ZSCORE = "robust z-score (no model)"
DETECTORS = [L1, L1_PLAIN, L2, "PyOD PCA", "EllipticEnvelope", "IsolationForest", "LocalOutlierFactor"]
LOCATORS = [L1, L1_PLAIN, L2, ZSCORE]
PLAIN_STYLE = dict(color="#9ecae1", marker="v")  # the paper's method, next to the product's default


def _style(name):
    return PLAIN_STYLE if name == L1_PLAIN else common.style(name)


def robust_sd(X):
    """Per-feature 1.4826 * MAD, falling back to the standard deviation (then 1) where the MAD is 0."""
    mad = 1.4826 * np.median(np.abs(X - np.median(X, axis=0)), axis=0)
    sd = X.std(axis=0)
    return np.where(mad > 0, mad, np.where(sd > 0, sd, 1.0))


def load(name, subsample, rng):
    X, _ = DATASETS[name](return_X_y=True)
    X = X.astype(np.float64)
    X = X[:, X.std(axis=0) > 0]  # digits: pixels that are 0 in every image carry nothing
    if subsample is not None and len(X) > subsample:
        X = X[np.sort(rng.choice(len(X), subsample, replace=False))]
    return X


def represent(name, X):
    """Working units of the detectors, fitted on the faulty data set itself."""
    if name == "digits":
        return X / 16.0  # one unit for all pixels; many have IQR 0
    return RobustScaler().fit_transform(X)


def choose_k(name, X, k_max=K_MAX):
    Z = represent(name, X)
    ev = np.linalg.svd(Z - Z.mean(axis=0), compute_uv=False) ** 2
    share = np.cumsum(ev) / ev.sum()
    return int(min(k_max, np.searchsorted(share, K_VARIANCE) + 1)), share


def inject(X, kind, scale, rng, *, offset=OFFSET, fraction=FAULT_FRACTION, same_sensor=False):
    """(faulty X, is_faulty (N,), faulty sensor (N,), -1 where none).

    ``same_sensor``: one sensor, drawn once, is the faulty one in every faulty sample (a glitching
    channel) instead of a fresh draw per sample.
    """
    X = X.copy()
    N, D = X.shape
    n = int(round(fraction * N))
    labels = np.zeros(N, dtype=bool)
    sensor = np.full(N, -1)
    if kind == "whole sample":
        idx = rng.choice(N, n, replace=False)
        X[idx] += rng.standard_normal((n, D)) * (SAMPLE_NOISE * scale)
        labels[idx] = True
        return X, labels, sensor
    if kind == "sensor offset":
        new = X + offset * scale * rng.choice([-1.0, 1.0], size=X.shape)
    elif kind == "sensor stuck at 0":
        new = np.zeros_like(X)
    elif kind == "sensor sign flip":
        new = -X
    else:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    # An offset moves the reading by exactly offset * s_j, whatever its size; stuck / flipped readings
    # only count where they leave the normal range.
    eligible = np.ones(X.shape, dtype=bool) if kind == "sensor offset" \
        else np.abs(new - X) >= MIN_SHIFT * scale
    candidates = np.flatnonzero(eligible.any(axis=1))
    if same_sensor:
        j_all = rng.integers(D)
        candidates = np.flatnonzero(eligible[:, j_all])
    idx = rng.choice(candidates, min(n, candidates.size), replace=False)
    for i in idx:
        j = j_all if same_sensor else rng.choice(np.flatnonzero(eligible[i]))
        X[i, j] = new[i, j]
        sensor[i] = j
    labels[idx] = True
    return X, labels, sensor


def detect(Z, K, seed, sw):
    """Scores (higher = more outlying) per detector, and per-entry residual scores for locating."""
    scores, entries = {}, {}
    with sw(L1):
        est = L1PCA(K, center="median", backend="numpy", random_state=seed).fit(Z)
    scores[L1] = -est.score_samples(Z)  # scikit-learn's sign: score_samples is higher = more normal
    entries[L1] = est.score_entries(Z)
    with sw(L1_PLAIN):
        plain = L1PCA(K, center="median", backend="numpy", random_state=seed, support_fraction=None,
                      cell_robust=False).fit(Z)
    scores[L1_PLAIN] = plain.outlier_map(Z).od
    entries[L1_PLAIN] = plain.score_entries(Z)
    with sw(L2):
        c = Z.mean(axis=0)
        Q = np.linalg.svd(Z - c, full_matrices=False)[2][:K].T
        R = (Z - c) - ((Z - c) @ Q) @ Q.T
        scores[L2] = np.sqrt((R * R).sum(axis=1))
    entries[L2] = np.abs(R)
    med = np.median(Z, axis=0)
    entries[ZSCORE] = np.abs(Z - med) / robust_sd(Z)
    if PyODPCA is not None:
        with sw("PyOD PCA"):
            scores["PyOD PCA"] = PyODPCA(contamination=FAULT_FRACTION, random_state=seed).fit(Z) \
                .decision_scores_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MCD warns about near-singular covariances on digits
        with sw("EllipticEnvelope"):
            scores["EllipticEnvelope"] = -EllipticEnvelope(random_state=seed).fit(Z).score_samples(Z)
    with sw("IsolationForest"):
        scores["IsolationForest"] = -IsolationForest(random_state=seed).fit(Z).score_samples(Z)
    with sw("LocalOutlierFactor"):
        scores["LocalOutlierFactor"] = -LocalOutlierFactor().fit(Z).negative_outlier_factor_
    return scores, entries


def precision_at_n(labels, score):
    n = int(labels.sum())
    top = np.argsort(-score, kind="stable")[:n]
    return float(labels[top].mean())


def one_run(name, X, scale, K, kind, rng, seed, sw, offset=OFFSET, fraction=FAULT_FRACTION,
            same_sensor=False):
    Xf, labels, sensor = inject(X, kind, scale, rng, offset=offset, fraction=fraction,
                                same_sensor=same_sensor)
    Z = represent(name, Xf)
    scores, entries = detect(Z, K, seed, sw)
    out = {"auc": {d: roc_auc_score(labels, s) for d, s in scores.items()},
           "p@n": {d: precision_at_n(labels, s) for d, s in scores.items()}, "locate": {}}
    has = sensor >= 0
    if has.any():
        for loc, E in entries.items():
            out["locate"][loc] = float(np.mean(E[has].argmax(axis=1) == sensor[has]))
    return out


def aggregate(runs):
    agg = {}
    for key in ("auc", "p@n", "locate"):
        agg[key] = {d: np.array([r[key][d] for r in runs]) for d in runs[0][key]}
    return agg


def run_dataset(args, cfg, name, sw):
    X = load(name, cfg["subsample"], common.rng_for(args.seed, "subsample", name))
    scale = robust_sd(X)
    K, share = choose_k(name, X, cfg.get("k_max", K_MAX))
    main_runs = {}
    for kind in KINDS:
        runs = [one_run(name, X, scale, K, kind, common.rng_for(args.seed, name, kind, rep), rep, sw)
                for rep in range(cfg["repeats"])]
        main_runs[kind] = aggregate(runs)
        print(f"{name:14s} {kind:18s} AUC " + " ".join(
            f"{d.split(' (')[0]}={v.mean():.3f}" for d, v in main_runs[kind]["auc"].items()),
            file=sys.stderr)
    sweep = {}
    for delta in cfg["offsets"]:
        runs = [one_run(name, X, scale, K, "sensor offset",
                        common.rng_for(args.seed, name, "sweep", delta, rep), rep, sw, offset=delta)
                for rep in range(cfg["sweep_repeats"])]
        sweep[delta] = aggregate(runs)
    by_fraction = {}
    for f in cfg["fractions"]:
        runs = [one_run(name, X, scale, K, "sensor offset",
                        common.rng_for(args.seed, name, "fraction", f, rep), rep, sw,
                        offset=cfg["fraction_offset"], fraction=f, same_sensor=True)
                for rep in range(cfg["sweep_repeats"])]
        by_fraction[f] = aggregate(runs)
    return dict(name=name, shape=X.shape, K=K, share=float(share[K - 1]), main=main_runs, sweep=sweep,
                by_fraction=by_fraction)


def tables(results, cfg):
    sections = []
    dets = [d for d in DETECTORS if d in results[0]["main"][KINDS[0]]["auc"]]
    for metric, title in (("auc", "ROC-AUC"), ("p@n", "precision@n (n = number of faulty samples)")):
        rows = []
        for r in results:
            for kind in KINDS:
                vals = r["main"][kind][metric]
                best = max(dets, key=lambda d: vals[d].mean())
                row = [r["name"], kind]
                for d in dets:
                    s = common.mean_std(vals[d])
                    row.append(f"**{s}**" if d == best else s)
                rows.append(row)
        sections.append((f"{title} (mean ± std over {cfg['repeats']} injections)",
                         common.md_table(["data", "fault"] + dets, rows)))
    rows = []
    for r in results:
        for kind in KINDS[1:]:
            vals = r["main"][kind]["locate"]
            best = max(LOCATORS, key=lambda d: vals[d].mean())
            rows.append([r["name"], kind] + [f"**{common.mean_std(100 * vals[d], '{:.1f}')}**"
                                            if d == best else common.mean_std(100 * vals[d], "{:.1f}")
                                            for d in LOCATORS])
    sections.append(("Which sensor is off: % of single-sensor faults where the largest per-entry "
                     "score is the faulty feature (mean ± std)",
                     common.md_table(["data", "fault"] + [f"{d} (%)" for d in LOCATORS], rows)))
    rows = []
    for r in results:
        for delta, agg in sorted(r["sweep"].items()):
            rows.append([r["name"], f"{delta:g}"] + [f"{agg['auc'][d].mean():.3f}" for d in dets]
                        + [f"{100 * agg['locate'][d].mean():.0f}%" for d in LOCATORS])
    sections.append((f"Single-sensor offset of delta s_j in {100 * FAULT_FRACTION:.0f}% of samples: AUC "
                     f"and sensor identification against delta (means over {cfg['sweep_repeats']} "
                     "injections)",
                     common.md_table(["data", "delta"] + [f"AUC {d}" for d in dets]
                                     + [f"located by {d}" for d in LOCATORS], rows)))
    rows = []
    for r in results:
        for f, agg in sorted(r["by_fraction"].items()):
            rows.append([r["name"], f"{f:g}"] + [f"{agg['auc'][d].mean():.3f}" for d in dets]
                        + [f"{100 * agg['locate'][d].mean():.0f}%" for d in LOCATORS])
    sections.append((f"One glitching sensor (the same feature in every faulty sample, +-"
                     f"{cfg['fraction_offset']:g} s_j): AUC and sensor identification against the "
                     f"fraction of faulty samples (means over {cfg['sweep_repeats']} injections)",
                     common.md_table(["data", "faulty fraction"] + [f"AUC {d}" for d in dets]
                                     + [f"located by {d}" for d in LOCATORS], rows)))
    return sections, dets


def plot(args, results, dets, key, xlabel, title, fname, logx):
    """Two rows (AUC; sensor named correctly) x one column per data set, against a sweep."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5.0 * len(results), 7.6), squeeze=False,
                             sharex=True)
    for col, r in enumerate(results):
        xs = np.array(sorted(r[key]))
        span = np.ptp(np.log(xs)) if logx else np.ptp(xs)
        for row, (metric, names) in enumerate((("auc", dets), ("locate", LOCATORS))):
            ax = axes[row, col]
            for j, d in enumerate(names):
                vals = [r[key][t][metric][d] for t in xs]
                mean = np.array([v.mean() for v in vals])
                std = np.array([v.std(ddof=1) if v.size > 1 else 0.0 for v in vals])
                scale = 100.0 if metric == "locate" else 1.0
                off = 0.006 * span * (j - len(names) / 2)
                x = xs * np.exp(off) if logx else xs + off
                ax.errorbar(x, scale * mean, yerr=scale * std, label=d, capsize=2, markersize=5,
                            **_style(d))
            if logx:
                ax.set_xscale("log")
                ax.minorticks_off()
            ax.set_xticks(xs)
            ax.set_xticklabels([f"{t:g}" for t in xs])
            ax.grid(alpha=0.3)
            if row == 0:
                n, dd = r["shape"]
                ax.set_title(f"{r['name']} ({n} x {dd}, K = {r['K']})", fontsize=10)
                low = min(min(float(np.mean(r[key][t]["auc"][d])) for t in xs for d in dets), 0.45)
                ax.set_ylim(low - 0.05, 1.02)
            else:
                ax.set_xlabel(xlabel)
                ax.set_ylim(-2, 102)
    axes[0, 0].set_ylabel("ROC-AUC (faulty samples)")
    axes[1, 0].set_ylabel("faulty sensor named correctly (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for h, lab in zip(*axes[1, 0].get_legend_handles_labels()):
        if lab not in labels:
            handles.append(h)
            labels.append(lab)
    fig.legend(handles, labels, loc="upper center", ncol=4, frameon=False,
               bbox_to_anchor=(0.5, 0.0), fontsize=9)
    fig.suptitle(title)
    fig.tight_layout(h_pad=3.5)
    return common.save_figure(fig, args, fname)


def main(argv=None):
    args = common.parse_args(__doc__.splitlines()[0], argv)
    t0 = common.setup(args)
    cfg = QUICK if args.quick else FULL
    if PYOD_ERROR:
        print(f"PyOD not importable ({PYOD_ERROR}): its PCA detector is skipped", file=sys.stderr)
    sw = common.Stopwatch()
    results = [run_dataset(args, cfg, name, sw) for name in DATASETS]
    sections, dets = tables(results, cfg)
    sections.append(("Cost", common.md_table(
        ["detector", "fits", "median time per fit (ms)"],
        [[d, len(sw.times[d]), f"{sw.median_ms(d):.1f}"] for d in DETECTORS if d in sw.times])))
    figures = [
        (plot(args, results, dets, "sweep",
              "offset delta of the faulty sensor (robust SDs of that feature)",
              f"Single-sensor offsets in {100 * FAULT_FRACTION:.0f}% of samples: detection (top) and "
              f"locating the sensor (bottom); mean ± std over {cfg['sweep_repeats']} injections",
              "paper_fault_detection.png", logx=True),
         "AUC and sensor identification against offset size"),
        (plot(args, results, dets, "by_fraction", "fraction of samples hit by the glitching sensor",
              f"One glitching sensor (same feature in every faulty sample, +-{cfg['fraction_offset']:g} "
              f"robust SDs): detection (top) and locating it (bottom); mean ± std over "
              f"{cfg['sweep_repeats']} injections", "paper_fault_detection_fraction.png", logx=False),
         "AUC and sensor identification against the faulty fraction"),
    ]
    setup = common.setup_lines(args, [
        ("data", "scikit-learn's bundled breast cancer, wine and digits (constant pixels dropped: "
                 + ", ".join(f"{r['name']} {r['shape'][0]} x {r['shape'][1]}" for r in results) + ")"),
        ("faults", f"{100 * FAULT_FRACTION:.0f}% of the samples; whole sample: N(0, ({SAMPLE_NOISE:g} "
                   f"s_j)^2) on every feature; sensor offset: +-{OFFSET:g} s_j on one feature; stuck "
                   f"at 0; sign flip (these two only where they move the reading by >= "
                   f"{MIN_SHIFT:g} s_j); s_j = 1.4826 MAD of feature j on the clean data"),
        ("units", "breast cancer, wine: `RobustScaler` (median, IQR) fitted on the faulty data set; "
                  "digits: divided by 16"),
        ("K", f"smallest K whose L2 components explain >= {100 * K_VARIANCE:.0f}% of the clean, "
              f"scaled variance, at most {cfg.get('k_max', K_MAX)}: "
              + ", ".join(f"{r['name']} K = {r['K']} ({100 * r['share']:.0f}%)" for r in results)),
        ("detectors", f"`L1PCA(K, center='median')` with its defaults (robust fit on 75% of the rows; "
                      "-score_samples, the outlier map's score); the paper's plain L1-BF fit "
                      f"(n_init={DEFAULT_N_INIT}, `support_fraction=None, cell_robust=False`) scored by "
                      "its distance from the subspace; L2-PCA "
                      "residual norm (mean centre, same K); `pyod.models.pca.PCA()` (its defaults: "
                      "all components, eigenvalue-weighted, standardised)"
                      + (f" [skipped: {PYOD_ERROR}]" if PYOD_ERROR else "")
                      + "; `EllipticEnvelope()`, `IsolationForest()`, `LocalOutlierFactor()` with "
                        "default parameters; all fitted on, and scoring, the faulty data set"),
        ("locating", "argmax over features of the standardised cell residual (L1PCA.score_entries, "
                     "both fits), of |residual| (L2-PCA) or of |x_j - median_j| / (1.4826 MAD_j) in "
                     "the working units (z-score)"),
        ("repeats", f"{cfg['repeats']} injections per (data set, fault); offset sweep delta in "
                    f"{cfg['offsets']} (fresh sensor per faulty sample) and faulty-fraction sweep "
                    f"in {cfg['fractions']} (one glitching sensor: the same feature, +-"
                    f"{cfg['fraction_offset']:g} s_j, in every faulty sample), "
                    f"{cfg['sweep_repeats']} injections each"),
    ], time.perf_counter() - t0)
    intro = ("Claim (brief, product): *faulty measurements can be found from the L1 subspace: a "
             "sample's distance scores the sample, its per-entry residuals name the sensor.* Best "
             "mean per row in bold. `L1PCA (default)` is the product's detector since issue 28 (robust "
             "fit, outlier map, standardised cells); the plain L1-BF fit is the paper's method as the "
             "product ran it before. `bench/results/detection.md` compares the default with ROBPCA, "
             "PcaGrid and DDC.")
    common.write_report(args, "fault_detection", "Faulty-measurement detection on real data", intro,
                        setup, sections, figures)


if __name__ == "__main__":
    main()
