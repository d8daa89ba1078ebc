"""Overload: offered load at 3x the measured capacity for 60 s, then recovery.

Starts ``l1pca serve`` in a child process (JAX backend on this machine's CPU, ``--max-queue 128``)
and sends ``Fit`` of 64 x 16 matrices (K=2) through a raw asyncio channel (pre-serialised requests,
so that the load generator spends little CPU):

1. capacity: closed loop, ``--capacity-concurrency`` calls in flight for ``--capacity-s``;
2. baseline: open loop at half the capacity;
3. overload: open loop at ``--factor`` x capacity for ``--overload-s``, deadline ``--timeout-s``;
4. recovery: open loop at half the capacity again, after a pause.

Each phase counts every request: sent = ok + each status code (nothing may be lost), with the p50 /
p99 latency of the accepted (OK) ones and of the shed (RESOURCE_EXHAUSTED) ones; the server's RSS is
sampled every second. Writes ``bench/results/overload.json``.

    python bench/overload.py
    python bench/overload.py --overload-s 20 --factor 2
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path

import grpc

from _reliability import load_average, machine, make_pool, pct, rss_mib, start_server, stop_server, write_json

SERVER_FLAGS = ["--max-queue", "128"]


def _requests(K=2):
    from l1pca.proto import wire
    from l1pca.v1 import l1pca_pb2 as pb

    return [pb.FitRequest(x=wire.encode_matrix(X), options=pb.FitOptions(n_components=K, seed=i))
            .SerializeToString() for i, X in enumerate(make_pool(64, 16, K, size=64))]


class Phase:
    def __init__(self, name):
        self.name = name
        self.sent = 0
        self.codes = collections.Counter()
        self.lat = collections.defaultdict(list)
        self.rss = []

    def summary(self, wall_s):
        answered = sum(self.codes.values())
        return {
            "phase": self.name, "wall_s": wall_s, "sent": self.sent, "answered": answered,
            "lost": self.sent - answered, "codes": dict(self.codes),
            "offered_rps": self.sent / wall_s, "ok_rps": self.codes.get("OK", 0) / wall_s,
            "ok_p50_ms": 1e3 * pct(self.lat["OK"], 50), "ok_p99_ms": 1e3 * pct(self.lat["OK"], 99),
            "ok_max_ms": 1e3 * max(self.lat["OK"], default=float("nan")),
            "shed_p50_ms": 1e3 * pct(self.lat["RESOURCE_EXHAUSTED"], 50),
            "shed_p99_ms": 1e3 * pct(self.lat["RESOURCE_EXHAUSTED"], 99),
            "rss_mib_max": max(self.rss, default=float("nan")),
            "rss_mib_end": self.rss[-1] if self.rss else float("nan"),
            "load": load_average(),
        }


async def _one(call, payload, phase, timeout_s):
    t0 = time.perf_counter()
    try:
        await call(payload, timeout=timeout_s)
        code = "OK"
    except grpc.RpcError as err:
        code = err.code().name
    except Exception as exc:  # noqa: BLE001 - counted under its type, never lost
        code = type(exc).__name__
    phase.codes[code] += 1
    phase.lat[code].append(time.perf_counter() - t0)


async def _sample_rss(pid, phase, stop):
    while not stop.is_set():
        phase.rss.append(rss_mib(pid))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


async def closed_loop(call, reqs, phase, pid, *, concurrency, duration_s, timeout_s):
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample_rss(pid, phase, stop))
    end = time.perf_counter() + duration_s
    counter = iter(range(10**9))

    async def worker():
        for i in counter:
            if time.perf_counter() >= end:
                return
            phase.sent += 1
            await _one(call, reqs[i % len(reqs)], phase, timeout_s)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    stop.set()
    await sampler
    return phase.summary(time.perf_counter() - t0)


async def open_loop(call, reqs, phase, pid, *, rate, duration_s, timeout_s):
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample_rss(pid, phase, stop))
    tasks = set()
    start = time.perf_counter()
    i = 0
    while True:
        now = time.perf_counter()
        if now - start >= duration_s:
            break
        due = start + i / rate
        if due > now:
            await asyncio.sleep(due - now)
            continue
        phase.sent += 1
        task = asyncio.ensure_future(_one(call, reqs[i % len(reqs)], phase, timeout_s))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    wall = time.perf_counter() - start
    if tasks:  # every request gets its answer (each has a deadline)
        await asyncio.wait(set(tasks), timeout=timeout_s + 10)
    stop.set()
    await sampler
    return phase.summary(wall)


async def run(target, pid, args):
    reqs = _requests()
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary("/l1pca.v1.L1PCA/Fit")
        phases = []
        cap = await closed_loop(call, reqs, Phase("capacity"), pid, concurrency=args.capacity_concurrency,
                                duration_s=args.capacity_s, timeout_s=args.timeout_s)
        phases.append(cap)
        capacity = cap["ok_rps"]
        print(f"capacity {capacity:.0f} req/s (p99 {cap['ok_p99_ms']:.0f} ms)", flush=True)
        plan = [("baseline", 0.5, args.calm_s), ("overload", args.factor, args.overload_s),
                ("recovery", 0.5, args.calm_s)]
        for name, factor, duration in plan:
            if name == "recovery":
                await asyncio.sleep(2.0)
            res = await open_loop(call, reqs, Phase(name), pid, rate=factor * capacity,
                                  duration_s=duration, timeout_s=args.timeout_s)
            res["target_rps"] = factor * capacity
            phases.append(res)
            print(f"{name}: offered {res['offered_rps']:.0f} req/s, {res['codes']}, lost {res['lost']}, "
                  f"ok p99 {res['ok_p99_ms']:.0f} ms, shed p99 {res['shed_p99_ms']:.1f} ms, "
                  f"RSS max {res['rss_mib_max']:.0f} MiB", flush=True)
    return capacity, phases


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--factor", type=float, default=3.0)
    p.add_argument("--overload-s", type=float, default=60.0)
    p.add_argument("--calm-s", type=float, default=10.0)
    p.add_argument("--capacity-s", type=float, default=10.0)
    p.add_argument("--capacity-concurrency", type=int, default=16)
    p.add_argument("--timeout-s", type=float, default=5.0)
    p.add_argument("--name", default="overload")
    args = p.parse_args(argv)
    log_path = Path(tempfile.gettempdir()) / "l1pca-overload.log"
    proc, target, _mport = start_server(SERVER_FLAGS, (64, 16), 2, log_path)
    try:
        rss_start = rss_mib(proc.pid)
        capacity, phases = asyncio.run(run(target, proc.pid, args))
    finally:
        code = stop_server(proc)
    result = {"machine": machine(), "server_flags": SERVER_FLAGS, "factor": args.factor,
              "timeout_s": args.timeout_s, "capacity_rps": capacity, "rss_mib_start": rss_start,
              "phases": phases, "lost_total": sum(ph["lost"] for ph in phases),
              "server_exit_code": code}
    path = write_json(args.name, result)
    print(f"wrote {path}; lost {result['lost_total']}")
    return 0 if result["lost_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
