"""L1-BF on many samples with screened gains: the rules of
:func:`l1pca.kernels.bitflip.bitflip_search`, at O(N K) plus the candidates' rows per step instead
of O(N d K).

Each step of the reference updates ``P = Y^T A`` (A = Y B) for every sample: a pass over the d x N
data, 80 MB at N = 1e5, d = 100, and it is the whole cost of a step. Yet a step only needs the bits
that could flip. Flipping bit (n, k) gains at most ``UB = -2 B[n, k] Z[n, k] + 2 g_n R_kk`` with ``R
= C^(-1/2)``, ``Z = P R`` and ``g_n = ||y_n||^2``, because ``M -> tr sqrt(M)`` is concave
(:func:`l1pca.kernels.flip_rule.gain_bound_terms`, which ``select_flip_bounded`` uses too; for K = 1
it is the exact gain's first-order term). :class:`_Screen` evaluates ``UB`` at a refresh and bounds
how far it can have moved since from K-vectors only (Cauchy-Schwarz on the change of A and of R). A
bit whose bound stays below ``-2 TIE_RTOL cur`` is never a sweep bit, never the best flip and never
in its tie band, so the step evaluates exactly only the rows that pass (typically a few thousand of
1e5), and refreshes in full when more than N / 16 pass; a refresh only needs bounds, so it runs in
float32 with its rounding error added to them (:class:`_SinglePass`, 3-4x faster). For K >= 3 the
candidate rows are ranked as the reference ranks all rows (``select_flip_bounded``: an eigenvalue
problem only for bits whose concavity bound reaches the tolerance). Decisions are those of the
reference: the same sweeps, flips, rounds, ties and pair moves (``tests/kernels/test_bitflip.py``
and ``tests/kernels/test_starts.py`` check step counts and signs).
"""
from __future__ import annotations

import numpy as np

from .bitflip import select_flip_bounded
from .flip_rule import (
    TIE_RTOL,
    SearchResult,
    bit_gains,
    candidate_gains,
    gain_bound_terms,
    gram_nuclear,
    host_pair_move,
    inv_sqrt_gram,
    select_flip,
    small_matmul,
    step_outcome,
)

SCREEN_MIN_SAMPLES = 4096
"""Below this many samples a full pass is cheap and the reference runs as it is."""

SINGLE_PASS_MAX_BYTES = 2 << 30
"""Largest float32 copy of the data kept for the refreshes (:class:`_SinglePass`); beyond it they
run in float64."""


