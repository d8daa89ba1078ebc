"""Dynamic batching: concurrent requests with the same key go to the solver as one call.

A small class around per-key queues, in the manner of Ray Serve's ``@serve.batch``:

* :meth:`Batcher.submit` enqueues a payload under a key (requests that can share one solver call:
  same options and shape bucket) and waits on the request's own future;
* a batch of one key is flushed when it holds ``max_batch_size`` requests or its oldest request has
  waited ``max_delay_s`` -- and a solver slot is free: while every slot is busy requests keep queueing
  and join the next batch, which is where batching pays off under load;
* with ``flush_when_idle``, also at once when no batch is computing, unless recent batches showed
  that waiting gathers batch-mates (:class:`_IdleRule`): a lone client calling in a loop does not pay
  the delay (which halved its throughput), while a few clients in step still wait for each other;
* with ``standby_batches``, that many more batches may be handed to the solver while every slot is
  busy: they wait at the solver (a solver process's pipe) and start the moment a slot's batch ends.
  Full ones go ahead; a partial one keeps queueing for company, but with ``split_batches`` one as
  large as a batch of its key being computed goes ahead too ("ahead"), and a partial batch sent to
  an idle solver is split in two, the second half ahead: clients calling in step then form two
  batches that take turns at the solver instead of one that leaves it idle between rounds;
* when several keys are ready, the one whose oldest request has waited longest goes first;
* the batch function returns one result per payload (checked); an exception as a result fails only
  that request, an exception raised by the batch function fails every request of that batch and no
  other;
* backpressure: more than ``max_queue`` waiting requests -> :class:`Overloaded` at once; a request whose
  deadline passes while queued leaves the queue with :class:`DeadlineExceeded` and is never computed;
  a cancelled call leaves the queue at once.

Runs on one event loop; no locks. The batch function is awaited, and must itself keep heavy work off
the loop (the server runs the solver in a thread pool).
"""
from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import DeadlineExceeded, Overloaded, Unavailable

BatchFn = Callable[[Hashable, Sequence[Any]], Awaitable[Sequence[Any]]]


class _IdleRule:
    """Whether a partial batch may go at once while no batch computes, learned from the last batches.

    Flushing at once saves the lone request the delay, and costs nothing when nobody else was about
    to come; but a few clients in step (each sends its next request as soon as its answer comes)
    arrive a fraction of a millisecond apart, and flushing the first alone splits them into batches of
    1 and n - 1 (18% less throughput at 4 clients on the 2-core box, ``bench/results``). So each batch
    votes: after a flush at once, requests that arrived within ``window_s`` while it computed say
    that waiting would have gathered them (+1), none say it would not (-1); a batch that waited the
    whole delay from an idle solver votes +1 if it gathered company and -1 if it went alone (one that
    waited behind a busy solver says nothing about company). The score is kept in [-3, 3], and
    flushing at once is allowed while it is at most 0 (so at first).
    """

    LIMIT = 3

    def __init__(self, window_s: float):
        self.window_s = window_s
        self.score = 0
        self._probe: list | None = None  # [until, arrivals] after a flush at once

    def allows(self) -> bool:
        return self.score <= 0

    def arrived(self, now: float):
        if self._probe is not None and now <= self._probe[0]:
            self._probe[1] += 1

    def flushed(self, reason: str, size: int, now: float, head_came_to_idle: bool):
        if reason == "idle":
            self._probe = [now + self.window_s, 0]
        elif reason == "delay" and head_came_to_idle:
            self._vote(size > 1)

    def idle_batch_done(self):
        if self._probe is not None:
            self._vote(self._probe[1] > 0)
            self._probe = None

    def _vote(self, waiting_helps: bool):
        self.score = max(-self.LIMIT, min(self.LIMIT, self.score + (1 if waiting_helps else -1)))


