"""The flip-step rule of L1-BF, shared by every search: the NumPy reference
(:mod:`l1pca.kernels.bitflip`), its screened variant (:mod:`l1pca.kernels.bitflip_screened`), the
batched JAX search (:mod:`l1pca.kernels.bitflip_jax`) and the sharded one (:mod:`l1pca.kernels.sharded`).

Everything a search *decides* lives here, written against an array namespace ``xp`` (NumPy, CuPy or
``jax.numpy``), so the four cannot drift apart: the gain of each candidate flip
(:func:`candidate_gains`), which bit a step flips and how ties break (:func:`select_flip`), which bits
a fixed-point sweep flips (:func:`sweep_mask`), the two-flip moves (:func:`best_pair`), and what a
step does with all that (:func:`step_outcome`, :func:`pair_outcome`).

Why four loops remain around one rule
-------------------------------------
* **NumPy (reference and screened)** iterate in Python: a step may skip work that cannot change a
  decision (no gains when a sweep is due, a concavity bound that rules most bits out for K >= 3,
  only the candidate rows on 1e5 samples). Data-dependent shapes are free there.
* **JAX** needs static shapes: a step computes every quantity for every lane and selects with masks
  (``jnp.where``), inside ``lax.while_loop`` and ``vmap`` over problems and starts.
* **Sharded JAX** is the JAX step with the samples split over devices: the choice of the best bit
  and the sweep decision need collectives (``pmax``, ``pmin``, ``psum``) between the evaluation and
  :func:`step_outcome`.
The loops differ only in how they evaluate; the outcome of a step is computed by the same function.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

TIE_RTOL = 1e-9
"""Gains within this fraction of the metric of the best one are ties, broken by the lowest index.
Without it, candidates that are equal in exact arithmetic (the start copies one column K times) would
be ordered by rounding noise, which differs between NumPy, JAX and CuPy."""

EIG_FLOOR = 1e-14
"""Eigenvalues of a K x K Gram below this fraction of its trace are taken as zero. A rank-deficient
Y B (as at the start) has zero eigenvalues computed as +-1e-16 * trace, whose square roots would add
noise of 1e-8 relative to the metric; singular values this small contribute below 1e-7 of it."""


class SearchResult(NamedTuple):
    signs: object  # (N, K) +-1
    value: float  # ||Y B||_*
    n_flips: int
    converged: bool


def default_max_flips(n_samples, n_components):
    """Flip cap per start. Typical runs use far fewer than N*K flips; the cap only bounds the worst case."""
    return 20 * n_samples * n_components + 1000


def gram_nuclear(M, xp=np):
    """Sum of singular values of a matrix whose K x K Gram is M (batched over leading axes)."""
    K = M.shape[-1]
    if K == 1:
        return xp.sqrt(xp.clip(M[..., 0, 0], 0.0, None))
    if K == 2:
        return _nuclear2(M[..., 0, 0], M[..., 1, 1], M[..., 0, 1], xp)
    w = xp.linalg.eigvalsh(M)
    w = xp.where(w > EIG_FLOOR * xp.abs(w).sum(axis=-1, keepdims=True), w, 0.0)
    return xp.sqrt(w).sum(axis=-1)


def _nuclear2(a, b, c, xp=np):
    """Nuclear norm for the 2 x 2 Gram [[a, c], [c, b]]: s1 + s2 = sqrt(tr + 2 sqrt(det))."""
    tr = a + b
    det = a * b - c * c
    det = xp.where(det > EIG_FLOOR * tr * tr, det, 0.0)  # lambda_2 < floor * lambda_1: zero
    return xp.sqrt(xp.clip(tr + 2.0 * xp.sqrt(det), 0.0, None))


def candidate_gains(B, P, C, g, xp=np):
    """Gain in ``||Y B||_*`` of flipping each bit (n, k) alone; shape (N, K)."""
    N, K = B.shape
    cur = gram_nuclear(C, xp)
    if K == 2:
        # The 2 x 2 candidate Gram directly: entry (k, k) gains 2 w_k + 4 g_n, entry (k, j) gains w_j,
        # entry (j, j) is unchanged (w = -2 B[n, k] P[n, :]); ten element-wise operations per bit.
        s = -2.0 * B
        diag = xp.stack([C[0, 0], C[1, 1]])
        kk = diag[None, :] + 2.0 * s * P + 4.0 * g[:, None]
        jj = diag[::-1][None, :]
        kj = C[0, 1] + s * P[:, ::-1]
        return _nuclear2(kk, jj, kj, xp) - cur
    if K == 1:
        dsq = 4.0 * (g[:, None] - B * P)  # change of ||Y b||^2
        new = xp.sqrt(xp.clip(C[0, 0] + dsq, 0.0, None))
        denom = new + cur
        # sqrt(c + d) - sqrt(c) written as d / (sqrt(c + d) + sqrt(c)): no cancellation.
        return xp.where(denom > 0, dsq / xp.where(denom > 0, denom, 1.0), 0.0)
    W = -2.0 * B[:, :, None] * P[:, None, :]  # W[n, k, :] = w for candidate (n, k)
    eye = xp.eye(K)
    ek_w = eye[None, :, :, None] * W[:, :, None, :]  # e_k w^T
    ekek = eye[:, :, None] * eye[:, None, :]  # e_k e_k^T, shape (K, K, K)
    M = C + ek_w + xp.swapaxes(ek_w, -1, -2) + 4.0 * g[:, None, None, None] * ekek[None]
    return gram_nuclear(M, xp) - cur


def bit_gains(B, P, C, g, rows, ks, xp=np):
    """Gain in ``||Y B||_*`` of flipping each listed bit ``(rows[t], ks[t])`` alone: the K >= 3 case
    of :func:`candidate_gains` for the listed bits only, built with the same operations (so the same
    values), one K x K eigenvalue problem per bit."""
    K = C.shape[-1]
    w = -2.0 * B[rows, ks][:, None] * P[rows]  # (T, K): w for each listed bit
    E = xp.eye(K)[ks]  # (T, K): e_k
    ek_w = E[:, :, None] * w[:, None, :]
    own = 4.0 * g[rows][:, None, None] * (E[:, :, None] * E[:, None, :])
    M = C + ek_w + xp.swapaxes(ek_w, -1, -2) + own
    return gram_nuclear(M, xp) - gram_nuclear(C, xp)


PAIR_CANDIDATES = 16
"""Bits taken into the two-flip check: the ones with the highest single-flip gains (all, when fewer).
On the optimality grid 16 find the same improving pairs as all of them (91.1% exact hits with one
start against 91.2% for 64 and for every pair), at 1/16 of the cost of 64: the batched JAX path
runs the check for every problem of a batch whenever any of them reaches a local optimum, so its size
is paid in throughput."""

PAIR_MAX_BITS = 4096
"""Pair moves only for problems of at most this many bits (non-zero samples times K). They are for
the many small problems (their exact-hit rate); on large ones the 16 candidates are a vanishing
fraction of the bits, each move gains about ``tol`` of the metric, and each check costs a pass over
the data: at N = 1e6, D = 10 pair moves took 147 checks and 28 s for a fit that needs 0.6 s."""


def pair_moves_apply(g, K, xp=np):
    """Whether a problem is small enough for pair moves (counted on non-zero samples, so padding
    does not change the answer)."""
    return (g > 0).sum() * K <= PAIR_MAX_BITS


def _top_desc(a, T, xp):
    """Indices of the T largest entries of ``a``, by decreasing value, equal values by increasing
    index (a stable order, the same on every backend)."""
    if xp.__name__.startswith("jax"):
        # T rounds, each taking out the first maximum (a max, then the lowest index holding it: two
        # plain reductions; XLA's CPU argmax is a two-operand reduction at twice their cost, and its
        # top_k cost 50 ms per batched step on 2048 searches of 128 bits, these rounds about 6).
        # Non-finite entries (invalid bits) rank last, by index.
        v = xp.where(xp.isfinite(a), a, xp.finfo(a.dtype).min)
        picks = []
        for _ in range(T):
            j = first_true(v == v.max(), xp)
            picks.append(j)
            v = xp.where(xp.arange(v.shape[0]) == j, -xp.inf, v)
        return xp.stack(picks)
    if xp.__name__.startswith("cupy"):
        return xp.argsort(-a)[:T]  # CuPy's sort is a stable radix sort; it takes no `stable` flag
    return xp.argsort(-a, stable=True)[:T]


def first_true(mask, xp=np):
    """Index of the first true entry of a 1-D mask (0 when there is none, as ``argmax``)."""
    if xp.__name__.startswith("jax"):
        # The lowest index holding a true entry: one plain min-reduction, which XLA's CPU backend
        # vectorises; its argmax is a two-operand reduction at about twice the cost.
        n = mask.shape[0]
        j = xp.min(xp.where(mask, xp.arange(n), n))
        return xp.where(j == n, 0, j)
    return xp.argmax(mask.astype(xp.int8))  # int8: argmax on bool is not universal


def pair_candidates(gains, valid, xp=np):
    """Flat indices of the ``min(N K, PAIR_CANDIDATES)`` bits with the highest single-flip gains,
    by gain, then index (so every backend picks the same set). ``valid`` (N K,) false for bits of
    all-zero samples (padding): they are ordered last and never paired."""
    flat = xp.where(valid, gains.reshape(-1), -xp.inf)
    return _top_desc(flat, min(flat.shape[0], PAIR_CANDIDATES), xp)


def pair_gains(k, s, Prows, G, C, valid, xp=np):
    """Gain in ``||Y B||_*`` of flipping two bits together, for every pair of T candidate bits.

    Candidate t is bit (n_t, k_t) with sign ``s_t = B[n_t, k_t]`` and ``Prows[t] = P[n_t, :]``; ``G``
    (T, T) is the Gram matrix ``y_n^T y_m`` of their samples. Flipping (n, k) and (m, l) adds
    ``u e_k^T + u' e_l^T`` to ``A = Y B`` with ``u = -2 s y_n``, so the K x K Gram changes by a
    rank-four term built from ``A^T u = -2 s P[n, :]`` and the inner products of u and u':
    O(T^2 K^3), no pass over the data. Returns (T, T) with ``-inf`` on and below the diagonal (each
    pair once) and for invalid candidates.
    """
    K = C.shape[-1]
    w = -2.0 * s[:, None] * Prows  # (T, K): A^T u for each candidate
    E = xp.eye(K)[k]  # (T, K): e_k
    ew = E[:, :, None] * w[:, None, :]  # e_k w^T
    own = ew + xp.swapaxes(ew, -1, -2) \
        + 4.0 * xp.diagonal(G)[:, None, None] * (E[:, :, None] * E[:, None, :])
    ssG = 4.0 * s[:, None] * s[None, :] * G

    def entry(a, b):  # M[:, :, a, b] as a (T, T) array: K <= 2 needs three of them, not (T, T, K, K)
        cross = ssG * (E[:, None, a] * E[None, :, b] + E[None, :, a] * E[:, None, b])
        return C[a, b] + own[:, None, a, b] + own[None, :, a, b] + cross

    if K == 1:
        new = xp.sqrt(xp.clip(entry(0, 0), 0.0, None))
    elif K == 2:
        new = _nuclear2(entry(0, 0), entry(1, 1), entry(0, 1), xp)
    else:
        cross = ssG[:, :, None, None] * (
            E[:, None, :, None] * E[None, :, None, :] + E[None, :, :, None] * E[:, None, None, :])
        new = gram_nuclear(C + own[:, None] + own[None, :] + cross, xp)
    gains = new - gram_nuclear(C, xp)
    T = k.shape[0]
    keep = (xp.arange(T)[:, None] < xp.arange(T)[None, :]) & valid[:, None] & valid[None, :]
    return xp.where(keep, gains, -xp.inf)


def best_pair(Y, B, P, C, g, cur, xp=np):
    """The best two-flip move among the :data:`PAIR_CANDIDATES` most promising bits.

    Returns ``(bit_a, bit_b, gain)``: flat indices ``n K + k`` and the gain in ``||Y B||_*``.
    """
    K = B.shape[1]
    valid = xp.repeat(g > 0, K)
    idx = pair_candidates(candidate_gains(B, P, C, g, xp), valid, xp)
    n, k = idx // K, idx % K
    Yr = Y[:, n]
    pg = pair_gains(k, B[n, k], P[n], Yr.T @ Yr, C, valid[idx], xp)
    j, best = select_flip(pg, cur, xp)
    T = idx.shape[0]
    return idx[j // T], idx[j % T], xp.where(pair_moves_apply(g, K, xp), best, -xp.inf)


def select_flip(gains, cur, xp=np):
    """Index (into the flattened N x K gains) of the flip to make, and the best gain.

    The first index among gains within ``TIE_RTOL * cur`` of the best, so that near-equal candidates
    are ordered the same way on every backend. Whether to flip at all is decided on the best gain
    (returned), not on the chosen one's: with the tie band as wide as the tolerance, a tied
    lower-index bit may gain a little less than ``tol``, and deciding on it would end a round while
    an improving flip exists (and differently in the paths that rank only some candidates).
    The chosen bit still gains more than ``(tol - TIE_RTOL) * cur >= 0``.
    """
    flat = gains.reshape(-1)
    best = flat.max()
    return first_true(flat >= best - TIE_RTOL * cur, xp), best


def gain_bound_terms(B, P, R, g, xp=np):
    """The concavity bound on every bit's gain, ``cross + own`` with ``cross = -2 B (P R)`` and
    ``own = 2 g_n R_kk`` (R = C^(-1/2)), returned as its two terms (callers size their rounding slack
    on them). ``M -> tr sqrt(M)`` is concave, so ``tr sqrt(C + D) <= tr sqrt(C) + tr(R D) / 2`` for
    the rank-two change D of flipping bit (n, k)."""
    return -2.0 * B * small_matmul(P, R, xp), 2.0 * g[:, None] * xp.diagonal(R)[None, :]


POLAR_RTOL = 1e-6
"""Y B counts as rank-deficient (its Procrustes factor not unique) below this singular-value ratio."""


def inv_sqrt_gram(C, xp=np):
    """``C^(-1/2)`` of a K x K Gram ``C = A^T A``, and whether ``A`` has full column rank.

    ``A C^(-1/2)`` is the Procrustes factor ``U V^T`` of ``A = U S V^T``, and
    ``P C^(-1/2)`` with ``P = Y^T A`` is ``Y^T`` times it: the sweep direction, from the K x K Gram
    only (a closed form for K <= 2; batched small SVDs are slow under ``vmap`` on the CPU). When A is
    rank-deficient (the paper's L2 start copies one column K times) the factor is not unique and an
    SVD routine's choice differs between LAPACK, XLA and cuSOLVER; callers then skip the sweep rather
    than follow an arbitrary direction.
    """
    K = C.shape[-1]
    if K == 1:
        c = C[0, 0]
        unique = c > 0
        return xp.where(unique, 1.0 / xp.sqrt(xp.where(unique, c, 1.0)), 0.0).reshape(1, 1), unique
    if K == 2:
        a, b, c = C[0, 0], C[1, 1], C[0, 1]
        tr, det = a + b, a * b - c * c
        unique = det > POLAR_RTOL ** 2 * tr * tr  # lambda_min / lambda_max > rtol^2, roughly
        sq = xp.sqrt(xp.clip(det, 0.0, None))
        t = xp.where(unique, xp.sqrt(tr + 2.0 * sq), 1.0)  # no division by zero when A = 0
        # sqrt(C) = (C + sqrt(det) I) / t; its inverse by the 2 x 2 adjugate.
        r00, r11, r01 = (a + sq) / t, (b + sq) / t, c / t
        rdet = xp.where(unique, r00 * r11 - r01 * r01, 1.0)
        return xp.stack([xp.stack([r11, -r01]), xp.stack([-r01, r00])]) / rdet, unique
    w, V = xp.linalg.eigh(C)
    unique = w[0] > POLAR_RTOL ** 2 * w[-1]
    floor = xp.maximum(w[-1] * POLAR_RTOL ** 2, np.finfo(np.float64).tiny)
    inv_sqrt = xp.where(unique, 1.0 / xp.sqrt(xp.maximum(w, floor)), 0.0)
    return (V * inv_sqrt) @ V.T, unique


def sweep_mask(B, P, C, cur, tol, xp=np):
    """Bits whose sign disagrees with the Procrustes direction: the bits a fixed-point sweep flips.

    With ``Q = A C^(-1/2)`` the Procrustes factor of ``A = Y B`` and ``Z = Y^T Q = P C^(-1/2)``,
    flipping every bit with ``B Z < 0`` at once raises ``||Y B||_*`` by at least ``2 sum |Z|`` over
    those bits (``||Y B'||_* >= tr(Q^T Y B')``; Nie et al. 2011, Kwak 2008 for K = 1), and flipping
    any one of them alone gains at least ``2 |Z|``. Only disagreements beyond ``tol * cur / 2`` count,
    so each flipped bit gains more than the tolerance of a single flip and rounding noise never
    triggers a sweep. Nothing is flagged while Y B is rank-deficient.
    """
    R, unique = inv_sqrt_gram(C, xp)
    return xp.logical_and(B * small_matmul(P, R, xp) < -0.5 * tol * cur, unique)


def small_matmul(P, R, xp=np):
    """``P @ R`` for a K x K matrix R, written out for K <= 2. Under ``vmap`` on the CPU, XLA
    runs a batch of (N x 2) @ (2 x 2) products as a batched dot costing more than the whole gain
    evaluation; written out, it fuses with its neighbours."""
    K = R.shape[-1]
    if K == 1:
        return P * R[0, 0]
    if K == 2:
        return xp.stack([P[..., 0] * R[0, 0] + P[..., 1] * R[1, 0],
                         P[..., 0] * R[0, 1] + P[..., 1] * R[1, 1]], axis=-1)
    return P @ R


class StepOutcome(NamedTuple):
    """What a flip step does (booleans, or boolean arrays on the JAX paths)."""

    do_step: object  # flip: a sweep or the best single flip (not capped)
    do_flip: object  # the single flip (counted in the round's flipped mask)
    new_round: object  # nothing improves among the allowed bits, but some were flipped: allow all
    at_optimum: object  # a single-flip local optimum (a pair check may follow)
    capped: object  # a flip was wanted but the flip cap is reached: stop, not converged


def step_outcome(sweep, best, cur, tol, any_flipped, n_flips, max_flips, xp=np):
    """The one step rule of L1-BF, given what the step found.

    ``sweep``: some bits disagree with the Procrustes direction (:func:`sweep_mask`); a sweep then
    takes precedence over a single flip. ``best``: the best allowed single-flip gain
    (:func:`select_flip`); it improves when above ``tol * cur``. With neither, the round ends: a new
    round starts when bits were flipped in this one, else the point is a single-flip local optimum.
    A wanted flip is refused at the cap (``n_flips >= max_flips``).
    """
    land, lnot = xp.logical_and, xp.logical_not
    wants = xp.logical_or(sweep, best > tol * cur)
    capped = land(wants, n_flips >= max_flips)
    do_step = land(wants, lnot(capped))
    return StepOutcome(do_step=do_step, do_flip=land(do_step, lnot(sweep)),
                       new_round=land(lnot(wants), any_flipped),
                       at_optimum=land(lnot(wants), lnot(any_flipped)), capped=capped)


def pair_outcome(at_optimum, applies, best, cur, tol, n_flips, max_flips, xp=np):
    """The rule at a single-flip local optimum: ``(do_pair, improve, capped)``. The best pair
    (:func:`best_pair`) is flipped when pair moves apply to the problem (:func:`pair_moves_apply`)
    and it gains more than ``tol * cur``, unless the flip cap is reached; with no improving pair the
    search has converged."""
    land = xp.logical_and
    improve = land(land(at_optimum, applies), best > tol * cur)
    capped = land(improve, n_flips >= max_flips)
    return land(improve, xp.logical_not(capped)), improve, capped


def host_pair_move(Y, A, B, P, C, g, cur, tol, n_flips, max_flips, pair_moves, xp=np):
    """The pair step of the host searches (NumPy reference and screened, CuPy), in place: at a
    single-flip local optimum, flip the best pair (:func:`best_pair`) in ``B`` and ``A = Y B`` when
    :func:`pair_outcome` says so. Returns ``(moved, converged)``; the caller refreshes what it keeps
    of P and C."""
    K = B.shape[1]
    applies = bool(pair_moves) and bool(pair_moves_apply(g, K, xp))
    bit_a, bit_b, best = best_pair(Y, B, P, C, g, cur, xp) if applies else (0, 0, -np.inf)
    do_pair, _, capped = pair_outcome(True, applies, float(best), cur, tol, n_flips, max_flips)
    if not do_pair:
        return False, not bool(capped)
    for bit in (int(bit_a), int(bit_b)):
        n, k = divmod(bit, K)
        A[:, k] -= 2.0 * float(B[n, k]) * Y[:, n]
        B[n, k] = -B[n, k]
    return True, False