def search_screened(Y, B0, *, max_flips, tol, warm_start, pair_moves):
    """:func:`l1pca.kernels.bitflip.bitflip_search` on NumPy with screened gains; same arguments and
    result.

    ``A`` and ``C`` follow the reference's updates operation for operation; only the candidates'
    ``P`` is computed afresh instead of being updated, which changes no decision. While ``Y B`` is
    rank-deficient (no ``C^(-1/2)``, as from the paper's L2 start with K >= 2) every row is evaluated,
    as in the reference.
    """
    Yt = np.ascontiguousarray(Y.T)
    N, K = B0.shape
    B = np.array(B0, dtype=np.float64, copy=True)
    g = np.einsum("nd,nd->n", Yt, Yt)
    r = np.sqrt(g)
    A = Y @ B
    C = A.T @ A
    refresh_at = max(256, N // 16)  # more candidate rows than this: one full pass is cheaper
    single, refreshes = None, 0  # the float32 copy costs about 4 refreshes: made at the third
    everything = np.arange(N)
    flipped = np.zeros((N, K), dtype=bool)
    screen = None
    n_flips, converged = 0, False
    for _ in range(2 * max_flips + 2):
        cur = float(gram_nuclear(C))
        R, unique = inv_sqrt_gram(C)
        if not bool(unique):
            rows, P, screen = everything, Yt @ A, None
        else:
            rows = None if screen is None else screen.rows(A, R, cur)
            if rows is None or rows.size > refresh_at:
                refreshes += 1
                if single is None and refreshes == 3 and Yt.size * 4 <= SINGLE_PASS_MAX_BYTES:
                    single = _SinglePass(Yt, r)
                screen = _Screen(A, R, B, g, r, Yt, single)
                rows = screen.rows(A, R, cur)
            P = Yt[rows] @ A  # exact for every row that matters
        Br = B[rows]
        bad = None
        if warm_start and bool(unique):
            bad = Br * small_matmul(P, R) < -0.5 * tol * cur  # sweep_mask on the candidate rows
        sweep = bad is not None and bool(bad.any())
        if sweep:
            j, best = 0, -np.inf
        elif not rows.size:
            j, best = 0, -np.inf
        elif K >= 3 and not bool(unique):
            j, best = select_flip_rank_deficient(B, P, C, g, flipped, cur, tol)
        elif K >= 3:
            # The reference's K >= 3 selection on the candidate rows: the same choice, with an
            # eigenvalue problem only for the bits whose concavity bound reaches the tolerance
            # (all candidates' exactly cost 3-5 ms a step at 1e4 x 30, K = 3).
            j, best = select_flip_bounded(Br, P, C, g[rows], flipped[rows], cur, tol)
        else:
            gains = np.where(flipped[rows], -np.inf, candidate_gains(Br, P, C, g[rows]))
            j, best = select_flip(gains, cur)
        out = step_outcome(sweep, float(best), cur, tol, bool(flipped.any()), n_flips, max_flips)
        if out.capped:
            break
        if out.do_step and sweep:
            hit = np.flatnonzero(bad.any(axis=1))
            delta = np.where(bad[hit], -2.0 * Br[hit], 0.0)
            A += Y[:, rows[hit]] @ delta
            B[rows[hit]] += delta
            C = A.T @ A
            if screen is not None:
                screen.dirty[rows[hit]] = True
            n_flips += 1
        elif out.do_flip:
            i, k = divmod(int(j), K)
            n = int(rows[i])
            s = float(B[n, k])
            A[:, k] -= 2.0 * s * Y[:, n]
            B[n, k] = -s
            C = A.T @ A
            flipped[n, k] = True
            if screen is not None:
                screen.dirty[n] = True
            n_flips += 1
        elif out.new_round:
            flipped[...] = False
            A = Y @ B
            C = A.T @ A
            screen = None
        else:
            # The pair check ranks every bit: exact P for all.
            moved, converged = host_pair_move(Y, A, B, Yt @ A, C, g, cur, tol, n_flips, max_flips,
                                              pair_moves)
            if not moved:
                break
            C = A.T @ A
            screen = None
            n_flips += 1
    return SearchResult(B, float(gram_nuclear(C)), n_flips, converged)


REGULARISED_EPS = np.logspace(-16.0, 0.0, 9)
"""The shifts ``eps`` (times the largest eigenvalue of ``C``) at which
:func:`select_flip_rank_deficient` takes its concavity bound; each bit keeps the least."""


def select_flip_rank_deficient(B, P, C, g, flipped, cur, tol):
    """``select_flip`` over every allowed bit while ``Y B`` is rank-deficient (no ``C^(-1/2)``), for
    K >= 3, with few eigenvalue problems.

    The L2 start copies one sign vector into all K columns, and its first steps are single flips
    chosen among all N K bits: at 1e5 x 30, K = 5, four steps took 8 s of a 14 s start when every
    bit got its eigenvalue problem. ``M -> tr sqrt(M)`` is concave, so at the shifted Gram
    ``C + eps I`` (positive definite for any ``eps > 0``), with ``R = (C + eps I)^(-1/2)`` and
    ``l_i`` the eigenvalues of C, every bit's gain obeys ``gain <= c(eps) + tr(R D) / 2`` with
    ``c(eps) = sum_i sqrt(l_i + eps) - sqrt(l_i) - eps / (2 sqrt(l_i + eps))`` and ``tr(R D) / 2``
    the terms of :func:`l1pca.kernels.flip_rule.gain_bound_terms` at R. Each bit takes the least bound
    over :data:`REGULARISED_EPS`. The bit with the highest bound is evaluated exactly (gain g0);
    the best gain is at least g0, so only bits whose bound reaches ``max(g0, tol cur)`` less the tie
    band can be the best or tie with it, and those are evaluated exactly (about 0.3-5% of the bits
    at the L2 start of 1e5 x 30, K = 5). The choice is that of the full evaluation.
    """
    N, K = B.shape
    lam, V = np.linalg.eigh(C)
    lam = np.clip(lam, 0.0, None)
    top_lam = float(lam[-1])
    if not top_lam > 0.0:
        return select_flip(np.where(flipped, -np.inf, candidate_gains(B, P, C, g)), cur)
    ub = None
    for eps in top_lam * REGULARISED_EPS:
        root = np.sqrt(lam + eps)
        R = (V / root) @ V.T
        shift = float(np.sum(root - np.sqrt(lam) - eps / (2.0 * root)))
        cross, own = gain_bound_terms(B, P, R, g)
        # Rounding: a relative 1e-12 of the terms (their own error is about 1e-16 of them).
        bound = cross + own + shift + 1e-12 * (np.abs(cross) + own + abs(shift))
        ub = bound if ub is None else np.minimum(ub, bound)
    slack = TIE_RTOL * cur
    ub = np.where(flipped, -np.inf, ub + slack).reshape(-1)
    j0 = int(ub.argmax())
    if not ub[j0] > -np.inf:
        return j0, -np.inf
    g0 = float(bit_gains(B, P, C, g, np.array([j0 // K]), np.array([j0 % K]))[0])
    bits = np.flatnonzero(ub >= max(g0, tol * cur) - slack)
    bits = np.union1d(bits, [j0])
    while True:
        exact = bit_gains(B, P, C, g, bits // K, bits % K)
        best = float(exact.max())
        band = best - slack
        more = np.flatnonzero(ub >= band)  # every bit that could lie in the tie band
        if bool(np.isin(more, bits).all()):
            break
        bits = np.union1d(bits, more)
    return int(bits[np.argmax(exact >= band)]), best


class _Screen:
    """Bounds on every bit's concavity bound ``UB``, from one refresh.

    At the refresh: ``U_s = -2 B Z_s + 2 g R_s,kk`` with ``Z_s = P_s R_s``. Later, with ``A`` and ``R``
    moved on, for a row whose signs have not changed since (``dirty`` marks the others):
    ``|Z - Z_s|[n, k] <= r_n sum_j (||a_j - a_s,j|| |R_jk| + ||a_s,j|| |R_jk - R_s,jk|)`` because
    ``|P_s[n, j]| <= r_n ||a_s,j||``, so ``UB <= U_s + r_n alpha_k + g_n gamma_k`` with K-vectors alpha
    and gamma: two multiplications and additions over the N x K bits per step. Bits are kept while
    the bound reaches ``-2 TIE_RTOL cur``: twice the width that matters, so that rounding in the
    exact gains (about 1e-16 of cur) never lets a dropped bit into the tie band, even with ``tol=0``.
    """

    def __init__(self, A, R, B, g, r, Yt, single=None):
        self.As, self.Rs, self.g, self.r = A.copy(), R, g, r
        self.norm_as = np.linalg.norm(A, axis=0)
        if single is None:
            Ps, rel, absolute = Yt @ A, np.zeros(A.shape[1]), np.zeros(A.shape[1])
        else:
            Ps, rel, absolute = single.product(A)
        terms, own = gain_bound_terms(B, Ps, R, g)
        # Rounding in U_s: a relative 1e-12 of its terms (its own error is about 1e-16 of them).
        # Stored one contiguous row per k: the per-step tests run over N-vectors.
        Us = (terms + own + 1e-12 * (np.abs(terms) + own)).T
        # The error of a float32 P_s: |dP[n, j]| <= rel_j r_n + abs_j moves term (n, k) by at most
        # 2 sum_j |dP[n, j]| |R_jk|.
        absR = np.abs(R)
        Us += (2.0 * (rel @ absR))[:, None] * r[None, :] + (2.0 * (absolute @ absR))[:, None]
        self.Us = np.ascontiguousarray(Us)
        self.dirty = np.zeros(B.shape[0], dtype=bool)

    def rows(self, A, R, cur):
        """Rows holding a bit whose ``UB`` may reach ``-2 TIE_RTOL cur``, and every dirty row."""
        dR = np.abs(R - self.Rs)
        drift = np.linalg.norm(A - self.As, axis=0)
        alpha = 2.0 * (drift @ np.abs(R) + self.norm_as @ dR) * (1.0 + 1e-12)
        gamma = 2.0 * np.maximum(np.diagonal(R) - np.diagonal(self.Rs), 0.0) * (1.0 + 1e-12)
        keep = self.dirty.copy()
        ub = np.empty_like(self.r)
        for k in range(self.Us.shape[0]):
            np.multiply(self.r, alpha[k], out=ub)
            ub += self.Us[k]
            if gamma[k] > 0:
                ub += gamma[k] * self.g
            keep |= ub > -2.0 * TIE_RTOL * cur
        return np.flatnonzero(keep)


class _SinglePass:
    """``P = Y^T A`` in float32 for the refreshes, with a bound on its error.

    A refresh only needs bounds, and it is a pass over the whole N x d data: in float32 it reads half
    the bytes and runs 3-4x faster (BLAS sgemm; 1.0 against 3.3 ms at N = 1e5, d = 100, K = 1, and 2.2
    against 9.1 ms for K = 2). The rows the search then uses are computed in float64, so no decision
    changes; the bound only widens each row's screen by its error, about 1e-5 of ``r_n ||a_j||``
    against the 1e-2 the drift allows before a refresh.

    Both factors are scaled by powers of two to a largest entry of at most 1 (no overflow whatever the
    data's scale). Then, for the computed ``p`` against the exact ``y . a`` of one row and column, with
    unit roundoff ``u = 2^-24``: rounding y and a to float32 and a dot product of d terms in any order
    give ``|p - y . a| <= gamma_(d+2) sum_i |y_i a_i| <= gamma_(d+2) r_n ||a||`` (Higham, Accuracy and
    Stability, 3.1); taken as ``2 (d + 2) u`` to cover FMA and blocking. Underflow (entries below
    2^-126 of the scaled unit, flushed or not) adds at most ``(2 d + 1) 2^-126`` per product, taken
    as ``8 d 2^-126`` in scaled units.
    """

    def __init__(self, Yt, r):
        peak = float(r.max()) if r.size else 0.0  # |y_ni| <= r_n
        self.scale_y = _pow2_at_least(peak)
        self.Yt32 = np.empty(Yt.shape, dtype=np.float32)
        np.multiply(Yt, 1.0 / self.scale_y, out=self.Yt32, casting="unsafe")
        d = Yt.shape[1]
        self.rel = 2.0 * (d + 2) * 2.0 ** -24
        self.floor = 8.0 * d * 2.0 ** -126

    def product(self, A):
        """``(P, rel, absolute)``: P (N, K) float64 with ``|P - Y^T A|[n, j] <= rel_j r_n +
        absolute_j``."""
        scale_a = _pow2_at_least(float(np.abs(A).max()) if A.size else 0.0)
        A32 = (A / scale_a).astype(np.float32)
        unit = self.scale_y * scale_a
        P = (self.Yt32 @ A32).astype(np.float64) * unit
        rel = self.rel * np.linalg.norm(A, axis=0) * (1.0 + 1e-12)
        absolute = np.full(A.shape[1], self.floor * unit)
        return P, rel, absolute


def _pow2_at_least(x):
    """A power of two at least ``x`` (1 for 0), so that dividing by it is exact."""
    return 1.0 if x <= 0.0 else float(2.0 ** np.ceil(np.log2(x)))
