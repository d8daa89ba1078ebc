"""L1-BF in JAX: the rules of :mod:`l1pca.kernels.bitflip`, jitted, batched over problems.

Small pure functions; the only ``jit`` is :func:`solve_bucket`, the edge the dispatcher calls with a
stack of equal-shaped problems. Its starts run one after another in a ``scan`` (each restart starts
from the best optimum so far, :mod:`l1pca.kernels.starts`), every problem of the bucket a lane of
each. One search's step (:func:`_flip_step`, :func:`_pair_step`) is written
for one start and ``vmap``-ed over lanes (the bucket's problems); the loops around it are written for the
whole bucket (:func:`search_lanes`), so that they can move the searches still running into smaller
lane arrays as the others end (:func:`_flip_loop`): ``vmap`` of a ``while_loop`` would step every
lane until the slowest search ends. Outside ``vmap``, a ``switch`` on a lane count runs one branch.

The gain formula is shared with the NumPy reference (``candidate_gains`` is written against an array
namespace), so the two backends cannot drift apart in what they compute.

Precision: float64, enabled with the ``jax.enable_x64`` context at the edge (no global switch).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .flip_rule import (
    TIE_RTOL,
    best_pair,
    bit_gains,
    candidate_gains,
    first_true,
    gain_bound_terms,
    gram_nuclear,
    inv_sqrt_gram,
    pair_outcome,
    select_flip,
    step_outcome,
    sweep_mask,
)
from .reduce import l2_start_matrix, search_data
from .starts import RESTART_STEP, best_kept, improves, next_step, restart_start

# Buckets (batch, rows, cols, K, starts, warm_start, pair_moves) compiled in this process. jit keeps
# its own cache; this mirror of it lets backend="auto" prefer JAX where no compile is pending,
# without asking jit (read through l1pca.kernels.solve.compiled_buckets, which never imports JAX).
_COMPILED: set = set()


class FlipState(NamedTuple):
    B: jax.Array  # (N, K) +-1
    A: jax.Array  # (d, K) = Y B
    P: jax.Array  # (N, K) = Y^T A
    C: jax.Array  # (K, K) = A^T A
    flipped: jax.Array  # (N, K) bool, bits flipped in this round
    n_flips: jax.Array  # int32
    steps: jax.Array  # int32
    done: jax.Array  # bool: a round found no gain (converged) or the cap was hit
    converged: jax.Array  # bool


def _running(state: FlipState, max_steps) -> jax.Array:
    return jnp.logical_and(~state.done, state.steps < max_steps)


BOUNDED_CANDIDATES = 16
"""K >= 3: bits whose exact gain a step computes (:func:`_select_bounded`). On 16 service-sized
problems (64 x 16, K = 3, 8 starts) no step needed more; the full evaluation ran in 3 of 34 steps,
for rank-deficient L2 starts."""


def _select_bounded(B, P, C, g, flipped, cur, tol, needed):
    """``select_flip`` over the allowed bits for K >= 3, with :data:`BOUNDED_CANDIDATES` eigenvalue
    problems instead of N K.

    As the NumPy path's ``select_flip_bounded``: the concavity bound ``ub`` (O(N K)) rules bits out.
    The bit with the highest bound is evaluated exactly (gain g0); the best gain is at least g0 and
    only a best gain above ``tol cur`` is acted on, so a bit whose bound is below ``max(g0, tol cur) -
    TIE_RTOL cur`` is neither an improving best nor in the tie band. The first T =
    :data:`BOUNDED_CANDIDATES` of the others (by index; a sort for the T highest bounds cost as much
    as the eigenvalue problems) are evaluated exactly. When more are left, or while ``Y B`` is
    rank-deficient (no bound), every bit is evaluated: under ``vmap`` that fallback is a
    ``while_loop`` that runs once if any lane needs it and not at all otherwise (a ``cond`` would run
    both branches on every lane); ``needed`` false (the lane sweeps or has ended, and discards the
    choice) keeps a lane from asking for it. Same choice as the full evaluation wherever it is used.
    """
    N, K = B.shape
    R, unique = inv_sqrt_gram(C, jnp)
    slack = TIE_RTOL * cur
    cross, own = gain_bound_terms(B, P, R, g, jnp)
    ub = jnp.where(flipped, -jnp.inf, cross + own + slack).reshape(-1)
    # The bit with the highest bound, exactly: the best gain is at least its gain g0, so no bit whose
    # bound is below max(g0, tol cur) - TIE_RTOL cur can be an improving best or in its tie band.
    j0 = first_true(ub == ub.max(), jnp)
    g0 = bit_gains(B, P, C, g, (j0 // K)[None], (j0 % K)[None], jnp)[0]
    inside = jnp.logical_and(ub >= jnp.maximum(g0, tol * cur) - slack, ub > -jnp.inf)
    # The first T of those (by index), exactly.
    idx = jnp.nonzero(inside, size=BOUNDED_CANDIDATES, fill_value=N * K)[0]
    ok = idx < N * K
    safe = jnp.where(ok, idx, 0)
    exact = jnp.where(ok, bit_gains(B, P, C, g, safe // K, safe % K, jnp), -jnp.inf)
    best = exact.max()
    j = safe[first_true(jnp.logical_and(ok, exact >= best - slack), jnp)]  # first in the tie band
    need_full = jnp.logical_and(needed, jnp.logical_or(inside.sum() > BOUNDED_CANDIDATES, ~unique))

    def full(carry):
        # P through the loop counter: otherwise XLA hoists this loop-invariant evaluation out of the
        # loop, and it runs at every step (measured: 29 ms per step on 128 lanes of 64 x 3 bits).
        Pi = jnp.where(carry[3] == 0, P, 0.0)
        gains = jnp.where(flipped, -jnp.inf, candidate_gains(B, Pi, C, g, jnp))
        jf, bf = select_flip(gains, cur, jnp)
        return jf.astype(carry[0].dtype), bf.astype(carry[1].dtype), jnp.array(False), carry[3] + 1

    j, best, _, _ = lax.while_loop(lambda carry: carry[2], full,
                                   (j, best, need_full, jnp.array(0, jnp.int32)))
    return j, best


def _by_columns(M, X):
    """``M @ X`` for a narrow X (N x K), written as one matrix-vector product per column for K <= 2.
    Under ``vmap`` on the CPU, XLA runs a batch of (d x N) @ (N x 2) products as a batched matrix
    product at about a third of the speed of the same arithmetic as batched matrix-vector products,
    and a whole flip step took nearly twice as long (``docs/decisions/0004-products-by-columns.md``).
    Wider X keeps one product: on a GPU, K products would read M K times."""
    if X.shape[1] > 2:
        return M @ X
    return jnp.stack([M @ X[:, k] for k in range(X.shape[1])], axis=-1)


def _update(Y, state: FlipState, delta) -> FlipState:
    """Add ``delta`` (N x K, zero or -2 B per bit) to the signs, with ``A``, ``P`` and ``C`` from the
    new ``A`` (``P`` is never accumulated, so a search's state stays exact)."""
    A = state.A + _by_columns(Y, delta)
    return state._replace(B=state.B + delta, A=A, P=_by_columns(Y.T, A), C=A.T @ A)


def _flip_step(Y, g, max_flips, tol, warm_start: bool, state: FlipState) -> FlipState:
    N, K = state.B.shape
    cur = gram_nuclear(state.C, jnp)
    # A sweep (every bit that disagrees with the Procrustes direction) takes precedence over a flip.
    bad = sweep_mask(state.B, state.P, state.C, cur, tol, jnp) if warm_start \
        else jnp.zeros(state.B.shape, bool)
    sweep = jnp.any(bad)
    if K >= 3:
        # A sweeping lane, or one whose search has ended (vmap steps it anyway), discards the
        # choice: it must not send every lane to the full evaluation.
        needed = jnp.logical_and(~sweep, ~state.done)
        j, best = _select_bounded(state.B, state.P, state.C, g, state.flipped, cur, tol, needed)
    else:
        gains = jnp.where(state.flipped, -jnp.inf, candidate_gains(state.B, state.P, state.C, g, jnp))
        j, best = select_flip(gains, cur, jnp)
    n, k = j // K, j % K
    any_flipped = jnp.any(state.flipped)
    out = step_outcome(sweep, best, cur, tol, any_flipped, state.n_flips, max_flips, jnp)

    onehot = (jnp.arange(N * K) == j).reshape(N, K)
    delta = jnp.where(jnp.where(sweep, bad, onehot), -2.0 * state.B, 0.0)
    delta = jnp.where(out.do_step, delta, 0.0)
    flipped = jnp.where(out.do_flip, state.flipped.at[n, k].set(True), state.flipped)
    # A local optimum ends this loop; with pair moves, search's outer loop decides whether to go on.
    return _update(Y, state, delta)._replace(  # one update for flips and sweeps alike
        flipped=jnp.where(out.new_round, False, flipped),
        n_flips=state.n_flips + out.do_step.astype(jnp.int32),
        steps=state.steps + 1,
        done=jnp.logical_or(out.capped, out.at_optimum),
        converged=jnp.logical_and(out.at_optimum, ~out.capped),
    )


def _pair_step(Y, g, max_flips, tol, state: FlipState) -> FlipState:
    """At a single-flip local optimum: flip the best pair (:func:`best_pair`) if it improves."""
    N, K = state.B.shape
    cur = gram_nuclear(state.C, jnp)
    bit_a, bit_b, best = best_pair(Y, state.B, state.P, state.C, g, cur, jnp)
    # best_pair's gain is -inf where pair moves do not apply (pair_moves_apply).
    do_pair, improve, _ = pair_outcome(state.converged, True, best, cur, tol, state.n_flips,
                                       max_flips, jnp)
    bits = jnp.arange(N * K).reshape(N, K)
    delta = jnp.where(jnp.logical_and(do_pair, (bits == bit_a) | (bits == bit_b)), -2.0 * state.B, 0.0)
    return _update(Y, state, delta)._replace(
        n_flips=state.n_flips + do_pair.astype(jnp.int32), steps=state.steps + 1,
        done=~do_pair, converged=jnp.logical_and(state.converged, ~improve),
    )


COMPACT_FACTOR = 4
"""The flip loop moves the searches still running into a lane array this many times smaller once
no more than that many are left (:func:`_flip_loop`). ``docs/decisions/0003-lane-compaction-factor-4.md``
(CPU per call, 64 x 16, K = 2, 8 starts): against 8, 0.81-0.88x for 64 problems, 0.96-0.97x for 16,
0.89-1.04x for one; 2 adds levels (each a gather and a loop) and was dearer for 1 and 16."""


def _lane_levels(lanes: int) -> tuple[int, ...]:
    """Lane counts the flip loop steps at: all, then each a :data:`COMPACT_FACTOR` of the last."""
    levels = [lanes]
    while levels[-1] // COMPACT_FACTOR >= 1:
        levels.append(levels[-1] // COMPACT_FACTOR)
    return tuple(levels)


def _over_bucket(fn):
    """One search's ``fn(Y, g, state)`` over a bucket: problems (with their Y, g) x starts."""
    return jax.vmap(jax.vmap(fn, in_axes=(None, None, 0)), in_axes=(0, 0, 0))


def _select_lanes(mask, new, old):
    """Per-lane choice between two states: ``new`` where ``mask`` (the leading lane axes) holds."""
    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim)), a, b)
    return jax.tree_util.tree_map(pick, new, old)


