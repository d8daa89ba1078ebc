"""The batcher's flush rules on their own (l1pca.service.batcher), with a batch function that takes a
fixed time, so the timing of arrivals is under the test's control. The server tests
(tests/service/test_batching.py) check the same rules end to end."""
import asyncio
import time

from l1pca.service.batcher import Batcher


def _batcher(max_delay_s, compute_s, sizes, **kw):
    async def run_batch(key, payloads):
        sizes.append(len(payloads))
        await asyncio.sleep(compute_s)
        return list(payloads)

    return Batcher(run_batch, max_batch_size=16, max_delay_s=max_delay_s, max_queue=100, **kw)


async def _clients(b, n_clients, calls, latencies, stagger_s=0.0):
    async def client(c):
        for i in range(calls):
            await asyncio.sleep(c * stagger_s)  # in step, but not in the same instant
            t0 = time.perf_counter()
            assert await b.submit("k", (c, i)) == (c, i)
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(client(c) for c in range(n_clients)))


def test_a_lone_client_never_waits_for_the_delay():
    async def main():
        sizes, lat = [], []
        b = _batcher(0.5, 0.005, sizes, flush_when_idle=True)
        b.start()
        await _clients(b, 1, 8, lat)
        await b.close(5)
        return b, sizes, lat

    b, sizes, lat = asyncio.run(main())
    assert sizes == [1] * 8
    assert b.stats.flushes == {"idle": 8}
    assert max(lat) < 0.25  # never the 0.5 s delay


def test_clients_in_step_learn_to_wait_for_each_other_and_a_lone_one_stops_waiting_again():
    async def main():
        sizes, lat = [], []
        b = _batcher(0.1, 0.04, sizes, flush_when_idle=True)  # delay 100 ms, batches of 40 ms
        b.start()
        await _clients(b, 4, 12, lat, stagger_s=0.002)  # four clients in step
        in_step = list(sizes)
        sizes.clear()
        lone = []
        await _clients(b, 1, 8, lone)  # then one alone
        await b.close(5)
        return b, in_step, sizes, lone

    b, in_step, alone, lone = asyncio.run(main())
    # The first flush goes at once, alone, and the other three arrive while it computes: from then
    # on the four wait for each other, batches of 4 flushed by the delay.
    assert in_step[0] == 1
    assert sum(in_step) == 48 and all(s == 4 for s in in_step[1:-1]), in_step  # the first one
    # ran ahead of the others by one call, so it ends one batch early: the last batch has 3
    assert b.stats.flushes["delay"] >= 10
    # Alone, a few requests still wait the delay and go alone, which votes the rule back.
    assert alone == [1] * 8
    assert all(t < 0.09 for t in lone[-3:]), lone  # the last ones did not wait the 100 ms


def test_without_idle_flush_every_partial_batch_waits_the_delay():
    async def main():
        sizes, lat = [], []
        b = _batcher(0.05, 0.001, sizes)
        b.start()
        await _clients(b, 1, 3, lat)
        await b.close(5)
        return b, lat

    b, lat = asyncio.run(main())
    assert b.stats.flushes == {"delay": 3}
    assert min(lat) >= 0.05


def test_a_standby_batch_goes_ahead_only_when_full():
    """One slot and one standby: while a batch computes, a full batch is handed over at once (it
    would wait at the solver), a partial one keeps queueing for company until the slot frees."""
    async def main():
        started = []  # (time, size) of each run_batch call
        gate = asyncio.Event()

        async def run_batch(key, payloads):
            started.append((time.monotonic(), len(payloads)))
            await gate.wait()
            return list(payloads)

        b = Batcher(run_batch, max_batch_size=4, max_delay_s=0.01, max_queue=100,
                    max_concurrent_batches=1, standby_batches=1)
        b.start()
        first = [asyncio.ensure_future(b.submit("k", i)) for i in range(4)]  # full: goes at once
        await asyncio.sleep(0.05)
        partial = [asyncio.ensure_future(b.submit("k", 10 + i)) for i in range(3)]
        await asyncio.sleep(0.1)  # ten times the delay: still queued, the slot being busy
        sizes_before = [s for _, s in started]
        more = [asyncio.ensure_future(b.submit("k", 20 + i)) for i in range(5)]  # 8 queued
        await asyncio.sleep(0.05)
        sizes_standby = [s for _, s in started]
        gate.set()
        out = await asyncio.gather(*first, *partial, *more)
        await b.close(5)
        return sizes_before, sizes_standby, [s for _, s in started], out, b

    before, standby, sizes, out, b = asyncio.run(main())
    assert before == [4]  # the partial batch did not go as a standby
    assert standby == [4, 4]  # a full one did, while the first still computed
    assert sum(sizes) == 12 and sizes[:2] == [4, 4]
    assert out == list(range(4)) + [10, 11, 12] + list(range(20, 25))
    assert b.stats.flushes["full"] >= 2


