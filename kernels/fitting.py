"""``fit_many``: the estimator's fit (centre, solve, robust threshold) for many matrices in one call.

This is :meth:`l1pca.kernels.L1PCA.fit` without the estimator object: the same validation, the same
:mod:`l1pca.kernels.scoring` functions and one :func:`l1pca.kernels.solve_batch` call for the whole
list, so the gRPC service batches concurrent requests without doing any arithmetic of its own.
``fit_many([X], K, seeds=[s], backend="numpy")[0]`` equals
``L1PCA(K, random_state=s, backend="numpy").fit(X)`` field for field.

One answer per matrix, whatever the batch
-----------------------------------------
With a fixed backend, a matrix gets the same answer alone and in any batch: the batched JAX path
pads buckets and batches with zeros, which change no decision, and every rounding-sensitive choice
(ties between flips, the warm start's Procrustes factor) is made by formulas shared by all paths
(``tests/kernels/test_fitting.py`` checks it). ``backend="auto"`` may pick NumPy for a lone matrix
and JAX for a batch; the two agree too, but not to the last bit, and L1-BF's path can turn on a
near-tie, so the service pins one backend for its life.
"""
from __future__ import annotations

import numbers

import numpy as np

from ._validation import check_matrix, check_n_components, check_random_state
from .detection import DetectorFit, choose_n_components, fit_detectors, fit_residual_scale
from .errors import InputError, InputTypeError
from .model import Model
from .options import (
    DEFAULT_SUPPORT_FRACTION,
    SolveOptions,
    check_center,
    check_contamination,
    check_n_components_choice,
    check_support_fraction,
)
from .scoring import center_of, fit_outlier_map, outlier_map, residuals, sample_scores
from .solve import solve


def fit_many(Xs, n_components=1, *, options=None, center="median", seeds=None, contamination="auto",
             support_fraction=DEFAULT_SUPPORT_FRACTION, cell_robust=True, devices=None, progress=None,
             **option_fields):
    """Fit one detector model per matrix, with one batched solver call for the L1-BF fits.

    Parameters
    ----------
    Xs : sequence of array-like (n_samples_i, n_features_i)
        Shapes may differ.
    n_components : int or "auto", default=1
        K, the same for every matrix; each needs ``K <= min(n_samples_i, n_features_i)``. "auto"
        chooses K per matrix (:func:`l1pca.kernels.detection.choose_n_components`).
    options : SolveOptions, optional
        How to solve (method, n_init, backend, ...). ``**option_fields`` (e.g. ``method="l2"``,
        ``backend="numpy"``) make or amend it: ``fit_many(Xs, 2, backend="numpy")`` is
        ``fit_many(Xs, 2, options=SolveOptions(backend="numpy"))``.
    center : {"median", "mean", "none"} or None, default="median"
    seeds : sequence of int or None, optional
        One seed per matrix (``None`` entries draw fresh entropy); default: all ``None``.
    contamination : "auto" or float in (0, 0.5], default="auto"
        "auto": a sample is an outlier outside either cutoff of the outlier map; p: the share p of
        training samples with the highest outlier scores.
    support_fraction : float in [0.5, 1] or None, default=0.75
        The robust fit's share of rows (:mod:`l1pca.kernels.detection`); None or 1.0: the plain fit
        of every row (the paper's problem on the centred data).
    cell_robust : bool, default=True
        Screen faulty cells before and during the fit.
    devices : "all", int or list of jax devices, optional
        Fit each matrix on the sharded solver over these devices (:func:`l1pca.kernels.solve`). The
        fit is then the plain one (the detector's steps need the matrix in host memory): the Model
        records ``support_fraction=None, cell_robust=False``.
    progress : callable, optional
        ``progress(done, total)`` as L1-BF starts finish.

    Returns
    -------
    list of Model, one per matrix, in order (with ``training_scores`` and ``seed`` when given).
    """
    if options is None:
        options = SolveOptions(**option_fields)
    elif option_fields:
        options = options.replace(**option_fields)
    center = check_center(center)
    contamination = check_contamination(contamination)
    support_fraction = check_support_fraction(support_fraction)
    cell_robust = _check_flag(cell_robust, "cell_robust")
    n_components = check_n_components_choice(n_components)
    mats = [check_matrix(X, name=f"Xs[{i}]") for i, X in enumerate(Xs)]
    if seeds is None:
        seeds = [None] * len(mats)
    seeds = list(seeds)
    if len(seeds) != len(mats):
        raise InputError(f"seeds has {len(seeds)} entries for {len(mats)} matrices; give one per matrix")
    # Generators, not seeds, go on to the solver: it draws the starts from these (one construction
    # per matrix), and a negative or non-integer seed is refused here with a message.
    rngs = [check_random_state(s) for s in seeds]
    Ks = [choose_n_components(X, center, cell_robust=cell_robust) if n_components == "auto"
          else check_n_components(n_components, *X.shape) for X in mats]
    if not mats:
        return []
    if devices is not None:
        support_fraction, cell_robust = None, False
    models = [None] * len(mats)
    for K in sorted(set(Ks)):  # one batched fit per K ("auto" may choose several)
        idx = [i for i, k in enumerate(Ks) if k == K]
        fitted = _fit_same_k([mats[i] for i in idx], K, options, center, [rngs[i] for i in idx],
                             [seeds[i] for i in idx], contamination, support_fraction, cell_robust,
                             devices, progress)
        for i, m in zip(idx, fitted):
            models[i] = m
    return models


