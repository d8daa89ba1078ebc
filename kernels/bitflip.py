"""L1-BF, the bit-flipping search of Markopoulos, Kundu, Chamadia & Pados (IEEE TSP 2017).

This is the reference implementation, written against an array namespace ``xp`` so that NumPy (CPU)
and CuPy (GPU) run one body. The JAX backend (:mod:`l1pca.kernels.bitflip_jax`) implements the same
rules step for step and is tested against this one.

The search maximises ``||Y B||_*`` over sign matrices B (N x K) for the reduced data Y (d x N):

* A step evaluates the gain of flipping every bit (n, k) not yet flipped in the current round and flips
  the best one if it gains more than ``tol`` times the current value (ties: lowest n*K + k).
* When no allowed bit gains but bits were flipped in this round, a new round starts with every bit
  allowed. When a whole round starts and finds no gain, the point is a single-flip local optimum.
* Fixed-point sweeps (``warm_start=True``, the default): whenever bits disagree in sign with the
  Procrustes direction ``Y^T Q`` (:func:`sweep_mask`), one step flips them all. Every such bit is an
  improving flip on its own, and flipping them together still improves; a single-flip local optimum
  has none, so the end point is the same kind. Why: on data with gross outliers one flip of an
  outlier turns the subspace a little, and thousands of ordinary samples near the boundary then
  disagree; single flips undo them one O(N d) step at a time (22,916 steps at N = 1e5, D = 100),
  sweeps in a few dozen.
* Every flip raises the metric by more than the tolerance, so no sign matrix repeats and the loop ends;
  ``max_flips`` bounds it anyway, and ``converged`` says whether the optimum was reached.

Incremental state (never an N x N Gram, never an SVD per candidate):

* ``A = Y B`` (d x K), ``P = Y^T A`` (N x K), ``C = A^T A`` (K x K), ``g_n = ||y_n||^2``.
* Flipping (n, k) with current sign s changes column k of A by ``u = -2 s y_n``, so the candidate's
  K x K Gram is ``C + e_k w^T + w e_k^T + 4 g_n e_k e_k^T`` with ``w = -2 s P[n, :]``: its singular
  values cost O(K^3) (closed forms for K = 1, 2). For K = 1 the gain is ``4 (g_n - b_n P_n)`` on the
  squared metric, as in the paper.
* After a flip, column k of P changes by ``-2 s Y^T y_n``: one Gram column, O(N d).
* At the start of each round A, P and C are recomputed from B, so rounding cannot drift.
"""
from __future__ import annotations

import numpy as np

from .flip_rule import (
    TIE_RTOL,
    SearchResult,
    bit_gains,
    candidate_gains,
    default_max_flips,
    gain_bound_terms,
    gram_nuclear,
    host_pair_move,
    inv_sqrt_gram,
    select_flip,
    step_outcome,
    sweep_mask,
)
from .options import DEFAULT_TOL


