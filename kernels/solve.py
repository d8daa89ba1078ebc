"""``solve`` and ``solve_batch``: validation, dispatch to one function per method, and the shared
post-processing (Procrustes step, deterministic signs and order, the L1 objective).

Layers, as in scikit-learn: options are checked here once, the numerical cores in ``bitflip``,
``bitflip_jax``, ``exact`` and ``baselines`` never parse options, and every method's answer goes
through :func:`_finish` so all report the same quantities the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import backends
from ._validation import check_matrix_peak, check_n_components, check_random_state
from .baselines import fixed_point_greedy, fixed_point_nongreedy, l2_pca
from .bitflip import bitflip_search
from .bitflip_screened import SCREEN_MIN_SAMPLES, search_screened
from .compile_queue import COMPILES, compiled, jax_batch_size, program_key
from .errors import InputError
from .exact import exact_search
from .flip_rule import default_max_flips
from .options import DEFAULT_N_AGREE, DEFAULT_N_INIT, DEFAULT_TOL, MAX_CANDIDATES, SolveOptions
from .reduce import l2_start_matrix, procrustes, reduce_rank, search_data, sign
from .starts import RESTART_STEP, agreed, improves, next_step, restart_start

MIN_BUCKET = 8
"""Smallest padded size of a shape bucket (rows and columns) on the batched JAX path."""

PAD_LIMIT = 1 << 20
"""Matrices with more entries than this keep their own shape (padding would cost more than the
compile it saves)."""


@dataclass(frozen=True)
class SolveResult:
    """What a solver returns.

    Attributes
    ----------
    components : ndarray (n_features, K)
        Orthonormal columns, ordered by decreasing ``||X q_k||_1``; each column's largest-magnitude
        entry is positive (so answers do not depend on the backend's eigenvector signs).
    signs : ndarray (n_samples, K) of int8, entries +-1
        The sign matrix the search ended on (for ``l2`` and the fixed-point baselines, ``sgn(X Q)``),
        permuted and negated consistently with ``components``.
    objective : float
        ``||X @ components||_1``, the L1-PC metric.
    backend : str
        What ran: ``"numpy"``, ``"jax"`` or ``"cupy"``.
    method : str
    n_flips : int
        Bit flips over all starts (``bitflip`` only).
    n_iter : int
        Fixed-point iterations (baselines only).
    converged : bool
        False when an iteration cap stopped the best start before a local optimum.
    n_starts : int
        L1-BF starts the answer was chosen from (``n_init``, or fewer where ``n_agree`` stopped
        them; :mod:`l1pca.kernels.starts`); 0 for the other methods.
    """

    components: np.ndarray
    signs: np.ndarray
    objective: float
    backend: str
    method: str
    n_flips: int = 0
    n_iter: int = 0
    converged: bool = True
    n_starts: int = 0


def bucket_shape(n_samples, n_features):
    """Padded shape for the batched path: each side rounded up to a power of two (>= MIN_BUCKET),
    so that a few compiled programs serve every small shape; large matrices keep their shape."""
    if n_samples * n_features > PAD_LIMIT:
        return int(n_samples), int(n_features)
    up = lambda v: max(MIN_BUCKET, 1 << (int(v) - 1).bit_length())  # noqa: E731
    return up(n_samples), up(n_features)


def solve(X, n_components=1, *, method="bitflip", n_init=DEFAULT_N_INIT, backend="auto",
          random_state=None, max_flips=None, tol=DEFAULT_TOL, warm_start=True, pair_moves=True,
          max_candidates=MAX_CANDIDATES, progress=None, devices=None, mesh=None,
          n_agree=DEFAULT_N_AGREE):
    """L1-norm principal components of X: ``argmax ||X Q||_1`` over Q with orthonormal columns.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Data, used as given (no centring). Any real dtype; computed in float64.
    n_components : int, default=1
        K, between 1 and ``min(n_samples, n_features)``.
    method : {"bitflip", "exact", "l2", "fixed-point", "non-greedy"}, default="bitflip"
        ``bitflip``: L1-BF (Markopoulos et al. 2017). ``exact``: optimal by enumeration, for small
        problems (see :mod:`l1pca.kernels.exact`). ``l2``: SVD. ``fixed-point``: Kwak 2008, greedy.
        ``non-greedy``: Nie et al. 2011.
    n_init : int, default=8
        L1-BF starts: the L2-PCA sign start, then restarts from the best optimum so far, each
        perturbed by a Gaussian draw g (:mod:`l1pca.kernels.starts`); the best is kept (fewer run
        with ``n_agree``).
    backend : {"auto", "numpy", "jax", "cupy"}, default="auto"
        Where L1-BF runs; the other methods run on NumPy.
    random_state : None, int or numpy.random.Generator
        Seeds the restarts' draws.
    max_flips : int, optional
        Flip cap per start (default ``20 N K + 1000``); ``converged`` reports when it was hit.
    tol : float, default=1e-9
        A flip must raise ``||X B||_*`` by more than ``tol`` times its value.
    warm_start : bool, default=True
        Fixed-point sweeps: whenever bits disagree in sign with the Procrustes direction, flip them
        all in one step (from the start, and between single flips). The end point is still a
        single-flip local optimum; it saves flip steps (80 s to 2 s at N=1e5, D=100 with outliers).
    pair_moves : bool, default=True
        At each single-flip local optimum, try two-flip moves among the 16 most promising bits and
        search on from the best improving one (problems of at most 4096 bits). Raises the exact-hit
        rate of one start from about 85% to 91% on the optimality benchmark.
        ``warm_start=False, pair_moves=False`` is the paper's L1-BF.
    max_candidates : int, default=5_000_000
        ``exact`` refuses problems that need more sign-matrix evaluations.
    progress : callable, optional
        ``progress(done, total)`` is called as L1-BF starts finish (the CLI draws its bar with it).
    devices : "all", int or list of jax devices, optional
        Shard the samples over these devices (:mod:`l1pca.kernels.sharded`): for matrices larger than
        one device. X may then be a NumPy array, a memory-mapped ``.npy`` or a row-sharded
        ``jax.Array``. Needs ``method="bitflip"``, backend "auto" or "jax", and N >= D.
    mesh : jax.sharding.Mesh, optional
        A one-axis mesh named ``"samples"`` to shard over, instead of ``devices``.
    n_agree : int, default=0
        0: every one of the ``n_init`` starts runs. n > 0: the starts stop once n of them have ended
        at the best objective so far (:mod:`l1pca.kernels.starts`), the same rule on every backend;
        faster where starts agree, but it loses answers a later start would have found
        (``docs/decisions/0012-default-starts.md``). The sharded path (``devices``, ``mesh``) runs
        every start.

    Returns
    -------
    SolveResult

    Examples
    --------
    >>> import numpy as np
    >>> from l1pca.kernels import solve
    >>> X = np.array([[2.0, 0.1], [1.0, -0.2], [-3.0, 0.0], [0.0, 5.0]])
    >>> res = solve(X, n_components=1, method="exact")
    >>> res.components.shape, round(res.objective, 3)
    ((2, 1), 6.955)
    """
    opts = SolveOptions(method=method, n_init=n_init, backend=backend, max_flips=max_flips, tol=tol,
                        warm_start=warm_start, pair_moves=pair_moves, max_candidates=max_candidates,
                        n_agree=n_agree)
    if devices is not None or mesh is not None:
        return _solve_sharded(X, n_components, opts, random_state=random_state, progress=progress,
                              devices=devices, mesh=mesh)
    return solve_many([X], n_components, opts, random_state=random_state, names=["X"],
                      progress=progress)[0]


def solve_batch(Xs, n_components=1, *, method="bitflip", n_init=DEFAULT_N_INIT, backend="auto",
                random_state=None, max_flips=None, tol=DEFAULT_TOL, warm_start=True, pair_moves=True,
                max_candidates=MAX_CANDIDATES, progress=None, n_agree=DEFAULT_N_AGREE):
    """:func:`solve` for many matrices at once; shapes may differ. One result per matrix, in order.

    Equal-bucket matrices (see :func:`bucket_shape`) run as one batched call on JAX; zero padding
    leaves every objective and solution unchanged and is cut from the results.

    ``random_state``: an int seeds every matrix alike, so ``solve_batch(Xs, random_state=s)[i]``
    equals ``solve(Xs[i], random_state=s)``; a sequence gives one seed per matrix; a Generator is
    drawn from in order.
    """
    opts = SolveOptions(method=method, n_init=n_init, backend=backend, max_flips=max_flips, tol=tol,
                        warm_start=warm_start, pair_moves=pair_moves, max_candidates=max_candidates,
                        n_agree=n_agree)
    Xs = list(Xs)
    return solve_many(Xs, n_components, opts, random_state=random_state,
                      names=[f"Xs[{i}]" for i in range(len(Xs))], progress=progress)


def _solve_sharded(X, n_components, opts: SolveOptions, *, random_state, progress, devices, mesh):
    from . import sharded

    if opts.method != "bitflip" or opts.backend not in ("auto", "jax"):
        raise InputError(f"devices/mesh shard L1-BF over JAX devices: method must be 'bitflip' and "
                         f"backend 'auto' or 'jax'; got method={opts.method!r}, "
                         f"backend={opts.backend!r}")
    mesh = sharded.make_mesh(devices) if mesh is None else sharded._check_mesh(mesh)
    Xs, N = sharded.shard_rows(X, mesh)
    D = Xs.shape[1]
    K = check_n_components(n_components, N, D)
    G = check_random_state(random_state).standard_normal((opts.n_init - 1, D, K))
    cap = opts.max_flips if opts.max_flips is not None else default_max_flips(N, K)
    B, M, flips, conv, column_l1 = sharded.search_sharded(
        Xs, N, K, G, mesh=mesh, max_flips=cap, tol=opts.tol, warm_start=opts.warm_start,
        pair_moves=opts.pair_moves)
    _Ticker(progress, total=opts.n_init)(opts.n_init)
    Q = procrustes(M)
    return _canonical(Q, B, column_l1(Q), "jax", "bitflip", n_flips=flips, converged=conv,
                      n_starts=opts.n_init)


def _rngs(random_state, count):
    if isinstance(random_state, (list, tuple)):
        if len(random_state) != count:
            raise InputError(
                f"random_state has {len(random_state)} seeds for {count} matrices; give one per matrix"
            )
        return [check_random_state(r) for r in random_state]
    if isinstance(random_state, np.random.Generator):
        return [random_state] * count
    return [check_random_state(random_state) for _ in range(count)]


def solve_many(Xs, n_components, opts: SolveOptions, *, random_state=None, names=None,
               progress=None):
    """:func:`solve_batch` with the options as one :class:`~l1pca.kernels.options.SolveOptions`
    (validated when it was made): what :func:`l1pca.kernels.fitting.fit_many` calls."""
    if names is None:
        names = [f"Xs[{i}]" for i in range(len(Xs))]
    checked = [check_matrix_peak(X, name=name) for X, name in zip(Xs, names)]
    mats = [X for X, _ in checked]
    for X in mats:
        check_n_components(n_components, *X.shape)
    K = int(n_components)
    if not mats:
        return []
    # Every method is scale-invariant (the objective scales with X), so a matrix whose largest entry
    # lies outside [2^-64, 2^64) is divided by a power of two near it: exact in floating point, and
    # it keeps Gram entries, squared traces and determinants of extreme data (|x| ~ 1e100 or 1e-200,
    # denormals) from overflowing or underflowing. Inside that range the division would change no
    # bit of any decision (every quantity the solvers compare is homogeneous in X and a power of two
    # commutes with rounding), so large matrices are not copied for it.
    scales = [_pow2_scale(peak) for _, peak in checked]
    mats = [X if sc == 1.0 else X / sc for X, sc in zip(mats, scales)]
    results = _solve_scaled(mats, K, opts, random_state=random_state, progress=progress)
    return [res if sc == 1.0 else replace(res, objective=res.objective * sc)
            for res, sc in zip(results, scales)]


def _pow2_scale(peak):
    if peak == 0.0 or 2.0 ** -64 <= peak < 2.0 ** 64:
        return 1.0
    return float(2.0 ** np.floor(np.log2(peak)))


def _solve_scaled(mats, K, opts: SolveOptions, *, random_state, progress):
    method = opts.method
    if method != "bitflip":
        backends.resolve(opts.backend, method)  # rejects e.g. backend="jax" with method="exact"
        run = {"exact": _run_exact, "l2": _run_l2, "fixed-point": _run_greedy,
               "non-greedy": _run_nongreedy}[method]
        return [run(X, K, max_candidates=opts.max_candidates) for X in mats]

    rngs = _rngs(random_state, len(mats))
    draws = [rng.standard_normal((opts.n_init - 1, X.shape[1], K)) for rng, X in zip(rngs, mats)]
    results: list[SolveResult | None] = [None] * len(mats)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, X in enumerate(mats):
        buckets.setdefault(bucket_shape(*X.shape), []).append(i)
    tick = _Ticker(progress, total=len(mats) * opts.n_init)
    for shape, idx in buckets.items():
        key = program_key(len(idx), shape, K, opts.n_init, opts.warm_start, opts.pair_moves)
        ready = compiled(key)
        name = backends.resolve(opts.backend, method, batch_size=len(idx), compiled=ready,
                                n_components=K, n_samples=shape[0])
        if opts.compile == "background" and not ready and backends.resolve(
                opts.backend, method, batch_size=len(idx), compiled=True, n_components=K,
                n_samples=shape[0]) == "jax":
            # No fit waits on the compiler: this bucket runs on the host now, its program compiles
            # in the background (l1pca.kernels.compile_queue), and later buckets of the shape use it.
            COMPILES.request(key)
            name = backends.host_backend()
        if name == "jax":
            outs = _bitflip_jax([mats[i] for i in idx], [draws[i] for i in idx], shape, K, opts)
            tick(len(idx) * opts.n_init)
        else:
            outs = [_bitflip_host(mats[i], draws[i], K, opts, name, tick) for i in idx]
        for sub, stack in equal_shapes([mats[i] for i in idx]):  # one call per step for each shape
            Bs = np.stack([outs[j][0] for j in sub])
            Q = procrustes(np.swapaxes(stack, -1, -2) @ Bs)
            done = _canonical_many(Q, Bs, np.abs(stack @ Q).sum(axis=-2), name, "bitflip",
                                   [dict(n_flips=outs[j][1], converged=outs[j][2], n_starts=outs[j][3])
                                    for j in sub])
            for j, res in zip(sub, done):
                results[idx[j]] = res
    return results


def equal_shapes(mats):
    """``[(indices, stack)]``: the matrices grouped by shape, each group stacked (count, rows, cols), in
    order of first appearance (a lone matrix as a view, not a copy). Batches are mostly equal-shaped
    (the service buckets them); NumPy's stacked routines (matmul, SVD, median) then run one call for
    the group and compute for each matrix the numbers they compute for it alone."""
    groups: dict[tuple, list[int]] = {}
    for i, X in enumerate(mats):
        groups.setdefault(X.shape, []).append(i)
    return [(idx, mats[idx[0]][None] if len(idx) == 1 else np.stack([mats[i] for i in idx]))
            for idx in groups.values()]


class _Ticker:
    """Counts finished starts and reports them to the caller's progress callback, if any."""

    def __init__(self, callback, total):
        self.callback, self.total, self.done = callback, total, 0

    def __call__(self, n=1):
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)


