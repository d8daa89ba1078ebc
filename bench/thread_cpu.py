"""Where each server's CPU goes, per request and per thread: ``bench/thread_cpu.py``.

Issue 3's ratio (batched ``Fit`` throughput over ``--max-batch-size 1`` at 64 clients) follows the
CPU each configuration spends per request, since the load generator and the servers keep both cores
of the box busy. This script starts the ``batched``, ``unbatched`` and ``canned`` servers of
``bench/service_load.py`` once, runs the same 64-client level against each in ``--rounds`` rounds
(the servers in turn, the order rotating), and reads every thread's CPU time from ``/proc`` before
and after each run, so the CPU per request splits into the places that spend it:

* ``event loop``: the server's main thread (asyncio, gRPC's Cython layer, our handlers and batcher);
* ``gRPC event engine``: gRPC's C-core threads (named ``event_engine``);
* ``other server threads``: the server's other threads (gRPC's completion-queue poller, the solver
  threads handing batches to the solver process, the I/O pool, the metrics endpoint);
* ``solver: Python``, ``solver: XLA pool``, ``solver: other threads``: the solver process's main
  thread (``fit_many``'s NumPy steps, pickling), the threads of JAX's CPU pool (``tf_XLAEigen``),
  and its other threads; empty for the canned server, which has none;
* ``load generator``: this process (the asyncio client of ``service_load.run_level``).

Linux only (``/proc``).

    python bench/thread_cpu.py                  # writes bench/results/thread_cpu.{json,md}
    python bench/thread_cpu.py --requests 1200 --rounds 2 --out /tmp/thread_cpu
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from _report import machine, machine_sentence, write_results
from service_load import (CONFIGS, _children, add_level_arguments, level_shape, make_pool,
                          round_order, run_level, start_server, stat_cpu, stop_server)

SERVERS = ("batched", "unbatched", "canned")
ROLES = ("event loop", "gRPC event engine", "other server threads", "solver: Python",
         "solver: XLA pool", "solver: other threads", "load generator")


def _role(in_server: bool, is_main: bool, name: str) -> str:
    if in_server:
        if is_main:
            return "event loop"
        return "gRPC event engine" if name.startswith("event_engine") else "other server threads"
    if is_main:
        return "solver: Python"
    return "solver: XLA pool" if name.startswith("tf_XLAEigen") else "solver: other threads"


def thread_cpu(pid: int) -> Counter:
    """CPU seconds by role (:data:`ROLES`) of the server ``pid`` and its child processes, summed
    over their live threads."""
    out: Counter = Counter()
    for proc in [pid] + _children(pid):
        try:
            tids = os.listdir(f"/proc/{proc}/task")
        except OSError:  # the process ended
            continue
        for tid in tids:
            try:
                name, seconds = stat_cpu(f"/proc/{proc}/task/{tid}/stat")
            except OSError:  # the thread ended
                continue
            out[_role(proc == pid, tid == str(proc), name)] += seconds
    return out


def measure(proc, target, pool, args) -> dict:
    """One run of ``args.requests`` fits at ``args.concurrency`` against one server: throughput and
    the CPU milliseconds per request of each role."""
    before, t0 = thread_cpu(proc.pid), time.process_time()
    run = asyncio.run(run_level(target, pool, args.n_components, args.concurrency, args.requests,
                                args.timeout_s))
    client, after = time.process_time() - t0, thread_cpu(proc.pid)
    n = len(run["latencies"])
    ms = {role: 1e3 * (after[role] - before[role]) / max(n, 1) for role in ROLES[:-1]}
    ms["load generator"] = 1e3 * client / max(n, 1)
    return {"rps": n / run["wall_s"], "ms": ms, "errors": run["errors"]}


def render(result) -> list[str]:
    runs = result["runs"]
    med = {s: {role: statistics.median(r["ms"][role] for r in runs[s]) for role in ROLES}
           for s in SERVERS}
    rps = {s: statistics.median(r["rps"] for r in runs[s]) for s in SERVERS}
    total = {s: sum(med[s].values()) for s in SERVERS}
    lines = [
        "# CPU per request, thread by thread: `bench/thread_cpu.py`",
        "",
        machine_sentence(result["machine"]) + "Load generator and servers share the cores.",
        f"Workload: `Fit` of {result['shape'][0]} x {result['shape'][1]} float64 matrices, "
        f"K={result['n_components']}, {result['concurrency']} clients, {result['requests']} requests "
        f"per server in each of {result['rounds']} rounds (the servers in turn); started "
        f"{result['started']}. Milliseconds of CPU per request, medians over the rounds, from "
        "`/proc/<pid>/task/*/stat` before and after each run. `batched`: the defaults "
        "(`--max-batch-size 16 --max-delay-ms 2`); `unbatched`: `--max-batch-size 1`; `canned`: "
        "`bench/canned_server.py` (gRPC alone, one canned answer, no solver).",
        "",
        "| where | " + " | ".join(SERVERS) + " |",
        "|---|" + "---:|" * len(SERVERS),
    ]
    for role in ROLES:
        lines.append(f"| {role} | " + " | ".join(f"{med[s][role]:.3f}" for s in SERVERS) + " |")
    lines += [
        "| **total** | " + " | ".join(f"**{total[s]:.3f}**" for s in SERVERS) + " |",
        "| req/s | " + " | ".join(f"{rps[s]:.0f}" for s in SERVERS) + " |",
        "",
        f"Throughput batched / unbatched: {rps['batched'] / rps['unbatched']:.2f}x (by round: "
        + ", ".join(f"{b['rps'] / u['rps']:.2f}x" for b, u in zip(runs["batched"], runs["unbatched"]))
        + f"); CPU per request unbatched / batched: {total['unbatched'] / total['batched']:.2f}x.",
        f"Beyond the canned server, per request: batched {total['batched'] - total['canned']:.3f} ms "
        f"(event loop {med['batched']['event loop'] - med['canned']['event loop']:+.3f}), unbatched "
        f"{total['unbatched'] - total['canned']:.3f} ms (event loop "
        f"{med['unbatched']['event loop'] - med['canned']['event loop']:+.3f}).",
    ]
    errors = {s: [r["errors"] for r in runs[s] if r["errors"]] for s in SERVERS}
    if any(errors.values()):
        lines.append(f"Errors: {errors}.")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_level_arguments(p, requests=3000, requests_help="Fit requests per server in each round",
                        rounds=4, out="thread_cpu")
    args = p.parse_args(argv)
    shape = level_shape(p, args)
    if not Path("/proc/self/task").exists():
        p.error("needs Linux's /proc (per-thread CPU times)")
    pool = make_pool(*shape, args.n_components)
    logs = Path(tempfile.mkdtemp(prefix="l1pca-thread-cpu-"))
    servers = {}
    try:
        for name in SERVERS:
            proc, target, _ = start_server(CONFIGS[name], shape, args.n_components,
                                           logs / f"{name}.log")
            servers[name] = (proc, target)
        started = time.strftime("%Y-%m-%d %H:%M")
        for proc, target in servers.values():  # one warm-up pass each: connections, first batches
            asyncio.run(run_level(target, pool, args.n_components, args.concurrency,
                                  min(args.requests, 500), args.timeout_s))
        runs = {name: [] for name in SERVERS}
        for r in range(args.rounds):
            for name in round_order(SERVERS, r):
                runs[name].append(measure(*servers[name], pool, args))
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    result = {"machine": machine(), "started": started, "shape": shape,
              "n_components": args.n_components, "concurrency": args.concurrency,
              "requests": args.requests, "rounds": args.rounds, "runs": runs}
    write_results(args.out, result, render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
