"""One start of L1-BF compiled with Numba: the steps of :func:`l1pca.kernels.bitflip.bitflip_search`
without the interpreter between them.

The NumPy reference spends its time in Python, not in arithmetic: a step on a 64 x 16, K = 2
problem is about 20 NumPy calls of a few microseconds each on arrays of 128 entries (43 ms for a
default fit of 8 starts, 195 steps). Here the whole loop is one compiled function, generic in N, d
and K (one machine-code version for every shape, kept in Numba's on-disk cache, so no compile per
shape and, once the cache is warm, none per process).

Same steps, same signs
----------------------
Every decision is :mod:`l1pca.kernels.flip_rule`'s, written out element by element with the same
operations in the same order (``(C_kk + 2 s P) + 4 g`` stays that, never ``C_kk + (2 s P + 4 g)``),
so that each candidate's gain is the reference's up to the rounding of the products the two compute
differently (BLAS there, plain loops here, about 1e-16 of the metric). Decisions only turn on gains
compared with ``tol`` times the metric and with the tie band ``TIE_RTOL`` of the best, both 1e-9 of
the metric, so rounding of 1e-16 decides nothing, and candidates that are equal in exact arithmetic
(duplicate rows, the L2 start's equal columns) are computed from equal inputs by the same code here,
so they tie exactly. ``tests/kernels/test_bitflip_numba.py`` checks signs, flip counts and the
converged flag against the reference over the optimality benchmark's grid.

For K >= 3 the step selects with the reference's concavity bound (``select_flip_bounded``: only bits
whose bound reaches the tolerance get an eigenvalue problem), while Y B is rank-deficient with the
screened search's bound at shifted Grams (``bitflip_screened.select_flip_rank_deficient``; the
reference evaluates every bit there, which makes the same choice), and the pair check ranks its
candidates the same way (the 16 best exact gains, found among the bits whose bound reaches the 16th;
the reference evaluates every bit there, which picks the same 16 since no gain exceeds its bound).
The K x K eigenvalues come from Jacobi rotations (:func:`_jacobi_diagonalise`), not LAPACK.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .flip_rule import (
    EIG_FLOOR,
    PAIR_CANDIDATES,
    PAIR_MAX_BITS,
    POLAR_RTOL,
    TIE_RTOL,
    SearchResult,
    default_max_flips,
    gram_nuclear,
)
from .options import DEFAULT_TOL

_POLAR_SQ = POLAR_RTOL ** 2
_TINY = float(np.finfo(np.float64).tiny)


# ---------------------------------------------------------------------------------------------
# The K x K quantities (flip_rule.gram_nuclear, _nuclear2, inv_sqrt_gram), one matrix at a time.

@njit(cache=True)
def _nuclear2(a, b, c):
    tr = a + b
    det = a * b - c * c
    if not det > EIG_FLOOR * tr * tr:
        det = 0.0
    v = tr + 2.0 * np.sqrt(det)
    return np.sqrt(v) if v > 0.0 else 0.0


@njit(cache=True, inline="always")
def _jacobi_diagonalise(a):
    """Cyclic Jacobi rotations on the symmetric matrix ``a`` (overwritten) until it is diagonal,
    then its diagonal sorted increasing: the eigenvalues.

    LAPACK through Numba costs about 1.3 us per 3 x 3 call (workspace query, copies), and a step of
    a K = 3 search whose Y B is rank-deficient evaluates every bit (1707 calls on 569 samples).
    Jacobi's eigenvalues are as accurate (to about 1e-16 of the norm, as the reference's LAPACK),
    which is all the decisions need.
    """
    K = a.shape[0]
    norm = 0.0
    for p in range(K):
        for q in range(K):
            norm += a[p, q] * a[p, q]
    # Off-diagonal entries below 1e-18 of the norm move no eigenvalue by more than LAPACK's own
    # error; a bound relative to the diagonal alone never ends on a rank-deficient matrix, whose
    # zero eigenvalues carry rounding noise of 1e-16 of the norm.
    small = 1e-18 * np.sqrt(norm)
    for _ in range(60):
        rotated = False
        for p in range(K - 1):
            for q in range(p + 1, K):
                apq = a[p, q]
                if abs(apq) <= small:
                    continue
                rotated = True
                app, aqq = a[p, p], a[q, q]
                theta = (aqq - app) / (2.0 * apq)
                if abs(theta) > 1e150:
                    t = 0.5 / theta
                else:
                    t = 1.0 / (abs(theta) + np.sqrt(theta * theta + 1.0))
                    if theta < 0.0:
                        t = -t
                c = 1.0 / np.sqrt(t * t + 1.0)
                sn = t * c
                a[p, p] = app - t * apq
                a[q, q] = aqq + t * apq
                a[p, q] = 0.0
                a[q, p] = 0.0
                for r in range(K):
                    if r != p and r != q:
                        arp, arq = a[r, p], a[r, q]
                        a[r, p] = c * arp - sn * arq
                        a[p, r] = a[r, p]
                        a[r, q] = sn * arp + c * arq
                        a[q, r] = a[r, q]
        if not rotated:
            break
    for i in range(1, K):  # insertion sort of the diagonal
        v = a[i, i]
        j = i - 1
        while j >= 0 and a[j, j] > v:
            a[j + 1, j + 1] = a[j, j]
            j -= 1
        a[j + 1, j + 1] = v


@njit(cache=True, inline="always")
def _nuclear_eig(M):
    """``gram_nuclear`` for K >= 3 of the scratch matrix M (overwritten): eigenvalues below
    EIG_FLOOR of their absolute sum are zero."""
    _jacobi_diagonalise(M)
    K = M.shape[0]
    total = 0.0
    for i in range(K):
        total += abs(M[i, i])
    floor = EIG_FLOOR * total
    out = 0.0
    for i in range(K):
        if M[i, i] > floor:
            out += np.sqrt(M[i, i])
    return out


@njit(cache=True)
def _gram_nuclear(C):
    K = C.shape[0]
    if K == 1:
        return np.sqrt(C[0, 0]) if C[0, 0] > 0.0 else 0.0
    if K == 2:
        return _nuclear2(C[0, 0], C[1, 1], C[0, 1])
    return _nuclear_eig(C.copy())


@njit(cache=True)
def _inv_sqrt_gram(C, R):
    """``C^(-1/2)`` into R; returns whether Y B has full column rank (flip_rule.inv_sqrt_gram)."""
    K = C.shape[0]
    if K == 1:
        c = C[0, 0]
        unique = c > 0.0
        R[0, 0] = 1.0 / np.sqrt(c) if unique else 0.0
        return unique
    if K == 2:
        a, b, c = C[0, 0], C[1, 1], C[0, 1]
        tr = a + b
        det = a * b - c * c
        unique = det > _POLAR_SQ * tr * tr
        sq = np.sqrt(det) if det > 0.0 else 0.0
        t = np.sqrt(tr + 2.0 * sq) if unique else 1.0
        r00, r11, r01 = (a + sq) / t, (b + sq) / t, c / t
        rdet = r00 * r11 - r01 * r01 if unique else 1.0
        R[0, 0] = r11 / rdet
        R[0, 1] = -r01 / rdet
        R[1, 0] = -r01 / rdet
        R[1, 1] = r00 / rdet
        return unique
    w, V = np.linalg.eigh(C)
    unique = w[0] > _POLAR_SQ * w[K - 1]
    floor = max(w[K - 1] * _POLAR_SQ, _TINY)
    inv = np.empty(K)
    for i in range(K):
        inv[i] = 1.0 / np.sqrt(max(w[i], floor)) if unique else 0.0
    for a in range(K):
        for b in range(K):
            s = 0.0
            for c in range(K):
                s += (V[a, c] * inv[c]) * V[b, c]
            R[a, b] = s
    return unique


@njit(cache=True)
def _small_matmul(P, R, Z):
    """``Z = P R`` (flip_rule.small_matmul: written out for K <= 2)."""
    N, K = P.shape
    if K == 1:
        for n in range(N):
            Z[n, 0] = P[n, 0] * R[0, 0]
    elif K == 2:
        for n in range(N):
            Z[n, 0] = P[n, 0] * R[0, 0] + P[n, 1] * R[1, 0]
            Z[n, 1] = P[n, 0] * R[0, 1] + P[n, 1] * R[1, 1]
    else:
        for n in range(N):
            for k in range(K):
                s = 0.0
                for j in range(K):
                    s += P[n, j] * R[j, k]
                Z[n, k] = s


# ---------------------------------------------------------------------------------------------
# Gains (flip_rule.candidate_gains / bit_gains / pair_gains), one bit or one pair at a time.

@njit(cache=True, inline="always")
def _bit_gain(B, P, C, g, n, k, cur, M):
    """The gain of flipping bit (n, k) alone. M: a K x K scratch matrix."""
    K = C.shape[0]
    if K == 1:
        dsq = 4.0 * (g[n] - B[n, 0] * P[n, 0])
        v = C[0, 0] + dsq
        new = np.sqrt(v) if v > 0.0 else 0.0
        denom = new + cur
        return dsq / denom if denom > 0.0 else 0.0
    if K == 2:
        s = -2.0 * B[n, k]
        j = 1 - k
        kk = C[k, k] + 2.0 * s * P[n, k] + 4.0 * g[n]
        kj = C[0, 1] + s * P[n, j]
        return _nuclear2(kk, C[j, j], kj) - cur
    wk = -2.0 * B[n, k]
    own = 4.0 * g[n]
    for a in range(K):
        ea = 1.0 if a == k else 0.0
        for b in range(K):
            eb = 1.0 if b == k else 0.0
            M[a, b] = C[a, b] + ea * (wk * P[n, b]) + eb * (wk * P[n, a]) + own * (ea * eb)
    return _nuclear_eig(M) - cur


@njit(cache=True)
def _all_gains(B, P, C, g, cur, flipped, gains, M):
    """Every bit's gain into the flat ``gains`` (n K + k), ``-inf`` for bits flipped this round.
    K <= 2 written out here: a call per bit that passes arrays costs more than the gain itself
    (Numba counts references on each array argument)."""
    N, K = B.shape
    if K == 1:
        c00 = C[0, 0]
        for n in range(N):
            if flipped[n, 0]:
                gains[n] = -np.inf
                continue
            dsq = 4.0 * (g[n] - B[n, 0] * P[n, 0])
            v = c00 + dsq
            new = np.sqrt(v) if v > 0.0 else 0.0
            denom = new + cur
            gains[n] = dsq / denom if denom > 0.0 else 0.0
    elif K == 2:
        c00, c11, c01 = C[0, 0], C[1, 1], C[0, 1]
        for n in range(N):
            four_g = 4.0 * g[n]
            for k in range(2):
                if flipped[n, k]:
                    gains[2 * n + k] = -np.inf
                    continue
                s = -2.0 * B[n, k]
                if k == 0:
                    kk = c00 + 2.0 * s * P[n, 0] + four_g
                    gains[2 * n] = _nuclear2(kk, c11, c01 + s * P[n, 1]) - cur
                else:
                    kk = c11 + 2.0 * s * P[n, 1] + four_g
                    gains[2 * n + 1] = _nuclear2(kk, c00, c01 + s * P[n, 0]) - cur
    else:
        for n in range(N):
            for k in range(K):
                gains[n * K + k] = -np.inf if flipped[n, k] else _bit_gain(B, P, C, g, n, k, cur, M)


@njit(cache=True)
def _select(gains, cur):
    """flip_rule.select_flip: the first index within the tie band of the best, and the best."""
    best = -np.inf
    for i in range(gains.shape[0]):
        if gains[i] > best:
            best = gains[i]
    band = best - TIE_RTOL * cur
    for i in range(gains.shape[0]):
        if gains[i] >= band:
            return i, best
    return 0, best


@njit(cache=True)
def _bounds(B, Z, g, R, flipped, slack, ub):
    """flip_rule.gain_bound_terms plus the slack: each bit's concavity bound, -inf when flipped."""
    N, K = B.shape
    for n in range(N):
        for k in range(K):
            if flipped[n, k]:
                ub[n * K + k] = -np.inf
            else:
                ub[n * K + k] = -2.0 * B[n, k] * Z[n, k] + 2.0 * g[n] * R[k, k] + slack