def test_deadlines_and_cancellations_fail_only_their_own_requests():
    """A deadline that passes in the queue: DeadlineExceeded, the request leaves uncomputed. One that
    passes while its batch computes: DeadlineExceeded, the batch's other answers still come. A
    cancelled caller leaves the queue. No stray timers or unretrieved exceptions are left behind."""
    from l1pca.service.errors import DeadlineExceeded

    async def main():
        gate = asyncio.Event()
        computed = []

        async def run_batch(key, payloads):
            computed.extend(payloads)
            await gate.wait()
            return list(payloads)

        b = Batcher(run_batch, max_batch_size=2, max_delay_s=0.0, max_queue=100,
                    max_concurrent_batches=1)
        b.start()
        running = [asyncio.ensure_future(b.submit("k", i, timeout_s=t))
                   for i, t in ((0, 0.05), (1, 30.0))]  # one batch: computing until the gate opens
        await asyncio.sleep(0.01)
        queued_late = asyncio.ensure_future(b.submit("k", 2, timeout_s=0.05))  # behind the batch
        queued_cancel = asyncio.ensure_future(b.submit("k", 3))
        queued_ok = asyncio.ensure_future(b.submit("k", 4, timeout_s=30.0))
        await asyncio.sleep(0.02)
        queued_cancel.cancel()
        done = await asyncio.gather(running[0], queued_late, queued_cancel, return_exceptions=True)
        depth_after = b.depth
        gate.set()
        answers = await asyncio.gather(running[1], queued_ok)
        await b.close(5)
        return done, depth_after, answers, computed, b

    done, depth_after, answers, computed, b = asyncio.run(main())
    assert isinstance(done[0], DeadlineExceeded) and "while computing" in str(done[0])
    assert isinstance(done[1], DeadlineExceeded) and "in the queue" in str(done[1])
    assert "not computed" in str(done[1])
    assert isinstance(done[2], asyncio.CancelledError)
    assert depth_after == 1  # only the request with a long deadline still waits
    assert answers == [1, 4]  # the batch-mate of the late request, and the one queued behind
    assert computed == [0, 1, 4]  # 2 (deadline) and 3 (cancelled) never reached the solver
    assert b.stats.dropped == {"deadline": 1, "cancelled": 1}


def test_split_batches_in_step_clients_form_two_batches_that_take_turns_at_the_solver():
    """--split-batches: four clients in step. The first four go to the idle solver as two halves,
    the second handed ahead; from then on each pair's next requests form a batch as large as the
    one computing and go ahead ("ahead") to wait at the solver, so it never waits for a round trip.
    """
    async def main():
        solver = asyncio.Lock()  # one solver: a batch handed ahead waits here, as in a child's pipe
        log = []  # (size, handed over at, started at)

        async def run_batch(key, payloads):
            handed = time.monotonic()
            async with solver:
                log.append((len(payloads), handed, time.monotonic()))
                await asyncio.sleep(0.01 + 0.005 * len(payloads))
            return list(payloads)

        b = Batcher(run_batch, max_batch_size=16, max_delay_s=0.05, max_queue=100,
                    max_concurrent_batches=1, standby_batches=1, flush_when_idle=True,
                    split_batches=True)
        b.start()
        await _clients(b, 4, 10, [])
        await b.close(5)
        return log, b

    log, b = asyncio.run(main())
    sizes = [size for size, _, _ in log]
    assert sum(sizes) == 40
    assert sizes[:2] == [2, 2]  # the first four, split: two now, two ahead
    assert sizes.count(2) >= 0.8 * len(sizes)  # pairs from then on
    assert b.stats.flushes["ahead"] >= len(sizes) // 2
    waited = [started - handed for _, handed, started in log[1:]]
    assert sum(w > 0.005 for w in waited) >= 0.8 * len(waited)  # handed over while another ran


def test_split_batches_send_ahead_only_behind_a_batch_of_the_same_key():
    """A partial batch does not go ahead behind another key's batch (it keeps queueing for company);
    when the slot frees it goes to the idle solver as two halves. Without --split-batches it goes
    whole."""
    async def main(split):
        gate = asyncio.Event()
        started = []

        async def run_batch(key, payloads):
            started.append((key, len(payloads)))
            await gate.wait()
            return list(payloads)

        b = Batcher(run_batch, max_batch_size=8, max_delay_s=0.01, max_queue=100,
                    max_concurrent_batches=1, standby_batches=1, split_batches=split)
        b.start()
        big = asyncio.ensure_future(b.submit("big", 0))  # alone: one request is not split
        await asyncio.sleep(0.03)
        small = [asyncio.ensure_future(b.submit("small", i)) for i in range(3)]
        await asyncio.sleep(0.05)  # five times the delay, behind the busy slot
        during = list(started)
        gate.set()
        out = await asyncio.gather(big, *small)
        await b.close(5)
        return during, started, out

    during, started, out = asyncio.run(main(True))
    assert during == [("big", 1)]
    assert started == [("big", 1), ("small", 1), ("small", 2)]
    assert out == [0, 0, 1, 2]
    during, started, out = asyncio.run(main(False))
    assert during == [("big", 1)]
    assert started == [("big", 1), ("small", 3)]
    assert out == [0, 0, 1, 2]
