"""Compiles of the batched JAX programs in the background, so that no fit waits on the compiler.

JAX compiles one program per stacked shape (batch, padded rows, padded columns, K, starts and the
two search switches): 10-15 s each on a small CPU. With ``SolveOptions(compile="background")`` a
bucket whose program is not compiled yet runs at once on the host (NumPy, or CuPy on a GPU), and
its program is queued here; a single worker thread takes the queue in order, and the next bucket of
that shape runs on JAX. With a persistent compile cache the thread has a compile worker process
(:mod:`l1pca.kernels.compile_worker`, every thread at nice 19) compile the program into the cache
and only loads it here: compiling in the serving process held its interpreter lock and 2 cores for
seconds, and the cold server's p99 was 3.4x the warm one's (docs/decisions/0010). The answers do
not depend on which path computed them: both follow the same step rule
(:mod:`l1pca.kernels.flip_rule`), and the tests hold the signs and components of the two equal
across the switch.

One queue per process (:data:`COMPILES`), as jit's own cache is per process. Listeners
(:meth:`CompileQueue.add_listener`) hear each compile: the service logs it and counts it in its
metrics.
"""
from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
from typing import NamedTuple

import numpy as np

log = logging.getLogger("l1pca.kernels")


class CompileEvent(NamedTuple):
    """A program queued (``kind="queued"``) or compiled (``"compiled"``, or ``"failed"`` with the
    error): its bucket key and, when done, how long the compile took."""

    kind: str
    key: tuple  # (batch, rows, cols, K, starts, warm_start, pair_moves)
    seconds: float = 0.0
    error: str | None = None


def jax_batch_size(count):
    """Batch size the JAX path pads ``count`` matrices of one bucket to: the next power of two."""
    return 1 << (int(count) - 1).bit_length()


def program_key(count, bucket, n_components, n_init, warm_start=True, pair_moves=True):
    """The compile key of the batched program that ``count`` matrices of one padded ``bucket``
    (rows, cols) run with: ``(batch, rows, cols, K, starts, warm_start, pair_moves)``. The one place
    that builds it: ``solve``, the service's executor and its warm-up all ask here."""
    return (jax_batch_size(count), *bucket, int(n_components), int(n_init), bool(warm_start),
            bool(pair_moves))


def _compiled_keys():
    """The JAX path's record of the programs compiled in this process (a live set), found without
    importing JAX: empty when it was never imported. Another thread may be importing it right now;
    a half-initialised module has no record yet, and then nothing is compiled."""
    return getattr(sys.modules.get("l1pca.kernels.bitflip_jax"), "_COMPILED", ())


def compiled_buckets():
    """JAX programs compiled in this process: ``(batch, rows, cols, K, starts, warm_start,
    pair_moves)`` keys (empty when JAX was never used here)."""
    return frozenset(_compiled_keys())


def compiled(key) -> bool:
    """Whether this process holds the compiled program for ``key`` (without importing JAX)."""
    return tuple(key) in _compiled_keys()


def compile_bucket(key):
    """Compile the batched search for ``key`` by one call on zero matrices (they end at once)."""
    from .bitflip_jax import solve_bucket

    batch, rows, cols, K, starts, warm_start, pair_moves = key
    solve_bucket(np.zeros((batch, rows, cols)), np.zeros((batch, starts - 1, cols, K)), max_flips=1,
                 tol=1e-9, warm_start=warm_start, pair_moves=pair_moves)


