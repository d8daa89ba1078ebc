"""The batcher's flush rules on their own (l1pca.service.batcher), with a batch function that takes a
fixed time, so the timing of arrivals is under the test's control. The server tests
(test_service_batching.py) check the same rules end to end."""
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