def _fit_same_k(mats, K, options, center, rngs, seeds, contamination, support_fraction, cell_robust,
                devices, progress):
    if devices is not None:
        # The sharded solver takes one matrix at a time (each is large enough to fill the mesh).
        o = options
        fits = []
        for X, rng in zip(mats, rngs):
            c = center_of(X, center)
            res = solve(X - c, K, method=o.method, n_init=o.n_init, backend=o.backend,
                        max_flips=o.max_flips, tol=o.tol, warm_start=o.warm_start,
                        pair_moves=o.pair_moves, n_agree=o.n_agree, random_state=rng, devices=devices,
                        progress=progress)
            fits.append(DetectorFit(center=c, components=res.components,
                                    support=np.ones(X.shape[0], dtype=bool), n_csteps=0,
                                    n_flips=res.n_flips, converged=res.converged, backend=res.backend,
                                    cell_center=None, cell_scale=None))
    else:
        fits = fit_detectors(mats, K, options, center=center, rngs=rngs,
                             support_fraction=support_fraction, cell_robust=cell_robust,
                             progress=progress)
    return [_model(X, fit, options.method, seed, contamination, support_fraction, cell_robust)
            for X, fit, seed in zip(mats, fits, seeds)]


def _model(X, fit, method, seed, contamination, support_fraction, cell_robust):
    """The Model of one fit: the outlier map's scales and cutoffs, the cell scales, the thresholds,
    all from the training rows (robust statistics over every row, outliers included)."""
    c, Q = fit.center, fit.components
    scales = fit_outlier_map(X, c, Q)
    od = sample_scores(residuals(X, c, Q))
    if contamination == "auto":
        score_cutoff = 1.0
    else:
        train = outlier_map(X, c, Q, scales).score
        score_cutoff = float(np.quantile(train, 1.0 - contamination))
    residual_scale = fit_residual_scale(X, c, Q, cell_center=fit.cell_center, cell_scale=fit.cell_scale)
    return Model(components=Q.T.copy(), center=c, threshold=scales.od_cutoff, method=method,
                 objective=float(np.abs((X - c) @ Q).sum()), n_samples=X.shape[0],
                 backend=fit.backend, n_flips=fit.n_flips, converged=fit.converged,
                 seed=_int_or_none(seed), training_scores=od, score_scales=scales.score_scales,
                 sd_cutoff=scales.sd_cutoff, od_cutoff=scales.od_cutoff, score_cutoff=score_cutoff,
                 cell_center=fit.cell_center, cell_scale=fit.cell_scale, residual_scale=residual_scale,
                 support_fraction=support_fraction, cell_robust=cell_robust, n_csteps=fit.n_csteps,
                 support=fit.support)


def _check_flag(value, name):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InputTypeError(f"{name} must be True or False; got {value!r}")


def _int_or_none(seed):
    return int(seed) if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) else None
