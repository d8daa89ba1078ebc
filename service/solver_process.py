"""Solver work in child processes: ``fit_many`` runs outside the server's process, under its own GIL.

Why: the server's event loop (gRPC, decoding, encoding) and a solver thread share one interpreter
lock. The solver's NumPy steps around the compiled search (centring, checks, Procrustes, scores)
then time-slice the lock with the event loop: on the 2-core box a batch of 16 took about twice as
long inside the server as alone. Side by side (``bench/service_load.py``, 64 x 16, K=2), a server
with ``--solver-process on`` answered 12-30% more batched requests per second at concurrency 16 to
256 in four of five runs (12% fewer in one run with six servers on the box), and each call pays the
round trip: 0.3 ms for an empty call on this machine, about 0.6 ms on a lone 64 x 16 fit (3.2
against 2.6 ms). Off by default; ``auto`` turns it on only while the solver runs on the CPU (on a
GPU the server process holds the device, and a second process would have to share its memory).

:class:`SolverProcesses` keeps one child per solver thread (``--workers``). A call takes an idle
child, sends it the arguments (pickled over a pipe) and waits for the answer; an exception raised in
the child is raised again in the caller (as :class:`RemoteError` when it cannot be pickled). A child
that dies (killed, out of memory) fails the call it was running and is replaced; a hung one is
killed by :meth:`SolverProcesses.replace_busy` when the server gives up on its batch.
"""
from __future__ import annotations

import logging
import multiprocessing
import pickle
import queue
import threading

log = logging.getLogger("l1pca.service")


class RemoteError(RuntimeError):
    """An exception from a solver process that could not be sent back as itself."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")


class SolverProcessDied(RuntimeError):
    """The solver process ended while it held a call (killed, out of memory, or replaced)."""


def _child_main(conn, preload=()):
    """A solver process: answer ``(op, args, kwargs)`` messages until the pipe closes."""
    import importlib

    for name in preload:  # before any thread of the child imports it lazily (a half-imported module)
        importlib.import_module(name)
    from l1pca.kernels.fitting import fit_many

    from .runner import compiled_buckets, run_warm_up

    ops = {"fit_many": fit_many, "warm_up": run_warm_up, "compiled": compiled_buckets}
    while True:
        try:
            op, args, kwargs = conn.recv()
        except (EOFError, OSError):  # the server closed the pipe or exited
            return
        try:
            reply = (True, ops[op](*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
            reply = (False, exc)
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError):
            exc = reply[1] if not reply[0] else TypeError("the result could not be pickled")
            conn.send((False, RemoteError(type(exc).__name__, str(exc))))


class _Child:
    def __init__(self, ctx, preload):
        self.conn, child_end = ctx.Pipe()
        self.process = ctx.Process(target=_child_main, args=(child_end, preload), daemon=True,
                                   name="l1pca-solver")
        self.process.start()
        child_end.close()

    def call(self, op, args, kwargs):
        try:
            self.conn.send((op, args, kwargs))
            ok, value = self.conn.recv()
        except (EOFError, OSError) as exc:  # the child died (or was killed) with the call
            self.process.join(1.0)
            self.conn.close()
            raise SolverProcessDied(
                f"the solver process (pid {self.process.pid}) ended during the call "
                f"(exit code {self.process.exitcode})") from exc
        if ok:
            return value
        raise value

    def kill(self, *, close_pipe=True):
        """End the child. ``close_pipe=False`` while another thread waits on the pipe: it sees the
        end of file and closes it itself."""
        if self.process.is_alive():
            self.process.kill()
        if close_pipe:
            self.conn.close()


class SolverProcesses:
    """``count`` solver processes, each serving one call at a time.

    Parameters
    ----------
    count : int
        Children to keep (the solver thread count: a call never waits for a child).
    preload : tuple of str
        Modules each child imports first (``l1pca.kernels.bitflip_jax`` for the JAX backend).
    """

    def __init__(self, count: int, preload=()):
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a threaded server
        self._preload = tuple(preload)
        self._lock = threading.Lock()
        self._idle: queue.Queue[_Child] = queue.Queue()
        self._busy: set[_Child] = set()
        self._closed = False
        for _ in range(int(count)):
            self._idle.put(_Child(self._ctx, self._preload))

    def call(self, op: str, *args, **kwargs):
        """Run ``op`` (``"fit_many"``, ``"warm_up"`` or ``"compiled"``) in an idle child; its result
        or exception."""
        child = self._take()
        try:
            return child.call(op, args, kwargs)
        except SolverProcessDied:
            child = self._replace(child)
            raise
        finally:
            self._give_back(child)

    def broadcast(self, op: str, *args, **kwargs):
        """Run ``op`` in every child at once (warm-up: each child compiles its own programs)."""
        with self._lock:
            count = self._idle.qsize() + len(self._busy)
        results, errors = [], []

        def one():
            try:
                results.append(self.call(op, *args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - raised below
                errors.append(exc)

        threads = [threading.Thread(target=one, name="l1pca-solver-broadcast") for _ in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results

    def replace_busy(self):
        """Kill the children that hold a call now (a hung solver) and start fresh ones."""
        with self._lock:
            busy, self._busy = list(self._busy), set()
        for child in busy:
            child.kill(close_pipe=False)  # its caller is waiting on the pipe
            if not self._closed:
                self._idle.put(_Child(self._ctx, self._preload))
        return len(busy)

    def close(self):
        with self._lock:
            self._closed = True
            busy = list(self._busy)
            self._busy = set()
        for child in busy:
            child.kill(close_pipe=False)
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                break

    # -- internals ------------------------------------------------------------------------------
    def _take(self) -> _Child:
        while True:
            if self._closed:
                raise SolverProcessDied("the solver processes are shut down")
            try:
                child = self._idle.get(timeout=1.0)
            except queue.Empty:
                continue
            with self._lock:
                self._busy.add(child)
            return child

    def _give_back(self, child: _Child | None):
        with self._lock:
            if child not in self._busy:  # killed by replace_busy: its replacement is queued already
                return
            self._busy.discard(child)
        if self._closed:
            child.kill()
        else:
            self._idle.put(child)

    def _replace(self, child: _Child) -> _Child | None:
        """A child died during a call: start another in its place (None when it was killed on
        purpose and already replaced)."""
        with self._lock:
            if child not in self._busy:
                return None
            self._busy.discard(child)
        child.kill(close_pipe=False)  # closed by its call already
        log.error("solver process %s ended (exit code %s); starting another", child.process.pid,
                  child.process.exitcode)
        if self._closed:
            return None
        fresh = _Child(self._ctx, self._preload)
        with self._lock:
            self._busy.add(fresh)
        return fresh
