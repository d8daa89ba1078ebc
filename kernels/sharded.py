"""L1-BF with the samples sharded over a JAX device mesh (several GPUs, or several hosts).

For matrices that outgrow one device (tens of millions of samples), the rows of X are split over the
``"samples"`` axis of a one-dimensional :class:`jax.sharding.Mesh`; every per-sample array (Y, B, P and
the flipped mask) lives on the device that holds the sample, so each device keeps O(N d / devices).
Only d x K and K x K quantities are replicated. The search is the one of :mod:`l1pca.kernels.bitflip`,
written per shard with ``jax.shard_map`` and explicit collectives:

* rank reduction: ``X^T X`` summed over shards (one ``psum`` of a D x D matrix), its eigenvectors U on
  every device, and ``Y = (X U)^T`` computed shard by shard (needs N >= D, the case this path is for);
* each flip step: a ``pmax`` for the best gain (and whether any shard has a bit for a fixed-point
  sweep), a ``pmin`` for the lowest global index among the ties (the single-device tie rule), and one
  ``psum`` of each shard's share of the change of ``A = Y B`` (d x K; a single flip's share is zero
  except on the device that owns the bit); the update of P is then local. Three collectives per step,
  of O(1), O(1) and O(d K) data, for single flips and sweeps alike;
* pair moves at each local optimum: one ``all_gather`` of every shard's best candidates (16 at most,
  each with its sample: O(devices * 16 * d) data), after which every device picks the same pair.

Same start, same end point as the single-device solver (tested on 1, 2, 4 and 8 simulated devices).
Inputs may be a NumPy array, a memory-mapped ``.npy`` file (each device reads only its own rows, in
chunks) or a ``jax.Array`` already sharded by rows. Multi-host: call ``jax.distributed.initialize()``
first (see ``deploy/k8s/multihost/``); the mesh then spans every process's devices.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._validation import check_layout, nonfinite_error
from .errors import InputError
from .flip_rule import (
    PAIR_CANDIDATES,
    PAIR_MAX_BITS,
    TIE_RTOL,
    candidate_gains,
    gram_nuclear,
    pair_candidates,
    pair_gains,
    pair_outcome,
    select_flip,
    step_outcome,
    sweep_mask,
)
from .reduce import l2_start, sign, start_matrix
from .starts import RESTART_STEP, improves, next_step, restart_direction

AXIS = "samples"
_CHUNK_ROWS = 1 << 16  # rows read from a memory map per step when a shard is built


class RowChunks:
    """A lazily centred view of a (memory-mapped) matrix: rows are read and shifted on slicing.

    Lets an offline job centre a matrix larger than memory on its way to the devices.
    """

    def __init__(self, X, center):
        self.X, self.center = X, np.asarray(center, dtype=np.float64)
        self.shape, self.dtype, self.ndim = X.shape, np.dtype(np.float64), 2

    def __getitem__(self, rows):
        return np.asarray(self.X[rows], dtype=np.float64) - self.center


def iter_rows(X, chunk=_CHUNK_ROWS):
    """Yield (start, float64 block) over the rows of X, ``chunk`` rows at a time."""
    for a in range(0, X.shape[0], chunk):
        yield a, np.asarray(X[a:a + chunk], dtype=np.float64)


def make_mesh(devices="all") -> Mesh:
    """A one-axis mesh over ``devices``: ``"all"``, a count (the first n devices), or a list."""
    if isinstance(devices, Mesh):
        return devices
    available = jax.devices()
    if devices == "all" or devices is None:
        chosen = available
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise InputError(f"devices={devices} must be in [1, {len(available)}] (devices present)")
        chosen = available[:devices]
    else:
        chosen = list(devices)
        if not chosen:
            raise InputError("devices must name at least one device")
    return Mesh(np.array(chosen), (AXIS,))


def _check_mesh(mesh):
    if not isinstance(mesh, Mesh) or mesh.axis_names != (AXIS,):
        raise InputError(f"mesh must be a jax.sharding.Mesh with the single axis {AXIS!r}; got {mesh!r}")
    return mesh


def shard_rows(X, mesh) -> tuple[jax.Array, int]:
    """X as a float64 ``jax.Array`` sharded by rows over ``mesh``, zero-padded to a multiple of the
    device count (zero samples change nothing). Returns the array and the true row count.

    A NumPy array or memory map is read shard by shard (each device's rows only, in chunks), and
    checked for finiteness on the way, so the whole matrix is never copied at once.
    """
    if len(getattr(X, "shape", ())) != 2:
        raise InputError(f"X must be 2-D (n_samples, n_features); got shape {getattr(X, 'shape', None)}")
    n_dev = mesh.devices.size
    if isinstance(X, jax.Array):
        if X.ndim != 2:
            raise InputError(f"X must be 2-D (n_samples, n_features); got shape {X.shape}")
        N = X.shape[0]
        pad = (-N) % n_dev
        with jax.enable_x64(True):
            Xj = jnp.pad(X.astype(jnp.float64), ((0, pad), (0, 0)))
            if not bool(jnp.isfinite(Xj).all()):
                raise InputError("X must be finite; found NaN or infinity")
            return jax.device_put(Xj, NamedSharding(mesh, P(AXIS, None))), N
    # Anything with shape, dtype and row slicing is read lazily (NumPy arrays, memory maps, and
    # RowChunks); other array-likes are converted.
    arr = X if all(hasattr(X, a) for a in ("shape", "dtype", "__getitem__")) else np.asarray(X)
    check_layout(arr, name="X")
    N, D = arr.shape
    Np = N + (-N) % n_dev

    def rows(index):
        lo, hi, _ = index[0].indices(Np)
        out = np.zeros((hi - lo, D))
        for a in range(lo, min(hi, N), _CHUNK_ROWS):
            b = min(a + _CHUNK_ROWS, hi, N)
            chunk = np.asarray(arr[a:b], dtype=np.float64)
            if not np.isfinite(chunk).all():
                raise nonfinite_error(chunk, name="X", row_offset=a)
            out[a - lo:b - lo] = chunk
        return out

    with jax.enable_x64(True):
        Xj = jax.make_array_from_callback((Np, D), NamedSharding(mesh, P(AXIS, None)), rows,
                                          dtype=jnp.float64)
    return Xj, N


class ShardState(NamedTuple):
    B: jax.Array  # (n_local, K)
    P: jax.Array  # (n_local, K)
    flipped: jax.Array  # (n_local, K)
    A: jax.Array  # (d, K), replicated
    C: jax.Array  # (K, K), replicated
    round_flips: jax.Array  # flips in the current round (replicated): "any flipped" without a collective
    n_flips: jax.Array
    steps: jax.Array
    done: jax.Array
    converged: jax.Array


def _reduce(X_l):
    """Per shard: Y_l = (X_l U)^T with U the eigenvectors of the summed Gram matrix."""
    G = lax.psum(X_l.T @ X_l, AXIS)
    _, U = jnp.linalg.eigh(G)
    return (X_l @ U[:, ::-1]).T


def _running(state: ShardState, max_steps):
    return jnp.logical_and(~state.done, state.steps < max_steps)


def _step(Y_l, g_l, max_flips, tol, warm_start, pair_moves, state: ShardState) -> ShardState:
    n_l, K = state.B.shape
    offset = lax.axis_index(AXIS) * n_l * K  # global flat index of this shard's first bit
    cur = gram_nuclear(state.C, jnp)
    gains = jnp.where(state.flipped, -jnp.inf, candidate_gains(state.B, state.P, state.C, g_l, jnp))
    flat = gains.reshape(-1)
    # A sweep (every bit that disagrees with the Procrustes direction) takes precedence over a flip.
    # Whether any shard has such a bit rides on the pmax of the best gain, and so does the current
    # value: computed on every device alike, it can still differ in the last bits (see _pair_step),
    # and every decision that ends the loop must be the same on every device.
    bad = sweep_mask(state.B, state.P, state.C, cur, tol, jnp) if warm_start \
        else jnp.zeros(state.B.shape, bool)
    best, any_bad, cur = lax.pmax(jnp.stack([flat.max(), jnp.any(bad).astype(flat.dtype), cur]), AXIS)
    sweep = any_bad > 0
    tie = flat >= best - TIE_RTOL * cur
    big = jnp.iinfo(jnp.int32).max
    j = lax.pmin(jnp.where(jnp.any(tie), offset + jnp.argmax(tie), big).astype(jnp.int32), AXIS)
    any_flipped = state.round_flips > 0
    out = step_outcome(sweep, best, cur, tol, any_flipped, state.n_flips, max_flips, jnp)
    do_step, do_flip = out.do_step, out.do_flip

    local = j - offset
    mine = jnp.logical_and(local >= 0, local < n_l * K)
    n = jnp.clip(local // K, 0, n_l - 1)
    k = j % K
    onehot = jnp.logical_and(mine, (jnp.arange(n_l * K) == local).reshape(n_l, K))
    delta = jnp.where(jnp.where(sweep, bad, onehot), -2.0 * state.B, 0.0)
    delta = jnp.where(do_step, delta, 0.0)
    # Each shard's share of the change of A = Y B, summed: one psum of d x K; P stays local and exact.
    A = state.A + lax.psum(Y_l @ delta, AXIS)
    here = jnp.logical_and(do_flip, mine)
    flipped = jnp.where(here, state.flipped.at[n, k].set(True), state.flipped)
    # With pair moves a local optimum does not end the loop: the next iteration is a pair step.
    stop = jnp.logical_or(out.capped, jnp.logical_and(out.at_optimum, not pair_moves))
    return ShardState(
        B=state.B + delta, P=Y_l.T @ A,
        flipped=jnp.where(out.new_round, False, flipped),
        A=A, C=A.T @ A,
        round_flips=jnp.where(out.new_round, 0, state.round_flips + do_flip.astype(jnp.int32)),
        n_flips=state.n_flips + do_step.astype(jnp.int32),
        steps=state.steps + 1, done=stop, converged=jnp.logical_and(out.at_optimum, ~out.capped),
    )


def _pair_step(Y_l, g_l, max_flips, tol, state: ShardState) -> ShardState:
    """At a single-flip local optimum: the best two-flip move among the most promising bits of all
    shards (:func:`l1pca.kernels.bitflip.best_pair`), flipped if it improves.

    Each shard offers its own top candidates (the global top ``PAIR_CANDIDATES`` are among them);
    one ``all_gather`` hands every device their gains, global indices, samples, signs and P rows, and
    every device then picks the same pair from the same data.
    """
    n_l, K = state.B.shape
    offset = lax.axis_index(AXIS) * n_l * K
    cur = gram_nuclear(state.C, jnp)
    valid = jnp.repeat(g_l > 0, K)
    gains = candidate_gains(state.B, state.P, state.C, g_l, jnp).reshape(-1)
    loc = pair_candidates(gains, valid, jnp)
    small = lax.psum(jnp.sum(g_l > 0), AXIS) * K <= PAIR_MAX_BITS  # pair_moves_apply, over all shards
    n, k = loc // K, loc % K
    offer = (jnp.where(valid[loc], gains[loc], -jnp.inf), (offset + loc).astype(jnp.float64),
             k.astype(jnp.float64), state.B[n, k], valid[loc].astype(jnp.float64))
    offer = jnp.concatenate([jnp.stack(offer, axis=1), state.P[n], Y_l[:, n].T], axis=1)
    pool = lax.all_gather(offer, AXIS, tiled=True)  # (devices * T_local, 5 + K + d), replicated
    order = jnp.lexsort((pool[:, 1], -pool[:, 0]))[:min(pool.shape[0], PAIR_CANDIDATES)]
    c = pool[order]
    gidx, kc, sc, ok = c[:, 1].astype(jnp.int32), c[:, 2].astype(jnp.int32), c[:, 3], c[:, 4] > 0
    Prows, Yc = c[:, 5:5 + K], c[:, 5 + K:]
    pg = pair_gains(kc, sc, Prows, Yc @ Yc.T, state.C, ok, jnp)
    j, best = select_flip(pg, cur, jnp)
    # Every device computed the same choice from the same data, but LAPACK's eigenvalues (K >= 3)
    # can differ in the last bits between devices (memory alignment picks the kernel), and devices
    # that disagree on whether to go on would wait for each other forever: device 0's choice rules.
    first = lax.axis_index(AXIS) == 0
    j, best = lax.psum(jnp.where(first, jnp.stack([j.astype(best.dtype), best]), 0.0), AXIS)
    j = j.astype(jnp.int32)
    T = order.shape[0]
    a, b = j // T, j % T
    do_pair, improve, _ = pair_outcome(state.converged, small, best, cur, tol, state.n_flips,
                                       max_flips, jnp)
    eye = jnp.eye(K)
    dA = -2.0 * (sc[a] * Yc[a][:, None] * eye[kc[a]][None, :] + sc[b] * Yc[b][:, None] * eye[kc[b]][None, :])
    A = jnp.where(do_pair, state.A + dA, state.A)
    bits = offset + jnp.arange(n_l * K).reshape(n_l, K)
    mine = jnp.logical_and(do_pair, (bits == gidx[a]) | (bits == gidx[b]))
    return state._replace(
        B=jnp.where(mine, -state.B, state.B), P=Y_l.T @ A, A=A, C=A.T @ A,
        n_flips=state.n_flips + do_pair.astype(jnp.int32), steps=state.steps + 1,
        done=~do_pair, converged=jnp.logical_and(state.converged, ~improve),
    )


def _search_local(X_l, g, max_flips, tol, *, warm_start, pair_moves, use_l2):
    """One start, per shard: ``sgn(X g)`` for g (D, K) (a restart's direction, computed by the
    caller), or the L2-PCA start (g unused)."""
    Y_l = _reduce(X_l)
    B = start_matrix(X_l, l2_start(Y_l, jnp) if use_l2 else None, g, jnp)
    A = lax.psum(Y_l @ B, AXIS)
    zero = jnp.array(0, jnp.int32)
    state = ShardState(B=B, P=Y_l.T @ A, flipped=jnp.zeros(B.shape, bool), A=A, C=A.T @ A,
                       round_flips=zero, n_flips=zero, steps=zero, done=jnp.array(False),
                       converged=jnp.array(False))
    g_l = jnp.sum(Y_l * Y_l, axis=0)
    running = functools.partial(_running, max_steps=2 * max_flips + 2)

    step = functools.partial(_step, Y_l, g_l, max_flips, tol, warm_start, pair_moves)
    if pair_moves:
        # As the single-device search: a pair move at each local optimum, then on. One loop with a
        # cond (every device takes the same branch: ``converged`` is agreed), not nested loops:
        # XLA's CPU runtime deadlocks on LAPACK eigh (K >= 3) inside a loop nested in a loop.
        pair = functools.partial(_pair_step, Y_l, g_l, max_flips, tol)
        out = lax.while_loop(running, lambda st: lax.cond(st.converged, pair, step, st), state)
    else:
        out = lax.while_loop(running, step, state)
    return out.B, gram_nuclear(out.C, jnp), out.n_flips, out.converged


@functools.lru_cache(maxsize=32)
def _search_program(mesh, warm_start, pair_moves, use_l2):
    """The jitted sharded search for a mesh and start kind (cached: built once per combination)."""
    fn = functools.partial(_search_local, warm_start=warm_start, pair_moves=pair_moves, use_l2=use_l2)
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(AXIS, None), P(), P(), P()),
                           out_specs=(P(AXIS, None), P(), P(), P()), check_vma=False)
    return jax.jit(mapped)


@functools.lru_cache(maxsize=32)
def _reductions(mesh):
    """Jitted ``X^T B`` and per-column ``||X Q||_1``, summed over shards."""
    xtb = jax.jit(jax.shard_map(lambda X_l, B_l: lax.psum(X_l.T @ B_l, AXIS), mesh=mesh,
                                in_specs=(P(AXIS, None), P(AXIS, None)), out_specs=P()))
    l1 = jax.jit(jax.shard_map(lambda X_l, Q: lax.psum(jnp.abs(X_l @ Q).sum(axis=0), AXIS),
                               mesh=mesh, in_specs=(P(AXIS, None), P()), out_specs=P()))
    return xtb, l1


def search_sharded(Xs, n_rows, n_components, G, *, mesh, max_flips, tol, warm_start=True,
                   pair_moves=True):
    """L1-BF on a row-sharded ``Xs`` (from :func:`shard_rows`); every start, best kept.

    Returns ``(B, n_flips, converged)`` with B (N, K) on the host (padding rows removed) and the
    helpers the caller needs for the Procrustes step: ``(xtb(Xs, B_sharded), l1(Xs, Q))``.
    """
    K = n_components
    D = Xs.shape[1]
    if Xs.shape[0] < D:
        raise InputError(f"the sharded path needs n_samples >= n_features; got {n_rows} x {D}")
    best, flips, step = None, 0, RESTART_STEP
    with jax.enable_x64(True):
        args = (jnp.asarray(max_flips, jnp.int32), jnp.asarray(tol, jnp.float64))
        xtb, l1 = _reductions(mesh)
        # The starts of l1pca.kernels.starts in order: the L2-PCA start, then a restart from the
        # best so far per draw; a restart is a "random" start sgn(X h) whose h the host computes
        # from X^T B of the best (a D x K sum over the shards).
        for s in range(len(G) + 1):
            run = _search_program(mesh, bool(warm_start), bool(pair_moves), best is None)
            h = np.zeros((D, K)) if best is None else restart_direction(
                np.asarray(xtb(Xs, best[0])), np.asarray(G[s - 1], np.float64), step)
            B, val, nf, conv = run(Xs, jnp.asarray(h, jnp.float64), *args)
            val = float(val)
            flips += int(nf)
            if best is None:
                best = (B, val, bool(conv))
            else:
                better = bool(improves(val, best[1]))
                step = float(next_step(step, better))
                if better:
                    best = (B, val, bool(conv))
        B = best[0]
        M = np.asarray(xtb(Xs, B))
    return _to_host(B)[:n_rows], M, flips, best[2], functools.partial(_column_l1, l1, Xs)


def _to_host(A):
    """A row-sharded array on the host; across processes (multi-host) every process gets it all."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(A, tiled=True))
    return np.asarray(A)


def initialize_distributed(coordinator=None, num_processes=None, process_id=None):
    """``jax.distributed.initialize`` from arguments or the environment, for multi-host jobs.

    Environment: ``L1PCA_COORDINATOR`` (host:port of process 0), ``L1PCA_NUM_PROCESSES``, and
    ``L1PCA_PROCESS_ID`` or, in a Kubernetes indexed Job, ``JOB_COMPLETION_INDEX``.
    """
    import os

    coordinator = coordinator or os.environ.get("L1PCA_COORDINATOR")
    num_processes = num_processes or os.environ.get("L1PCA_NUM_PROCESSES")
    if process_id is None:
        process_id = os.environ.get("L1PCA_PROCESS_ID", os.environ.get("JOB_COMPLETION_INDEX"))
    missing = [n for n, v in (("L1PCA_COORDINATOR", coordinator), ("L1PCA_NUM_PROCESSES", num_processes),
                              ("L1PCA_PROCESS_ID or JOB_COMPLETION_INDEX", process_id)) if v in (None, "")]
    if missing:
        raise InputError(f"multi-host start needs {', '.join(missing)}")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=int(num_processes),
                               process_id=int(process_id))
    return jax.process_index()