COMPILED_MAX_ENTRIES = 500_000
"""From :data:`SCREEN_MIN_SAMPLES` samples on, the compiled loop runs matrices up to this many
entries and the screened search larger ones: at 1e4 x 100 the screened search took 0.43 s against
0.67 s (K = 2) and 1.14 s against 2.43 s (K = 3); at 1e4 x 30, 0.71 against 0.46 s; at 16384 x 30,
73 against 32 ms per start (``bench/results/solver_speed.md``, decision 0011)."""


def compiled_loop_wins(n_samples, n_features):
    """Where ``backend="auto"`` runs the compiled loop rather than a NumPy search."""
    if n_samples < SCREEN_MIN_SAMPLES:
        return True
    return (n_samples < backends.COMPILED_MAX_SAMPLES
            and n_samples * n_features <= COMPILED_MAX_ENTRIES)


def host_search(Y, B0, opts: SolveOptions, xp=np):
    """One start of L1-BF on NumPy or CuPy. For ``backend="auto"`` on NumPy where
    :func:`compiled_loop_wins`: the compiled loop
    (:mod:`l1pca.kernels.bitflip_numba`) where Numba is present and its code loaded
    (:func:`backends.compiled_loop`; ``opts.compile="background"`` never waits for it). Else on
    NumPy from :data:`SCREEN_MIN_SAMPLES` samples the screened search
    (:mod:`l1pca.kernels.bitflip_screened`), where a step's full pass over the data is the whole
    cost; else the reference search (``backend="numpy"`` below that size always). All take the same
    steps (``tests/kernels/test_bitflip.py``, ``tests/kernels/test_bitflip_numba.py``); the choice is
    measured in ``docs/decisions/0011-compiled-search-loop.md``."""
    N, K = B0.shape
    cap = opts.max_flips if opts.max_flips is not None else default_max_flips(N, K)
    if xp is np and opts.backend == "auto" and compiled_loop_wins(N, Y.shape[0]):
        compiled_search = backends.compiled_loop(wait=opts.compile != "background")
        if compiled_search is not None:
            return compiled_search(Y, B0, max_flips=cap, tol=opts.tol, warm_start=opts.warm_start,
                                   pair_moves=opts.pair_moves)
    if xp is np and N >= SCREEN_MIN_SAMPLES:
        return search_screened(Y, B0, max_flips=cap, tol=opts.tol, warm_start=opts.warm_start,
                               pair_moves=opts.pair_moves)
    return bitflip_search(Y, B0, max_flips=cap, tol=opts.tol, warm_start=opts.warm_start,
                          pair_moves=opts.pair_moves, xp=xp)