class _CompileWorker:
    """:mod:`l1pca.kernels.compile_worker` as a child process, started on first use and again if it
    dies. One key at a time (the queue's single worker thread calls it)."""

    def __init__(self, directory, max_bytes):
        self.args = [sys.executable, "-m", "l1pca.kernels.compile_worker", directory, str(max_bytes)]
        self.proc = None

    def compile(self, key):
        import json
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True, bufsize=1)
        self.proc.stdin.write(json.dumps(list(key)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the compile worker ended (exit code {self.proc.wait()})")
        answer = json.loads(line)
        if not answer["ok"]:
            raise RuntimeError(answer["error"])

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_WORKERS: dict = {}


def compile_bucket_elsewhere(key):
    """Compile ``key`` in a :mod:`~l1pca.kernels.compile_worker` process, then load it here from the
    persistent cache (no compile in this process). Without a persistent cache there is nothing to
    load from, and this process compiles it itself (:func:`compile_bucket`)."""
    from .backends import compile_cache_in_use

    cache = compile_cache_in_use()
    if cache is None:
        return compile_bucket(key)
    worker = _WORKERS.get(cache)
    if worker is None:
        worker = _WORKERS[cache] = _CompileWorker(*cache)
    worker.compile(key)
    compile_bucket(key)  # traces, finds the program in the cache, loads it


def close_workers():
    """End the compile worker processes (at shutdown)."""
    for worker in _WORKERS.values():
        worker.close()


def _lower_priority():
    """The calling thread at the lowest CPU priority (Linux: a thread is a task with its own nice
    value), so that compiles take the CPU that fits leave over."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed
        pass


class CompileQueue:
    """Bucket keys waiting for their program, compiled one at a time by a worker thread: in a
    compile worker process when this process keeps a persistent compile cache (it then only loads
    the result), else in the thread itself."""

    def __init__(self, compile_fn=compile_bucket_elsewhere):
        self._compile = compile_fn
        self._lock = threading.Condition()
        self._pending: collections.OrderedDict = collections.OrderedDict()
        self._running = None
        self._worker = None
        self._listeners = []
        self.failed: dict = {}

    def add_listener(self, fn):
        """``fn(CompileEvent)`` after each compile, from the worker thread."""
        with self._lock:
            self._listeners.append(fn)

    def remove_listener(self, fn):
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def request(self, key) -> bool:
        """Queue ``key`` unless its program is compiled, queued, compiling or failed; True if queued."""
        key = tuple(key)
        with self._lock:
            if key in self._pending or key == self._running or key in self.failed or compiled(key):
                return False
            self._pending[key] = None
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="l1pca-compile", daemon=True)
                self._worker.start()
            listeners = list(self._listeners)
        log.info("queued the JAX program %s for a background compile; its fits run on the host "
                 "path until it is ready", describe(key))
        self._notify(listeners, CompileEvent("queued", key))
        return True

    @staticmethod
    def _notify(listeners, event):
        for fn in listeners:
            try:
                fn(event)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the compiles
                log.exception("compile listener failed")

    def pending(self) -> tuple:
        """Keys queued or compiling, in order."""
        with self._lock:
            return ((self._running,) if self._running is not None else ()) + tuple(self._pending)

    def wait_idle(self, timeout_s=None) -> bool:
        """Block until nothing is queued or compiling (tests, and a warm-up that waits)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while self._pending or self._running is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def cancel(self, timeout_s=None) -> bool:
        """Drop every queued compile and wait up to ``timeout_s`` for the running one to end (a
        process must not exit while XLA compiles in another thread: it aborts). True when idle."""
        with self._lock:
            self._pending.clear()
        return self.wait_idle(timeout_s)

    def _run(self):
        _lower_priority()
        while True:
            with self._lock:
                if not self._pending:
                    self._worker = None
                    self._lock.notify_all()
                    return
                key, _ = self._pending.popitem(last=False)
                self._running = key
            t0 = time.perf_counter()
            error = None
            try:
                self._compile(key)
            except Exception as exc:  # noqa: BLE001 - logged and remembered; the host path serves
                error = f"{type(exc).__name__}: {exc}"
            event = CompileEvent("compiled" if error is None else "failed", key,
                                 time.perf_counter() - t0, error)
            if error is None:
                log.info("compiled the JAX program %s in %.2f s", describe(key), event.seconds)
            else:
                log.warning("compiling the JAX program %s failed after %.2f s (%s); its shape stays "
                            "on the host path", describe(key), event.seconds, error)
            with self._lock:
                if error is not None:
                    self.failed[key] = error
                listeners = list(self._listeners)
            # Listeners hear it before the key leaves ``pending()``: whoever waits for the queue to be
            # idle finds every event delivered.
            self._notify(listeners, event)
            with self._lock:
                self._running = None
                self._lock.notify_all()


def describe(key):
    """A compile key in words, for logs: ``batch=4 64x16 K=2 starts=8``."""
    batch, rows, cols, K, starts, warm, pairs = key
    return f"batch={batch} {rows}x{cols} K={K} starts={starts}" + \
        ("" if warm and pairs else f" warm_start={warm} pair_moves={pairs}")


COMPILES = CompileQueue()
"""This process's queue (``solve`` puts buckets here with ``compile="background"``)."""