def _column_l1(l1, Xs, Q):
    with jax.enable_x64(True):
        return np.asarray(l1(Xs, jnp.asarray(Q, jnp.float64)))


def collectives_per_flip(mesh, n_rows, n_features, n_components):
    """Collective operations in one flip step, counted in its jaxpr (for ``bench/sharded.py``)."""
    K = n_components

    def setup(X_l):
        Y_l = _reduce(X_l)
        B = sign(X_l[:, :K], jnp)
        A = lax.psum(Y_l @ B, AXIS)
        zero = jnp.array(0, jnp.int32)
        state = ShardState(B=B, P=Y_l.T @ A, flipped=jnp.zeros(B.shape, bool), A=A, C=A.T @ A,
                           round_flips=zero, n_flips=zero, steps=zero, done=jnp.array(False),
                           converged=jnp.array(False))
        return Y_l, state

    def setup_and_step(X_l):
        Y_l, state = setup(X_l)
        return _step(Y_l, jnp.sum(Y_l * Y_l, axis=0), jnp.array(10), 1e-9, True, False, state).B

    spec = dict(mesh=mesh, in_specs=P(AXIS, None), out_specs=P(AXIS, None), check_vma=False)
    with jax.enable_x64(True):
        X = jax.ShapeDtypeStruct((n_rows, n_features), jnp.float64)
        full = _count(jax.make_jaxpr(jax.shard_map(setup_and_step, **spec))(X).jaxpr)
        before = _count(jax.make_jaxpr(jax.shard_map(lambda X_l: setup(X_l)[1].B, **spec))(X).jaxpr)
    full = {k: v - before.get(k, 0) for k, v in full.items()}
    return {name: count for name, count in full.items() if count > 0}


_COLLECTIVES = ("psum", "pmax", "pmin", "all_gather", "all_to_all", "ppermute", "psum_invariant")


def _count(jx, counts=None):
    counts = {} if counts is None else counts
    for eqn in jx.eqns:
        name = eqn.primitive.name
        if name in _COLLECTIVES or name.startswith(("psum", "pmax", "pmin")):
            counts[name] = counts.get(name, 0) + 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    sub = sub.jaxpr
                if isinstance(sub, jax.extend.core.Jaxpr):
                    _count(sub, counts)
    return counts