def _flip_loop(Y, g, step, max_steps, state: FlipState) -> FlipState:
    """Flip steps on every search of a bucket until each is at a single-flip local optimum (or its
    cap), with the running searches compacted as the others end.

    ``state`` holds b problems x S starts (leading axes), ``Y`` (b, d, N) and ``g`` (b, N) one per
    problem; ``step`` is one search's :func:`_flip_step`. Stepping every lane until the slowest ends
    (what ``vmap`` of a ``while_loop`` does) costs lanes x the longest search: on 64 problems of
    64 x 16 with 8 starts the searches took 9 steps on average and the loop 57, so most of the work
    went to searches that had ended. Here the loop steps all lanes only while more than a
    :data:`COMPACT_FACTOR` of them run; then it gathers the running ones (and their problems' Y) into
    an array of that size and goes on there, and so on down (:func:`_lane_levels`), scattering the
    results back. Each search takes the same steps wherever it runs; only the products' shapes
    differ between levels (rounding far below the tie band, ``TIE_RTOL``).
    """
    levels = _lane_levels(state.done.size)

    def running(st):
        return _running(st, max_steps)

    def more_than(limit):
        return lambda st: jnp.sum(running(st)) > limit

    full_step = _over_bucket(step)
    nxt = levels[1] if len(levels) > 1 else 0
    state = lax.while_loop(more_than(nxt),
                           lambda st: _select_lanes(running(st), full_step(Y, g, st), st), state)
    lane_step = jax.vmap(step, in_axes=(0, 0, 0))
    for size, nxt in zip(levels[1:], levels[2:] + (0,)):
        def loop(Ys, gs, sub, nxt=nxt):
            return lax.while_loop(more_than(nxt),
                                  lambda st: _select_lanes(running(st), lane_step(Ys, gs, st), st), sub)
        state = _on_lanes(loop, running(state), size, Y, g, state)
    return state


