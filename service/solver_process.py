"""Solver work in child processes: ``fit_many`` runs outside the server's process, under its own GIL.

Why: the server's event loop (gRPC, decoding, encoding) and a solver thread share one interpreter
lock. The solver's NumPy steps around the compiled search (centring, checks, Procrustes, scores)
then time-slice the lock with the event loop: on the 2-core box a batch of 16 took about twice as
long inside the server as alone. Each call pays a round trip through the pipe: 0.3 ms for an empty
call on this machine, about 0.6 ms on a lone 64 x 16 fit. So ``--solver-process auto`` (the
default, on the CPU only: on a GPU the server process holds the device) sends every fit here but a
lone request while nothing else computes or waits, which stays in the solver thread
(:data:`l1pca.service.executor.PROCESS_MIN_BATCH`); ``on`` sends every fit. Measured side by side in
``bench/results/service_load.md`` (and ``docs/decisions/0006-solver-process-auto.md``).

:class:`SolverProcesses` keeps one child per solver thread (``--workers``), each holding up to
:data:`PIPELINE_DEPTH` calls: the batch after the running one waits in the child's pipe, so the child
never idles while the server's event loop gets round to forming the next batch (on 64 x 16 fits at
concurrency 64 that gap left the child idle about a fifth of the time). A call takes the least busy
child with room, sends it the arguments (pickled) and waits for its own answer (answers come in the
order of the calls); an exception raised in the child is raised again in the caller (as
:class:`RemoteError` when it cannot be pickled). A child that dies (killed, out of memory) fails the
call it was running and is replaced; a call that was waiting behind it runs again on the fresh one.
A hung child is killed by :meth:`SolverProcesses.replace_busy` when the server gives up on its batch.
"""
from __future__ import annotations

import logging
import multiprocessing
import pickle
import threading
import time
from multiprocessing.reduction import ForkingPickler

log = logging.getLogger("l1pca.service")


