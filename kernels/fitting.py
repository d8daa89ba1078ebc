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
(``tests/test_service_fitting.py`` checks it). ``backend="auto"`` may pick NumPy for a lone matrix
and JAX for a batch; the two agree too, but not to the last bit, and L1-BF's path can turn on a
near-tie, so the service pins one backend for its life.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validation import (
    BACKENDS,
    METHODS,
    check_choice,
    check_matrix,
    check_n_components,
    check_positive_int,
    check_random_state,
)
from .scoring import center_of, check_contamination, residuals, robust_threshold, sample_scores
from .solve import DEFAULT_N_INIT, equal_shapes, solve, solve_batch

CENTERS = ("median", "mean", None)


@dataclass(frozen=True)
class FitResult:
    """One fitted model, the fields the estimator stores after ``fit``.

    Attributes
    ----------
    components : ndarray (n_components, n_features)
        L1 principal axes as rows (the estimator's ``components_``).
    center : ndarray (n_features,)
    threshold : float
        Outlier threshold on the sample score (:func:`l1pca.kernels.scoring.robust_threshold`).
    objective : float
        ``||(X - center) components.T||_1``.
    training_scores : ndarray (n_samples,)
    n_samples : int
    backend : str
        Where the solver ran.
    method : str
    n_flips : int
    converged : bool
    """

    components: np.ndarray
    center: np.ndarray
    threshold: float
    objective: float
    training_scores: np.ndarray
    n_samples: int
    backend: str
    method: str
    n_flips: int
    converged: bool


def fit_many(Xs, n_components=1, *, method="bitflip", center="median", n_init=DEFAULT_N_INIT,
             seeds=None, contamination="auto", n_mad=3.0, backend="auto", devices=None,
             **solver_options):
    """Fit one L1-PCA model per matrix, with one batched solver call.

    Parameters
    ----------
    Xs : sequence of array-like (n_samples_i, n_features_i)
        Shapes may differ.
    n_components : int, default=1
        K, the same for every matrix; each needs ``K <= min(n_samples_i, n_features_i)``.
    method : {"bitflip", "exact", "l2", "fixed-point", "non-greedy"}, default="bitflip"
    center : {"median", "mean"} or None, default="median"
    n_init : int, default=8
    seeds : sequence of int or None, optional
        One seed per matrix (``None`` entries draw fresh entropy); default: all ``None``.
    contamination : "auto" or float in (0, 0.5], default="auto"
    n_mad : float, default=3.0
    backend : {"auto", "numpy", "jax", "cupy"}, default="auto"
    devices : "all", int or list of jax devices, optional
        Fit each matrix on the sharded solver over these devices (:func:`l1pca.kernels.solve`).
    **solver_options
        ``max_flips``, ``tol``, ``warm_start``, ``pair_moves``, ``progress``: passed to
        :func:`l1pca.kernels.solve_batch`.

    Returns
    -------
    list of FitResult, one per matrix, in order.
    """
    check_choice(method, "method", METHODS)
    check_choice(backend, "backend", BACKENDS)
    check_choice(center, "center", CENTERS)
    check_positive_int(n_init, "n_init")
    contamination = check_contamination(contamination)
    mats = [check_matrix(X, name=f"Xs[{i}]") for i, X in enumerate(Xs)]
    if seeds is None:
        seeds = [None] * len(mats)
    seeds = list(seeds)
    if len(seeds) != len(mats):
        raise ValueError(f"seeds has {len(seeds)} entries for {len(mats)} matrices; give one per matrix")
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
        results = [solve(Xc, n_components, method=method, n_init=n_init, random_state=rng,
                         devices=devices, **solver_options) for Xc, rng in zip(centred, rngs)]
    else:
        results = solve_batch(centred, n_components, method=method, n_init=n_init, backend=backend,
                              random_state=rngs, **solver_options)

    scores, thresholds = [None] * len(mats), [None] * len(mats)
    for idx, stack in groups:  # the scores of equal-shaped matrices as one stack: same numbers
        Q = np.stack([results[i].components for i in idx])
        S = sample_scores(residuals(stack, np.stack([centers[i] for i in idx]), Q))
        T = robust_threshold(S, contamination=contamination, n_mad=n_mad)
        for j, i in enumerate(idx):
            scores[i], thresholds[i] = S[j], float(T[j])
    out = []
    for X, c, res, sc, thr in zip(mats, centers, results, scores, thresholds):
        out.append(FitResult(
            components=res.components.T.copy(),
            center=c,
            threshold=thr,
            objective=res.objective,
            training_scores=sc,
            n_samples=X.shape[0],
            backend=res.backend,
            method=res.method,
            n_flips=res.n_flips,
            converged=res.converged,
        ))
    return out
