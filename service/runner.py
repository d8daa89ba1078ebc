"""Where the solver runs: backend and device selection, batched fits, CPU fallback, warm-up.

The service does no arithmetic: a batch of fit requests becomes one
:func:`l1pca.kernels.fitting.fit_many` call in a thread pool (never on the event loop).

* Backend: ``"auto"`` resolves once, at start, to a backend that batches: JAX on a usable GPU, else
  CuPy on a GPU, else JAX on the CPU (logged, and exported in the ``l1pca_build_info`` metric). The
  backend is fixed for the life of the server, so an answer never depends on which requests shared
  its batch (the kernels' own ``"auto"`` picks NumPy or JAX by batch size, and L1-BF's answer can
  differ between the two in the last bits, hence in the local optimum it ends on). One exception,
  by K alone (part of the batch key, so still never by batch-mates): with ``"auto"`` on the CPU,
  K >= 3 runs on NumPy, as fast or faster than JAX there on every bucket measured
  (:data:`l1pca.kernels.backends.JAX_CPU_MAX_COMPONENTS`).
* JAX compiles one program per stacked shape; the kernels pad a batch to a power of two, and
  :meth:`SolverRunner.warm_up` compiles those sizes (:func:`batch_ladder`) for the common shape
  buckets before the server reports SERVING.
* A device failure at run time (out of memory, a CUDA error) re-runs that batch on the CPU (NumPy)
  and counts it in ``l1pca_cpu_fallback_total``. Without a GPU the path is exercised by fault
  injection (``L1PCA_FAULT_INJECT=gpu_oom``, tests only).
* A bad matrix that only the solver can detect (``exact`` on a problem too large) fails alone: a
  batch that raises ``ValueError`` is re-run one request at a time. A batch that raises anything
  else (a solver bug) fails its own requests (INTERNAL) and no other batch.
* Solver processes (``--solver-process``): each solver thread hands its ``fit_many`` call to a
  child process (:mod:`l1pca.service.solver_process`), so that the solver's Python steps do not
  share the event loop's interpreter lock; everything else here (backend choice, fallbacks, fault
  injection, timeouts) stays in the server process. ``on``: every call; ``auto`` (the default; on
  the CPU only): every call but a lone request while nothing else computes or waits, which runs in
  the solver thread: it skips the pipe's round trip, and with nothing else to do the event loop has
  little need of the lock.
* JAX's CPU thread pool (``--solver-threads``, default 1) is sized before JAX starts, here and in
  each solver process (:func:`l1pca.kernels.backends.init_jax_cpu`): the batched programs are loops
  of small operations that a larger pool spends its time handing between threads.
* A hung worker (a solver call past ``--solve-timeout-s``) is abandoned: the server fails its batch
  with UNAVAILABLE and :meth:`SolverRunner.replace_workers` starts a fresh thread pool (counted in
  ``l1pca_worker_restarts_total``); Python cannot kill a thread, so the hung one is left to end on its
  own. A pool that can no longer take work (shut down under us) is replaced the same way at the next
  submission.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from l1pca.kernels import backends
from l1pca.kernels.fitting import fit_many
from l1pca.kernels.solve import compiled_buckets

from .errors import InvalidArgument

log = logging.getLogger("l1pca.service")

FAULT_INJECT_ENV = "L1PCA_FAULT_INJECT"
"""Tests only. Comma-separated: ``gpu_oom`` (every batch's first attempt fails like a GPU out of
memory), ``internal_seed=N`` (a solver call holding a request with seed N raises an unexpected
error), ``hang_seed=N`` (a solver call holding a request with seed N blocks until the server stops:
a hung worker)."""

FAULTS = ("gpu_oom", "internal_seed", "hang_seed")


class FitKey(NamedTuple):
    """Requests with equal keys share one solver call."""

    method: str
    n_components: int
    n_init: int
    center: str | None
    contamination: object
    bucket: tuple[int, int]


class InjectedDeviceFault(RuntimeError):
    """Stands for a GPU failure (out of memory) in tests."""


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


def _use_compile_cache(cache):
    """JAX's persistent compilation cache in this process (``cache``: ``(directory, max_bytes)``, or
    None for none), logged; a directory that cannot be used leaves it off, with a warning, and the
    server compiles as without it."""
    if cache is None:
        return None
    directory, max_bytes = cache
    try:
        path = backends.use_compile_cache(directory, max_bytes=max_bytes)
    except (OSError, ValueError, ImportError) as exc:
        log.warning("JAX compile cache off: cannot use %s (%s: %s); warm-up compiles every program",
                    directory, type(exc).__name__, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - a JAX without these settings: serve without the cache
        log.warning("JAX compile cache off: JAX refused its settings (%s: %s)",
                    type(exc).__name__, exc)
        return None
    log.info("JAX compile cache: %s (up to %d MiB)", path, max_bytes // 2**20)
    return path


def _size_jax_pool(threads):
    """:func:`l1pca.kernels.backends.init_jax_cpu` in this process, logged; a JAX that fails to
    start is left to the backend choice to report."""
    try:
        sized = backends.init_jax_cpu(threads)
    except Exception as exc:  # noqa: BLE001 - e.g. a broken GPU plugin: select_backend decides
        log.warning("JAX's CPU pool not sized: JAX did not start (%s: %s)", type(exc).__name__, exc)
        return
    log.info("JAX's CPU pool: %s", f"{threads} thread(s)" if sized else
             "XLA's default, a thread per CPU" if threads is None else
             f"not resized (JAX already started in this process, at most {threads} CPU(s) here, "
             "or not Linux)")


def batch_ladder(max_batch_size):
    """Stacked batch sizes JAX runs for batches of up to ``max_batch_size`` requests: the powers of
    two from 1 (:func:`l1pca.kernels.solve.jax_batch_size` pads a batch to the next one)."""
    sizes, b = [1], 1
    while b < max_batch_size:
        b *= 2
        sizes.append(b)
    return tuple(sizes)


def select_backend(requested: str):
    """``(backend, device, on_gpu)`` for the ``--backend`` flag; see the module docstring."""
    gpus = backends.gpu_backends()
    if requested == "auto":
        backend = "jax" if "jax" in gpus or not gpus else "cupy"
    else:
        backend = requested
        if backend == "cupy" and "cupy" not in gpus:
            raise ValueError("--backend=cupy needs CuPy and a usable CUDA GPU; none is usable here "
                             "(use --backend=auto)")
    on_gpu = backend in gpus
    device = backends.device_description() if on_gpu else "cpu"
    return backend, device, on_gpu


def is_device_failure(exc: BaseException) -> bool:
    """A GPU failure worth a CPU re-run: out of memory, CUDA runtime/driver errors, XLA OOM."""
    if isinstance(exc, InjectedDeviceFault):
        return True
    name = type(exc).__name__
    if name in ("OutOfMemoryError", "CUDARuntimeError", "CUDADriverError", "CUBLASError",
                "CUSOLVERError"):
        return True
    text = str(exc)
    return name in ("XlaRuntimeError", "JaxRuntimeError") and any(
        s in text for s in ("RESOURCE_EXHAUSTED", "out of memory", "CUDA", "INTERNAL"))


def parse_fault_inject(spec: str | None):
    faults = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, _, value = part.partition("=")
        if name not in FAULTS:
            raise ValueError(f"{FAULT_INJECT_ENV}={spec!r}: unknown fault {name!r}")
        faults[name] = int(value) if value else True
    return faults


class SolverRunner:
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
    """

    def __init__(self, backend="auto", *, workers=1, max_batch_size=16, metrics=None,
                 fault_inject=None, sharded_min_rows=0, solver_process="auto", solver_threads=1,
                 compile_cache=None):
        jax_threads = int(solver_threads) or None
        if backend in ("auto", "jax"):  # before select_backend starts JAX to look for a GPU
            self.compile_cache = _use_compile_cache(compile_cache)
            _size_jax_pool(jax_threads)
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
        self.worker_restarts = 0
        self._pool_lock = threading.Lock()
        self._released = threading.Event()  # set at shutdown: ends injected hangs
        self._metrics = metrics
        self._faults = parse_fault_inject(fault_inject)
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
                if jax_here and self.compile_cache else None)
        # With solver processes, a thread per call a child can hold: the batch after the running one
        # waits in the child's pipe, not in this pool's queue.
        self.standby_batches = self.workers * (self._procs.depth - 1) if self._procs is not None else 0
        self._threads = self.workers + self.standby_batches
        self.executor = ThreadPoolExecutor(self._threads, thread_name_prefix="l1pca-solve")
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

    def shutdown(self):
        self._released.set()
        self.executor.shutdown(wait=False, cancel_futures=True)
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

    def _fit_many(self, mats, *args, clock: SolveClock, queued=False, **kwargs):
        """``fit_many`` in a solver process when the batch goes there, else in this thread;
        ``clock`` hears when it could start (in a child, after the call ahead); ``queued``: requests
        were waiting when the batch was handed over."""
        with self._pool_lock:
            self._active += 1
            alone = self._active == 1 and not queued
        try:
            if self._in_process(len(mats), alone=alone):
                clock.mark(None)  # in the child's pipe: not started until its turn comes
                return self._procs.call("fit_many", mats, *args, on_start=clock.mark, **kwargs)
            clock.mark(time.perf_counter())
            return fit_many(mats, *args, **kwargs)
        finally:
            with self._pool_lock:
                self._active -= 1

    # -- workers --------------------------------------------------------------------------------
    def submit(self, fn, *args):
        """``fn(*args)`` on a solver thread; a concurrent future. A pool that refuses work (shut
        down) is replaced once, and the work submitted to the new one."""
        pool = self.executor
        try:
            return pool.submit(fn, *args)
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            if self._released.is_set():
                raise
            self.replace_workers(f"the solver pool refused work ({exc})", pool=pool)
            return self.executor.submit(fn, *args)

    def replace_workers(self, reason, *, pool=None):
        """Swap in a fresh solver thread pool; the old one's threads are abandoned (a hung thread
        cannot be killed) and end when their call returns. ``pool``: replace only if still current
        (two callers noticing the same failure replace it once)."""
        with self._pool_lock:
            if pool is not None and pool is not self.executor:
                return False
            old, self.executor = self.executor, ThreadPoolExecutor(
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
        """Fit every ``(X, seed)`` of one batch; one FitResult or exception per payload.

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
                except (ValueError, TypeError) as again:
                    return self._one_by_one(key, payloads, "numpy", again)
            if isinstance(exc, (ValueError, TypeError)):
                return self._one_by_one(key, payloads, backend, exc)
            raise

    def _backend_for(self, method, n_components):
        if method != "bitflip":
            return "numpy"
        if self._auto_cpu and n_components > backends.JAX_CPU_MAX_COMPONENTS:
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
            except (ValueError, TypeError) as err:
                out.append(InvalidArgument(str(err)))
        return out

    def _attempt(self, key: FitKey, payloads, backend, *, inject, clock=None, queued=False):
        seeds = [seed for _, seed in payloads]
        if clock is None:
            clock = SolveClock()
        clock.mark(time.perf_counter())  # in this thread's hands (an injected hang counts as started)
        if inject and "gpu_oom" in self._faults:
            raise InjectedDeviceFault("out of memory allocating the batch (injected fault)")
        if "internal_seed" in self._faults and self._faults["internal_seed"] in seeds:
            raise RuntimeError("injected internal error")
        if "hang_seed" in self._faults and self._faults["hang_seed"] in seeds:
            self._released.wait(3600.0)  # a hung worker, until the server stops (bounded)
            raise RuntimeError("injected hang ended")
        mats = [X for X, _ in payloads]
        sharded = (self.sharded_min_rows > 0 and key.method == "bitflip" and backend != "numpy"
                   and max(X.shape[0] for X in mats) >= self.sharded_min_rows)
        results = self._fit_many(
            mats, key.n_components, method=key.method, center=key.center, n_init=key.n_init,
            seeds=seeds, contamination=key.contamination, backend=backend, clock=clock, queued=queued,
            **({"devices": "all"} if sharded else {}))
        if sharded and self._metrics is not None:
            self._metrics.sharded_fits.inc(len(mats))
        if self._metrics is not None:
            # From when the solver could start it: a batch sent ahead waits for the one before it.
            self._metrics.solve_duration.labels(results[0].backend, key.method).observe(
                time.perf_counter() - clock.started)
        return results

    # -- warm-up --------------------------------------------------------------------------------
    def warm_up(self, shapes, components, *, n_init, should_stop=lambda: False, threads=None):
        """Compile the solver for each (rows x cols) shape, each K and each batch size of the ladder
        (in every solver process when they are on: each compiles its own programs).

        The compiles are independent and CPU-bound, so they run on ``threads`` threads (default: the
        core count, at most 4). Blocks until done; the server calls it in a solver thread before it
        reports SERVING. Returns the number of solver calls made (in one solver process, plus
        those made in this process).
        """
        tasks = [(rows, cols, K, b, self._backend_for("bitflip", K))
                 for rows, cols in shapes for K in components if K <= min(rows, cols)
                 for b in (self.batch_sizes if self._backend_for("bitflip", K) == "jax" else (1,))]
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


def run_warm_up(tasks, *, n_init, should_stop=None, threads=None):
    """Run warm-up ``tasks`` ``(rows, cols, K, batch, backend)``: one ``fit_many`` of ``batch``
    random matrices each, on ``threads`` threads. Returns the number of calls made."""
    def one(task):
        rows, cols, K, b, backend = task
        if should_stop is not None and should_stop():
            return 0
        X = np.random.default_rng(rows * 7919 + cols).standard_normal((rows, cols))
        t0 = time.perf_counter()
        fit_many([X] * b, K, n_init=n_init, seeds=[0] * b, backend=backend)
        log.info("warm-up: %dx%d K=%d batch=%d in %.2f s", rows, cols, K, b, time.perf_counter() - t0)
        return 1

    threads = threads or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(threads, thread_name_prefix="l1pca-warmup") as pool:
        calls = sum(pool.map(one, tasks))
    release_freed_memory()
    return calls


def release_freed_memory() -> bool:
    """Give the memory the C allocator keeps after ``free`` back to the system (glibc's
    ``malloc_trim``; False where there is none). The compiles of a warm-up, on several threads,
    leave their scratch memory in per-thread arenas: after the default warm-up on the 2-core test
    box, the server process went from 0.84 to 0.39 GB resident and its solver process from 1.29 to
    0.72 GB (the compiled programs stay; the peak during warm-up is unchanged)."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False
