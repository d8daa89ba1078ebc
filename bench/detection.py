"""Faulty-measurement detection against the robust-statistics anchors (issue 28).

Every detector is fitted, unsupervised, on a whole (contaminated) matrix and scores the same rows.
Side by side in one run:

* ours: ``L1PCA(K)`` with its defaults (robust fit on ``support_fraction`` of the rows, the outlier
  map's combined score, standardised cell residuals) and the plain L1-BF fit of every row scored by
  its orthogonal distance, as the product did before (``support_fraction=None, cell_robust=False``);
* ROBPCA (``rrcov::PcaHubert``) and PcaGrid (``rrcov::PcaGrid``) through ``Rscript``
  (``bench/detection_anchors/rrcov_anchor.R``), scored like ours by ``max(SD / cutoff.sd, OD /
  cutoff.od)`` and flagged by rrcov's own ``flag``;
* robpy's DDC (``bench/detection_anchors/robpy_ddc.py``) in its own virtual environment
  (``bench/.venv-robpy``, created on demand: robpy pins scikit-learn < 1.7): its standardised cell
  residuals for the cells, its row statistic and row flags for the rows;
* scikit-learn's EllipticEnvelope, LocalOutlierFactor and IsolationForest, PyOD's PCA detector and the
  L2-PCA reconstruction error (same K), all with their defaults.

Data: the ROBPCA paper's kind of simulation (a low-dimensional model plus bad leverage points,
orthogonal outliers and good leverage points at 0-30%), classic robust-statistics data sets with
their documented outliers (exported from R's packages at run time), and scikit-learn's bundled real
data with injected row and cell faults. Every score is "higher = more outlying".

    python bench/detection.py [--quick] [--out DIR] [--seed S] [--no-r] [--no-robpy] [--no-install]

Writes ``detection.md`` (the tables, each row with PASS/MISS against issue 28's targets),
``detection.json`` (every number) and ``detection_auc.png`` / ``detection_maps.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# Timings are taken side by side: one BLAS thread here and in every subprocess (R, robpy).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "paper"))
import common  # noqa: E402
from fault_detection import inject, robust_sd  # noqa: E402

from l1pca.kernels import L1PCA  # noqa: E402

ANCHORS_DIR = HERE / "detection_anchors"
R_SCRIPT = ANCHORS_DIR / "rrcov_anchor.R"
DDC_RUNNER = ANCHORS_DIR / "robpy_ddc.py"
ROBPY_VENV = HERE / ".venv-robpy"
ROBPY_REQUIREMENT = "robpy==0.0.6"

OURS = "L1PCA (default)"
PLAIN = "L1-BF plain (OD)"
ROBPCA = "ROBPCA (rrcov)"
GRID = "PcaGrid (rrcov)"
DDC = "DDC (robpy)"
EE = "EllipticEnvelope"
LOF = "LocalOutlierFactor"
IFOREST = "IsolationForest"
PYOD = "PyOD PCA"
L2 = "L2-PCA (recon.)"
ZSCORE = "robust z-score"
METHODS = [OURS, PLAIN, ROBPCA, GRID, DDC, EE, LOF, IFOREST, PYOD, L2]
ANCHORS = METHODS[1:]
"""Everything but our default is an anchor, our own plain fit included (the new default must not
lose to the old)."""
LOCATORS = [OURS, PLAIN, DDC, ZSCORE, L2]
CELL_ANCHORS = LOCATORS[1:]

AUC_MARGIN = 0.01
LOCATE_MARGIN = 2.0  # percentage points
RECALL_TARGET = 0.9
RECALL_ANCHOR_FPR = 0.10
"""An anchor "reaches" the recall target only with at most this false-positive rate on the same row
(IsolationForest reaches any recall by flagging a fifth of the rows)."""
CLEAN_FPR_TARGET = 0.05
TIME_RATIO_TARGET = 5.0

DDC_MAX_FEATURES = 40
"""robpy's DDC costs 5.5 s a fit at 50 x 100 (its pairwise robust correlations are Python loops) and
would take most of the run's budget on the 100-feature design and on octane (226): it runs where
n_features <= this."""

# -- data ----------------------------------------------------------------------------------------------
DESIGNS = {
    # name: (n, p, k, eigenvalues of the regular rows' covariance)
    "sim A": (100, 4, 3, np.array([8.0, 4.0, 2.0, 1.0])),
    "sim B": (50, 100, 5, np.concatenate([[17.0, 13.5, 8.0, 3.0, 1.0], np.linspace(0.095, 0.075, 95)])),
}
SIM_KINDS = ("bad leverage", "orthogonal", "good leverage", "mixed")
SIM_SHIFT = 6.0
"""Outliers sit SIM_SHIFT units off the subspace (orthogonal part, along e_{k+1}) and/or
SIM_SHIFT * sqrt(lambda_1) along the first axis (the leverage part), as tight clusters with
covariance Sigma / SIM_SPREAD."""
SIM_SPREAD = 15.0

CLASSIC = {
    # name: (K, documented outliers (1-based, as the literature numbers them), source)
    "hbk": (2, list(range(1, 15)), "Hawkins, Bradu & Kass (1984); Rousseeuw & Leroy (1987) p. 94: "
            "rows 1-14 (x part, 3 features)"),
    "bushfire": (1, list(range(7, 12)) + list(range(31, 39)),
                 "Campbell (1984); Maronna & Yohai (1995): rows 7-11 and 31-38"),
    "wood": (3, [4, 6, 8, 19], "Draper & Smith (1966) as modified in Rousseeuw & Leroy (1987) p. 243: "
             "rows 4, 6, 8, 19 (x part, 5 features)"),
    "starsCYG": (1, [11, 20, 30, 34], "Rousseeuw & Leroy (1987) p. 27: the four giants 11, 20, 30, 34"),
    "octane": (2, [25, 26, 36, 37, 38, 39], "Esbensen et al. (1994); Hubert, Rousseeuw & Vanden Branden "
               "(2005), K = 2: the six samples with added alcohol, 25, 26, 36-39"),
}
CLASSIC_K_RULE = ("K: ROBPCA's own choice (rrcov's k = 0: 80% of the robust variance, rrcov 1.7-2) capped "
                  "at p - 1 so that an orthogonal distance exists; octane's K = 2 is the ROBPCA paper's")
RAW_UNITS = {"octane"}  # spectra: one unit; the other sets are standardised per column (median, MAD)

INJECTED = ("wine", "breast cancer", "diabetes")
FAULTS = ("clean", "row noise", "cell offset", "cell stuck at 0", "glitch 10%", "glitch 20%")
FAULT_FRACTION = 0.1
ROW_NOISE = 2.0  # whole-row fault: N(0, (ROW_NOISE s_j)^2) added to every feature
CELL_OFFSET = 6.0  # +-6 robust SDs on one cell
K_VARIANCE, K_MAX = 0.8, 3

FULL = dict(sim_designs=("sim A", "sim B"), sim_kinds=SIM_KINDS, eps=(0.1, 0.2, 0.3),
            sim_repeats={"sim A": 5, "sim B": 3}, classic=tuple(CLASSIC), injected=INJECTED,
            faults=FAULTS, injected_repeats=2, subsample=None)
QUICK = dict(sim_designs=("sim A",), sim_kinds=("mixed",), eps=(0.2,), sim_repeats={"sim A": 1},
             classic=("starsCYG",), injected=("wine",), faults=("clean", "cell offset"),
             injected_repeats=1, subsample=80)


@dataclass
class Case:
    """One matrix every method scores."""

    group: str  # "simulation", "classic", "injected"
    data: str
    fault: str
    rep: int
    X: np.ndarray
    K: int
    labels: np.ndarray  # (n,) bool: the row is an outlier / faulty
    sensor: np.ndarray | None = None  # (n,) faulty feature of a faulty row, -1 where none
    note: str = ""
    results: dict = field(default_factory=dict)

    @property
    def id(self):
        return "_".join(str(s).replace(" ", "").replace("%", "pct") for s in
                        (self.group, self.data, self.fault, self.rep))

    @property
    def row_key(self):
        return (self.group, self.data, self.fault)


def robust_standardise(X):
    med = np.median(X, axis=0)
    return (X - med) / robust_sd(X)


def simulate(design, kind, eps, rng):
    """Regular rows N_p(0, diag(lam)) (model of rank k plus small noise) with a share eps replaced by
    tight outlier clusters; "mixed" splits them in thirds. Returns (X, labels)."""
    n, p, k, lam = DESIGNS[design]
    X = rng.standard_normal((n, p)) * np.sqrt(lam)
    labels = np.zeros(n, dtype=bool)
    m = int(round(eps * n))
    if m == 0:
        return X, labels
    idx = rng.choice(n, m, replace=False)
    kinds = [kind] * m if kind != "mixed" else [SIM_KINDS[i % 3] for i in range(m)]
    for i, kd in zip(idx, kinds):
        mu = np.zeros(p)
        if kd in ("bad leverage", "good leverage"):
            mu[0] = SIM_SHIFT * np.sqrt(lam[0])
        if kd in ("bad leverage", "orthogonal"):
            mu[k] = SIM_SHIFT
        X[i] = mu + rng.standard_normal(p) * np.sqrt(lam / SIM_SPREAD)
    labels[idx] = True
    return X, labels


def simulation_cases(cfg, seed):
    cases = []
    for design in cfg["sim_designs"]:
        n, p, k, _ = DESIGNS[design]
        data = f"{design} ({n}x{p}, k={k})"
        for rep in range(cfg["sim_repeats"][design]):
            X, labels = simulate(design, "mixed", 0.0, common.rng_for(seed, design, "clean", rep))
            cases.append(Case("simulation", data, "clean", rep, X, k, labels))
            for kind in cfg["sim_kinds"]:
                for eps in cfg["eps"]:
                    X, labels = simulate(design, kind, eps, common.rng_for(seed, design, kind, eps, rep))
                    cases.append(Case("simulation", data, f"{kind} {100 * eps:.0f}%", rep, X, k, labels))
    return cases


def load_classic(names, workdir):
    """The classic sets from R's packages (exported by rrcov_anchor.R), or [] with the reason."""
    out = workdir / "classic"
    proc = subprocess.run(["Rscript", str(R_SCRIPT), "export", str(out)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        return [], f"R export failed: {proc.stderr.strip()[-500:]}"
    cases = []
    for name in names:
        K, outliers, source = CLASSIC[name]
        X = np.loadtxt(out / f"{name}.csv", delimiter=",", ndmin=2)
        if name not in RAW_UNITS:
            X = robust_standardise(X)
        labels = np.zeros(len(X), dtype=bool)
        labels[np.array(outliers) - 1] = True
        cases.append(Case("classic", f"{name} ({X.shape[0]}x{X.shape[1]})", "documented", 0, X, K,
                          labels, note=source))
    return cases, (out / "versions.txt").read_text().strip()


def load_sklearn(name, subsample, rng):
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

    loader = {"wine": load_wine, "breast cancer": load_breast_cancer, "diabetes": load_diabetes}[name]
    X = loader(return_X_y=True)[0].astype(np.float64)
    # Features with fewer than 3 values (diabetes' sex) are no sensors; DDC refuses them.
    X = X[:, [np.unique(col).size >= 3 for col in X.T]]
    if subsample is not None and len(X) > subsample:
        X = X[np.sort(rng.choice(len(X), subsample, replace=False))]
    return X


def choose_k(Z):
    """Enough L2 components for 80% of the clean, standardised variance, at most 3 (as the paper
    bench's fault-detection section)."""
    ev = np.linalg.svd(Z - Z.mean(axis=0), compute_uv=False) ** 2
    return int(min(K_MAX, np.searchsorted(np.cumsum(ev) / ev.sum(), K_VARIANCE) + 1))


def injected_cases(cfg, seed):
    from sklearn.preprocessing import RobustScaler

    cases = []
    for name in cfg["injected"]:
        X0 = load_sklearn(name, cfg["subsample"], common.rng_for(seed, "subsample", name))
        scale = robust_sd(X0)
        K = choose_k(robust_standardise(X0))
        data = f"{name} ({X0.shape[0]}x{X0.shape[1]})"
        for fault in cfg["faults"]:
            for rep in range(cfg["injected_repeats"]):
                rng = common.rng_for(seed, name, fault, rep)
                if fault == "clean":
                    Xf, labels, sensor = X0.copy(), np.zeros(len(X0), dtype=bool), None
                elif fault == "row noise":
                    Xf, labels, sensor = X0.copy(), np.zeros(len(X0), dtype=bool), None
                    idx = rng.choice(len(X0), int(round(FAULT_FRACTION * len(X0))), replace=False)
                    Xf[idx] += rng.standard_normal((idx.size, X0.shape[1])) * (ROW_NOISE * scale)
                    labels[idx] = True
                elif fault.startswith("glitch"):
                    frac = float(fault.split()[1].rstrip("%")) / 100
                    Xf, labels, sensor = inject(X0, "sensor offset", scale, rng, offset=CELL_OFFSET,
                                                fraction=frac, same_sensor=True)
                else:
                    kind = {"cell offset": "sensor offset", "cell stuck at 0": "sensor stuck at 0"}[fault]
                    Xf, labels, sensor = inject(X0, kind, scale, rng, offset=CELL_OFFSET,
                                                fraction=FAULT_FRACTION)
                # Working units fitted on the faulty matrix itself, as a user would.
                Z = RobustScaler().fit_transform(Xf)
                cases.append(Case("injected", data, fault, rep, Z, K, labels,
                                  None if sensor is None or (sensor < 0).all() else sensor))
    return cases


# -- anchors in other processes ------------------------------------------------------------------------
def combined_score(sd, od, cutoff_sd, cutoff_od):
    """``max(SD / cutoff_sd, OD / cutoff_od)``, our outlier map's ranking score, for rrcov's fits
    (rrcov has no single score). A zero OD cutoff (exact fit) leaves the SD part alone."""
    rel_od = od / cutoff_od if cutoff_od > 0 else np.zeros_like(od)
    return np.maximum(sd / cutoff_sd, rel_od)


def run_r(cases, workdir):
    """ROBPCA and PcaGrid on every case in one Rscript process. Returns a status line."""
    if shutil.which("Rscript") is None:
        return "R anchors skipped: Rscript not found (apt-get install r-base-core r-cran-rrcov)"
    probe = subprocess.run(["Rscript", "-e", "suppressMessages(library(rrcov)); cat(format(packageVersion("
                            "'rrcov')))"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        return "R anchors skipped: R's rrcov package is missing (apt-get install r-cran-rrcov)"
    d = workdir / "r"
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for c in cases:
        path = d / f"{c.id}.csv"
        np.savetxt(path, c.X, delimiter=",", fmt="%.17g")
        lines.append(f"{c.id}\t{path}\t{c.K}")
    (d / "manifest.tsv").write_text("\n".join(lines) + "\n")
    proc = subprocess.run(["Rscript", str(R_SCRIPT), "fit", str(d / "manifest.tsv"), str(d / "out")],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return f"R anchors failed: {proc.stderr.strip()[-500:]}"
    summary = {}
    with open(d / "out" / "summary.tsv") as f:
        next(f)
        for line in f:
            cid, method, k, csd, cod, t, err = line.rstrip("\n").split("\t")
            summary[(cid, method)] = (k, csd, cod, float(t), err)
    for c in cases:
        for method, name in (("ROBPCA", ROBPCA), ("PcaGrid", GRID)):
            k, csd, cod, t, err = summary[(c.id, method)]
            if err:
                c.results.setdefault("errors", {})[name] = err
                continue
            tab = np.genfromtxt(d / "out" / f"{c.id}_{method}.csv", delimiter=",", names=True)
            sd, od = np.atleast_1d(tab["sd"]), np.atleast_1d(tab["od"])
            c.results.setdefault("scores", {})[name] = combined_score(sd, od, float(csd), float(cod))
            c.results.setdefault("flags", {})[name] = np.atleast_1d(tab["flag"]) == 0
            c.results.setdefault("times", {})[name] = t
            c.results.setdefault("maps", {})[name] = (sd, od, float(csd), float(cod))
    return f"R anchors: rrcov {probe.stdout.strip()} via {shutil.which('Rscript')}"


def robpy_python(install):
    """The robpy venv's python, creating the venv when asked; (path or None, status line)."""
    py = ROBPY_VENV / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import robpy"], capture_output=True,
                                        timeout=120).returncode == 0
    if ok:
        return py, f"DDC: robpy in {ROBPY_VENV.relative_to(HERE.parent)}"
    if not install:
        return None, (f"DDC skipped: no robpy virtual environment at {ROBPY_VENV} (run without "
                      "--no-install to create it)")
    print(f"creating {ROBPY_VENV} with {ROBPY_REQUIREMENT} (once)", file=sys.stderr, flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(ROBPY_VENV)], check=True, capture_output=True,
                       timeout=600)
        subprocess.run([str(py), "-m", "pip", "install", "-q", ROBPY_REQUIREMENT], check=True,
                       capture_output=True, timeout=1200)
    except (subprocess.SubprocessError, OSError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        return None, f"DDC skipped: could not create the robpy venv ({exc}; {err.decode()[-300:]})"
    return py, f"DDC: robpy in {ROBPY_VENV.relative_to(HERE.parent)} (created by this run)"


def run_ddc(cases, workdir, install):
    py, status = robpy_python(install)
    if py is None:
        return status
    d = workdir / "ddc"
    d.mkdir(parents=True, exist_ok=True)
    run = [c for c in cases if c.X.shape[1] <= DDC_MAX_FEATURES]
    lines = []
    for c in run:
        np.save(d / f"{c.id}.npy", c.X)
        lines.append(f"{c.id}\t{d / (c.id + '.npy')}")
    (d / "manifest.tsv").write_text("\n".join(lines) + "\n")
    proc = subprocess.run([str(py), str(DDC_RUNNER), str(d / "manifest.tsv"), str(d / "out")],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return f"DDC failed: {proc.stderr.strip()[-500:]}"
    for c in run:
        z = np.load(d / "out" / f"{c.id}.npz")
        if "error" in z.files:
            c.results.setdefault("errors", {})[DDC] = str(z["error"])
            continue
        c.results.setdefault("scores", {})[DDC] = z["row_score"]
        c.results.setdefault("flags", {})[DDC] = z["row_flags"]
        c.results.setdefault("entries", {})[DDC] = np.nan_to_num(np.abs(z["residuals"]), nan=0.0)
        c.results.setdefault("cell_flags", {})[DDC] = z["cell_flags"]
        c.results.setdefault("times", {})[DDC] = float(z["time_s"])
    skipped = len(cases) - len(run)
    return status + (f"; not run on the {skipped} matrices with more than {DDC_MAX_FEATURES} features"
                     if skipped else "")


# -- the methods in this process -----------------------------------------------------------------------
def new_api():
    """True once the estimator has issue 28's parameters (``support_fraction``...)."""
    return "support_fraction" in L1PCA().get_params()


def ours(K, seed, plain):
    kw = dict(backend="numpy", random_state=seed)
    if plain and new_api():
        kw.update(support_fraction=None, cell_robust=False)
    return L1PCA(K, **kw)


def map_cutoffs(est):
    if hasattr(est, "sd_cutoff_"):
        return est.sd_cutoff_, est.od_cutoff_
    s = est.outlier_map_scales_
    return s.sd_cutoff, s.od_cutoff


def timed(fn, min_s=0.05, max_reps=5):
    """(fn(), mean seconds per call): fits shorter than ``min_s`` run again (up to ``max_reps``
    times) so that the millisecond fits of the small sets give a ratio, not clock noise."""
    reps, t0 = 0, time.perf_counter()
    while True:
        out = fn()
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s or reps >= max_reps:
            return out, elapsed / reps


def l2_fit_time(X, K):
    """sklearn PCA(K).fit on X: the unit of every cost ratio (repeated up to 20 ms, mean)."""
    from sklearn.decomposition import PCA

    reps, t0 = 0, time.perf_counter()
    while True:
        PCA(n_components=K).fit(X)
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= 0.02 or reps >= 50:
            return elapsed / reps


def run_python(c, seed):
    from sklearn.covariance import EllipticEnvelope
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor

    X, K = c.X, c.K
    r = c.results
    scores, flags, entries, times = (r.setdefault(k, {}) for k in ("scores", "flags", "entries", "times"))
    errors, cell_flags = r.setdefault("errors", {}), r.setdefault("cell_flags", {})
    r["l2_time"] = l2_fit_time(X, K)

    est, times[OURS] = timed(lambda: ours(K, seed, plain=False).fit(X))
    omap = est.outlier_map(X)
    scores[OURS] = omap.score
    if new_api():  # the contract: score_samples is higher = more normal, -outlier score
        r["sign_ok"] = bool(np.allclose(-est.score_samples(X), omap.score))
    flags[OURS] = est.predict(X) == -1
    entries[OURS] = est.score_entries(X)
    if hasattr(est, "cell_flags"):
        cell_flags[OURS] = est.cell_flags(X)
    r["maps"] = {**r.get("maps", {}), OURS: (omap.sd, omap.od, *map_cutoffs(est))}
    r["n_csteps"] = getattr(est, "n_csteps_", None)

    plain, times[PLAIN] = timed(lambda: ours(K, seed, plain=True).fit(X))
    scores[PLAIN] = plain.outlier_map(X).od
    flags[PLAIN] = plain.predict(X) == -1
    entries[PLAIN] = plain.score_entries(X)

    pca, times[L2] = timed(lambda: PCA(n_components=K).fit(X))
    R = (X - pca.mean_) - ((X - pca.mean_) @ pca.components_.T) @ pca.components_
    scores[L2] = np.sqrt((R * R).sum(axis=1))
    entries[L2] = np.abs(R)
    entries[ZSCORE] = np.abs(X - np.median(X, axis=0)) / robust_sd(X)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MCD's near-singular covariances, LOF's n_neighbors > n
        others = {
            EE: lambda: EllipticEnvelope(random_state=seed).fit(X),
            IFOREST: lambda: IsolationForest(random_state=seed).fit(X),
            LOF: lambda: LocalOutlierFactor().fit(X),
        }
        try:
            from pyod.models.pca import PCA as PyODPCA

            others[PYOD] = lambda: PyODPCA(contamination=FAULT_FRACTION, random_state=seed).fit(X)
        except ImportError as exc:
            errors[PYOD] = f"not installed ({exc})"
        for name, fit in others.items():
            try:
                model, t = timed(fit)
                if name == LOF:
                    s, f = -model.negative_outlier_factor_, model.fit_predict(X) == -1
                elif name == PYOD:
                    s, f = model.decision_scores_, model.labels_ == 1
                else:
                    s, f = -model.score_samples(X), model.predict(X) == -1
                if not np.all(np.isfinite(s)):
                    raise FloatingPointError("non-finite scores")
                scores[name], flags[name], times[name] = s, f, t
            except Exception as exc:  # a detector that cannot handle a shape (MCD at p > n) is n/a
                errors[name] = f"{type(exc).__name__}: {str(exc)[:200]}"


# -- metrics -------------------------------------------------------------------------------------------
def precision_at_n(labels, score):
    n = int(labels.sum())
    return float(labels[np.argsort(-score, kind="stable")[:n]].mean())


def case_metrics(c):
    from sklearn.metrics import roc_auc_score

    r, y = c.results, c.labels
    m = {"auc": {}, "p@n": {}, "recall": {}, "fpr": {}, "locate": {}, "cell_auc": {}, "cell_recall": {},
         "cell_fpr": {}, "time_ratio": {}}
    both = 0 < y.sum() < y.size
    for name, s in r.get("scores", {}).items():
        if both:
            m["auc"][name] = float(roc_auc_score(y, s))
            m["p@n"][name] = precision_at_n(y, s)
    for name, f in r.get("flags", {}).items():
        if y.any():
            m["recall"][name] = float(f[y].mean())
        if (~y).any():
            m["fpr"][name] = float(f[~y].mean())
    for name, t in r.get("times", {}).items():
        m["time_ratio"][name] = t / r["l2_time"]
    if c.sensor is not None:
        has = c.sensor >= 0
        truth = np.zeros(c.X.shape, dtype=bool)
        truth[np.flatnonzero(has), c.sensor[has]] = True
        for name, E in r.get("entries", {}).items():
            m["locate"][name] = 100.0 * float(np.mean(E[has].argmax(axis=1) == c.sensor[has]))
            m["cell_auc"][name] = float(roc_auc_score(truth.ravel(), E.ravel()))
        for name, F in r.get("cell_flags", {}).items():
            m["cell_recall"][name] = float(F[truth].mean())
            m["cell_fpr"][name] = float(F[~truth].mean())
    return m


def aggregate(cases):
    """Mean of each metric over the repeats of a row (a method missing in some repeat: over the rest)."""
    rows = {}
    for c in cases:
        rows.setdefault(c.row_key, []).append(c)
    out = []
    for key, cs in rows.items():
        ms = [case_metrics(c) for c in cs]
        agg = {}
        for metric in ms[0]:
            names = {n for m in ms for n in m[metric]}
            agg[metric] = {n: float(np.mean([m[metric][n] for m in ms if n in m[metric]])) for n in names}
        errors = {}
        for c in cs:
            errors.update(c.results.get("errors", {}))
        t_ours = [c.results["times"][OURS] / c.results["times"][PLAIN] for c in cs]
        out.append(dict(group=key[0], data=key[1], fault=key[2], repeats=len(cs), K=cs[0].K,
                        shape=list(cs[0].X.shape), n_outliers=int(cs[0].labels.sum()), metrics=agg,
                        robust_over_plain=float(np.median(t_ours)), errors=errors, note=cs[0].note,
                        sign_ok=all(c.results.get("sign_ok", True) for c in cs),
                        n_csteps=[c.results.get("n_csteps") for c in cs]))
    return out


def verdict(row):
    """PASS, or MISS with what missed, against issue 28's targets."""
    m, misses = row["metrics"], []
    anchors_auc = {n: v for n, v in m["auc"].items() if n in ANCHORS}
    if OURS in m["auc"] and anchors_auc:
        best = max(anchors_auc, key=anchors_auc.get)
        if m["auc"][OURS] < anchors_auc[best] - AUC_MARGIN:
            misses.append(f"AUC {m['auc'][OURS]:.3f} < {best} {anchors_auc[best]:.3f}")
    cell = {n: v for n, v in m["locate"].items() if n in CELL_ANCHORS}
    if OURS in m["locate"] and cell:
        best = max(cell, key=cell.get)
        if m["locate"][OURS] < cell[best] - LOCATE_MARGIN:
            misses.append(f"cell named {m['locate'][OURS]:.0f}% < {best} {cell[best]:.0f}%")
    reached = [n for n, v in m["recall"].items() if n in ANCHORS and v >= RECALL_TARGET
               and m["fpr"].get(n, 0.0) <= RECALL_ANCHOR_FPR]
    if OURS in m["recall"] and reached and m["recall"][OURS] < RECALL_TARGET:
        best = max(reached, key=lambda n: (m["recall"][n], -m["fpr"].get(n, 0.0)))
        misses.append(f"recall {m['recall'][OURS]:.2f} < 0.9 ({best} {m['recall'][best]:.2f} at FPR "
                      f"{100 * m['fpr'].get(best, 0.0):.1f}%)")
    if row["n_outliers"] == 0 and m["fpr"].get(OURS, 0.0) > CLEAN_FPR_TARGET:
        misses.append(f"clean FPR {100 * m['fpr'][OURS]:.1f}% > 5%")
    if row["robust_over_plain"] > TIME_RATIO_TARGET:
        misses.append(f"fit {row['robust_over_plain']:.1f}x plain")
    return "PASS" if not misses else "MISS: " + "; ".join(misses)


# -- report --------------------------------------------------------------------------------------------
def fmt(v, spec="{:.3f}"):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else spec.format(v)


def methods_present(rows, metric):
    return [n for n in METHODS if any(n in r["metrics"][metric] for r in rows)]


def row_label(r):
    return [r["data"], r["fault"]]


def tables(rows):
    sections = []
    names = methods_present(rows, "auc")
    body = []
    for r in rows:
        a = r["metrics"]["auc"]
        if not a:
            continue
        best = max((n for n in a if n in ANCHORS), key=a.get, default=None)
        cells = []
        for n in names:
            s = fmt(a.get(n))
            cells.append(f"**{s}**" if n == best or (n == OURS and a.get(n, -1) >= a.get(best, 2)) else s)
        body.append(row_label(r) + cells + [fmt(a.get(best)) + f" ({best})" if best else "n/a",
                                            r["verdict"]])
    sections.append(("Detection table: ROC-AUC of the row score (mean over repeats; bold: best anchor, "
                     "and ours where it ties or beats it)",
                     common.md_table(["data", "fault"] + names + ["best anchor", "target"], body)))
    names = methods_present(rows, "p@n")
    body = [row_label(r) + [fmt(r["metrics"]["p@n"].get(n)) for n in names]
            for r in rows if r["metrics"]["p@n"]]
    sections.append(("Precision at n (n = number of outlying rows)",
                     common.md_table(["data", "fault"] + names, body)))
    names = [n for n in METHODS if any(n in r["metrics"]["recall"] or n in r["metrics"]["fpr"]
                                       for r in rows)]
    body = []
    for r in rows:
        m = r["metrics"]
        body.append(row_label(r) + [f"{fmt(m['recall'].get(n), '{:.2f}')} / "
                                    f"{fmt(100 * m['fpr'][n] if n in m['fpr'] else None, '{:.1f}%')}"
                                    for n in names])
    sections.append(("Flags: recall / false-positive rate (each method's own rule: ours and rrcov's the "
                     "outlier map's cutoffs; scikit-learn's and PyOD's their default contamination; "
                     "DDC its row cutoff). Rows named clean have no outliers: the FPR is the target's",
                     common.md_table(["data", "fault"] + names, body)))
    cell_rows = [r for r in rows if r["metrics"]["locate"]]
    if cell_rows:
        locs = [n for n in LOCATORS if any(n in r["metrics"]["locate"] for r in cell_rows)]
        flaggers = [n for n in (OURS, DDC) if any(n in r["metrics"]["cell_recall"] for r in cell_rows)]
        body = []
        for r in cell_rows:
            m = r["metrics"]
            body.append(row_label(r) + [fmt(m["locate"].get(n), "{:.1f}") for n in locs]
                        + [fmt(m["cell_auc"].get(n)) for n in locs]
                        + [f"{fmt(m['cell_recall'].get(n), '{:.2f}')} / "
                           f"{fmt(100 * m['cell_fpr'][n] if n in m['cell_fpr'] else None, '{:.2f}%')}"
                           for n in flaggers])
        sections.append(("Cells: % of faulty rows whose top cell is the faulty one; cell-level ROC-AUC; "
                         "cell flags recall / FPR",
                         common.md_table(["data", "fault"] + [f"named: {n}" for n in locs]
                                         + [f"cell AUC: {n}" for n in locs]
                                         + [f"cell flags: {n}" for n in flaggers], body)))
    return sections


def cost_table(rows):
    groups = {}
    for r in rows:
        groups.setdefault(r["data"], []).append(r)
    names = methods_present(rows, "time_ratio")
    body = []
    for data, rs in groups.items():
        med = {n: np.median([r["metrics"]["time_ratio"][n] for r in rs if n in r["metrics"]["time_ratio"]])
               for n in names if any(n in r["metrics"]["time_ratio"] for r in rs)}
        body.append([data] + [fmt(med.get(n), "{:.1f}") for n in names]
                    + [fmt(float(np.median([r["robust_over_plain"] for r in rs])), "{:.2f}")])
    return ("Cost: fit time as a multiple of scikit-learn's PCA(K).fit on the same matrix (median over "
            "the rows of each data set; R's times measured inside R, DDC's inside its process), and our "
            "robust fit's time over the plain L1-BF fit's (target <= 5)",
            common.md_table(["data"] + names + ["ours / plain L1-BF"], body))


def summary_lines(rows):
    n_miss = sum(r["verdict"] != "PASS" for r in rows)
    lines = [f"- rows: {len(rows)}, PASS {len(rows) - n_miss}, MISS {n_miss}"]
    for r in rows:
        if r["verdict"] != "PASS":
            lines.append(f"  - {r['data']} / {r['fault']}: {r['verdict'][6:]}")
    if not all(r["sign_ok"] for r in rows):
        lines.append("- WARNING: -score_samples differs from outlier_map(X).score in some rows")
    return lines


def plot_auc(args, rows):
    import matplotlib.pyplot as plt

    rs = [r for r in rows if r["metrics"]["auc"]]
    names = methods_present(rs, "auc")
    fig, ax = plt.subplots(figsize=(max(8.0, 0.32 * len(rs) + 3), 5.5))
    x = np.arange(len(rs))
    for j, n in enumerate(names):
        y = [r["metrics"]["auc"].get(n, np.nan) for r in rs]
        style = dict(marker="*", markersize=12, color="crimson", zorder=5) if n == OURS else \
            dict(marker="o", markersize=5, alpha=0.75)
        ax.plot(x + (0 if n == OURS else 0.04 * (j - len(names) / 2)), y, linestyle="none", label=n, **style)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{r['data'].split(' (')[0]} | {r['fault']}" for r in rs], rotation=75, ha="right",
                       fontsize=7)
    ax.set_ylabel("ROC-AUC of the row score")
    ax.set_ylim(min(0.4, np.nanmin([min(r["metrics"]["auc"].values()) for r in rs])) - 0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title("Outlying-row detection: ours (red star) against the anchors")
    fig.tight_layout()
    return common.save_figure(fig, args, "detection_auc.png")


def plot_maps(args, cases):
    """Outlier maps (SD against OD, both cutoffs) of ours and ROBPCA on the classic sets."""
    import matplotlib.pyplot as plt

    cs = [c for c in cases if c.group == "classic"] or [c for c in cases if c.labels.any()][:2]
    methods = [n for n in (OURS, ROBPCA, GRID) if any(n in c.results.get("maps", {}) for c in cs)]
    if not cs or not methods:
        return None
    fig, axes = plt.subplots(len(methods), len(cs), figsize=(3.4 * len(cs), 3.0 * len(methods)),
                             squeeze=False)
    for j, c in enumerate(cs):
        for i, n in enumerate(methods):
            ax = axes[i, j]
            if n not in c.results.get("maps", {}):
                ax.set_axis_off()
                continue
            sd, od, csd, cod = c.results["maps"][n]
            ax.scatter(sd[~c.labels], od[~c.labels], s=10, color="0.4", label="regular")
            ax.scatter(sd[c.labels], od[c.labels], s=18, color="crimson", label="documented outlier")
            ax.axvline(csd, color="k", lw=0.8, ls="--")
            ax.axhline(cod, color="k", lw=0.8, ls="--")
            for k in np.flatnonzero(c.labels):
                ax.annotate(str(k + 1), (sd[k], od[k]), fontsize=6)
            ax.set_title(f"{c.data.split(' (')[0]}: {n}", fontsize=8)
            ax.set_xlabel("score distance", fontsize=7)
            ax.set_ylabel("orthogonal distance", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return common.save_figure(fig, args, "detection_maps.png")


def to_json(rows, statuses, cfg, args, elapsed):
    def clean(o):
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, (np.floating, float)):
            return None if math.isnan(o) else float(o)
        if isinstance(o, np.integer):
            return int(o)
        return o

    return json.dumps(clean(dict(git=args.git_revision, seed=args.seed, quick=args.quick, wall_s=elapsed,
                                 anchors=statuses, config={k: v for k, v in cfg.items()}, rows=rows)),
                      indent=1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny configuration (seconds): a smoke run")
    parser.add_argument("--out", type=Path, default=common.RESULTS,
                        help=f"folder for detection.md/.json/.png (default: {common.RESULTS})")
    parser.add_argument("--seed", type=int, default=common.DEFAULT_SEED,
                        help=f"root seed (default: {common.DEFAULT_SEED})")
    parser.add_argument("--no-r", action="store_true", help="skip the R anchors (ROBPCA, PcaGrid)")
    parser.add_argument("--no-robpy", action="store_true", help="skip robpy's DDC")
    parser.add_argument("--no-install", action="store_true",
                        help=f"never create {ROBPY_VENV.name}; DDC runs only if it exists already")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t_start = common.setup(args)
    cfg = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="l1pca-detection-") as tmp:
        workdir = Path(tmp)
        statuses = []
        cases = simulation_cases(cfg, args.seed)
        if args.no_r:
            statuses.append("R anchors skipped: --no-r")
        elif shutil.which("Rscript") is None:
            statuses.append("R anchors skipped: Rscript not found (apt-get install r-base-core "
                            "r-cran-rrcov); the classic data sets, which come from R's packages, too")
        else:
            classic, info = load_classic(cfg["classic"], workdir)
            cases += classic
            statuses.append(f"classic data sets: {info}" if classic else f"classic data sets skipped: {info}")
        cases += injected_cases(cfg, args.seed)
        print(f"{len(cases)} matrices", file=sys.stderr, flush=True)
        if not args.no_r and shutil.which("Rscript") is not None:
            statuses.append(run_r(cases, workdir))
        statuses.append("DDC skipped: --no-robpy" if args.no_robpy else
                        run_ddc(cases, workdir, install=not args.no_install))
        for line in statuses:
            print(line, file=sys.stderr, flush=True)
        for i, c in enumerate(cases):
            run_python(c, seed=c.rep)
            if (i + 1) % 20 == 0:
                print(f"  {i + 1}/{len(cases)} matrices scored", file=sys.stderr, flush=True)
    rows = aggregate(cases)
    for r in rows:
        r["verdict"] = verdict(r)
    elapsed = time.perf_counter() - t_start
    figures = [plot_auc(args, rows), plot_maps(args, cases)]
    write_report(args, cfg, rows, cases, statuses, elapsed, [f for f in figures if f])
    (args.out / "detection.json").write_text(to_json(rows, statuses, cfg, args, elapsed))
    return 0


def write_report(args, cfg, rows, cases, statuses, elapsed, figures):
    api = "issue 28's API (support_fraction, cell_robust)" if new_api() else \
        "the API before issue 28 (no robust fit): ours = the plain fit scored by the outlier map"
    designs = ", ".join(f"{d}: n={DESIGNS[d][0]}, p={DESIGNS[d][1]}, k={DESIGNS[d][2]}, eigenvalues "
                        f"{np.array2string(DESIGNS[d][3][:6], precision=3, separator=', ')[1:-1]}"
                        f"{', ...' if DESIGNS[d][1] > 6 else ''}" for d in cfg["sim_designs"])
    setup = [
        ("ours", f"`L1PCA(K, backend='numpy', random_state=rep)` with its defaults ({api}); row score "
                 "`outlier_map(X).score` (= -score_samples), flags `predict == -1`, cells `score_entries`; "
                 "plain: `support_fraction=None, cell_robust=False`, scored by its orthogonal distance"),
        ("simulation", f"{designs}; outliers replace a share eps of the rows as tight clusters "
                       f"(covariance Sigma/{SIM_SPREAD:g}): orthogonal = {SIM_SHIFT:g} along e_(k+1), good "
                       f"leverage = {SIM_SHIFT:g} sqrt(lambda_1) along e_1, bad leverage = both; mixed = "
                       "thirds; all count as outliers; repeats "
                       + ", ".join(f"{d} {n}" for d, n in cfg["sim_repeats"].items())
                       + " (after Hubert, Rousseeuw & Vanden Branden 2005, Technometrics 47, section 4)"),
        ("classic sets", "; ".join(f"{n}: K={CLASSIC[n][0]}, {CLASSIC[n][2]}" for n in cfg["classic"])
         + "; all but octane standardised per column (median, 1.4826 MAD); " + CLASSIC_K_RULE
         if cfg["classic"] else "none"),
        ("injected faults", f"scikit-learn's {', '.join(cfg['injected'])}; {100 * FAULT_FRACTION:.0f}% "
                            f"of rows: row noise N(0, ({ROW_NOISE:g} s_j)^2) on every feature; cell offset "
                            f"+-{CELL_OFFSET:g} s_j on one random feature; stuck at 0 (where it moves the "
                            f"reading >= 3 s_j); glitch: the same feature +-{CELL_OFFSET:g} s_j in 10% / 20% "
                            "of rows; s_j = 1.4826 MAD on the clean data; features with < 3 distinct values "
                            "dropped (diabetes' sex); diabetes comes centred, so its 'stuck at 0' moves an "
                            "extreme reading to the column mean; units: RobustScaler fitted on the "
                            f"faulty matrix; K: 80% of the clean L2 variance, at most {K_MAX}; "
                            f"{cfg['injected_repeats']} injections per row"
                            + (f"; subsampled to {cfg['subsample']} rows" if cfg["subsample"] else "")),
        ("targets (issue 28)", f"AUC >= best anchor - {AUC_MARGIN}; faulty cell named >= best cell anchor "
                               f"- {LOCATE_MARGIN:g} points; recall >= {RECALL_TARGET} where an anchor "
                               f"reaches it (with FPR <= {100 * RECALL_ANCHOR_FPR:.0f}%); FPR <= "
                               f"{100 * CLEAN_FPR_TARGET:.0f}% on clean rows; robust fit "
                               f"<= {TIME_RATIO_TARGET:g}x the plain L1-BF fit; anchors = every method but "
                               "ours, our plain fit included"),
        ("anchors", "; ".join(statuses)),
    ]
    lines = ["# Faulty-measurement detection against the robust-statistics anchors", "",
             "Issue 28's benchmark (`bench/detection.py`). Every score is higher = more outlying; every "
             "method is fitted on, and scores, the contaminated matrix.", "", "## Set-up", "",
             "\n".join(common.setup_lines(args, setup, elapsed)), "", "## Verdict", "",
             "\n".join(summary_lines(rows)), ""]
    for heading, body in tables(rows) + [cost_table(rows)]:
        lines += [f"## {heading}", "", body, ""]
    errors = sorted({f"{n}: {e}" for r in rows for n, e in r["errors"].items()})
    if errors:
        lines += ["## Methods that could not run on some matrices (n/a above)", ""]
        lines += [f"- {e}" for e in errors] + [""]
    if figures:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    text = "\n".join(lines)
    (args.out / "detection.md").write_text(text)
    print(text)
    print(f"wrote {args.out / 'detection.md'}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