class RemoteError(RuntimeError):
    """An exception from a solver process that could not be sent back as itself."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")


class SolverProcessDied(RuntimeError):
    """The solver process ended while it held a call (killed, out of memory, or replaced).
    ``started``: whether it had begun this call (else it was waiting behind another)."""

    def __init__(self, message: str, *, started: bool = True):
        super().__init__(message)
        self.started = started


def _request_compiles(keys):
    """Queue these programs for a background compile in this process (the warm-up)."""
    from l1pca.kernels.compile_queue import COMPILES

    return sum(COMPILES.request(key) for key in keys)


def _wait_compiles(timeout_s=None):
    from l1pca.kernels.compile_queue import COMPILES

    return COMPILES.wait_idle(timeout_s)


def _child_main(conn, preload=(), jax_threads=None, compile_cache=None, events=None):
    """A solver process: answer ``(op, args, kwargs)`` messages until the pipe closes. ``events``
    (a multiprocessing queue) hears this process's background compiles, for the server's log and
    metrics. With
    ``compile_cache`` (``(directory, max_bytes)``) JAX keeps its programs there, as the server does
    (:func:`l1pca.service.jax_setup.use_compile_cache`); with ``jax_threads``, JAX's CPU pool is sized
    first (:func:`l1pca.service.jax_setup.size_jax_pool`)."""
    import importlib

    from .jax_setup import size_jax_pool, use_compile_cache

    if compile_cache is not None:
        use_compile_cache(compile_cache)
    if jax_threads is not None:
        size_jax_pool(jax_threads)
    for name in preload:  # before any thread of the child imports it lazily (a half-imported module)
        importlib.import_module(name)
    from l1pca.kernels.compile_queue import COMPILES, compiled_buckets
    from l1pca.kernels.fitting import fit_many

    from .warmup import run_warm_up

    if events is not None:
        COMPILES.add_listener(events.put)
    import atexit

    from l1pca.kernels.compile_queue import close_workers

    atexit.register(close_workers)
    ops = {"fit_many": fit_many, "warm_up": run_warm_up, "compiled": compiled_buckets,
           "request_compiles": _request_compiles, "wait_compiles": _wait_compiles,
           "ping": lambda: True}
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


PIPELINE_DEPTH = 2
"""Calls a solver process holds at once: the one it computes and the next, already in its pipe, so
that it starts the next batch the moment it sends an answer, not after the server's event loop has
taken the answer in and formed another batch (the server sends only full batches ahead,
:class:`l1pca.service.batcher.Batcher`'s ``standby_batches``)."""


class _Child:
    """One solver process and its pipe. Calls are answered in the order they were sent; up to
    :data:`PIPELINE_DEPTH` callers may wait on it, each for its own answer."""

    def __init__(self, ctx, preload, jax_threads=None, compile_cache=None, events=None):
        self.conn, child_end = ctx.Pipe()
        self.process = ctx.Process(target=_child_main,
                                   args=(child_end, preload, jax_threads, compile_cache, events),
                                   daemon=True, name="l1pca-solver")
        self.process.start()
        child_end.close()
        self.inflight = 0  # calls taken and not given back (kept by SolverProcesses, under its lock)
        self._send_lock = threading.Lock()
        self._turn = threading.Condition()
        self._sent = 0  # calls sent (tickets handed out)
        self.delivered = 0  # calls written to the pipe in full
        self._answered = 0  # answers read
        self._answered_at = 0.0  # when the last answer was read
        self._dead = False

    def call(self, op, args, kwargs, on_start=None):
        """``(value, started)``: the op's result and the ``time.perf_counter()`` at which the child
        could start it (the later of its sending and the answer to the call before it).
        ``on_start(started)`` is called as soon as that time is known (the caller's turn came)."""
        # Pickled before taking a ticket: arguments that cannot be pickled raise here and leave no
        # ticket that no answer would ever come for.
        message = ForkingPickler.dumps((op, args, kwargs))
        try:
            with self._send_lock:
                ticket, self._sent = self._sent, self._sent + 1
                sent_at = time.perf_counter()
                self.conn.send_bytes(message)
                self.delivered += 1
        except (OSError, ValueError) as exc:  # the pipe is closed: the child died or was killed
            self._mark_dead()
            raise SolverProcessDied(f"the solver process (pid {self.process.pid}) is gone",
                                    started=False) from exc
        with self._turn:
            while self._answered != ticket and not self._dead:
                self._turn.wait()
            started = max(sent_at, self._answered_at)
            if on_start is not None and not self._dead:
                on_start(started)
            if self._dead:  # it died before it reached this call
                raise SolverProcessDied(f"the solver process (pid {self.process.pid}) ended before "
                                        "the call", started=False)
            try:
                ok, value = self.conn.recv()
            except (EOFError, OSError) as exc:  # the child died (or was killed) with the call
                self._mark_dead_locked()
                self.process.join(1.0)
                raise SolverProcessDied(
                    f"the solver process (pid {self.process.pid}) ended during the call "
                    f"(exit code {self.process.exitcode})", started=True) from exc
            self._answered += 1
            self._answered_at = time.perf_counter()
            self._turn.notify_all()
        if ok:
            return value, started
        raise value

    def _mark_dead(self):
        with self._turn:
            self._mark_dead_locked()

    def _mark_dead_locked(self):
        self._dead = True
        self._turn.notify_all()
        self.conn.close()

    def kill(self, *, close_pipe=True):
        """End the child. ``close_pipe=False`` while another thread waits on the pipe: it sees the
        end of file and closes it itself."""
        if self.process.is_alive():
            self.process.kill()
        if close_pipe:
            self.conn.close()


class SolverProcesses:
    """``count`` solver processes, each holding up to ``depth`` calls (answered in order).

    Parameters
    ----------
    count : int
        Children to keep (the solver thread count).
    preload : tuple of str
        Modules each child imports first (``l1pca.kernels.bitflip_jax`` for the JAX backend).
    depth : int
        Calls one child may hold at once (:data:`PIPELINE_DEPTH`); a call waits for a child with
        room.
    jax_threads : int, optional
        Threads of JAX's CPU backend in each child (None: XLA's default, one per CPU).
    compile_cache : (str, int), optional
        ``(directory, max_bytes)`` of JAX's persistent compilation cache in each child (None: none).
    on_compile : callable, optional
        ``on_compile(CompileEvent)`` for each background compile a child queues or finishes
        (:mod:`l1pca.kernels.compile_queue`), called from a reader thread of this process.
    """

    def __init__(self, count: int, preload=(), depth: int = PIPELINE_DEPTH, jax_threads=None,
                 compile_cache=None, on_compile=None):
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a threaded server
        self._events = None
        if on_compile is not None:
            self._events = self._ctx.Queue()
            threading.Thread(target=self._read_events, args=(self._events, on_compile),
                             name="l1pca-compile-events", daemon=True).start()
        self._preload = tuple(preload)
        self._jax_threads = jax_threads
        self._compile_cache = compile_cache
        self.depth = int(depth)
        self._cond = threading.Condition()
        self._closed = False
        self._children = [self._new_child() for _ in range(int(count))]
        self.calls = 0  # calls taken by call_timed (each attempt; counted in _take), for tests

    def call(self, op: str, *args, **kwargs):
        """Run ``op`` (``"fit_many"``, ``"warm_up"``, ``"compiled"``, ``"request_compiles"``,
        ``"wait_compiles"`` or ``"ping"``) in the least busy child with room; its result or
        exception."""
        return self.call_timed(op, *args, **kwargs)[0]

    def call_timed(self, op: str, *args, on_start=None, **kwargs):
        """``(result, started)`` of ``op``: ``started`` is the ``time.perf_counter()`` at which the
        child could start it (a call may wait behind the one before it); ``on_start(started)``, if
        given, hears it as soon as it is known. A call the child never started, because the child
        ended first (killed with a hung call ahead of it), runs again on another child (and
        ``on_start`` hears the new start)."""
        for attempt in range(2):
            child = self._take()
            try:
                return child.call(op, args, kwargs, on_start)
            except SolverProcessDied as exc:
                self._replace(child)
                if exc.started or attempt:
                    raise
            finally:
                self._give_back(child)
        raise AssertionError("unreachable")

    def broadcast(self, op: str, *args, **kwargs):
        """Run ``op`` in every child at once (warm-up: each child compiles its own programs)."""
        with self._cond:
            children = list(self._children)
            for child in children:
                child.inflight += 1
        results, errors = [], []

        def one(child):
            try:
                results.append(child.call(op, args, kwargs)[0])
            except SolverProcessDied as exc:
                self._replace(child)
                errors.append(exc)
            except Exception as exc:  # noqa: BLE001 - raised below
                errors.append(exc)
            finally:
                self._give_back(child)

        threads = [threading.Thread(target=one, args=(c,), name="l1pca-solver-broadcast")
                   for c in children]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results

    def replace_busy(self):
        """Kill the children that hold a call now (a hung solver) and start fresh ones. Calls queued
        behind the hung one run again on the fresh children."""
        with self._cond:
            busy = [c for c in self._children if c.inflight > 0]
            self._children = [c for c in self._children if c.inflight == 0]
            if not self._closed:
                self._children += [self._new_child() for _ in busy]
            self._cond.notify_all()
        for child in busy:
            child.kill(close_pipe=False)  # its callers are waiting on the pipe
        return len(busy)

    def close(self):
        with self._cond:
            self._closed = True
            children, self._children = self._children, []
            self._cond.notify_all()
        for child in children:
            child.kill(close_pipe=child.inflight == 0)
        if self._events is not None:
            self._events.put(None)  # ends the reader thread

    # -- internals ------------------------------------------------------------------------------
    def _new_child(self) -> _Child:
        return _Child(self._ctx, self._preload, self._jax_threads, self._compile_cache, self._events)

    @staticmethod
    def _read_events(events, on_compile):
        while True:
            try:
                event = events.get()
            except (EOFError, OSError, ValueError):  # the queue was closed at shutdown
                return
            if event is None:
                return
            if event.kind != "queued":  # the child's own log is not the server's: say it here
                from l1pca.kernels.compile_queue import describe

                log.info("solver process: %s the JAX program %s in %.2f s%s", event.kind,
                         describe(event.key), event.seconds, f" ({event.error})" if event.error else "")
            try:
                on_compile(event)
            except Exception:  # noqa: BLE001 - a metrics bug must not stop the reader
                log.exception("compile event listener failed")

    def _take(self) -> _Child:
        with self._cond:
            while True:
                if self._closed:
                    raise SolverProcessDied("the solver processes are shut down", started=False)
                room = [c for c in self._children if c.inflight < self.depth]
                if room:
                    child = min(room, key=lambda c: c.inflight)
                    child.inflight += 1
                    self.calls += 1
                    return child
                self._cond.wait(1.0)

    def _give_back(self, child: _Child):
        with self._cond:
            child.inflight -= 1
            self._cond.notify_all()

    def _replace(self, child: _Child):
        """A child ended during a call: start another in its place (once, whichever of its callers
        gets here first; not when it was killed on purpose and already replaced)."""
        with self._cond:
            if child not in self._children:
                return
            self._children.remove(child)
            if not self._closed:
                self._children.append(self._new_child())
            self._cond.notify_all()
        child.kill(close_pipe=False)  # closed by its call already
        log.error("solver process %s ended (exit code %s); started another", child.process.pid,
                  child.process.exitcode)
