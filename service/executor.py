"""The executor of fit batches: a batch of requests becomes one
:func:`l1pca.kernels.fitting.fit_many` call on a solver thread (never on the event loop), or in a
solver process (:mod:`l1pca.service.solver_process`). The service does no arithmetic of its own.

The request path, top to bottom: :mod:`~l1pca.service.handlers` (decode, check) ->
:mod:`~l1pca.service.batcher` (group equal :class:`FitKey` requests) -> :class:`FitExecutor` (this
module: run the batch, retry on the CPU, isolate bad inputs) -> the kernels.

* Backend: chosen once at start (:mod:`l1pca.service.backend_choice`), fixed for the server's life.
  One exception, by K alone (part of the batch key, so still never by batch-mates): with ``"auto"``
  on the CPU, K >= 3 runs on NumPy, as fast or faster than JAX there
  (:data:`l1pca.kernels.backends.JAX_CPU_MAX_COMPONENTS`).
* A device failure at run time (out of memory, a CUDA error) re-runs that batch on the CPU (NumPy)
  and counts it in ``l1pca_cpu_fallback_total``. Without a GPU the path is exercised by fault
  injection (:mod:`l1pca.service.faults`, tests only).
* A bad matrix that only the solver can detect (``exact`` on a problem too large) fails alone: a
  batch that raises :class:`l1pca.kernels.InputError` is re-run one request at a time. Anything else
  (a solver bug) fails its own requests with INTERNAL, traceback logged, and no other batch.
* Solver processes (``--solver-process``): ``on`` sends every call to a child process; ``auto`` (the
  default; on the CPU only) every call but a lone request while nothing else computes or waits, which
  runs in the solver thread (:data:`PROCESS_MIN_BATCH`).
* A hung worker (a solver call past ``--solve-timeout-s``) is abandoned: the server fails its batch
  with UNAVAILABLE and :meth:`FitExecutor.replace_workers` starts a fresh thread pool (counted in
  ``l1pca_worker_restarts_total``); Python cannot kill a thread, so the hung one is left to end on its
  own, while a hung solver process is killed.
* Warm-up: :meth:`FitExecutor.warm_up` compiles the batch ladder (:mod:`l1pca.service.warmup`) where
  the fits will run.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from l1pca.kernels import InputError, SolveOptions, backends, bucket_shape
from l1pca.kernels.compile_queue import COMPILES, close_workers, compiled, compiled_buckets, program_key
from l1pca.kernels.fitting import fit_many
from l1pca.kernels.options import DEFAULT_SUPPORT_FRACTION

from .backend_choice import is_device_failure, select_backend
from .errors import InvalidArgument, Unavailable
from .faults import FAULT_INJECT_ENV, FaultInjector, InjectedDeviceFault
from .jax_setup import size_jax_pool, use_compile_cache
from .warmup import batch_ladder, run_warm_up

log = logging.getLogger("l1pca.service")


class FitKey(NamedTuple):
    """Requests with equal keys share one solver call: every option of ``fit_many`` is in it, so
    requests with different options are never batched together. ``n_components`` is an int or
    ``"auto"``; ``support_fraction`` is None for the plain fit (as the kernels' check leaves it)."""

    method: str
    n_components: int | str
    n_init: int
    center: str | None
    contamination: object
    bucket: tuple[int, int]
    support_fraction: float | None = DEFAULT_SUPPORT_FRACTION
    cell_robust: bool = True


class SolveClock:
    """When the solver could start a batch's call (``time.perf_counter()``; None until then).

    Set from the solver thread, read by the server's ``--solve-timeout-s`` timer on the event loop:
    a batch handed to a solver process while another computes waits in its pipe, and its timeout
    counts from when it could start, not from the hand-over (else a hung batch ahead would fail it
    too). A call run again on a fresh process, or on the CPU after a device failure, moves it.
    """

    __slots__ = ("started",)

    def __init__(self):
        self.started = None

    def mark(self, started):
        self.started = started


PROCESS_MIN_BATCH = 2
"""``--solver-process auto``: the smallest batch always sent to a solver process. A smaller one runs
in the solver thread while no other call computes and no request waits in the queue: there the
pipe's round trip (0.3 ms empty, 0.6 ms on a 64 x 16 fit) cost a lone client 20% of its throughput,
and the event loop has little else to do. Under concurrency it goes to the child too, where it
overlaps with the server's other work. "No other call computes" alone was not enough: with
``--max-batch-size 1`` under load the child often finished before the event loop handed over the
next request, which then ran in the thread, beside the event loop (0.75-0.86x the throughput of
``--solver-process on`` at 4 to 256 clients in one run). With the queue counted: 0.84-1.02x in two
runs; at 4-16 clients the queue is sometimes empty at the hand-over."""


class FitExecutor:
    """Runs batches of fits in a thread pool on the selected backend.

    Parameters
    ----------
    backend : {"auto", "numpy", "jax", "cupy"}
    workers : int
        Solver threads (batches computing at once).
    max_batch_size : int
        Sets the JAX batch ladder.
    metrics : ServiceMetrics, optional
    fault_inject : str, optional
        See :data:`FAULT_INJECT_ENV`.
    sharded_min_rows : int
        L1-BF fits of matrices with at least this many rows run on the sharded solver over every
        JAX device (:mod:`l1pca.kernels.sharded`), one at a time; 0 turns it off.
    solver_process : {"auto", "on", "off"}
        Run the fits in ``workers`` child processes (:mod:`l1pca.service.solver_process`): "on"
        every fit; "auto" on the CPU only, and a batch smaller than :data:`PROCESS_MIN_BATCH` only
        while another call computes or requests wait.
    solver_threads : int
        Threads of JAX's CPU backend in this process and in each solver process; 0 leaves XLA's
        default (one per CPU). Only where JAX may run (backend "auto" or "jax").
    compile_cache : (str, int), optional
        ``(directory, max_bytes)``: JAX keeps its compiled programs there, in this process and in
        each solver process, so that a restart's warm-up loads them (None: compile every time).
        A directory that cannot be used is logged and left off. ``compile_cache`` (attribute): the
        directory in use, or None.
    solve_timeout_s : float
        A solver call running longer is taken as a hung worker (0: never).
    background_compile : bool
        True (the server's setting): a batch whose JAX program is not compiled yet runs on the host
        path at once while the program compiles in the background
        (:mod:`l1pca.kernels.compile_queue`), so no request waits on the compiler. False: the
        batch compiles its program first.
    """

    def __init__(self, backend="auto", *, workers=1, max_batch_size=16, metrics=None,
                 fault_inject=None, sharded_min_rows=0, solver_process="auto", solver_threads=1,
                 compile_cache=None, solve_timeout_s=0.0, background_compile=True):
        jax_threads = int(solver_threads) or None
        if backend in ("auto", "jax"):  # before select_backend starts JAX to look for a GPU
            self.compile_cache = use_compile_cache(compile_cache)
            size_jax_pool(jax_threads)
        else:
            self.compile_cache = None
        self.backend, self.device, self.on_gpu = select_backend(backend)
        self._auto_cpu = backend == "auto" and not self.on_gpu
        self.sharded_min_rows = int(sharded_min_rows)
        self.batch_sizes = batch_ladder(max_batch_size)
        if self.backend == "jax":
            # Import before any solver thread runs: the kernels import it lazily, and two threads
            # importing it at once can see a partly initialised module.
            import l1pca.kernels.bitflip_jax  # noqa: F401
        self.workers = int(workers)
        self.solve_timeout_s = float(solve_timeout_s) or None
        self.worker_restarts = 0
        self._pool_lock = threading.Lock()
        self._released = threading.Event()  # set at shutdown: ends injected hangs
        self._metrics = metrics
        self._compile_mode = "background" if background_compile else "wait"
        # This process's background compiles reach the metrics (and the children's, through
        # SolverProcesses); the listener is removed at shutdown (the queue is process-wide).
        self._on_compile = metrics.observe_compile if metrics is not None else None
        if self._on_compile is not None:
            COMPILES.add_listener(self._on_compile)
        self._faults = FaultInjector(fault_inject, self._released)
        if solver_process not in ("auto", "on", "off"):
            raise ValueError(f"solver_process={solver_process!r} is not one of auto, on, off")
        self._procs = None
        # Batches this small run in the solver thread while no other call computes.
        self._process_min_batch = PROCESS_MIN_BATCH if solver_process == "auto" else 1
        if solver_process == "on" or (solver_process == "auto" and not self.on_gpu):
            from .solver_process import SolverProcesses

            jax_here = self.backend == "jax"
            self._procs = SolverProcesses(
                self.workers, preload=("l1pca.kernels.bitflip_jax",) if jax_here else (),
                jax_threads=jax_threads if jax_here else None,
                compile_cache=(self.compile_cache, compile_cache[1])
                if jax_here and self.compile_cache else None, on_compile=self._on_compile)
        # With solver processes, a thread per call a child can hold: the batch after the running one
        # waits in the child's pipe, not in this pool's queue.
        self.standby_batches = self.workers * (self._procs.depth - 1) if self._procs is not None else 0
        self._threads = self.workers + self.standby_batches
        self.pool = ThreadPoolExecutor(self._threads, thread_name_prefix="l1pca-solve")
        self._active = 0  # solver calls running (_fit_many), under _pool_lock
        if self._faults:
            log.warning("fault injection is on (%s=%s); for tests only", FAULT_INJECT_ENV, fault_inject)

    def describe(self):
        where = f"GPU ({self.device})" if self.on_gpu else "the CPU (no usable GPU found by CuPy or JAX)"
        procs = ""
        if self._procs is not None:
            procs = f", in {self.workers} solver process(es)"
            if self._process_min_batch > 1:
                procs += (f" (smaller batches than {self._process_min_batch} in the solver thread "
                          "while nothing else computes or waits)")
        return f"backend={self.backend} on {where}{procs}"

    def _in_process(self, batch: int, *, alone: bool) -> bool:
        """Whether a batch of this many fits runs in a solver process (else in the thread);
        ``alone``: no other solver call is running and no request was queued at the hand-over."""
        return self._procs is not None and (batch >= self._process_min_batch or not alone)

    def _may_run_here(self, batch: int) -> bool:
        return not self._in_process(batch, alone=True)

    def shutdown(self, compile_timeout_s=60.0):
        """Stop: queued background compiles are dropped, and a running one is given up to
        ``compile_timeout_s`` to end (the process would abort if it exited during a compile)."""
        if self._on_compile is not None:
            COMPILES.remove_listener(self._on_compile)
        if not COMPILES.cancel(compile_timeout_s):
            log.warning("a background compile is still running after %.0f s; stopping anyway",
                        compile_timeout_s)
        close_workers()
        self._released.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._procs is not None:
            self._procs.close()

    def compiled_buckets(self):
        """JAX programs compiled where the fits of their batch size run: in every solver process
        (the ones all of them hold), in this process for the batches that stay here."""
        here = compiled_buckets()
        if self._procs is None:
            return here
        there = frozenset.intersection(*self._procs.broadcast("compiled"))
        return frozenset(key for key in there if key in here or not self._may_run_here(key[0]))

    def _fit_many(self, mats, *args, clock: SolveClock, queued=False, program=None, **kwargs):
        """``fit_many`` in a solver process when the batch goes there, else in this thread;
        ``clock`` hears when it could start (in a child, after the call ahead); ``queued``: requests
        were waiting when the batch was handed over; ``program``: the JAX program the batch runs
        (a compile key), None when it runs on NumPy."""
        with self._pool_lock:
            self._active += 1
            alone = self._active == 1 and not queued
        try:
            # With solver processes, this process never compiles: tracing a program holds the
            # interpreter lock for seconds, and the event loop shares this one. A lone batch whose
            # program this process does not hold goes to a child, which compiles in the background.
            if self._in_process(len(mats), alone=alone) or (
                    self._procs is not None and program is not None and not compiled(program)):
                clock.mark(None)  # in the child's pipe: not started until its turn comes
                return self._procs.call("fit_many", mats, *args, on_start=clock.mark, **kwargs)
            clock.mark(time.perf_counter())
            return fit_many(mats, *args, **kwargs)
        finally:
            with self._pool_lock:
                self._active -= 1

    # -- the batcher's entry ----------------------------------------------------------------------
    async def run_batch(self, key: FitKey, payloads, *, queued=False):
        """One batch on a solver thread, awaited; past ``solve_timeout_s`` the worker is taken as hung:
        the batch fails UNAVAILABLE (retryable) and the solver pool is replaced. ``queued``: other
        requests waited when the batch was handed over (a lone request then goes to the solver
        process too, :data:`PROCESS_MIN_BATCH`).

        The timeout counts from when the solver could start the batch (:class:`SolveClock`): a
        batch handed to a solver process ahead of its turn waits in its pipe behind the one
        computing, and must not fail because that one hung (it runs again on the fresh process).
        One that never starts fails after twice the timeout from the hand-over."""
        clock = SolveClock()
        future = asyncio.wrap_future(self.submit(self.fit_batch, key, payloads, clock, queued))
        pool = self.pool
        timeout_s = self.solve_timeout_s
        if timeout_s is None:
            return await future
        handed = time.perf_counter()
        # The start is set from the solver thread (and may move): look again every twentieth of the
        # timeout rather than sleep to a limit computed before it was known.
        poll = timeout_s / 20
        while True:
            started = clock.started
            limit = handed + 2 * timeout_s if started is None else started + timeout_s
            left = limit - time.perf_counter()
            if left <= 0:
                break
            try:
                return await asyncio.wait_for(asyncio.shield(future), min(left, poll))
            except asyncio.TimeoutError:
                continue
        future.cancel()  # not yet running: never run it
        self.replace_workers(f"a solver call of {len(payloads)} requests ran over "
                             f"--solve-timeout-s={timeout_s:g}", pool=pool)
        raise Unavailable(f"the solver worker did not answer within {timeout_s:g} s and was "
                          "replaced; the request was not computed, retry")

    # -- workers --------------------------------------------------------------------------------
    def submit(self, fn, *args):
        """``fn(*args)`` on a solver thread; a concurrent future. A pool that refuses work (shut
        down) is replaced once, and the work submitted to the new one."""
        pool = self.pool
        try:
            return pool.submit(fn, *args)
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            if self._released.is_set():
                raise
            self.replace_workers(f"the solver pool refused work ({exc})", pool=pool)
            return self.pool.submit(fn, *args)

    def replace_workers(self, reason, *, pool=None):
        """Swap in a fresh solver thread pool; the old one's threads are abandoned (a hung thread
        cannot be killed) and end when their call returns. ``pool``: replace only if still current
        (two callers noticing the same failure replace it once)."""
        with self._pool_lock:
            if pool is not None and pool is not self.pool:
                return False
            old, self.pool = self.pool, ThreadPoolExecutor(
                self._threads, thread_name_prefix="l1pca-solve")
            self.worker_restarts += 1
        old.shutdown(wait=False, cancel_futures=False)
        if self._procs is not None:  # a hung call's process can be ended, unlike a thread
            self._procs.replace_busy()
        log.error("solver worker replaced (%s); %d replacement(s) so far", reason, self.worker_restarts)
        if self._metrics is not None:
            self._metrics.worker_restarts.inc()
        return True

    # -- batches --------------------------------------------------------------------------------
    def fit_batch(self, key: FitKey, payloads, clock=None, queued=False):
        """Fit every ``(X, seed)`` of one batch; one :class:`l1pca.kernels.Model` or exception per payload.

        Runs in a solver thread. ``clock`` (:class:`SolveClock`), if given, hears when the solver
        could start the batch. ``queued``: other requests were waiting in the server's queue when
        the batch was handed over (``--solver-process auto`` then sends even a lone request to the
        solver process, :data:`PROCESS_MIN_BATCH`).
        """
        backend = self._backend_for(key.method, key.n_components)
        try:
            return self._attempt(key, payloads, backend, inject=True, clock=clock, queued=queued)
        except Exception as exc:
            if (self.on_gpu or isinstance(exc, InjectedDeviceFault)) and is_device_failure(exc):
                log.warning("device failure on %s for a batch of %d (%s: %s); re-running it on the "
                            "CPU", self.backend, len(payloads), type(exc).__name__, exc)
                if self._metrics is not None:
                    self._metrics.cpu_fallback.inc()
                try:
                    return self._attempt(key, payloads, "numpy", inject=False, clock=clock,
                                         queued=queued)
                except InputError as again:
                    return self._one_by_one(key, payloads, "numpy", again)
            if isinstance(exc, InputError):
                return self._one_by_one(key, payloads, backend, exc)
            raise

    def _backend_for(self, method, n_components):
        if method != "bitflip":
            return "numpy"
        # "auto" may choose up to 10 components: on the CPU that is NumPy's range, as for large K.
        if self._auto_cpu and (n_components == "auto"
                               or n_components > backends.JAX_CPU_MAX_COMPONENTS):
            return "numpy"
        return self.backend

    def _one_by_one(self, key, payloads, backend, exc):
        """After a batch failed on input: each request alone, so that a bad one fails alone."""
        if len(payloads) == 1:
            return [InvalidArgument(str(exc))]
        out = []
        for payload in payloads:
            try:
                out.extend(self._attempt(key, [payload], backend, inject=False))
            except InputError as err:
                out.append(InvalidArgument(str(err)))
        return out

    def _attempt(self, key: FitKey, payloads, backend, *, inject, clock=None, queued=False):
        seeds = [seed for _, seed in payloads]
        if clock is None:
            clock = SolveClock()
        clock.mark(time.perf_counter())  # in this thread's hands (an injected hang counts as started)
        self._faults.before_call(seeds, first_attempt=inject)
        mats = [X for X, _ in payloads]
        sharded = (self.sharded_min_rows > 0 and key.method == "bitflip" and backend != "numpy"
                   and max(X.shape[0] for X in mats) >= self.sharded_min_rows)
        options = SolveOptions(method=key.method, n_init=key.n_init, backend=backend,
                               compile=self._compile_mode)
        # The program of the first solve (K known; the robust fit's refits on h rows and "auto"'s
        # K are chosen inside fit_many).
        program = (program_key(len(mats), key.bucket, key.n_components, key.n_init)
                   if backend == "jax" and not sharded and key.n_components != "auto" else None)
        results = self._fit_many(
            mats, key.n_components, options=options, center=key.center, seeds=seeds,
            contamination=key.contamination, support_fraction=key.support_fraction,
            cell_robust=key.cell_robust, clock=clock, queued=queued, program=program,
            **({"devices": "all"} if sharded else {}))
        if sharded and self._metrics is not None:
            self._metrics.sharded_fits.inc(len(mats))
        if self._metrics is not None and backend == "jax":
            # Fits that ran elsewhere than asked: on the host path while their program compiles.
            on_host = sum(1 for m in results if m.backend != "jax")
            if on_host:
                self._metrics.host_path_fits.inc(on_host)
        if self._metrics is not None:
            # From when the solver could start it: a batch sent ahead waits for the one before it.
            self._metrics.solve_duration.labels(results[0].backend, key.method).observe(
                time.perf_counter() - clock.started)
        return results

    # -- warm-up --------------------------------------------------------------------------------
    def warm_up(self, shapes, components, *, n_init, should_stop=lambda: False, threads=None,
                wait=True):
        """Compile the solver for each (rows x cols) shape, each K and each batch size of the ladder
        (in every solver process when they are on: each compiles its own programs).

        ``wait=True``: the compiles are independent and CPU-bound, so they run on ``threads``
        threads (default: the core count, at most 4), and this blocks until they are done. Returns
        the number of solver calls made (in one solver process, plus those made in this process).

        ``wait=False`` (the server's default): the programs are queued for the background compiler
        of every process that will run them (:mod:`l1pca.kernels.compile_queue`) and this returns at
        once, with the number queued; fits of those shapes run on the host path until their program
        is ready. Either way the solver processes are up and answering when it returns.
        """
        tasks = [(rows, cols, K, b, self._backend_for("bitflip", K))
                 for rows, cols in shapes for K in components if K <= min(rows, cols)
                 for b in (self.batch_sizes if self._backend_for("bitflip", K) == "jax" else (1,))]
        if not wait:
            return self._queue_compiles(tasks, n_init)
        if self._procs is None:
            return run_warm_up(tasks, n_init=n_init, should_stop=should_stop, threads=threads)
        here = [t for t in tasks if self._may_run_here(t[3])]
        # The batches that may run in this process compile here while the children compile all.
        with ThreadPoolExecutor(1, thread_name_prefix="l1pca-warmup-here") as pool:
            local = pool.submit(run_warm_up, here, n_init=n_init, should_stop=should_stop,
                                threads=threads)
            remote = min(self._procs.broadcast("warm_up", tasks, n_init=n_init, threads=threads),
                         default=0)
            return remote + local.result()

    def _queue_compiles(self, tasks, n_init):
        keys = [program_key(b, bucket_shape(rows, cols), K, n_init)
                for rows, cols, K, b, backend in tasks if backend == "jax"]
        if self._procs is None:
            return sum(COMPILES.request(key) for key in keys)
        # Only the children compile (see _fit_many); every child answers (so it is up: its imports
        # are done) and queues its own compiles.
        return min(self._procs.broadcast("request_compiles", keys), default=0)

    def wait_compiles(self, timeout_s=None) -> bool:
        """Block until no background compile is queued or running here and in every solver process
        (tests, and benchmarks that must measure a warm server)."""
        here = COMPILES.wait_idle(timeout_s)
        if self._procs is None:
            return here
        return here and all(self._procs.broadcast("wait_compiles", timeout_s))