def select_flip_bounded(B, P, C, g, flipped, cur, tol, xp=np):
    """``select_flip`` of the allowed candidate gains, for K >= 3, evaluating few of them exactly.

    Every candidate's exact gain needs a K x K eigenvalue problem, N K of them per step. But
    ``M -> tr sqrt(M)`` is concave on positive definite matrices, so for the candidate Gram
    ``C + D`` (D the rank-two change of a flip) ``gain <= tr(C^(-1/2) D) / 2``, which for bit (n, k)
    is ``-2 B[n, k] Z[n, k] + 2 g_n (C^(-1/2))_kk`` with ``Z = P C^(-1/2)``: O(N K) for all bits.
    Only bits whose bound reaches ``tol`` (and then the tie band of the best) are evaluated exactly,
    so the choice is the one of the full evaluation. Falls back to it while Y B is rank-deficient.
    Returns ``(j, best)`` as ``select_flip``; ``best`` is only a bound when it is at most ``tol * cur``.
    """
    N, K = B.shape
    R, unique = inv_sqrt_gram(C, xp)
    if not bool(unique):
        return select_flip(xp.where(flipped, -xp.inf, candidate_gains(B, P, C, g, xp)), cur, xp)
    slack = TIE_RTOL * cur  # the bound in floating point: never let rounding drop a candidate
    cross, own = gain_bound_terms(B, P, R, g, xp)
    ub = cross + own + slack
    ub = xp.where(flipped, -xp.inf, ub).reshape(-1)
    top = float(ub.max())
    if not top > tol * cur:
        return int(ub.argmax()), top  # nothing can improve
    bits = xp.flatnonzero(ub > tol * cur)
    while True:
        exact = bit_gains(B, P, C, g, bits // K, bits % K, xp)
        best = float(exact.max())
        band = best - TIE_RTOL * cur
        more = xp.flatnonzero(ub >= band)  # every bit that could lie in the tie band
        if bool(xp.isin(more, bits).all()):
            break
        bits = xp.union1d(bits, more)
    return int(bits[xp.argmax(exact >= band)]), best


def _state(Y, Yt, B):
    A = Y @ B
    return A, Yt @ A, A.T @ A



def bitflip_search(Y, B0, *, max_flips=None, tol=DEFAULT_TOL, warm_start=True, pair_moves=True,
                   screen=True, xp=np):
    """Run L1-BF from one start.

    Parameters
    ----------
    Y : array (d, N), float64
        The data as the search sees it (:func:`l1pca.kernels.reduce.search_data`: ``X^T`` itself
        for N >= D, else :func:`l1pca.kernels.reduce.reduce_rank`'s factor); only ``Y^T Y`` matters.
    B0 : array (N, K) of +-1
        Start.
    max_flips : int, optional
        Cap on flip steps (single flips plus sweeps); default :func:`default_max_flips`.
    tol : float
        A flip must raise the metric by more than ``tol`` times its current value.
    warm_start : bool
        Fixed-point sweeps (:func:`sweep_mask`): whenever some bits disagree with the Procrustes
        direction, flip them all in one step instead of one flip each. From the start this is the
        fixed-point warm start; between single flips it absorbs the cascade one flip of an outlier
        sets off, which single flips would undo one bit at a time (thousands of O(N d) steps on
        contaminated data of 1e5 samples). The end point is still a single-flip local optimum.
        False: the paper's L1-BF, single flips only.
    pair_moves : bool
        At each single-flip local optimum, try every pair of the :data:`PAIR_CANDIDATES` bits with
        the highest single-flip gains (:func:`pair_gains`); flip the best pair if it improves and
        search on; problems of at most :data:`PAIR_MAX_BITS` bits only. The end point is then also
        two-flip optimal among those bits. With one start this lifts the exact-hit rate of the
        optimality benchmark from 85% to 91% (K = 2, 3 gain most); the cost is O(T^2 K^3) per check,
        no pass over the data.
    screen : bool
        For K >= 3 on NumPy, evaluate exactly only the candidates whose concavity bound reaches the
        tolerance (:func:`select_flip_bounded`): same choice, few eigenvalue problems. False: every
        candidate. (Many samples on NumPy go to :func:`l1pca.kernels.bitflip_screened.search_screened`
        instead; :func:`l1pca.kernels.solve.host_search` chooses.)

    Returns
    -------
    SearchResult
        ``n_flips`` counts flip steps: single flips, sweeps and pair moves, each one O(N d K) update.
    """
    N, K = B0.shape
    if max_flips is None:
        max_flips = default_max_flips(N, K)
    B = xp.array(B0, dtype=Y.dtype, copy=True)
    # Y^T as its own contiguous array: BLAS multiplies it 2-3x faster than the transposed view.
    Yt = xp.ascontiguousarray(Y.T)
    g = (Yt * Yt).sum(axis=1)
    A, P, C = _state(Y, Yt, B)
    flipped = xp.zeros((N, K), dtype=bool)
    n_flips, converged = 0, False
    # A step flips a bit, sweeps, or ends a round; a round that ends had at least one single flip,
    # so 2 * max_flips + 2 steps bound the loop even if the flip cap were never reached.
    for _ in range(2 * max_flips + 2):
        cur = float(gram_nuclear(C, xp))
        bad = sweep_mask(B, P, C, cur, tol, xp) if warm_start else None
        sweep = bad is not None and bool(bad.any())
        if sweep:  # a sweep takes precedence: the single-flip gains are not needed
            j, best = 0, -np.inf
        elif K >= 3 and screen and xp is np:
            j, best = select_flip_bounded(B, P, C, g, flipped, cur, tol, xp)
        else:
            j, best = select_flip(xp.where(flipped, -xp.inf, candidate_gains(B, P, C, g, xp)), cur, xp)
        out = step_outcome(sweep, float(best), cur, tol, bool(flipped.any()), n_flips, max_flips)
        if out.capped:
            break
        if out.do_step and sweep:
            rows = xp.nonzero(bad.any(axis=1))[0]
            delta = xp.where(bad[rows], -2.0 * B[rows], 0.0)
            A += Y[:, rows] @ delta
            P = Yt @ A
            B[rows] += delta
            C = A.T @ A
            n_flips += 1
        elif out.do_flip:
            n, k = divmod(int(j), K)
            s = float(B[n, k])
            A[:, k] -= 2.0 * s * Y[:, n]
            P[:, k] -= 2.0 * s * (Yt @ Yt[n])
            B[n, k] = -s
            C = A.T @ A
            flipped[n, k] = True
            n_flips += 1
        elif out.new_round:
            flipped[...] = False
            A, P, C = _state(Y, Yt, B)
        else:
            # A single-flip local optimum. Two-flip moves among the most promising bits, then search on.
            moved, converged = host_pair_move(Y, A, B, P, C, g, cur, tol, n_flips, max_flips,
                                              pair_moves, xp)
            if not moved:
                break
            P, C = Yt @ A, A.T @ A
            n_flips += 1
    value = float(gram_nuclear(C, xp))
    return SearchResult(B, value, n_flips, converged)
