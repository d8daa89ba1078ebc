"""Rank reduction: replace the data by a small matrix with the same L1-PCA search problem.

Every search over sign matrices B only sees X through ``||X B||_*``, which depends on X only through
the N x N Gram matrix ``X X^T`` (rows = samples here). Any d x N matrix Y with ``Y^T Y = X X^T`` gives
the same objective for every B, so the searches run on Y:

* N >= D: ``Y = (X U)^T`` with U the eigenvectors of the D x D matrix ``X^T X`` (rows of Y are
  ``s_i v_i^T``). U is square and orthogonal, so this is exact whatever the rank; no N x N matrix.
* N <  D: ``Y = sqrt(L) V^T`` from the eigendecomposition ``X X^T = V L V^T`` (N x N). Building Y from
  the feature-side factor in this case is one of the public-code bugs the brief lists.

Rows of Y are ordered by decreasing singular value, so ``Y[0]`` is ``s_1 v_1^T``: its sign is the
L2-PCA start of L1-BF. L1-BF itself takes :func:`search_data`, which skips the rotation when
N >= D. The functions take ``xp`` (numpy, cupy or jax.numpy) so all backends share them.
"""
from __future__ import annotations

import numpy as np


def reduce_rank(X, xp=np):
    """Return Y, d x N with ``d = min(N, D)``, such that ``Y^T Y = X X^T``.

    Parameters
    ----------
    X : array of shape (n_samples, n_features), float64
    xp : array namespace (numpy, cupy or jax.numpy)

    Returns
    -------
    Y : array of shape (min(n_samples, n_features), n_samples)
        Rows ordered by decreasing singular value.
    """
    n, D = X.shape
    if n >= D:
        evals, evecs = xp.linalg.eigh(X.T @ X)
        # A C-ordered copy of the reversed eigenvectors: BLAS takes a negative-stride operand through
        # a slow path (2.4x the time of this product at N = 1e5, D = 100).
        Y = (X @ evecs[:, ::-1].copy()).T
    else:
        evals, evecs = xp.linalg.eigh(X @ X.T)
        evals = xp.clip(evals[::-1], 0.0, None)
        Y = xp.sqrt(evals)[:, None] * evecs[:, ::-1].T
    return Y


def search_data(X, xp=np):
    """The data L1-BF searches on, and its L2-PCA start: ``(Y, s)`` with ``Y^T Y = X X^T`` and ``s``
    (N,) the signs of the projections on the dominant right singular vector (zeros to +1).

    For N >= D this is ``Y = X^T`` itself (a view, no copy) and ``s = sgn(X u_1)`` from the top
    eigenvector of ``X^T X``: the rotation to the eigenbasis that :func:`reduce_rank` makes changes
    no search (the search sees Y only through ``Y^T Y``) and cost more than the Gram matrix (35 ms
    against 40 at N = 1e5, D = 100, where a whole fit of a well-posed problem takes 100). For N < D,
    :func:`reduce_rank`'s N x N factor and its first row.
    """
    n, D = X.shape
    if n >= D:
        _, evecs = xp.linalg.eigh(X.T @ X)
        return X.T, sign(X @ evecs[:, -1], xp)
    Y = reduce_rank(X, xp)
    return Y, sign(Y[0], xp)


def l2_start(Y, xp=np):
    """Sign of the dominant right singular vector of X (first row of Y), zeros mapped to +1."""
    return sign(Y[0], xp)


def l2_start_matrix(signs, n_components, xp=np):
    """The paper's L2-PCA start of L1-BF as an N x K sign matrix: ``signs`` (N,), those of the
    dominant singular vector (:func:`search_data`, :func:`l2_start`), copied into all K columns.
    ``Y B`` is then rank one; the search's first single flips break the tie (the fixed-point sweeps
    wait for a full-rank ``Y B``). This start finds the exact optimum more often than the signs of
    the top-K singular vectors, one per column (85.7% against 84.3% of the optimality benchmark's
    problems with one start).
    """
    return xp.repeat(signs[:, None], n_components, axis=1)


def start_matrix(X, l2_signs, g, xp=np):
    """One start of L1-BF as an N x K sign matrix: the L2-PCA start (:func:`l2_start_matrix` of
    ``l2_signs``) when ``l2_signs`` is given, else ``sgn(X g)`` for a direction ``g`` (D x K; a
    restart's, :func:`l1pca.kernels.starts.restart_direction`)."""
    if l2_signs is not None:
        return l2_start_matrix(l2_signs, g.shape[-1], xp)
    return sign(X @ g, xp)


def sign(a, xp=np):
    """``sgn`` with ``sgn(0) = +1``: a sign matrix must have entries +-1 only."""
    return xp.where(a >= 0, 1.0, -1.0)


def procrustes(M, xp=np):
    """Closest matrix with orthonormal columns to M (D x K): ``U V^T`` from the thin SVD of M.

    With ``M = X^T B`` this is the optimal Q for the sign matrix B, and ``||X Q||_1 >= ||X B||_*``.
    """
    U, _, Vt = xp.linalg.svd(M, full_matrices=False)
    return U @ Vt


def nuclear_norm(A, xp=np):
    """Sum of singular values of A (d x K), through the K x K Gram matrix (K is small)."""
    w = xp.linalg.eigvalsh(A.T @ A)
    return xp.sqrt(xp.clip(w, 0.0, None)).sum()
