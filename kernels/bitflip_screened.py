"""L1-BF for K = 1 on many samples, with screened gains: the same rules as
:func:`l1pca.kernels.bitflip.bitflip_search`, at O(N) instead of O(N d) per step.

Each step of the reference updates ``P = Y^T v`` (v = Y b) for every sample: one pass over the d x N
data, 80 MB at N = 1e5, d = 100, and it is the whole cost of a step. Yet a step only needs the samples
that could flip. Here P is kept *stale*, as computed at some earlier ``v_s``, and Cauchy-Schwarz bounds
how far each entry can have moved since: ``|P_n - P_s,n| <= ||y_n|| ||v - v_s||``. A sample whose gain
``4 (||y_n||^2 - b_n P_n)`` is negative even at that bound cannot be flipped, swept, or tie with the
best flip (see ``_MARGIN``), so P is computed exactly only for the others (typically a few dozen), and
refreshed in full only when the bound has grown too loose. Decisions are those of the reference: the
same sweeps, flips, rounds, ties and pair moves, from exact values of every sample that matters.
"""
from __future__ import annotations

import numpy as np

from .bitflip import TIE_RTOL, SearchResult, best_pair, pair_moves_apply

SCREEN_MIN_SAMPLES = 4096
"""Below this many samples a full pass is cheap and the reference runs as it is."""

_MARGIN = 2.0 * TIE_RTOL
"""Samples are screened out when ``||y_n||^2 - b_n P_n < -_MARGIN * ||v||^2`` at the bound: their
flip would lower ``||v||`` by more than ``4 TIE_RTOL ||v||``, so it is never the best flip, never
within the tie band of a best flip that clears ``tol >= 0``, and never a sweep bit (those gain)."""


def search_k1_screened(Y, b0, *, max_flips, tol, warm_start, pair_moves):
    """:func:`l1pca.kernels.bitflip.bitflip_search` for K = 1 on NumPy; same arguments and result."""
    Yt = np.ascontiguousarray(Y.T)  # samples as rows: gathering a few is a contiguous copy
    N = Yt.shape[0]
    b = np.array(b0[:, 0], dtype=np.float64)
    g = np.einsum("nd,nd->n", Yt, Yt)
    r = np.sqrt(g)
    v = Yt.T @ b
    Ps, vs = Yt @ v, v.copy()
    refresh_at = max(256, N // 16)  # more candidates than this: one full pass is cheaper
    flipped = np.zeros(N, dtype=bool)
    n_flips, converged = 0, False
    for _ in range(2 * max_flips + 2):
        C = float(v @ v)
        cur = np.sqrt(C)
        cand = np.flatnonzero(g - b * Ps + r * np.linalg.norm(v - vs) > -_MARGIN * C)
        if cand.size > refresh_at:
            Ps, vs = Yt @ v, v.copy()
            cand = np.flatnonzero(g - b * Ps > -_MARGIN * C)
        Pc = Yt[cand] @ v  # exact for every sample that matters
        bc = b[cand]
        if warm_start and C > 0:
            bad = cand[bc * Pc < -0.5 * tol * C]  # sweep_mask for K = 1: b P / ||v|| < -tol ||v|| / 2
            if bad.size:
                if n_flips >= max_flips:
                    break
                v -= 2.0 * (Yt[bad].T @ b[bad])
                b[bad] = -b[bad]
                n_flips += 1
                continue
        dsq = 4.0 * (g[cand] - bc * Pc)
        new = np.sqrt(np.clip(C + dsq, 0.0, None))
        denom = new + cur
        gains = np.where(denom > 0, dsq / np.where(denom > 0, denom, 1.0), 0.0)
        gains = np.where(flipped[cand], -np.inf, gains)
        if gains.size:
            best = float(gains.max())
            n = int(cand[np.argmax(gains >= best - TIE_RTOL * cur)])  # the first within the tie band
        else:
            best = -np.inf
        if best > tol * cur:
            if n_flips >= max_flips:
                break
            s = b[n]
            v -= 2.0 * s * Yt[n]
            b[n] = -s
            flipped[n] = True
            n_flips += 1
        elif flipped.any():
            flipped[:] = False
            v = Yt.T @ b
            Ps, vs = Yt @ v, v.copy()
        else:
            if not (pair_moves and bool(pair_moves_apply(g, 1))):
                converged = True
                break
            Ps, vs = Yt @ v, v.copy()  # the pair check ranks every bit: exact P for all
            bit_a, bit_b, best = best_pair(Y, b[:, None], Ps[:, None], np.array([[C]]), g, cur)
            if not float(best) > tol * cur:
                converged = True
                break
            if n_flips >= max_flips:
                break
            for n in (int(bit_a), int(bit_b)):
                v -= 2.0 * b[n] * Yt[n]
                b[n] = -b[n]
            n_flips += 1
    return SearchResult(b[:, None], float(np.linalg.norm(v)), n_flips, converged)
