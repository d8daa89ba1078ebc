"""Exact L1 principal components by enumeration (Markopoulos, Karystinos & Pados, IEEE TSP 2014).

The optimal sign matrix is ``B = sgn(Y^T Q)`` for the optimal Q, so each of its columns is a sign
vector ``sgn(Y^T c)`` for some direction c in R^r (r = rank of Y). Two candidate sets for one column,
each holding every such vector up to a global sign (column negation leaves ``||Y B||_*`` unchanged):

* ``"exhaustive"``: all 2^(N'-1) sign vectors (N' = number of non-zero samples).
* ``"polynomial"``: the cells of the hyperplane arrangement {c : y_n^T c = 0}. Every cell of this
  central, essential arrangement has an extreme ray where r-1 hyperplanes meet; the candidates are
  ``sgn(Y^T c)`` for c orthogonal to each (r-1)-subset of samples, with the ambiguous (zero) entries
  set both ways. That is O(N^(r-1)) vectors: polynomial in N for a fixed rank.

The search then evaluates every multiset of K columns from the chosen set (with repetition, which is
optimal when rank < K): O(m^K / K!) for m candidates. For K = 1 and rank r this is the O(N^r) search of
the brief; for K > 1 it is O(N^((r-1)K)). :func:`plan` picks the cheaper set and refuses problems whose
evaluation count exceeds ``max_candidates`` (default :data:`MAX_CANDIDATES`).
"""
from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

from .errors import InputError
from .flip_rule import gram_nuclear
from .options import MAX_CANDIDATES
from .reduce import sign

_MAX_AMBIGUOUS = 16  # entries resolved both ways per extreme ray (degenerate, e.g. duplicated samples)
_CHUNK = 1 << 16


class ExactPlan(NamedTuple):
    strategy: str  # "exhaustive" | "polynomial"
    n_columns: int  # size of the candidate set for one column (an upper bound for "polynomial")
    n_evaluations: int  # sign matrices evaluated


def _nonzero_samples(Y):
    norms = np.sqrt((Y * Y).sum(axis=0))
    return norms > 1e-12 * max(float(norms.max(initial=0.0)), 1e-300)


def _reduced(Y):
    """Y restricted to its non-zero samples and reduced to its numerical rank r: (r x N') matrix."""
    keep = _nonzero_samples(Y)
    Z = Y[:, keep]
    if Z.shape[1] == 0:
        return keep, Z[:0]
    U, s, Vt = np.linalg.svd(Z, full_matrices=False)
    r = int((s > 1e-10 * s[0]).sum())
    return keep, s[:r, None] * Vt[:r]


def plan(Y, n_components, *, max_candidates=MAX_CANDIDATES):
    """Choose the enumeration for ``(Y, K)``; raise ``ValueError`` beyond ``max_candidates``."""
    keep, Z = _reduced(Y)
    n, r = int(keep.sum()), Z.shape[0]
    if n == 0:
        return ExactPlan("exhaustive", 1, 1)
    m_ex = 2 ** (n - 1)
    rays = math.comb(n, r - 1) if r >= 1 else 1
    m_poly = rays * 2 ** max(r - 1, 0)
    # The candidate set is built once (cost ~ its size); evaluation costs one per K-multiset.
    if m_poly < m_ex:
        # Cells of a central arrangement in general position, counted up to sign.
        strategy, m = "polynomial", min(m_poly, sum(math.comb(n - 1, i) for i in range(r)))
        build = rays
    else:
        strategy, m, build = "exhaustive", m_ex, m_ex
    evals = math.comb(m + n_components - 1, n_components)
    if max(evals, build) > max_candidates:
        raise InputError(
            f"method='exact' would evaluate {max(evals, build):.3g} sign matrices for "
            f"n_samples={Y.shape[1]}, rank={r}, n_components={n_components}, above the limit "
            f"max_candidates={max_candidates:.3g}; use method='bitflip' or raise the limit"
        )
    return ExactPlan(strategy, m, evals)


def _exhaustive_columns(n):
    """All sign vectors of length n with the first entry +1, shape (2^(n-1), n)."""
    idx = np.arange(2 ** (n - 1), dtype=np.int64)
    bits = (idx[:, None] >> np.arange(n - 1)) & 1
    return np.hstack([np.ones((idx.size, 1)), 1.0 - 2.0 * bits])