@njit(cache=True)
def _select_bounded(B, P, C, g, flipped, cur, tol, R, unique, Z, ub, exact, done, M):
    """bitflip.select_flip_bounded (K >= 3): the choice of the full evaluation, with exact gains
    only for the bits whose bound reaches ``tol`` (and then the tie band of the best)."""
    N, K = B.shape
    NK = N * K
    if not unique:
        return _select_rank_deficient(B, P, C, g, flipped, cur, tol, ub, exact, done, M)
    _bounds(B, Z, g, R, flipped, TIE_RTOL * cur, ub)
    top, arg = -np.inf, 0
    for i in range(NK):
        if ub[i] > top:
            top, arg = ub[i], i
    if not top > tol * cur:
        return arg, top  # nothing can improve
    for i in range(NK):  # done: the bits evaluated exactly (the reference's ``bits``)
        done[i] = ub[i] > tol * cur
        if done[i]:
            exact[i] = _bit_gain(B, P, C, g, i // K, i % K, cur, M)
    return _grow_and_pick(B, P, C, g, cur, ub, exact, done, M)


_REG_EPS = np.logspace(-16.0, 0.0, 9)
"""The shifts (times the largest eigenvalue of C) of :func:`_shifted_bounds`: those of
``bitflip_screened.REGULARISED_EPS``."""


@njit(cache=True)
def _shifted_bounds(B, P, C, g, flipped, cur, ub):
    """Every bit's concavity bound while Y B is rank-deficient (no ``C^(-1/2)``), for K >= 3: the
    least over the shifted Grams ``C + eps I`` of ``c(eps) + tr(R D) / 2`` with
    ``R = (C + eps I)^(-1/2)`` (``bitflip_screened.select_flip_rank_deficient``), plus the tie band;
    ``-inf`` for flipped bits. Returns False when C is zero (no bound)."""
    N, K = B.shape
    lam, V = np.linalg.eigh(C)
    for i in range(K):
        lam[i] = max(lam[i], 0.0)
    top = lam[K - 1]
    if not top > 0.0:
        return False
    for i in range(N * K):
        ub[i] = np.inf
    R = np.empty((K, K))
    root = np.empty(K)
    z = np.empty(K)
    for e in range(_REG_EPS.shape[0]):
        eps = top * _REG_EPS[e]
        shift = 0.0
        for i in range(K):
            root[i] = np.sqrt(lam[i] + eps)
            shift += root[i] - np.sqrt(lam[i]) - eps / (2.0 * root[i])
        for a in range(K):
            for b in range(K):
                acc = 0.0
                for c in range(K):
                    acc += V[a, c] / root[c] * V[b, c]
                R[a, b] = acc
        for n in range(N):
            for k in range(K):
                acc = 0.0
                for j in range(K):
                    acc += P[n, j] * R[j, k]
                z[k] = acc
            for k in range(K):
                cross = -2.0 * B[n, k] * z[k]
                own = 2.0 * g[n] * R[k, k]
                # Rounding: a relative 1e-12 of the terms (their own error is about 1e-16 of them).
                bound = cross + own + shift + 1e-12 * (abs(cross) + own + abs(shift))
                if bound < ub[n * K + k]:
                    ub[n * K + k] = bound
    slack = TIE_RTOL * cur
    for n in range(N):
        for k in range(K):
            ub[n * K + k] = -np.inf if flipped[n, k] else ub[n * K + k] + slack
    return True


@njit(cache=True)
def _select_rank_deficient(B, P, C, g, flipped, cur, tol, ub, exact, done, M):
    """``select_flip`` over every allowed bit while Y B is rank-deficient, for K >= 3, with exact
    gains only for the bits whose shifted bound (:func:`_shifted_bounds`) reaches the best exact gain
    found (``bitflip_screened.select_flip_rank_deficient``): the choice of the full evaluation."""
    N, K = B.shape
    NK = N * K
    if not _shifted_bounds(B, P, C, g, flipped, cur, ub):
        _all_gains(B, P, C, g, cur, flipped, exact, M)
        return _select(exact, cur)
    j0, top = 0, -np.inf
    for i in range(NK):
        if ub[i] > top:
            j0, top = i, ub[i]
    if not top > -np.inf:
        return j0, -np.inf
    g0 = _bit_gain(B, P, C, g, j0 // K, j0 % K, cur, M)
    slack = TIE_RTOL * cur
    thr = max(g0, tol * cur) - slack
    for i in range(NK):
        done[i] = ub[i] >= thr or i == j0
        if done[i]:
            exact[i] = g0 if i == j0 else _bit_gain(B, P, C, g, i // K, i % K, cur, M)
    return _grow_and_pick(B, P, C, g, cur, ub, exact, done, M)


@njit(cache=True)
def _grow_and_pick(B, P, C, g, cur, ub, exact, done, M):
    """The end of the bounded selections: add every bit whose bound reaches the tie band of the
    best exact gain until none is left out, then the first bit in the band, and the best gain."""
    N, K = B.shape
    NK = N * K
    while True:
        best = -np.inf
        for i in range(NK):
            if done[i] and exact[i] > best:
                best = exact[i]
        band = best - TIE_RTOL * cur
        grown = False
        for i in range(NK):  # every bit that could lie in the tie band
            if ub[i] >= band and not done[i]:
                done[i] = True
                exact[i] = _bit_gain(B, P, C, g, i // K, i % K, cur, M)
                grown = True
        if not grown:
            break
    for i in range(NK):
        if done[i] and exact[i] >= band:
            return i, best
    return 0, best


# ---------------------------------------------------------------------------------------------
# Pair moves (flip_rule.best_pair, pair_gains, host_pair_move).

@njit(cache=True)
def _top_candidates(gains, valid, T):
    """flip_rule.pair_candidates: the T highest gains (invalid bits as -inf), by gain then index."""
    NK = gains.shape[0]
    picked = np.zeros(NK, np.bool_)
    idx = np.empty(T, np.int64)
    for t in range(T):
        j, vj = -1, -np.inf
        for i in range(NK):
            if picked[i]:
                continue
            v = gains[i] if valid[i] else -np.inf
            if j < 0:
                j, vj = i, v
            elif v > vj:
                j, vj = i, v
        picked[j] = True
        idx[t] = j
    return idx


@njit(cache=True)
def _ranked_gains(B, P, C, g, cur, R, unique, Z, ub, gains, valid, flipped, M):
    """The gains the pair check ranks, for K >= 3: exact for every bit that can be among the
    :data:`PAIR_CANDIDATES` best (a bound at least the 16th best exact gain), -inf for the others,
    which cannot be (their gain is below their bound). While Y B is rank-deficient the bound is the
    shifted one (:func:`_shifted_bounds`)."""
    N, K = B.shape
    NK = N * K
    if not unique:
        if not _shifted_bounds(B, P, C, g, flipped, cur, ub):
            _all_gains(B, P, C, g, cur, flipped, gains, M)
            return
    else:
        _bounds(B, Z, g, R, flipped, TIE_RTOL * cur, ub)
    order = np.argsort(-ub, kind="mergesort")
    for i in range(NK):
        gains[i] = -np.inf
    T = min(NK, PAIR_CANDIDATES)
    best = np.full(T, -np.inf)  # the T best exact gains so far, decreasing
    seen = 0
    for r in range(NK):
        i = order[r]
        if not valid[i]:
            continue
        if seen >= T and ub[i] < best[T - 1]:
            break  # every later bit's bound is lower still: none of them ranks among the T best
        v = _bit_gain(B, P, C, g, i // K, i % K, cur, M)
        gains[i] = v
        seen += 1
        pos = min(seen, T) - 1
        if seen > T and not v > best[T - 1]:
            continue
        while pos > 0 and best[pos - 1] < v:
            best[pos] = best[pos - 1]
            pos -= 1
        best[pos] = v


@njit(cache=True)
def _pair_entry(c_ab, ownt, ownu, cross_coef, Et_a, Eu_b, Eu_a, Et_b):
    return c_ab + ownt + ownu + cross_coef * (Et_a * Eu_b + Eu_a * Et_b)


@njit(cache=True)
def _best_pair(Yt, B, P, C, g, cur, gains, valid, M):
    """flip_rule.best_pair on the ranked ``gains``: ``(bit_a, bit_b, gain)``."""
    N, K = B.shape
    NK = N * K
    T = min(NK, PAIR_CANDIDATES)
    idx = _top_candidates(gains, valid, T)
    d = Yt.shape[1]
    nn = idx // K
    kk = idx % K
    s = np.empty(T)
    vt = np.empty(T, np.bool_)
    for t in range(T):
        s[t] = B[nn[t], kk[t]]
        vt[t] = valid[idx[t]]
    G = np.empty((T, T))
    for t in range(T):
        for u in range(T):
            acc = 0.0
            for i in range(d):
                acc += Yt[nn[t], i] * Yt[nn[u], i]
            G[t, u] = acc
    # own[t] = e_k w^T + w e_k^T + 4 G_tt e_k e_k^T with w = -2 s P[n, :]
    own = np.empty((T, K, K))
    for t in range(T):
        for a in range(K):
            ea = 1.0 if a == kk[t] else 0.0
            for b in range(K):
                eb = 1.0 if b == kk[t] else 0.0
                wb = -2.0 * s[t] * P[nn[t], b]
                wa = -2.0 * s[t] * P[nn[t], a]
                own[t, a, b] = ea * wb + eb * wa + 4.0 * G[t, t] * (ea * eb)
    base = _gram_nuclear(C)
    pg = np.full(T * T, -np.inf)
    for t in range(T):
        if not vt[t]:
            continue
        for u in range(t + 1, T):
            if not vt[u]:
                continue
            ssG = 4.0 * s[t] * s[u] * G[t, u]
            for a in range(K):
                Eta = 1.0 if a == kk[t] else 0.0
                Eua = 1.0 if a == kk[u] else 0.0
                for b in range(K):
                    Etb = 1.0 if b == kk[t] else 0.0
                    Eub = 1.0 if b == kk[u] else 0.0
                    M[a, b] = _pair_entry(C[a, b], own[t, a, b], own[u, a, b], ssG, Eta, Eub, Eua, Etb)
            if K == 1:
                new = np.sqrt(M[0, 0]) if M[0, 0] > 0.0 else 0.0
            elif K == 2:
                new = _nuclear2(M[0, 0], M[1, 1], M[0, 1])
            else:
                new = _nuclear_eig(M)
            pg[t * T + u] = new - base
    j, best = _select(pg, cur)
    return idx[j // T], idx[j % T], best


# ---------------------------------------------------------------------------------------------
# The state and the loop (bitflip.bitflip_search).

@njit(cache=True)
def _gram(A, C):
    """``C = A^T A``."""
    d, K = A.shape
    for a in range(K):
        for b in range(K):
            acc = 0.0
            for i in range(d):
                acc += A[i, a] * A[i, b]
            C[a, b] = acc


# The products over the data go through np.dot, which Numba hands to the same BLAS routines
# (gemm, gemv) as NumPy's matmul: the same rounding as the reference, and its speed at large N.

@njit(cache=True)
def _state(Yt, B, C):
    """``A = Y B``, ``P = Y^T A`` and ``C = A^T A`` (bitflip._state)."""
    A = np.dot(Yt.T, B)
    _gram(A, C)
    return A, np.dot(Yt, A)


@njit(cache=True)
def _flip_a(Yt, A, B, n, k):
    s = B[n, k]
    for i in range(Yt.shape[1]):
        A[i, k] -= 2.0 * s * Yt[n, i]
    B[n, k] = -s
    return s


@njit(cache=True)
def search(Yt, g, B, max_flips, tol, warm_start, pair_moves):
    """L1-BF from the start B (N x K, float64 +-1, changed in place), on ``Yt = Y^T`` (N x d) with
    ``g`` its squared row norms. Returns ``(C, n_flips, converged)``, C the final ``(Y B)^T Y B``."""
    N, d = Yt.shape
    K = B.shape[1]
    NK = N * K
    C = np.empty((K, K))
    R = np.zeros((K, K))
    M = np.empty((K, K))
    Z = np.empty((N, K))
    gains = np.empty(NK)
    ub = np.empty(NK)
    exact = np.empty(NK)
    done = np.zeros(NK, np.bool_)
    flipped = np.zeros((N, K), np.bool_)
    valid = np.empty(NK, np.bool_)
    nonzero = 0
    for n in range(N):
        if g[n] > 0.0:
            nonzero += 1
        for k in range(K):
            valid[n * K + k] = g[n] > 0.0
    pairs_apply = pair_moves and nonzero * K <= PAIR_MAX_BITS
    A, P = _state(Yt, B, C)
    any_flipped = False
    n_flips, converged = 0, False
    for _ in range(2 * max_flips + 2):
        cur = _gram_nuclear(C)
        unique = False
        if warm_start or K >= 3:
            unique = _inv_sqrt_gram(C, R)
            if unique:
                _small_matmul(P, R, Z)
        sweep = False
        if warm_start and unique:
            lim = -0.5 * tol * cur
            for n in range(N):
                for k in range(K):
                    if B[n, k] * Z[n, k] < lim:
                        sweep = True
        if sweep:
            j, best = 0, -np.inf
        elif K >= 3:
            j, best = _select_bounded(B, P, C, g, flipped, cur, tol, R, unique, Z, ub, exact, done, M)
        else:
            _all_gains(B, P, C, g, cur, flipped, gains, M)
            j, best = _select(gains, cur)
        wants = sweep or best > tol * cur
        if wants and n_flips >= max_flips:
            break  # capped
        if wants and sweep:
            # A += Y[:, rows] @ delta, then P, B and C (bitflip_search's sweep).
            lim = -0.5 * tol * cur
            rows = np.empty(N, np.int64)
            count = 0
            for n in range(N):
                for k in range(K):
                    if B[n, k] * Z[n, k] < lim:
                        rows[count] = n
                        count += 1
                        break
            Yr = np.empty((d, count))
            delta = np.zeros((count, K))
            for r in range(count):
                n = rows[r]
                for i in range(d):
                    Yr[i, r] = Yt[n, i]
                for k in range(K):
                    if B[n, k] * Z[n, k] < lim:
                        delta[r, k] = -2.0 * B[n, k]
            A += np.dot(Yr, delta)
            P = np.dot(Yt, A)
            for r in range(count):
                for k in range(K):
                    B[rows[r], k] += delta[r, k]
            _gram(A, C)
            n_flips += 1
        elif wants:
            n, k = j // K, j % K
            s = _flip_a(Yt, A, B, n, k)
            dots = np.dot(Yt, Yt[n])
            for m in range(N):
                P[m, k] -= 2.0 * s * dots[m]
            _gram(A, C)
            flipped[n, k] = True
            any_flipped = True
            n_flips += 1
        elif any_flipped:
            flipped[:, :] = False
            any_flipped = False
            A, P = _state(Yt, B, C)
        else:
            # A single-flip local optimum: the pair check (host_pair_move), then search on.
            if not pairs_apply:
                converged = True
                break
            if K >= 3:
                _ranked_gains(B, P, C, g, cur, R, unique, Z, ub, gains, valid, flipped, M)
            # K <= 2: this step's gains are every bit's (nothing was flipped in the round).
            bit_a, bit_b, pbest = _best_pair(Yt, B, P, C, g, cur, gains, valid, M)
            if not pbest > tol * cur:
                converged = True
                break
            if n_flips >= max_flips:
                break  # capped: not converged
            _flip_a(Yt, A, B, bit_a // K, bit_a % K)
            _flip_a(Yt, A, B, bit_b // K, bit_b % K)
            P = np.dot(Yt, A)
            _gram(A, C)
            n_flips += 1
    return C, n_flips, converged


def bitflip_search_numba(Y, B0, *, max_flips=None, tol=DEFAULT_TOL, warm_start=True, pair_moves=True):
    """:func:`l1pca.kernels.bitflip.bitflip_search` (NumPy, ``screen=True``) compiled: same
    arguments, same steps, same :class:`~l1pca.kernels.flip_rule.SearchResult`."""
    N, K = B0.shape
    if max_flips is None:
        max_flips = default_max_flips(N, K)
    Yt = np.ascontiguousarray(Y.T, dtype=np.float64)
    g = (Yt * Yt).sum(axis=1)  # the reference's g, bit for bit
    B = np.array(B0, dtype=np.float64, order="C", copy=True)
    C, n_flips, converged = search(Yt, g, B, int(max_flips), float(tol), bool(warm_start),
                                   bool(pair_moves))
    # K <= 2: the reference's closed forms, operation for operation (NumPy's scalar calls cost 20 us).
    value = _gram_nuclear(C) if K <= 2 else gram_nuclear(C)
    return SearchResult(B, float(value), int(n_flips), bool(converged))


def warm_up():
    """Compile the search, or load it from Numba's on-disk cache (a tiny problem, every branch of
    the signature it is called with)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 4))
    for K in (1, 2, 3):
        B0 = np.where(X @ rng.standard_normal((4, K)) >= 0, 1.0, -1.0)
        bitflip_search_numba(X.T, B0)


if __name__ == "__main__":  # `python -m l1pca.kernels.bitflip_numba`: fill the on-disk cache
    warm_up()
