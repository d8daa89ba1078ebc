"""The server's own work per ``Fit`` request, without gRPC and without a solver: CPU per request.

What a request costs in the server's event loop beyond the transport: the status interceptor
(:class:`l1pca.service.errors.StatusInterceptor`: call metrics, in-flight gauge, decoding the
request), the servicer (decoding and checking the matrix and options), the batcher (queueing, the
deadline timer, batch metrics) and encoding the answer. The real objects run, in one event loop, fed
by ``--concurrency`` callers in a loop; the batch function answers at once with a canned fit (so
batches of up to 16 form, as at concurrency 64 in ``bench/service_load.py``). CPU time of the process
per request, ``--rounds`` rounds, the two paths taking turns:

* ``full``: the interceptor's handler, as gRPC calls it for every call, then the response serialised;
* ``servicer``: the request parsed, ``L1PCAServicer.Fit``, the response serialised (no interceptor).

    python bench/request_path.py            # writes bench/results/request_path.{md,json}
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _report import machine, machine_sentence, write_results
from service_load import make_pool

from l1pca.client import wire
from l1pca.kernels.fitting import fit_many
from l1pca.service.batcher import Batcher
from l1pca.service.errors import StatusInterceptor
from l1pca.service.handlers import L1PCAServicer, Limits
from l1pca.service.metrics import ServiceMetrics
from l1pca.v1 import l1pca_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("full", "servicer")


class _Context:
    """The parts of a gRPC servicer context the handlers use."""

    def time_remaining(self):
        return 30.0

    async def abort(self, code, details):
        raise RuntimeError(f"the call failed: {code} {details}")


class _Details:
    method = "/l1pca.v1.L1PCA/Fit"


class _FitHandler:
    """What gRPC's lookup finds for Fit before the interceptor wraps it."""

    def __init__(self, servicer):
        self.unary_unary = servicer.Fit
        self.request_deserializer = pb.FitRequest.FromString
        self.response_serializer = pb.FitResponse.SerializeToString


async def _run(path, requests, n, concurrency, answer):
    metrics = ServiceMetrics()

    async def run_batch(key, payloads):
        await asyncio.sleep(0)  # one trip through the event loop, as the solver's answer takes
        return [answer] * len(payloads)

    batcher = Batcher(run_batch, max_batch_size=16, max_delay_s=0.002, max_queue=4096,
                      max_concurrent_batches=1, standby_batches=1, flush_when_idle=True,
                      metrics=metrics)
    batcher.start()
    with ThreadPoolExecutor(2) as executor:
        servicer = L1PCAServicer(batcher=batcher, limits=Limits(100_000, 10_000, 64),
                                 executor=executor, info=None, is_ready=lambda: True)
        interceptor = StatusInterceptor(metrics.observe_call, inflight=metrics.inflight)
        handler = _FitHandler(servicer)

        async def lookup(details):
            return handler

        context, left = _Context(), [n]  # requests still to send, shared by the callers

        async def caller(i):
            while left[0] > 0:
                left[0] -= 1
                raw = requests[i % len(requests)]
                if path == "full":
                    wrapped = await interceptor.intercept_service(lookup, _Details)
                    reply = await wrapped.unary_unary(raw, context)
                else:
                    reply = await servicer.Fit(pb.FitRequest.FromString(raw), context)
                handler.response_serializer(reply)
                i += 1

        await asyncio.gather(*(caller(i) for i in range(concurrency)))
    await batcher.close(5.0)
    return batcher.stats


def measure(path, n, concurrency, requests, answer):
    """CPU microseconds per request and the mean batch size, for ``n`` requests."""
    t0 = time.process_time()
    stats = asyncio.run(_run(path, requests, n, concurrency, answer))
    return 1e6 * (time.process_time() - t0) / n, stats.computed / max(1, stats.batches)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20_000, help="requests per round and path")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "request_path"))
    args = p.parse_args(argv)
    pool = make_pool(64, 16, 2)
    answer = fit_many([pool[0]], 2, seeds=[0], backend="numpy")[0]
    requests = [pb.FitRequest(x=wire.encode_matrix(X), options=wire.encode_options(2, seed=i))
                .SerializeToString() for i, X in enumerate(pool)]
    measure("full", 2000, args.concurrency, requests, answer)  # warm: imports, first allocations
    runs = {path: [] for path in PATHS}
    batches = {path: [] for path in PATHS}
    for r in range(args.rounds):
        for path in PATHS[r % 2:] + PATHS[:r % 2]:
            us, mean_batch = measure(path, args.requests, args.concurrency, requests, answer)
            runs[path].append(us)
            batches[path].append(mean_batch)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} us" for k, v in runs.items()),
              flush=True)
    info = machine()
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {"machine": info, "requests": args.requests, "concurrency": args.concurrency,
              "rounds": args.rounds, "cpu_us_per_request": runs, "mean_batch": batches,
              "median_cpu_us": med}
    lines = [
        "# The server's own work per request: `bench/request_path.py`", "",
        machine_sentence(info) +
        f"`Fit` requests of 64 x 16 float64 matrices, K=2, {args.concurrency} callers in one event "
        "loop, the server's real interceptor, servicer, batcher (`--max-batch-size 16`, 2 ms) and "
        "metrics, a batch function that answers at once with a canned fit; no gRPC, no solver. CPU "
        f"time of the process per request over {args.requests} requests, {args.rounds} rounds, the "
        "paths taking turns.", "",
        "| path | median CPU us/request | min | max | mean batch |",
        "|---|---:|---:|---:|---:|",
    ]
    for path in PATHS:
        v = runs[path]
        lines.append(f"| {path} | {med[path]:.1f} | {min(v):.1f} | {max(v):.1f} | "
                     f"{statistics.mean(batches[path]):.1f} |")
    lines += ["", "`full` is what the event loop spends per `Fit` beyond gRPC's own work and the hand-"
              "over to the solver; `full` - `servicer` is the interceptor's part (status mapping, call "
              "metrics, in-flight gauge, request decoding).", ""]
    write_results(args.out, result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
