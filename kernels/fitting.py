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
from .errors import InputError
from .model import Model
from .options import SolveOptions, check_center, check_contamination
from .scoring import center_of, residuals, robust_threshold, sample_scores
from .solve import equal_shapes, solve, solve_many


def fit_many(Xs, n_components=1, *, options=None, center="median", seeds=None, contamination="auto",
             n_mad=3.0, devices=None, progress=None, **option_fields):
    """Fit one L1-PCA model per matrix, with one batched solver call.

    Parameters
    ----------
    Xs : sequence of array-like (n_samples_i, n_features_i)
        Shapes may differ.
    n_components : int, default=1
        K, the same for every matrix; each needs ``K <= min(n_samples_i, n_features_i)``.
    options : SolveOptions, optional
        How to solve (method, n_init, backend, ...). ``**option_fields`` (e.g. ``method="l2"``,
        ``backend="numpy"``) make or amend it: ``fit_many(Xs, 2, backend="numpy")`` is
        ``fit_many(Xs, 2, options=SolveOptions(backend="numpy"))``.
    center : {"median", "mean", "none"} or None, default="median"
    seeds : sequence of int or None, optional
        One seed per matrix (``None`` entries draw fresh entropy); default: all ``None``.
    contamination : "auto" or float in (0, 0.5], default="auto"
    n_mad : float, default=3.0
    devices : "all", int or list of jax devices, optional
        Fit each matrix on the sharded solver over these devices (:func:`l1pca.kernels.solve`).
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
    mats = [check_matrix(X, name=f"Xs[{i}]") for i, X in enumerate(Xs)]
    if seeds is None:
        seeds = [None] * len(mats)
    seeds = list(seeds)
    if len(seeds) != len(mats):
        raise InputError(f"seeds has {len(seeds)} entries for {len(mats)} matrices; give one per matrix")
    # Generators, not seeds, go on to the solver: it draws the starts from these (one construction
    # per matrix), and a negative or non-integer seed is refused here with a message.
    rngs = [check_random_state(s) for s in seeds]
    for X in mats:
        check_n_components(n_components, *X.shape)
    if not mats:
        return []

    groups = equal_shapes(mats)
    centers, centred = [None] * len(mats), [None] * len(mats)
    for idx, stack in groups:
        C = center_of(stack, center)
        for j, i in enumerate(idx):
            centers[i] = C[j]
            centred[i] = mats[i] - C[j]
    if devices is not None:
        # The sharded solver takes one matrix at a time (each is large enough to fill the mesh).
        o = options
        results = [solve(Xc, n_components, method=o.method, n_init=o.n_init, backend=o.backend,
                         max_flips=o.max_flips, tol=o.tol, warm_start=o.warm_start,
                         pair_moves=o.pair_moves, random_state=rng, devices=devices,
                         progress=progress)
                   for Xc, rng in zip(centred, rngs)]
    else:
        results = solve_many(centred, n_components, options, random_state=rngs, progress=progress)

    scores, thresholds = [None] * len(mats), [None] * len(mats)
    for idx, stack in groups:  # the scores of equal-shaped matrices as one stack: same numbers
        Q = np.stack([results[i].components for i in idx])
        S = sample_scores(residuals(stack, np.stack([centers[i] for i in idx]), Q))
        T = robust_threshold(S, contamination=contamination, n_mad=n_mad)
        for j, i in enumerate(idx):
            scores[i], thresholds[i] = S[j], float(T[j])
    return [Model(components=res.components.T.copy(), center=c, threshold=thr,
                  method=res.method, objective=res.objective, n_samples=X.shape[0],
                  backend=res.backend, n_flips=res.n_flips, converged=res.converged,
                  seed=_int_or_none(seed), training_scores=sc)
            for X, c, res, sc, thr, seed in zip(mats, centers, results, scores, thresholds, seeds)]


def _int_or_none(seed):
    return int(seed) if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) else None
