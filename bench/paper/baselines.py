"""Baselines that are not in ``l1pca.kernels``; used only by the benchmarks.

* :func:`sdp_l1pca`: the semidefinite relaxation of the K = 1 problem ``max_b b^T X X^T b`` over sign
  vectors (``max tr(G Z)`` s.t. ``diag Z = 1``, ``Z`` PSD; McCoy & Tropp 2011), solved with cvxpy/SCS,
  then Goemans-Williamson randomized rounding ``b = sgn(F g)`` with ``Z = F F^T`` and Gaussian ``g``,
  keeping the best of ``n_rounds`` draws. For K > 1 it is applied greedily: one component at a time,
  each on the data deflated by the components found so far (a heuristic; no SDP for the joint K > 1
  problem is standard).
* :func:`pcp`: principal component pursuit, ``min ||L||_* + lam ||S||_1`` s.t. ``L + S = M``
  (Candès, Li, Ma & Wright, J. ACM 2011), by the inexact augmented Lagrange multiplier method of
  Lin, Chen & Ma (2010) with their standard parameters. Implemented here because no maintained
  package provides matrix PCP (see ``docs/benchmarks.md``). :func:`pcp_subspace` returns the top-K
  right singular vectors of L.

Arrays are (n_samples, n_features) as in the rest of the public API.
"""
from __future__ import annotations

import numpy as np

_SDP_CACHE: dict[int, tuple] = {}


def _sdp_problem(n):
    """A cvxpy problem for one size, with the Gram matrix as a parameter (compiled once per size)."""
    if n not in _SDP_CACHE:
        import cvxpy as cp

        G = cp.Parameter((n, n), PSD=True)
        Z = cp.Variable((n, n), PSD=True)
        problem = cp.Problem(cp.Maximize(cp.trace(G @ Z)), [cp.diag(Z) == 1])
        _SDP_CACHE[n] = (G, Z, problem)
    return _SDP_CACHE[n]


def sdp_sign_vector(X, rng, *, n_rounds=100):
    """Best of ``n_rounds`` randomized roundings of the SDP relaxation for K = 1: (b, ||X^T b||_2)."""
    n = X.shape[0]
    G, Z, problem = _sdp_problem(n)
    gram = X @ X.T
    G.value = (gram + gram.T) / 2
    problem.solve(solver="SCS")
    w, V = np.linalg.eigh((Z.value + Z.value.T) / 2)
    F = V * np.sqrt(np.clip(w, 0.0, None))
    B = np.where(F @ rng.standard_normal((n, n_rounds)) >= 0, 1.0, -1.0)
    values = np.linalg.norm(X.T @ B, axis=0)
    best = int(np.argmax(values))
    return B[:, best], float(values[best])


def sdp_l1pca(X, n_components, rng, *, n_rounds=100):
    """SDP relaxation + rounding (greedy deflation for K > 1); returns Q (n_features, K)."""
    X = np.array(X, dtype=np.float64)
    D = X.shape[1]
    Q = np.zeros((D, n_components))
    for k in range(n_components):
        b, _ = sdp_sign_vector(X, rng, n_rounds=n_rounds)
        q = X.T @ b
        q -= Q[:, :k] @ (Q[:, :k].T @ q)
        norm = np.linalg.norm(q)
        if norm < 1e-12:  # deflated data exhausted: any unit vector orthogonal to the others
            q = np.linalg.svd(Q[:, :k].T, full_matrices=True)[2][-1]
            norm = 1.0
        Q[:, k] = q / norm
        X = X - np.outer(X @ Q[:, k], Q[:, k])
    return Q


def pcp(M, *, lam=None, tol=1e-7, max_iter=1000):
    """Principal component pursuit by inexact ALM. Returns ``(L, S, n_iter, converged)``.

    Parameters follow Lin, Chen & Ma (2010): ``lam = 1/sqrt(max(m, n))``, ``mu_0 = 1.25/||M||_2``,
    ``rho = 1.5``, stop when ``||M - L - S||_F < tol ||M||_F``.
    """
    M = np.asarray(M, dtype=np.float64)
    m, n = M.shape
    lam = 1.0 / np.sqrt(max(m, n)) if lam is None else lam
    norm_fro = np.linalg.norm(M)
    norm_two = np.linalg.norm(M, 2)
    if norm_fro == 0:
        return np.zeros_like(M), np.zeros_like(M), 0, True
    Y = M / max(norm_two, np.abs(M).max() / lam)
    mu, mu_max, rho = 1.25 / norm_two, 1.25e7 / norm_two, 1.5
    S = np.zeros_like(M)
    L = np.zeros_like(M)
    for it in range(1, max_iter + 1):
        U, s, Vt = np.linalg.svd(M - S + Y / mu, full_matrices=False)
        s = np.maximum(s - 1.0 / mu, 0.0)
        L = (U * s) @ Vt
        T = M - L + Y / mu
        S = np.sign(T) * np.maximum(np.abs(T) - lam / mu, 0.0)
        R = M - L - S
        Y += mu * R
        mu = min(mu * rho, mu_max)
        if np.linalg.norm(R) < tol * norm_fro:
            return L, S, it, True
    return L, S, max_iter, False


def pcp_subspace(X, n_components, **kw):
    """Top-K right singular vectors of PCP's low-rank part: Q (n_features, K)."""
    L, _, _, _ = pcp(X, **kw)
    return np.linalg.svd(L, full_matrices=False)[2][:n_components].T.copy()


def proximity(Q, Q_nom):
    """Subspace proximity ``||Q^T Q_nom||_F^2 / K``: in [0, 1]; 1 when the spans agree, 0 when orthogonal."""
    return float(np.linalg.norm(Q.T @ Q_nom) ** 2 / Q_nom.shape[1])