def _on_lanes(run, mask, size, Y, g, state: FlipState) -> FlipState:
    """``run(Ys, gs, sub)`` on the lanes where ``mask`` holds (at most ``size``), gathered with their
    problems' ``Y`` and ``g`` into arrays of ``size`` lanes, and the results put back in place. Fill
    lanes start as ended searches and are never written back."""
    b, S = state.done.shape
    lanes = b * S
    flat = jax.tree_util.tree_map(lambda a: a.reshape((lanes,) + a.shape[2:]), state)
    idx = jnp.nonzero(mask.reshape(-1), size=size, fill_value=lanes)[0]
    valid = idx < lanes
    safe = jnp.where(valid, idx, 0)
    sub = jax.tree_util.tree_map(lambda a: a[safe], flat)
    sub = run(Y[safe // S], g[safe // S], sub._replace(done=jnp.logical_or(sub.done, ~valid)))
    flat = jax.tree_util.tree_map(lambda a, s: a.at[idx].set(s, mode="drop"), flat, sub)
    return jax.tree_util.tree_map(lambda a: a.reshape((b, S) + a.shape[1:]), flat)


def _apply_compacted(fn, mask, Y, g, state: FlipState) -> FlipState:
    """``fn`` (one search's step) on the lanes where ``mask`` holds, in the smallest lane array of
    :func:`_lane_levels` they fit in (a ``switch`` on their count: outside ``vmap`` only the chosen
    branch runs). The pair check after the first local optimum runs on every search; after the
    next ones, on the few whose pair move improved."""
    levels = _lane_levels(state.done.size)

    def full(st):
        new = _over_bucket(fn)(Y, g, st)
        return _select_lanes(mask, new, st)

    lane_fn = jax.vmap(fn, in_axes=(0, 0, 0))
    branches = [full] + [functools.partial(_on_lanes, lane_fn, mask, size, Y, g)
                         for size in levels[1:]]
    which = jnp.sum(jnp.asarray(levels) >= jnp.sum(mask)) - 1
    return lax.switch(which, branches, state)


def search_lanes(Y, B0, max_flips, tol, warm_start: bool, pair_moves: bool):
    """Every start of every problem of a bucket: ``Y`` (b, d, N), ``B0`` (b, S, N, K). Returns
    ``(B, value, n_flips, converged)`` with leading axes (b, S). Pure; jit it at the edge.

    Flip steps run in :func:`_flip_loop` to a single-flip local optimum; with ``pair_moves`` an
    outer loop then tries a two-flip move on each search there and, where one improves, searches on.
    The pair check is thus paid once per local optimum, not per step: one loop with a ``cond``
    measured 2x slower on batches of 64 x 16 matrices (batched, both sides of a ``cond`` run every
    step). Each search follows the rules of the NumPy reference step for step, whatever its
    batch-mates do (a lane whose search has ended keeps its state).

    The rounds after the first cost: on 16 Gaussian 64 x 16 problems, K = 2 (128 searches), 63
    searches improved by a pair at their first optimum, then 35, 17, 9 and 3, and those five rounds
    took 9.5 ms of a 21.6 ms call (each starts its flip loop at the widest lane array that holds its
    searches). Tried and measured slower (same answers): checking pairs inside the flip loop, on the
    searches that reached an optimum in that iteration, gathered into the smallest lane array that
    holds them (a ``switch``, none when no search waits), so improved searches flip on beside the
    others. It ran 64 loop iterations instead of 149, but the searches it sent back kept the widest
    array going longer (38 iterations at 128 lanes instead of 33) and the many small pair checks
    cost more than the five wide ones: 1.13x the time for one problem, 1.20x for 16, 1.32x for 64
    (1.11-1.33x when pair checks waited for more searches to gather). An extra lane level at half
    width (128, 64, 16, 4, 1) gained nothing (1.00-1.08x) and compiled up to 1.5x longer.
    """
    g = jnp.sum(Y * Y, axis=1)  # (b, N)
    A = jnp.einsum("bdn,bsnk->bsdk", Y, B0)
    zeros = jnp.zeros(B0.shape[:2], jnp.int32)
    state = FlipState(
        B=B0, A=A, P=jnp.einsum("bdn,bsdk->bsnk", Y, A), C=jnp.einsum("bsdk,bsdl->bskl", A, A),
        flipped=jnp.zeros(B0.shape, bool), n_flips=zeros, steps=zeros,
        done=jnp.zeros(B0.shape[:2], bool), converged=jnp.zeros(B0.shape[:2], bool),
    )
    max_steps = 2 * max_flips + 2
    def step(Yp, gp, st):  # one search's step, for _flip_loop to vmap
        return _flip_step(Yp, gp, max_flips, tol, warm_start, st)

    def flips(st):
        return _flip_loop(Y, g, step, max_steps, st)

    if pair_moves:
        def pair(Yp, gp, st):
            return _pair_step(Yp, gp, max_flips, tol, st)

        def outer(st):
            return _apply_compacted(pair, _running(st, max_steps), Y, g, flips(st))

        out = lax.while_loop(lambda st: jnp.any(_running(st, max_steps)), outer, state)
    else:
        out = flips(state)
    # The value from the final signs, by one product for every lane: a search's running C carries
    # the rounding of the lane arrays it passed through, and the best start (equal optima reached
    # with columns swapped are common) must not depend on that.
    A = jnp.einsum("bdn,bsnk->bsdk", Y, out.B)
    return out.B, gram_nuclear(jnp.einsum("bsdk,bsdl->bskl", A, A), jnp), out.n_flips, out.converged


@functools.partial(jax.jit, static_argnames=("warm_start", "pair_moves"))
def _solve_bucket_jit(X, G, max_flips, tol, warm_start, pair_moves, n_agree):
    Y, l2 = jax.vmap(lambda Xi: search_data(Xi, jnp))(X)
    K = G.shape[-1]
    first = jax.vmap(lambda s: l2_start_matrix(s, K, jnp))(l2)  # (b, N, K)
    restart = jax.vmap(lambda Xi, Bi, gi, si: restart_start(Xi, Bi, gi, si, jnp))

    # The starts run in order (l1pca.kernels.starts): the L2-PCA start, then one restart from the
    # best so far per draw, all problems of the bucket as lanes of one search. One search in the
    # scan body, so the program holds one copy of the search loop.
    def one_start(carry, xs):
        best_B, best_val, step = carry
        s, g = xs
        B0 = jnp.where(s == 0, first, restart(X, best_B, g, step))
        B, val, flips, conv = search_lanes(Y, B0[:, None], max_flips, tol, warm_start, pair_moves)
        B, val = B[:, 0], val[:, 0]
        better = jnp.logical_or(s == 0, improves(val, best_val))
        carry = (jnp.where(better[:, None, None], B, best_B), jnp.where(better, val, best_val),
                 jnp.where(s == 0, step, next_step(step, better, jnp)))
        return carry, (B, val, flips[:, 0], conv[:, 0])

    b = X.shape[0]
    slot0 = jnp.zeros((b, 1, *G.shape[2:]), G.dtype)  # the L2 start draws nothing
    draws = jnp.concatenate([slot0, G], axis=1)  # (b, S, D, K)
    init = (first, jnp.full((b,), -jnp.inf), jnp.full((b,), RESTART_STEP))
    _, (B, val, flips, conv) = lax.scan(one_start, init,
                                        (jnp.arange(draws.shape[1]), jnp.swapaxes(draws, 0, 1)))
    B, val, flips, conv = (jnp.swapaxes(a, 0, 1) for a in (B, val, flips, conv))  # (b, S, ...)
    # Every start ran; keep the ones the NumPy loop would have run (l1pca.kernels.starts) and the
    # best among them. n_agree is traced: it does not enter the compile key.
    best, kept = best_kept(val, n_agree, jnp)
    pick = jnp.arange(b)
    ran = jnp.arange(val.shape[1])[None, :] < kept[:, None]
    return (B[pick, best], val[pick, best], jnp.sum(jnp.where(ran, flips, 0), axis=1),
            conv[pick, best], kept)


def solve_bucket(X, G, *, max_flips, tol, warm_start=True, pair_moves=True, n_agree=0):
    """L1-BF for a stack of equal-shaped problems.

    Parameters
    ----------
    X : ndarray (b, N, D)
        Problems, zero-padded to a common shape.
    G : ndarray (b, n_init - 1, D, K)
        Gaussian draws for the restarts (zero rows for padded features).
    max_flips : int
        Flip cap per start (the largest of the problems' own caps).
    n_agree : int, default=0
        The start rule of :mod:`l1pca.kernels.starts`, applied after all starts ran: the answer and
        the flip count are those of the starts the host loop would have run (0: all).

    Returns
    -------
    signs (b, N, K), value (b,), n_flips (b,), converged (b,), starts kept (b,) as NumPy arrays.
    """
    with jax.enable_x64(True):
        # NumPy operands straight to the jitted function (one transfer in jit's C++ path, no
        # separate conversions), and one fetch of all outputs.
        out = jax.device_get(_solve_bucket_jit(
            np.asarray(X, np.float64), np.asarray(G, np.float64), np.int32(max_flips),
            np.float64(tol), bool(warm_start), bool(pair_moves), np.int32(n_agree),
        ))
    _COMPILED.add((*X.shape, G.shape[3], G.shape[1] + 1, bool(warm_start), bool(pair_moves)))
    return out


def search_single(Y, B0, *, max_flips, tol, warm_start=True, pair_moves=True):
    """One start on given Y (d x N) and B0 (N x K), for tests against the NumPy reference."""
    with jax.enable_x64(True):
        B, val, flips, conv = jax.jit(search_lanes, static_argnames=("warm_start", "pair_moves"))(
            jnp.asarray(Y, jnp.float64)[None], jnp.asarray(B0, jnp.float64)[None, None],
            jnp.asarray(max_flips, jnp.int32), jnp.asarray(tol, jnp.float64), warm_start=warm_start,
            pair_moves=pair_moves,
        )
        return np.asarray(B[0, 0]), float(val[0, 0]), int(flips[0, 0]), bool(conv[0, 0])
