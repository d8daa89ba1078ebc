"""Which starts L1-BF runs, how many it keeps, and which one wins: one rule for every backend.

Restarts from the best optimum so far
-------------------------------------
The first start is the paper's L2-PCA start. Every later start is a *restart* from the best local
optimum found so far (:func:`restart_direction`): with ``Q`` its components (the Procrustes factor of
``M = X^T B``) and ``g`` the start's Gaussian draw (D x K), the start is ``sgn(X h)`` with
``h = Q + step g / ||g||`` (each column of g scaled to unit length, so the perturbation of each
component has length ``step``, whatever D or zero padding). ``step`` starts at :data:`RESTART_STEP`,
goes back there whenever a start improves on the best, and grows by :data:`RESTART_GROWTH` after each
start that does not: the search looks near the best optimum first, then ever further away, and a
step of 8 is a random start in all but name. Where ``M`` is rank-deficient (Q not unique) the start
is ``sgn(X g)``, the plain random start.

Measured against the independent random starts ``sgn(X g)`` it replaced
(``docs/decisions/0014-restarts.md``): the restarts begin nearer good local optima, so a default
fit takes about 0.8x the flip steps (0.82x the time over issue 29's grid), and the kept answer is
nearer the best known (within 1e-6 of the best of 32 starts in 22 of 44 large cases, against 16);
the small-problem grid keeps its 99.8% exact hits.

A start *improves* on the best when its objective exceeds the best's by more than
:data:`AGREE_RTOL` of it (:func:`improves`): two paths to the same sign matrix differ by rounding
only (about 1e-15 of the objective), so every backend makes the same decision and builds the same
next start. The answer is the best start in that sense (the first of equal ones).

How many run
------------
With ``n_agree`` > 0 the starts stop as soon as ``n_agree`` of the starts run so far have ended at
the best objective among them (within :data:`AGREE_RTOL`). It is off by default (``n_agree=0``,
every start runs): measured in ``docs/decisions/0012-default-starts.md``, two starts that agree are
often both in a worse basin than a later start finds, and the starts it saves are mostly those of
fits that are cheap anyway (K = 1 on structured data). It stays as an option that trades answers for
time.

The host searches run the starts one by one and stop there (:func:`agreed`); the batched JAX search
runs every start in a ``scan`` and applies the same rule afterwards (:func:`starts_kept`, and the
best so far after each start), so both return the same start's answer and the same flip count for a
matrix, alone or in any batch.
"""
from __future__ import annotations

import numpy as np

from .flip_rule import inv_sqrt_gram
from .reduce import sign

AGREE_RTOL = 1e-9
"""Two starts agree when their objectives differ by at most this fraction of the larger: the same
sign matrix reached by two paths differs by rounding only (about 1e-15), distinct local optima of
the problems measured by 1e-9 or more (the optimality benchmark's hit tolerance)."""


RESTART_STEP = 1.0
"""Length of the perturbation of each component in a restart, after a start that improved on the
best (and for the first restart). Measured in ``docs/decisions/0014-restarts.md``."""

RESTART_GROWTH = 2.0
"""Factor on the restart step after a start that did not improve on the best."""


def restart_direction(M, g, step, xp=np):
    """``h = Q + step g / ||g||`` (per column), with Q the Procrustes factor of ``M = X^T B`` of the
    best start so far (``M C^(-1/2)``, :func:`l1pca.kernels.flip_rule.inv_sqrt_gram`; zero where M
    is rank-deficient, so that the start is the plain random ``sgn(X g)``). M (D, K), g (D, K)."""
    R, unique = inv_sqrt_gram(M.T @ M, xp)
    Q = xp.where(unique, M @ R, 0.0)
    norm = xp.sqrt(xp.sum(g * g, axis=0))
    return Q + step * (g / xp.where(norm > 0.0, norm, 1.0))


def restart_start(X, B_best, g, step, xp=np):
    """The next start, N x K signs: ``sgn(X h)`` with h the :func:`restart_direction` from the best
    start's signs ``B_best``."""
    return sign(X @ restart_direction(X.T @ B_best, g, step, xp), xp)


def improves(value, best):
    """Whether a start's objective ``value`` beats the best so far by more than :data:`AGREE_RTOL`
    of it (the same decision on every backend, whose objectives differ by rounding)."""
    return value > best * (1.0 + AGREE_RTOL)


def next_step(step, improved, xp=np):
    """The restart step after a start: :data:`RESTART_STEP` if it improved on the best, else grown."""
    return xp.where(improved, RESTART_STEP, step * RESTART_GROWTH)


def agreed(values, n_agree) -> bool:
    """Whether the starts with objectives ``values`` (in order) stop here: at least ``n_agree`` of
    them lie within :data:`AGREE_RTOL` of their maximum. ``n_agree=0`` never stops early."""
    if n_agree <= 0 or len(values) < n_agree:
        return False
    top = max(values)
    return sum(v >= top * (1.0 - AGREE_RTOL) for v in values) >= n_agree


def starts_kept(values, n_agree, xp=np):
    """The number of starts the rule keeps for each problem, from every start's objective
    ``values`` (..., S): the first ``s + 1`` for which :func:`agreed` holds on ``values[..., :s + 1]``,
    else S. Written against ``xp`` (NumPy or ``jax.numpy``, traced ``n_agree`` allowed) with the
    comparisons :func:`agreed` makes, so both give the same count."""
    S = values.shape[-1]
    before = xp.arange(S)[None, :] <= xp.arange(S)[:, None]  # (s, t): start t ran by start s
    prefix = xp.where(before, values[..., None, :], -xp.inf)  # (..., s, t)
    top = prefix.max(axis=-1)  # best objective after start s
    count = xp.sum(xp.logical_and(before, prefix >= (top * (1.0 - AGREE_RTOL))[..., None]), axis=-1)
    stop = xp.logical_and(count >= n_agree, n_agree > 0)
    return xp.where(stop.any(axis=-1), xp.argmax(stop, axis=-1) + 1, S)


def best_after_each(values, xp=np):
    """The index of the best start after each start (..., S), from every start's objective
    ``values`` (..., S): a start replaces the best only when it :func:`improves` on it, as the host
    loop decides (and builds its next restart from)."""
    S = values.shape[-1]
    idx = xp.zeros(values.shape[:-1], dtype=np.int32)
    top = values[..., 0]
    out = [idx]
    for s in range(1, S):
        better = improves(values[..., s], top)
        idx = xp.where(better, s, idx)
        top = xp.where(better, values[..., s], top)
        out.append(idx)
    return xp.stack(out, axis=-1)


def best_kept(values, n_agree, xp=np):
    """``(index, kept)``: the best start (:func:`best_after_each`) among the starts the rule keeps
    (:func:`starts_kept`), and how many were kept."""
    kept = starts_kept(values, n_agree, xp)
    best = xp.take_along_axis(best_after_each(values, xp), (kept - 1)[..., None], axis=-1)[..., 0]
    return best, kept