def _polynomial_columns(Z):
    """Sign vectors of the cells of the arrangement of Z's columns (r x n), first entry +1."""
    r, n = Z.shape
    if r == 1:
        cands = sign(Z[0])[None, :]
    else:
        subsets = np.array(list(itertools.combinations(range(n), r - 1)), dtype=np.int64)
        out = []
        norms = np.sqrt((Z * Z).sum(axis=0))
        for lo in range(0, len(subsets), _CHUNK):
            sub = subsets[lo:lo + _CHUNK]
            S = np.transpose(Z[:, sub], (1, 2, 0))  # (m, r-1, r): rows are the chosen samples
            _, sv, Vt = np.linalg.svd(S)
            ok = sv[:, -1] > 1e-10 * sv[:, 0]  # the r-1 samples must be independent
            c = Vt[ok, -1, :]  # (m', r), unit vectors orthogonal to the subset
            proj = c @ Z  # (m', n)
            ambiguous = np.abs(proj) <= 1e-9 * norms[None, :]
            for row, amb in zip(proj, ambiguous):
                j = np.flatnonzero(amb)
                if j.size > _MAX_AMBIGUOUS:
                    raise InputError(
                        f"method='exact': {j.size} samples lie on one hyperplane (more than "
                        f"{_MAX_AMBIGUOUS}); the data are too degenerate for the polynomial search"
                    )
                base = sign(row)
                combos = _exhaustive_columns(j.size + 1)[:, 1:] if j.size else np.zeros((1, 0))
                block = np.repeat(base[None, :], len(combos), axis=0)
                block[:, j] = combos
                out.append(block)
        cands = np.vstack(out)
    cands = cands * np.where(cands[:, :1] < 0, -1.0, 1.0)  # up to sign: first entry +1
    return np.unique(cands, axis=0)


def _multisets(m, K, start=0):
    """Yield arrays of non-decreasing index K-tuples over range(start, m), in blocks.

    The last two indices are generated with NumPy (``triu_indices``); only the leading K-2 indices
    loop in Python, so the Python work is O(m^(K-2)) for O(m^K / K!) tuples.
    """
    if K == 1:
        for lo in range(start, m, _CHUNK):
            yield np.arange(lo, min(m, lo + _CHUNK))[:, None]
    elif K == 2:
        i, j = np.triu_indices(m - start)
        for lo in range(0, i.size, _CHUNK):
            yield np.column_stack([i[lo:lo + _CHUNK], j[lo:lo + _CHUNK]]) + start
    else:
        for first in range(start, m):
            for rest in _multisets(m, K - 1, first):
                yield np.column_stack([np.full(len(rest), first), rest])


def exact_search(Y, n_components, *, max_candidates=MAX_CANDIDATES):
    """Globally optimal sign matrix for ``max ||Y B||_*``.

    Returns
    -------
    signs : ndarray (N, K) of +-1
    value : float, ``||Y B||_*``
    plan : ExactPlan
    """
    K = n_components
    N = Y.shape[1]
    p = plan(Y, K, max_candidates=max_candidates)
    keep, Z = _reduced(Y)
    if keep.sum() == 0:
        return np.ones((N, K)), 0.0, p
    cols = _exhaustive_columns(int(keep.sum())) if p.strategy == "exhaustive" else _polynomial_columns(Z)
    W = Z @ cols.T  # (r, m): reduced projections of every candidate column
    m = cols.shape[0]
    # For K > 1 each candidate's K x K Gram is a gather from the m x m Gram of all columns, when
    # that fits in memory; otherwise it is formed per candidate from W.
    H = W.T @ W if K > 1 and m <= 4096 else None
    best_val, best_idx = -1.0, None
    for idx in _multisets(m, K):
        if H is not None:
            M = H[idx[:, :, None], idx[:, None, :]]
        else:
            Wi = W[:, idx]  # (r, c, K)
            M = np.einsum("rci,rcj->cij", Wi, Wi)
        vals = gram_nuclear(M)
        j = int(np.argmax(vals))
        if vals[j] > best_val:
            best_val, best_idx = float(vals[j]), idx[j]
    B = np.ones((N, K))
    B[keep] = cols[best_idx].T
    return B, best_val, p
