"""Baselines users compare L1-BF against; they double as test oracles.

* :func:`l2_pca`: ordinary PCA, the top right singular vectors of X.
* :func:`fixed_point_greedy`: Kwak (IEEE TPAMI 2008), PCA-L1. One component at a time,
  ``w <- X^T sgn(X w) / ||.||`` until the signs stop changing, then deflation ``X <- X - X w w^T``.
* :func:`fixed_point_nongreedy`: Nie, Huang, Ding, Luo & Wang (IJCAI 2011), all K at once,
  ``Q <- Procrustes(X^T sgn(X Q))`` until the signs stop changing.

All take X as (n_samples, n_features) float64 and return ``(Q, n_iter, converged)``, Q of shape
(n_features, K) with orthonormal columns. Iterations are capped by ``max_iter``.
"""
from __future__ import annotations

import numpy as np

from .reduce import procrustes, sign

DEFAULT_MAX_ITER = 1000


def l2_pca(X, n_components):
    """Top-``n_components`` right singular vectors of X (no centring)."""
    _, _, Vt = np.linalg.svd(X, full_matrices=False)
    return Vt[:n_components].T.copy(), 0, True


def _dominant_direction(X):
    return np.linalg.svd(X, full_matrices=False)[2][0]


def _orthonormal_to(w, Q_prev):
    """w made orthogonal to the columns of Q_prev and unit-norm.

    When deflation has used up the rank of X, w may fall inside span(Q_prev); any unit vector of the
    complement then keeps Q orthonormal (it explains nothing, like the data left).
    """
    for _ in range(2):  # twice: one Gram-Schmidt pass loses orthogonality when w is nearly in span
        w = w - Q_prev @ (Q_prev.T @ w)
    norm = np.linalg.norm(w)
    if norm > 1e-6:
        return w / norm
    return np.linalg.svd(Q_prev.T, full_matrices=True)[2][-1]


def fixed_point_greedy(X, n_components, *, max_iter=DEFAULT_MAX_ITER):
    """Kwak's PCA-L1, started from the L2 direction of the (deflated) data."""
    X = X.copy()
    D = X.shape[1]
    Q = np.zeros((D, n_components))
    total, converged = 0, True
    for k in range(n_components):
        w = _dominant_direction(X)
        b = sign(X @ w)
        done = False
        for _ in range(max_iter):
            total += 1
            v = X.T @ b
            norm = np.linalg.norm(v)
            if norm == 0:
                done = True
                break
            w = v / norm
            new = sign(X @ w)
            if np.array_equal(new, b):
                done = True
                break
            b = new
        converged &= done
        # Later components live in the orthogonal complement of the earlier ones.
        w = _orthonormal_to(w, Q[:, :k])
        Q[:, k] = w
        X -= np.outer(X @ w, w)
    return Q, total, converged


def fixed_point_nongreedy(X, n_components, *, max_iter=DEFAULT_MAX_ITER):
    """Nie et al.'s non-greedy iteration, started from L2-PCA."""
    Q = l2_pca(X, n_components)[0]
    B = sign(X @ Q)
    for it in range(1, max_iter + 1):
        Q = procrustes(X.T @ B)
        new = sign(X @ Q)
        if np.array_equal(new, B):
            return Q, it, True
        B = new
    return Q, max_iter, False
