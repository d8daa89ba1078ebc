"""L1-BF in JAX: the rules of :mod:`l1pca.kernels.bitflip`, jitted, batched with ``vmap``.

Small pure functions; the only ``jit`` is :func:`solve_bucket`, the edge the dispatcher calls with a
stack of equal-shaped problems. The flip loop is a ``lax.while_loop`` over a NamedTuple state whose
condition is the module-level :func:`_running`. ``vmap`` over starts and over problems turns the
single-start search into the batched one; problems that finish early keep their state while the rest
go on (``vmap`` of ``while_loop`` selects per element).

The gain formula is shared with the NumPy reference (``candidate_gains`` is written against an array
namespace), so the two backends cannot drift apart in what they compute.

Precision: float64, enabled with the ``jax.enable_x64`` context at the edge (no global switch).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

import jax
import jax.numpy as jnp
from jax import lax

from .bitflip import (TIE_RTOL, best_pair, bit_gains, candidate_gains, first_true, gain_bound_terms,
                      gram_nuclear, inv_sqrt_gram, select_flip, sweep_mask)
from .reduce import l2_start_matrix, search_data, sign

# Buckets (batch, rows, cols, K, starts, warm_start, pair_moves) compiled in this process. jit keeps
# its own cache; this mirror of it lets backend="auto" prefer JAX where no compile is pending,
# without asking jit.
_COMPILED: set = set()


def is_compiled(key) -> bool:
    return key in _COMPILED


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
    improve = best > tol * cur
    wants = jnp.logical_or(sweep, improve)
    capped = jnp.logical_and(wants, state.n_flips >= max_flips)
    do_step = jnp.logical_and(wants, ~capped)
    do_flip = jnp.logical_and(do_step, ~sweep)
    any_flipped = jnp.any(state.flipped)

    onehot = (jnp.arange(N * K) == j).reshape(N, K)
    delta = jnp.where(jnp.where(sweep, bad, onehot), -2.0 * state.B, 0.0)
    delta = jnp.where(do_step, delta, 0.0)
    # One update for both kinds of step: A and P stay exact (P from A, never accumulated).
    A = state.A + Y @ delta
    flipped = jnp.where(do_flip, state.flipped.at[n, k].set(True), state.flipped)
    new_round = jnp.logical_and(~wants, any_flipped)
    # A local optimum ends this loop; with pair moves, search's outer loop decides whether to go on.
    at_optimum = jnp.logical_and(~wants, ~any_flipped)
    stop = jnp.logical_or(capped, at_optimum)
    return FlipState(
        B=state.B + delta,
        A=A,
        P=Y.T @ A,
        C=A.T @ A,
        flipped=jnp.where(new_round, False, flipped),
        n_flips=state.n_flips + do_step.astype(jnp.int32),
        steps=state.steps + 1,
        done=stop,
        converged=jnp.logical_and(at_optimum, ~capped),
    )


def _pair_step(Y, g, max_flips, tol, state: FlipState) -> FlipState:
    """At a single-flip local optimum: flip the best pair (:func:`best_pair`) if it improves."""
    N, K = state.B.shape
    cur = gram_nuclear(state.C, jnp)
    bit_a, bit_b, best = best_pair(Y, state.B, state.P, state.C, g, cur, jnp)
    improve = jnp.logical_and(state.converged, best > tol * cur)
    capped = jnp.logical_and(improve, state.n_flips >= max_flips)
    do_pair = jnp.logical_and(improve, ~capped)
    bits = jnp.arange(N * K).reshape(N, K)
    delta = jnp.where(jnp.logical_and(do_pair, (bits == bit_a) | (bits == bit_b)), -2.0 * state.B, 0.0)
    A = state.A + Y @ delta
    return state._replace(
        B=state.B + delta, A=A, P=Y.T @ A, C=A.T @ A,
        n_flips=state.n_flips + do_pair.astype(jnp.int32), steps=state.steps + 1,
        done=~do_pair, converged=jnp.logical_and(state.converged, ~improve),
    )


def search(Y, B0, max_flips, tol, warm_start: bool, pair_moves: bool):
    """One start: returns ``(B, value, n_flips, converged)``. Pure; jit or vmap it at the edge.

    Flip steps run in an inner ``while_loop`` to a single-flip local optimum; with ``pair_moves`` an
    outer loop then tries a two-flip move and, when one improves, searches on. The pair check is
    thus paid once per local optimum, not per step: one loop with a ``cond`` measured 2x slower on
    batches of 64 x 16 matrices (under ``vmap`` both sides of a ``cond`` run every step).
    """
    g = jnp.sum(Y * Y, axis=0)
    A = Y @ B0
    state = FlipState(
        B=B0, A=A, P=Y.T @ A, C=A.T @ A,
        flipped=jnp.zeros(B0.shape, bool),
        n_flips=jnp.array(0, jnp.int32), steps=jnp.array(0, jnp.int32),
        done=jnp.array(False), converged=jnp.array(False),
    )
    running = functools.partial(_running, max_steps=2 * max_flips + 2)
    step = functools.partial(_flip_step, Y, g, max_flips, tol, warm_start)

    def flips(st):
        return lax.while_loop(running, step, st)

    if pair_moves:
        out = lax.while_loop(running, lambda st: _pair_step(Y, g, max_flips, tol, flips(st)), state)
    else:
        out = flips(state)
    return out.B, gram_nuclear(out.C, jnp), out.n_flips, out.converged


def _solve_one(X, G, max_flips, tol, warm_start: bool, pair_moves: bool):
    """All starts of one problem: the L2 start then ``sgn(X g)`` for each Gaussian draw in G."""
    K = G.shape[-1]
    Y, l2 = search_data(X, jnp)
    l2 = l2_start_matrix(l2, K, jnp)[None]
    starts = jnp.concatenate([l2, sign(jnp.einsum("nd,sdk->snk", X, G), jnp)], axis=0)
    B, val, flips, conv = jax.vmap(search, in_axes=(None, 0, None, None, None, None))(
        Y, starts, max_flips, tol, warm_start, pair_moves
    )
    best = jnp.argmax(val)  # first of the best starts, as the NumPy loop
    return B[best], val[best], jnp.sum(flips), conv[best]


@functools.partial(jax.jit, static_argnames=("warm_start", "pair_moves"))
def _solve_bucket_jit(X, G, max_flips, tol, warm_start, pair_moves):
    return jax.vmap(_solve_one, in_axes=(0, 0, None, None, None, None))(
        X, G, max_flips, tol, warm_start, pair_moves)


def solve_bucket(X, G, *, max_flips, tol, warm_start=True, pair_moves=True):
    """L1-BF for a stack of equal-shaped problems.

    Parameters
    ----------
    X : ndarray (b, N, D)
        Problems, zero-padded to a common shape.
    G : ndarray (b, n_init - 1, D, K)
        Gaussian draws for the random starts (zero rows for padded features).
    max_flips : int
        Flip cap per start (the largest of the problems' own caps).

    Returns
    -------
    signs (b, N, K), value (b,), n_flips (b,), converged (b,) as NumPy arrays.
    """
    with jax.enable_x64(True):
        out = _solve_bucket_jit(
            jnp.asarray(X, jnp.float64), jnp.asarray(G, jnp.float64),
            jnp.asarray(max_flips, jnp.int32), jnp.asarray(tol, jnp.float64), bool(warm_start),
            bool(pair_moves),
        )
        out = tuple(np.asarray(o) for o in out)
    _COMPILED.add((*X.shape, G.shape[3], G.shape[1] + 1, bool(warm_start), bool(pair_moves)))
    return out


def search_single(Y, B0, *, max_flips, tol, warm_start=True, pair_moves=True):
    """One start on given Y (d x N) and B0 (N x K), for tests against the NumPy reference."""
    with jax.enable_x64(True):
        B, val, flips, conv = jax.jit(search, static_argnames=("warm_start", "pair_moves"))(
            jnp.asarray(Y, jnp.float64), jnp.asarray(B0, jnp.float64),
            jnp.asarray(max_flips, jnp.int32), jnp.asarray(tol, jnp.float64), warm_start=warm_start,
            pair_moves=pair_moves,
        )
        return np.asarray(B), float(val), int(flips), bool(conv)