def _bitflip_host(X, G, K, opts: SolveOptions, name, tick):
    """Every start on NumPy, or the same body on CuPy arrays, in order: the L2-PCA start, then a
    restart from the best so far for each draw of G (:mod:`l1pca.kernels.starts`); the best kept."""
    if name == "cupy":
        import cupy as xp
    else:
        xp = np
    Xd = xp.asarray(X)
    Gd = xp.asarray(G)
    Y, l2 = search_data(Xd, xp)
    best, flips, values, step = None, 0, [], RESTART_STEP
    for s in range(G.shape[0] + 1):
        B0 = l2_start_matrix(l2, K, xp) if best is None else restart_start(Xd, best.signs, Gd[s - 1],
                                                                          step, xp)
        res = host_search(Y, B0, opts, xp)
        flips += res.n_flips
        tick()
        if best is None:
            best = res
        else:
            better = bool(improves(res.value, best.value))
            step = float(next_step(step, better))
            if better:
                best = res
        values.append(res.value)
        if agreed(values, opts.n_agree):  # the starts not run count as done for the progress bar
            tick(G.shape[0] + 1 - len(values))
            break
    B = best.signs.get() if name == "cupy" else best.signs
    return np.asarray(B), flips, best.converged, len(values)


def _bitflip_jax(mats, draws, shape, K, opts: SolveOptions):
    from .bitflip_jax import solve_bucket

    # The batch axis is padded to a power of two too (with zero matrices, which stop at once), so
    # that one compiled program serves every batch size up to it.
    X = np.zeros((jax_batch_size(len(mats)), *shape))
    G = np.zeros((X.shape[0], draws[0].shape[0], shape[1], K))
    for j, (Xi, Gi) in enumerate(zip(mats, draws)):
        X[j, :Xi.shape[0], :Xi.shape[1]] = Xi
        G[j, :, :Xi.shape[1]] = Gi
    cap = opts.max_flips if opts.max_flips is not None \
        else max(default_max_flips(Xi.shape[0], K) for Xi in mats)
    B, _, flips, conv, kept = solve_bucket(X, G, max_flips=cap, tol=opts.tol,
                                           warm_start=opts.warm_start, pair_moves=opts.pair_moves,
                                           n_agree=opts.n_agree)
    return [(B[j, :Xi.shape[0]], int(flips[j]), bool(conv[j]), int(kept[j]))
            for j, Xi in enumerate(mats)]


