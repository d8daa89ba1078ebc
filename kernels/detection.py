"""The detector's fit: L1 principal components that outlying rows and faulty cells cannot pull.

``solve`` answers the paper's problem, ``max ||X Q||_1`` over all rows as given. That objective weighs
each row by its length, so far-out rows still rotate the subspace toward themselves, and a sensor that
is wrong in many rows becomes an axis of its own (``docs/decisions/0013-robust-detection.md`` has the
numbers). The detector caps both pulls, with L1-BF at its core:

1. **Cells first** (``cell_robust``): each feature's median and scaled MAD; cells beyond
   :data:`CELL_CUTOFF` robust SDs are clipped to that bound in the data the fit sees (winsorised,
   as DDC's first, univariate step flags them), so a glitching sensor cannot dominate the start.
2. **A start outliers cannot pull:** the ``h`` least outlying rows by the Stahel-Donoho
   outlyingness over directions through pairs of rows (ROBPCA's first step), where a cluster of
   outliers stands out along the directions that separate it.
3. **C-steps** (``support_fraction``, ROBPCA's and MCD's loop): keep the ``h = ceil(f n)`` rows
   closest to the subspace (orthogonal distance), refit L1-BF on them (the first time with every
   start, then warm-started from the previous basis), until the support stops changing
   (at most :data:`MAX_CSTEPS` times). With ``cell_robust`` each step also replaces the cells flagged
   against the current fit (standardised cell residual over :data:`CELL_CUTOFF`) by their expected
   values, so the rows that hold them count with their other cells.

Cells are scored against the fit (:func:`cell_residuals`): each row is projected by least squares
on its unflagged cells only (a wrong cell would otherwise leak residual into the correlated ones),
the residual of each cell is divided by a robust scale of that feature's training residuals, and
the largest ``|z|`` names the faulty sensor, in any units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._validation import check_n_components
from .options import SolveOptions
from .reduce import procrustes, search_data, sign
from .scoring import MAD_SCALE, center_of, fit_od_cutoff

CELL_CUTOFF = 2.5758293035489004
"""``sqrt(chi2_1(0.99))``: a cell whose standardised value or residual exceeds it is flagged (DDC's
cutoff, Rousseeuw & Van den Bossche 2018); 1% of the cells of clean Gaussian data."""

MAX_CSTEPS = 10
"""Cap on the C-steps of the robust fit (each one an L1-BF search warm-started from the last)."""

RESIDUAL_SCALE_FLOOR = 0.5
"""Residual scales are at least this share of their median over the features (see
:func:`fit_residual_scale`; ``docs/decisions/0013-robust-detection.md``)."""

SUBSPACE_TOL = 1e-2
"""C-steps also stop when a step moves the subspace less than this (sine of the largest principal
angle, about half a degree): near the support's edge, rows within the noise of each other swap in
and out without end."""

CELL_ITERATIONS = 3
"""Cap on the rounds of (project on unflagged cells, flag) when scoring cells."""

AUTO_DISPERSION = 0.8
"""``n_components="auto"``: the smallest K whose robust dispersion reaches this share (ROBPCA's 80%)."""

AUTO_MAX_COMPONENTS = 10
"""... and at most this many components (ROBPCA's ``kmax``)."""


def robust_scale(A, axis=0):
    """``1.4826 * MAD`` along ``axis``; a zero scale (over half the values equal) falls back to
    ``1.2533 * mean |a - median|`` (the same estimate for Gaussian data), then to 1."""
    if A.ndim == 2 and axis == 0:
        A = np.ascontiguousarray(A.T)  # each column's values contiguous: the partitions run 3-5x faster
        axis = 1
    med = np.median(A, axis=axis, keepdims=True)
    dev = np.abs(A - med)
    s = MAD_SCALE * np.median(dev, axis=axis)
    mean_dev = 1.2533 * dev.mean(axis=axis)
    return np.where(s > 0, s, np.where(mean_dev > 0, mean_dev, 1.0))


def column_location_scale(X):
    """Each feature's median and robust scale: what the cell screen compares raw values with."""
    return np.median(np.ascontiguousarray(X.T), axis=1), robust_scale(X, axis=0)


def clip_cells(X, location, scale):
    """X with every cell pulled back to ``location +- CELL_CUTOFF * scale`` (winsorised)."""
    return np.clip(X, location - CELL_CUTOFF * scale, location + CELL_CUTOFF * scale)


def project_on_cells(Xc, Q, flags):
    """Scores ``t`` (n, K) of each centred row by least squares on its unflagged cells:
    ``argmin_t sum_{j unflagged} (x_j - Q_j t)^2``. A row with fewer than K + 1 unflagged cells, or
    whose unflagged cells do not determine ``t``, is projected on every cell (``t = Q^T x``)."""
    if flags is None or not flags.any():
        return Xc @ Q
    n, K = Xc.shape[0], Q.shape[1]
    W = (~flags).astype(np.float64)
    G = np.einsum("nd,dk,dl->nkl", W, Q, Q)
    b = (W * Xc) @ Q
    ok = W.sum(axis=1) >= K + 1
    eig_min = np.linalg.eigvalsh(G)[:, 0] if n else np.empty(0)
    ok &= eig_min > 1e-8
    T = Xc @ Q
    if ok.any():
        T[ok] = np.linalg.solve(G[ok], b[ok][..., None])[..., 0]
    return T


@dataclass(frozen=True)
class CellFit:
    """Cell scores of rows against a fit: scores ``t`` (projection on unflagged cells), raw residuals
    ``x - c - Q t``, standardised residuals ``z`` and the flags ``|z| > CELL_CUTOFF``."""

    scores: np.ndarray
    residuals: np.ndarray
    z: np.ndarray
    flags: np.ndarray


def cell_residuals(X, center, Q, residual_scale, *, cell_center=None, cell_scale=None) -> CellFit:
    """Standardised cell residuals of X (n, d) against centre, basis Q (d, K) and the features'
    residual scales. With ``cell_center`` / ``cell_scale`` (cell-robust fits), the cells beyond
    :data:`CELL_CUTOFF` robust SDs of their feature start flagged, and up to
    :data:`CELL_ITERATIONS` rounds re-project each row on its unflagged cells and re-flag."""
    Xc = X - center
    flags = None
    if cell_center is not None:
        flags = np.abs(X - cell_center) > CELL_CUTOFF * cell_scale
    rounds = CELL_ITERATIONS if cell_center is not None else 1
    for _ in range(rounds):
        T = project_on_cells(Xc, Q, flags)
        R = Xc - T @ Q.T
        Z = R / residual_scale
        new = np.abs(Z) > CELL_CUTOFF
        if cell_center is None or (flags is not None and np.array_equal(new, flags)):
            flags = new
            break
        flags = new
    return CellFit(T, R, Z, flags)


def fit_residual_scale(X, center, Q, *, cell_center=None, cell_scale=None):
    """Robust scale of each feature's training residuals (d,). Cell-robust: residuals from rows
    projected on their unflagged cells (screened by their raw values), so a faulty cell inflates
    no other feature's scale; a zero scale (the subspace holds the feature) falls back as
    :func:`robust_scale` does."""
    Xc = X - center
    flags = None if cell_center is None else np.abs(X - cell_center) > CELL_CUTOFF * cell_scale
    R = Xc - project_on_cells(Xc, Q, flags) @ Q.T
    scale = robust_scale(R, axis=0)
    # A feature the subspace predicts almost exactly has a tiny residual scale, and any residual a
    # fault elsewhere leaks onto it would get a huge z and the blame: floor the scales.
    return np.maximum(scale, RESIDUAL_SCALE_FLOOR * np.median(scale))


def orthogonal_distance(Xc, Q):
    return np.sqrt(((Xc - (Xc @ Q) @ Q.T) ** 2).sum(axis=1))


def subspace_distance(Q1, Q2):
    """Sine of the largest principal angle between the spans of Q1 and Q2 (orthonormal, d x K)."""
    s = np.linalg.svd(Q1.T @ Q2, compute_uv=False)
    return float(np.sqrt(max(0.0, 1.0 - float(s.min()) ** 2)))


OUTLYINGNESS_DIRECTIONS = 250
"""Directions of the Stahel-Donoho outlyingness that picks the first support (ROBPCA's 250)."""


OUTLYINGNESS_SAMPLE = 4096
"""Rows a direction's median and MAD are taken from (all rows up to this many)."""

OUTLYINGNESS_CHUNK = 4096


def outlyingness(X):
    """Stahel-Donoho outlyingness of each row (n,): the largest ``|x v - med| / MAD`` over
    :data:`OUTLYINGNESS_DIRECTIONS` directions ``v``, each through two rows, as ROBPCA's first step.
    A cluster of outliers, which the normalised rows of spherical PCA would follow, lies far from
    the median along the directions that separate it. The pairs come from a fixed generator, so a
    matrix always gets the same support."""
    n, d = X.shape
    if n < 2:
        return np.zeros(n)
    rng = np.random.default_rng(0)
    if d == 1:
        V = np.ones((1, 1))  # one direction only
    else:
        pairs = rng.integers(0, n, size=(OUTLYINGNESS_DIRECTIONS, 2))
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        V = (X[pairs[:, 0]] - X[pairs[:, 1]]).T  # (d, m)
        norms = np.sqrt((V * V).sum(axis=0))
        V = V[:, norms > 0] / norms[norms > 0]
    if V.shape[1] == 0:
        return np.zeros(n)
    # Each direction's median and MAD from at most OUTLYINGNESS_SAMPLE rows: the medians of a
    # million projections per direction would cost more than the fit they start.
    sub = X if n <= OUTLYINGNESS_SAMPLE else X[np.sort(rng.choice(n, OUTLYINGNESS_SAMPLE, replace=False))]
    P = V.T @ sub.T  # (m, rows): each direction's projections contiguous, for the partitions
    med = np.median(P, axis=1)
    mad = np.median(np.abs(P - med[:, None]), axis=1)
    ok = mad > 0
    if not ok.any():
        return np.zeros(n)
    V, med, inv = V[:, ok], med[ok], 1.0 / mad[ok]
    out = np.empty(n)
    for a in range(0, n, OUTLYINGNESS_CHUNK):  # row blocks: no n x 250 temporaries
        block = X[a:a + OUTLYINGNESS_CHUNK] @ V
        block -= med
        np.abs(block, out=block)
        block *= inv
        out[a:a + OUTLYINGNESS_CHUNK] = block.max(axis=1)
    return out


def choose_n_components(X, center="median", *, cell_robust=True):
    """``n_components="auto"``: the smallest K whose share of the dispersion reaches
    :data:`AUTO_DISPERSION`, at most :data:`AUTO_MAX_COMPONENTS`.

    As ROBPCA's default: the eigenvalues of the covariance of the 75% least outlying rows
    (:func:`outlyingness`) of the (cell-clipped) data, the share of their sum.
    """
    if cell_robust:
        X = clip_cells(X, *column_location_scale(X))
    S = _smallest(outlyingness(X), support_size(X.shape[0], 0.75))
    Xs = X[S] - center_of(X[S], center)
    disp = np.linalg.svd(Xs, compute_uv=False) ** 2
    share = np.cumsum(disp) / disp.sum() if disp.sum() > 0 else np.ones_like(disp)
    K = int(np.searchsorted(share, AUTO_DISPERSION - 1e-12) + 1)
    return max(1, min(K, AUTO_MAX_COMPONENTS, min(X.shape)))


@dataclass
class DetectorFit:
    """What :func:`fit_detectors` returns per matrix."""

    center: np.ndarray  # (d,)
    components: np.ndarray  # (d, K), canonical order and signs
    support: np.ndarray  # (n,) bool: the rows of the last fit
    n_csteps: int
    n_flips: int
    converged: bool
    backend: str
    cell_center: np.ndarray | None  # (d,), cell-robust fits only
    cell_scale: np.ndarray | None


def support_size(n_samples, support_fraction):
    return n_samples if support_fraction is None else max(1, math.ceil(support_fraction * n_samples))


def fit_detectors(mats, K, opts: SolveOptions, *, center, rngs, support_fraction, cell_robust,
                  progress=None) -> list[DetectorFit]:
    """The robust fit of each matrix (module docstring), all matrices in lockstep so that the first
    L1-BF fit of every matrix is one batched :func:`l1pca.kernels.solve.solve_many` call. Each
    matrix's answer depends on it alone (its own starts, its own support)."""
    from .solve import solve_many

    robust = support_fraction is not None
    work, cells = [], []
    for X in mats:
        if cell_robust:
            loc, scl = column_location_scale(X)
            cells.append((loc, scl))
            work.append(clip_cells(X, loc, scl))
        else:
            cells.append((None, None))
            work.append(X)
    supports = []
    for X in mats:
        h = support_size(X.shape[0], support_fraction)
        if robust and h < X.shape[0]:
            supports.append(_smallest(outlyingness(X), h))
        else:
            supports.append(np.ones(X.shape[0], dtype=bool))
    centers = [center_of(Xw[S], center) for Xw, S in zip(work, supports)]
    for Xw, S in zip(work, supports):
        check_n_components(K, int(S.sum()), Xw.shape[1])
    first = solve_many([Xw[S] - c for Xw, S, c in zip(work, supports, centers)], K, opts,
                       random_state=rngs, progress=progress)
    fits = []
    for X, Xw, S, c, res, (loc, scl) in zip(mats, work, supports, centers, first, cells):
        Q, flips, conv, steps = res.components, res.n_flips, res.converged, 0
        # Phase 1: C-steps on the clipped data until the support stops changing. Phase 2
        # (cell-robust): the cells flagged against that fit are replaced by their expected values,
        # once, then a refit and C-steps again. Flags are not re-derived at every step: cells near
        # the cutoff would flip back and forth.
        # Rows that may enter the support: all, until phase 2 sets aside the rows with too many
        # deviating cells to be repaired (their capped cell distance beyond its cutoff).
        eligible = np.ones(X.shape[0], dtype=bool)
        for phase in (1, 2):
            refit = False
            if phase == 2:
                if not cell_robust:
                    break
                s_res = fit_residual_scale(X, c, Q, cell_center=loc, cell_scale=scl)
                cf = cell_residuals(X, c, Q, s_res, cell_center=loc, cell_scale=scl)
                Xw = np.where(cf.flags, c + cf.scores @ Q.T, X)
                capped = np.sqrt(((s_res * np.minimum(np.abs(cf.z), CELL_CUTOFF)) ** 2).sum(axis=1))
                eligible = capped <= fit_od_cutoff(capped)
                if int(eligible.sum()) < int(S.sum()):
                    eligible[:] = True  # too many to set aside: the support's trimming does it
                refit = True  # the data changed: fit them at least once
            while steps < MAX_CSTEPS:
                S_new = S
                if robust:
                    S_new = _smallest(np.where(eligible, orthogonal_distance(X - c, Q), np.inf),
                                      int(S.sum()))
                if np.array_equal(S_new, S) and not refit:
                    break
                S, refit = S_new, False
                c = center_of(Xw[S], center)
                Q_old = Q
                Q, n, conv = refine(Xw[S] - c, Q, opts)
                flips += n
                steps += 1
                if subspace_distance(Q, Q_old) < SUBSPACE_TOL:
                    break  # rows at the support's edge swap within the noise; the fit stays put
        if robust:
            # Reweighting (ROBPCA's last step): the h-subset holds the rows nearest the fit, which
            # biases it toward itself on clean data; refit on every row within the OD cutoff.
            od = orthogonal_distance(X - c, Q)
            keep = eligible & (od <= fit_od_cutoff(od[eligible]))
            if keep.sum() > K and not np.array_equal(keep, S):
                S = keep
                c = center_of(Xw[S], center)
                Q, n, conv = refine(Xw[S] - c, Q, opts)
                flips += n
        fits.append(DetectorFit(center=c, components=Q, support=S, n_csteps=steps, n_flips=flips,
                                converged=conv, backend=res.backend, cell_center=loc, cell_scale=scl))
    return fits


def _smallest(values, h):
    """Boolean mask of the h smallest values (ties by index, so it is deterministic)."""
    mask = np.zeros(values.shape[0], dtype=bool)
    mask[np.argsort(values, kind="stable")[:h]] = True
    return mask


def refine(Xc, Q, opts: SolveOptions):
    """One L1-BF search on Xc started from ``sgn(Xc Q)`` (the last C-step's basis); the result in
    :func:`l1pca.kernels.solve.solve`'s canonical order and signs."""
    from .solve import _finish, host_search, solve_many

    if opts.method != "bitflip":  # the other methods have no start to warm: solve again
        res = solve_many([Xc], Q.shape[1], opts)[0]
        return res.components, res.n_flips, res.converged
    Y, _ = search_data(Xc)
    res = host_search(Y, sign(Xc @ Q), opts)
    B = np.asarray(res.signs)
    out = _finish(Xc, procrustes(Xc.T @ B), B, "numpy", "bitflip")
    return out.components, int(res.n_flips), bool(res.converged)
