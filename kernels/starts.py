"""How many of L1-BF's starts a fit keeps, and which one wins: one rule for every backend.

The starts run in order (the L2-PCA start, then ``sgn(X g)`` for each Gaussian draw g,
:func:`l1pca.kernels.reduce.iter_starts`). With ``n_agree`` > 0 they stop as soon as ``n_agree`` of
the starts run so far have ended at the best objective among them (within :data:`AGREE_RTOL`). It is
off by default (``n_agree=0``, every start runs): measured in ``docs/decisions/0012-default-starts.md``,
two starts that agree are often both in a worse basin than a later start finds (at 32-256 samples the
kept answer is worse than all eight starts' in 7-12% of problems), and the starts it saves are mostly
those of fits that are cheap anyway (K = 1 on structured data). It stays as an option that trades
answers for time.

The host searches run the starts one by one and stop there (:func:`agreed`); the batched JAX search
runs all of them at once and applies the same rule afterwards (:func:`starts_kept`), so both return
the same start's answer and the same flip count for a matrix, alone or in any batch.
"""
from __future__ import annotations

import numpy as np

AGREE_RTOL = 1e-9
"""Two starts agree when their objectives differ by at most this fraction of the larger: the same
sign matrix reached by two paths differs by rounding only (about 1e-15), distinct local optima of
the problems measured by 1e-9 or more (the optimality benchmark's hit tolerance)."""


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


def best_kept(values, n_agree, xp=np):
    """``(index, kept)``: the first start with the highest objective among the starts the rule keeps
    (:func:`starts_kept`), as the host loop's strict ``>`` picks it, and how many were kept."""
    S = values.shape[-1]
    kept = starts_kept(values, n_agree, xp)
    masked = xp.where(xp.arange(S) < kept[..., None], values, -xp.inf)
    return xp.argmax(masked, axis=-1), kept