def _run_exact(X, K, *, max_candidates):
    B, _, _ = exact_search(reduce_rank(X), K, max_candidates=max_candidates)
    return _finish(X, procrustes(X.T @ B), B, "numpy", "exact")


def _run_l2(X, K, **_):
    Q, it, conv = l2_pca(X, K)
    return _finish(X, Q, None, "numpy", "l2", n_iter=it, converged=conv)


def _run_greedy(X, K, **_):
    Q, it, conv = fixed_point_greedy(X, K)
    return _finish(X, Q, None, "numpy", "fixed-point", n_iter=it, converged=conv)


def _run_nongreedy(X, K, **_):
    Q, it, conv = fixed_point_nongreedy(X, K)
    return _finish(X, Q, None, "numpy", "non-greedy", n_iter=it, converged=conv)


def _finish(X, Q, B, backend, method, **info):
    """Deterministic order and signs, the objective, and the result record."""
    proj = X @ Q
    if B is None:
        B = sign(proj)
    return _canonical(Q, B, np.abs(proj).sum(axis=0), backend, method, **info)


def _canonical(Q, B, column_l1, backend, method, *, n_flips=0, n_iter=0, converged=True, n_starts=0):
    """The result record from Q, B and ``||X q_k||_1`` per column (computed where X lives)."""
    return _canonical_many(Q[None], B[None], column_l1[None], backend, method,
                           [dict(n_flips=n_flips, n_iter=n_iter, converged=converged,
                                 n_starts=n_starts)])[0]