@dataclass(eq=False)
class _Item:
    key: Hashable
    payload: Any
    future: asyncio.Future
    enqueued: float
    deadline: float | None
    abandoned: bool = False  # the caller stopped waiting (deadline, cancel): do not set its future
    taken: bool = False  # in a batch being computed
    dropped: bool = False  # left the queue uncomputed
    came_to_idle: bool = False  # no batch was computing when it arrived


@dataclass
class _Stats:
    batches: int = 0
    computed: int = 0
    dropped: dict = field(default_factory=lambda: collections.Counter())
    flushes: dict = field(default_factory=lambda: collections.Counter())  # by reason


class Batcher:
    """Queue requests per key and run them in batches.

    Parameters
    ----------
    run_batch : async callable(key, payloads) -> sequence of results
        One result (or an exception instance) per payload, in order.
    max_batch_size : int
        Most requests in one call (1 disables batching).
    max_delay_s : float
        Longest the oldest request of a key waits for company before its batch goes.
    max_queue : int
        Most requests waiting (all keys together); beyond it ``submit`` raises :class:`Overloaded`.
    max_concurrent_batches : int
        Batches computing at once (the solver's worker count).
    standby_batches : int
        Full batches that may be handed over beyond those, to wait at the solver for a free slot
        (0: none).
    split_batches : bool
        With standby batches: a partial batch for an idle solver goes as two halves, the second
        ahead, and a partial batch as large as one of its key being computed goes ahead too.
    flush_when_idle : bool
        Flush the oldest key at once, whatever its size, while no batch is computing and recent
        batches did not show that waiting gathers batch-mates (:class:`_IdleRule`).
    metrics : ServiceMetrics, optional
        Records queue depth, queue wait, batch size, flush reasons and dropped requests.
    """

    def __init__(self, run_batch: BatchFn, *, max_batch_size: int, max_delay_s: float, max_queue: int,
                 max_concurrent_batches: int = 1, standby_batches: int = 0,
                 flush_when_idle: bool = False, split_batches: bool = False, metrics=None):
        if max_batch_size < 1 or max_queue < 1 or max_concurrent_batches < 1 or max_delay_s < 0 \
                or standby_batches < 0:
            raise ValueError("max_batch_size, max_queue and max_concurrent_batches must be >= 1, "
                             "max_delay_s and standby_batches >= 0")
        self._run_batch = run_batch
        self.max_batch_size = int(max_batch_size)
        self.max_delay_s = float(max_delay_s)
        self.max_queue = int(max_queue)
        self.flush_when_idle = bool(flush_when_idle)
        self.split_batches = bool(split_batches) and standby_batches > 0
        self._metrics = metrics
        self._handed: list[tuple[Hashable, int]] = []  # (key, size) of batches not yet finished
        self._idle_rule = _IdleRule(self.max_delay_s)
        self._pending: dict[Hashable, collections.deque[_Item]] = {}
        self._depth = 0
        self._slots = int(max_concurrent_batches)
        self._standby = int(standby_batches)
        self._wakeup = asyncio.Event()
        self._draining = False  # flush at once, without waiting for company
        self._closing = False  # and take no new work
        self._dispatcher: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self.stats = _Stats()

    # -- public ---------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a batch)."""
        return self._depth

    def start(self):
        if self._dispatcher is None:
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch(),
                                                                      name="l1pca-batcher")

    async def submit(self, key: Hashable, payload: Any, *, timeout_s: float | None = None):
        """Enqueue ``payload`` under ``key`` and return its result when its batch has run.

        ``timeout_s`` is the time left to the caller's deadline: if it passes while the request is
        still queued, the request leaves the queue uncomputed and :class:`DeadlineExceeded` is raised.
        """
        if self._closing:
            raise Unavailable("the server is shutting down and takes no new work; retry on another "
                              "replica")
        if self._depth >= self.max_queue:
            raise Overloaded(f"the queue is full ({self.max_queue} requests waiting); retry with "
                             "backoff")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        item = _Item(key, payload, loop.create_future(), now,
                     None if timeout_s is None else now + max(0.0, timeout_s))
        item.came_to_idle = self._computing == 0
        self._pending.setdefault(key, collections.deque()).append(item)
        self._idle_rule.arrived(now)
        self._set_depth(self._depth + 1)
        self._wakeup.set()
        # One timer per request fails it at its deadline (_deadline_passed), and the caller awaits
        # the request's own future: asyncio.wait_for over a shield built three futures, a timer and
        # five callbacks per request (docs/decisions/0008-request-path-per-call-work.md).
        timer = None if item.deadline is None else \
            loop.call_at(item.deadline, self._deadline_passed, item)
        try:
            return await item.future
        except asyncio.CancelledError:  # the call was cancelled, or gRPC ended it at its deadline
            late = item.deadline is not None and time.monotonic() >= item.deadline
            self._leave(item, "deadline" if late else "cancelled")
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def drain(self):
        """Flush queued requests at once from now on (shutdown: do not wait for batches to fill)."""
        self._draining = True
        self._wakeup.set()

    async def close(self, timeout_s: float | None = None):
        """Take no new work, flush what is queued at once, wait for running batches."""
        self._draining = self._closing = True
        self._wakeup.set()
        if self._dispatcher is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._dispatcher), timeout_s)
            except asyncio.TimeoutError:
                self._dispatcher.cancel()
        if self._running:
            await asyncio.wait(set(self._running), timeout=timeout_s)

    # -- internals ------------------------------------------------------------------------------
    @property
    def _computing(self) -> int:
        """Batches handed to ``run_batch`` and not finished."""
        return len(self._handed)

    def _set_depth(self, depth):
        self._depth = depth
        if self._metrics is not None:
            self._metrics.queue_depth.set(depth)

    def _deadline_passed(self, item: _Item):
        """The caller's deadline came: its request fails with :class:`DeadlineExceeded`, and leaves
        the queue uncomputed if it is still there (a batch computing it ignores it)."""
        if item.future.done():  # answered, or already dropped by _expire
            return
        waited = time.monotonic() - item.enqueued
        if self._leave(item, "deadline"):
            message = (f"the deadline passed after {waited:.3f} s in the queue; the request was not "
                       "computed (allow a longer deadline or send less load)")
        else:
            message = f"the deadline passed after {waited:.3f} s while computing"
        item.future.set_exception(DeadlineExceeded(message))
        item.future.exception()  # mark retrieved: the caller may already be gone

    def _leave(self, item: _Item, reason: str) -> bool:
        """The caller stopped waiting. True when the request was still queued (and now is not)."""
        item.abandoned = True
        if item.taken or item.dropped:
            return item.dropped
        item.dropped = True
        queue = self._pending[item.key]
        queue.remove(item)
        if not queue:
            del self._pending[item.key]
        self._set_depth(self._depth - 1)
        self.stats.dropped[reason] += 1
        if self._metrics is not None:
            self._metrics.queue_dropped.labels(reason).inc()
        self._wakeup.set()
        return True

    async def _dispatch(self):
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            self._handed.append((batch[0], len(batch[1])))
            task = asyncio.get_running_loop().create_task(self._run(*batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self):
        """Wait for a ready key; return ``(key, items, reason)``, or None when closing with nothing
        left."""
        while True:
            self._wakeup.clear()
            now = time.monotonic()
            slot_free = self._computing < self._slots
            if slot_free:
                self._expire(now)
            if self._computing < self._slots + self._standby:
                key, reason = self._ready_key(now)
                if key is not None:
                    self.stats.flushes[reason] += 1
                    if self._metrics is not None:
                        self._metrics.batch_flushes.labels(reason).inc()
                    waiting = len(self._pending[key])
                    items = self._take(key, self._split_size(waiting, reason))
                    # The company the batch gathered, split or not.
                    self._idle_rule.flushed(reason, min(waiting, self.max_batch_size), now,
                                            items[0].came_to_idle)
                    return key, items, reason
            if self._closing and not self._pending:
                return None
            timeout = None
            # Else only a batch's end (or, for a standby batch, a new request) wakes it; a deadline
            # wakes it through the request's own timer (_deadline_passed).
            if slot_free:
                heads = [q[0].enqueued for q in self._pending.values()]
                wake = [t + self.max_delay_s for t in heads]
                timeout = max(0.0, min(wake) - now) if wake else None
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def _expire(self, now):
        """Requests whose deadline passed while queued leave uncomputed before a batch is taken
        (their timers may not have run yet in this turn of the loop)."""
        for item in [it for q in self._pending.values() for it in q
                     if it.deadline is not None and it.deadline <= now]:
            self._deadline_passed(item)

    def _ready_key(self, now):
        """``(key, reason)`` of the batch to flush now (the oldest head first), or ``(None, None)``."""
        idle = self.flush_when_idle and self._computing == 0 and self._idle_rule.allows()
        standby = self._computing >= self._slots  # a standby batch: full, or "ahead" (below)
        best = None
        for key, queue in self._pending.items():
            head = queue[0].enqueued
            if len(queue) >= self.max_batch_size:
                reason = "full"
            elif standby:
                # As many as a batch of its key being computed: the other half of a pipeline of
                # batches that take turns at the solver (see _split_size).
                computing = [size for k, size in self._handed if k == key] \
                    if self.split_batches else None
                if not computing or len(queue) < min(computing):
                    continue
                reason = "ahead"
            elif now - head >= self.max_delay_s:
                reason = "delay"
            elif self._draining:
                reason = "drain"
            elif idle:
                reason = "idle"
            else:
                continue
            if best is None or head < best[0]:
                best = (head, key, reason)
        return (None, None) if best is None else best[1:]

    def _split_size(self, waiting, reason):
        """How many of the ``waiting`` requests of a key to take: all that fit, but half of a
        partial batch that goes to an idle solver with a standby place.

        Clients that send their next request when their answer comes all wait on one batch, and
        the solver idles while its answers go out and the next requests come in and gather (43% busy
        at 4 clients on the 2-core box). Split, the other half goes ahead at once, to wait at the
        solver; when the first half's answers come back, its clients' next requests form a batch as
        large while the second half computes, and go ahead in turn ("ahead" in _ready_key): the two
        halves take turns and the solver does not idle (4 clients: 1.4x the throughput, side by side).
        With the queue longer than a batch, batches are full and nothing is split."""
        if self.split_batches and self._computing == 0 and reason in ("idle", "delay") \
                and waiting >= 2:
            return waiting // 2
        return min(self.max_batch_size, waiting)

    def _take(self, key, count):
        queue = self._pending[key]
        items = [queue.popleft() for _ in range(count)]
        if not queue:
            del self._pending[key]
        self._set_depth(self._depth - len(items))
        now = time.monotonic()
        for item in items:
            item.taken = True
            if self._metrics is not None:
                self._metrics.queue_wait.observe(now - item.enqueued)
        return items

    async def _run(self, key, items, reason):
        try:
            self.stats.batches += 1
            self.stats.computed += len(items)
            if self._metrics is not None:
                self._metrics.batch_size.observe(len(items))
            try:
                results = await self._run_batch(key, [it.payload for it in items])
                if len(results) != len(items):
                    raise RuntimeError(f"the batch function returned {len(results)} results for "
                                       f"{len(items)} inputs")
            except Exception as exc:  # the whole batch failed: fail its requests, and only them
                results = [exc] * len(items)
            for item, res in zip(items, results):
                if item.abandoned or item.future.done():
                    continue
                if isinstance(res, BaseException):
                    item.future.set_exception(res)
                else:
                    item.future.set_result(res)
        finally:
            if reason == "idle":
                self._idle_rule.idle_batch_done()
            self._handed.remove((key, len(items)))
            self._wakeup.set()