def _canonical_many(Q, B, column_l1, backend, method, infos):
    """:func:`_canonical` for a stack: Q (m, D, K), B (m, N, K), column_l1 (m, K), and one dict of
    ``n_flips`` / ``n_iter`` / ``converged`` / ``n_starts`` per problem. One record per problem."""
    # Column order and signs are arbitrary for the problem (B's columns may be permuted and negated);
    # fix them so that every backend and every start returns the same answer for the same optimum.
    order = np.argsort(-column_l1, axis=-1, kind="stable")
    Q = np.take_along_axis(Q, order[:, None, :], axis=-1)
    B = np.take_along_axis(B, order[:, None, :], axis=-1)
    column_l1 = np.take_along_axis(column_l1, order, axis=-1)
    peak = np.abs(Q).argmax(axis=-2)  # (m, K)
    flip = np.where(np.take_along_axis(Q, peak[:, None, :], axis=-2) < 0, -1.0, 1.0)  # (m, 1, K)
    Q, signs, objective = (np.ascontiguousarray(Q * flip), (B * flip).astype(np.int8),
                           column_l1.sum(axis=-1))
    return [SolveResult(components=Q[t], signs=signs[t], objective=float(objective[t]),
                        backend=backend, method=method, n_flips=int(info.get("n_flips", 0)),
                        n_iter=int(info.get("n_iter", 0)), converged=bool(info.get("converged", True)),
                        n_starts=int(info.get("n_starts", 0)))
            for t, info in enumerate(infos)]
