"""Load generator for the l1pca service, in the manner of Triton's perf_analyzer.

It starts ``l1pca serve`` once per server configuration (batching on, batching off with
``--max-batch-size 1``, ...) on loopback ports, all at once, waits for SERVING (warm-up compiles the
benchmark's shape bucket), then for each concurrency level runs a fixed number of ``Fit`` requests
against each server from an asyncio gRPC client (``concurrency`` requests always in flight), in
``--rounds`` rounds that take the servers in turn (the others idle meanwhile), so that configurations
are compared side by side on a machine whose speed drifts. It reports:

* client side: throughput (requests/s) and p50 / p90 / p99 latency;
* server side, from ``/metrics`` deltas (per request, means): time in the server, queue wait,
  solver call (the batch the request was in), and the rest (decode, checks, encode, gRPC), plus the
  mean batch size.

    python bench/service_load.py                          # the default matrix of the results file
    python bench/service_load.py --concurrency 1,64 --requests 500 --configs batched,unbatched
    python bench/service_load.py --target 127.0.0.1:50051 --metrics-port 9464   # a running server

The ``canned`` configuration is not ``l1pca serve`` but ``bench/canned_server.py``, a gRPC server
that answers every ``Fit`` with one canned answer: the transport floor, what any configuration pays
per request on this machine, measured beside them.

Writes ``bench/results/service_load.json`` and ``.md`` (``--out`` to change). The generator runs on
the same machine as the server and takes CPU from it; the results file says how many cores there were.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _report import machine, machine_sentence
from l1pca.service import testing

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    # name: extra `l1pca serve` flags
    "batched": ["--max-batch-size", "16", "--max-delay-ms", "2"],  # the defaults
    "batched-wait": ["--max-batch-size", "16", "--max-delay-ms", "2", "--flush-when-idle", "off"],
    # --split-batches on: partial batches for an idle solver go as two halves, and batches as large
    # as the one computing go ahead to the solver process's pipe.
    "batched-split": ["--max-batch-size", "16", "--max-delay-ms", "2", "--split-batches", "on"],
    "batched-32": ["--max-batch-size", "32", "--max-delay-ms", "2"],
    "batched-64": ["--max-batch-size", "64", "--max-delay-ms", "2"],  # deploy/k8s's setting
    "batched-64-split": ["--max-batch-size", "64", "--max-delay-ms", "2", "--split-batches", "on"],
    # --solver-process auto (the default) fits in a solver process but for a lone request with
    # nothing else computing or queued (in the solver thread); "off" keeps every fit in the thread,
    # "on" sends every one to the process.
    "batched-thread": ["--max-batch-size", "16", "--max-delay-ms", "2", "--solver-process", "off"],
    "batched-process": ["--max-batch-size", "16", "--max-delay-ms", "2", "--solver-process", "on"],
    "unbatched-process": ["--max-batch-size", "1", "--solver-process", "on"],
    # --solver-threads 0: JAX's CPU pool at XLA's default (one thread per CPU) instead of 1.
    "batched-xla-pool": ["--max-batch-size", "16", "--max-delay-ms", "2", "--solver-threads", "0"],
    "unbatched-xla-pool": ["--max-batch-size", "1", "--solver-threads", "0"],
    "unbatched": ["--max-batch-size", "1"],
    "numpy-unbatched": ["--max-batch-size", "1", "--backend", "numpy"],
    # Not `l1pca serve`: bench/canned_server.py, gRPC alone (one canned answer, no solver, no checks),
    # the transport floor every configuration pays per request on this machine.
    "canned": None,
}


def _percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def scrape(port):
    """The server's /metrics, flattened: ``{name[,method=M]: sum over the other labels}`` (histogram
    buckets left out; ``method`` kept for the request metrics)."""
    if port is None:  # the canned server keeps no metrics: every server-side column is NaN
        return {}
    out = {}
    for name, samples in testing.scrape(port).items():
        if name.endswith("_bucket"):
            continue
        for labels, v in samples:
            key = name + "".join(f",{k}={val}" for k, val in sorted(labels.items())
                                 if k in ("method",) and name.startswith("l1pca_request"))
            out[key] = out.get(key, 0.0) + v
    return out


def server_breakdown(before, after, n_requests):
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    fits = d.get("l1pca_request_duration_seconds_count,method=Fit", 0.0) or float("nan")
    batches = d.get("l1pca_solve_duration_seconds_count", 0.0) or float("nan")
    server_ms = 1e3 * d.get("l1pca_request_duration_seconds_sum,method=Fit", 0.0) / fits
    queue_ms = 1e3 * d.get("l1pca_queue_wait_seconds_sum", 0.0) / fits
    solve_ms = 1e3 * d.get("l1pca_solve_duration_seconds_sum", 0.0) / batches
    return {
        "server_ms": server_ms, "queue_ms": queue_ms, "solve_ms": solve_ms,
        "overhead_ms": server_ms - queue_ms - solve_ms,
        "mean_batch": d.get("l1pca_batch_size_sum", 0.0) / batches,
        "batches": batches, "server_requests": fits,
        "solver_busy_s": d.get("l1pca_solve_duration_seconds_sum", 0.0),
        "cpu_fallbacks": d.get("l1pca_cpu_fallback_total", 0.0),
    }


def stat_cpu(path):
    """``(name, seconds)`` from a ``/proc`` ``stat`` file (a process's or a thread's): its command
    name and its user + system CPU seconds. Raises OSError when it is gone."""
    text = Path(path).read_text()
    fields = text.rsplit(")", 1)[1].split()
    return (text[text.index("(") + 1:text.rindex(")")],
            (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))


def round_order(names, r):
    """The servers in round ``r``'s order: rotated by one each round, so none always goes first."""
    return names[r % len(names):] + names[:r % len(names)]


def cpu_seconds(pid):
    """User + system CPU seconds of a process and its live descendants (the solver processes;
    Linux /proc), or NaN elsewhere."""
    try:
        total = stat_cpu(f"/proc/{pid}/stat")[1]
    except (OSError, ValueError, IndexError):
        return float("nan")
    for child in _children(pid):
        sub = cpu_seconds(child)
        total += 0.0 if sub != sub else sub  # a child that just ended: NaN, skipped
    return total


def _children(pid):
    out = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(p) for p in path.read_text().split()]
        except (OSError, ValueError):
            pass
    return out


def make_pool(rows, cols, K, size=64, seed=0):
    """Structured data (rank K + noise + a few outliers), as a pipeline would send."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(size):
        X = rng.normal(size=(rows, K)) @ rng.normal(size=(K, cols)) * 3
        X += 0.3 * rng.normal(size=(rows, cols))
        X[: max(1, rows // 20)] += 10 * rng.normal(size=(max(1, rows // 20), cols))
        pool.append(X)
    return pool


async def run_requests(target, requests, concurrency, timeout_s, **client_options):
    """``Fit`` each ``(X, K)`` of ``requests`` (seed = its index), ``concurrency`` always in flight:
    ``{"latencies", "errors" (by status name), "wall_s"}``. ``client_options`` go to the
    AsyncClient (``retry=None`` for none)."""
    from l1pca.client import AsyncClient

    latencies, errors = [], {}
    queue = iter(enumerate(requests))
    async with AsyncClient(target, timeout_s=timeout_s, **client_options) as client:
        async def worker():
            for i, (X, K) in queue:
                t0 = time.perf_counter()
                try:
                    await client.fit(X, K, seed=i)
                    latencies.append(time.perf_counter() - t0)
                except Exception as exc:  # counted, reported
                    name = getattr(getattr(exc, "code", None), "name", type(exc).__name__)
                    errors[name] = errors.get(name, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "wall_s": wall}


async def run_level(target, pool, K, concurrency, n_requests, timeout_s):
    return await run_requests(target, [(pool[i % len(pool)], K) for i in range(n_requests)],
                              concurrency, timeout_s)


def measure_level(servers, pool, K, concurrency, n_requests, rounds, timeout_s):
    """One concurrency level for every server, side by side: ``rounds`` runs each, the servers taken
    in turn (the order rotating each round), so that a change in the machine's speed during the level
    (other jobs) falls on every configuration alike. Returns one result dict per server name."""
    names = list(servers)
    per_run = max(-(-n_requests // rounds), 2 * concurrency)  # at least 2 requests per slot per run
    acc = {n: {"lat": [], "wall": 0.0, "errors": {}, "server_cpu": 0.0, "client_cpu": 0.0,
               "load": 0.0, "round_rps": []} for n in names}
    for name in names:  # warm the client and the batch ladder at this concurrency
        asyncio.run(run_level(servers[name][1], pool, K, concurrency, max(2 * concurrency, 50),
                              timeout_s))
    before = {n: scrape(servers[n][2]) for n in names}
    for r in range(rounds):
        for name in round_order(names, r):
            proc, target, _ = servers[name]
            cpu0, client0 = cpu_seconds(proc.pid) if proc else float("nan"), time.process_time()
            load0 = os.getloadavg()[0]
            run = asyncio.run(run_level(target, pool, K, concurrency, per_run, timeout_s))
            a = acc[name]
            a["server_cpu"] += (cpu_seconds(proc.pid) if proc else float("nan")) - cpu0
            a["client_cpu"] += time.process_time() - client0
            a["load"] = max(a["load"], load0, os.getloadavg()[0])
            a["lat"] += run["latencies"]
            a["wall"] += run["wall_s"]
            a["round_rps"].append(len(run["latencies"]) / run["wall_s"])
            for code, count in run["errors"].items():
                a["errors"][code] = a["errors"].get(code, 0) + count
    out = {}
    for name in names:
        a, total = acc[name], per_run * rounds
        level = {"concurrency": concurrency, "requests": total, "rounds": rounds, "ok": len(a["lat"]),
                 "errors": a["errors"], "wall_s": a["wall"], "throughput_rps": len(a["lat"]) / a["wall"],
                 "p50_ms": 1e3 * _percentile(a["lat"], 50), "p90_ms": 1e3 * _percentile(a["lat"], 90),
                 "p99_ms": 1e3 * _percentile(a["lat"], 99),
                 # Throughput of each round, in round order: servers' runs of one round are minutes
                 # apart at most, so their ratios round by round show how far the machine drifts.
                 "round_rps": a["round_rps"]}
        # This server idled while the others ran, so its counters moved for its own runs only.
        level.update(server_breakdown(before[name], scrape(servers[name][2]), total))
        level["server_cpu_ms_per_req"] = 1e3 * a["server_cpu"] / total
        level["client_cpu_ms_per_req"] = 1e3 * a["client_cpu"] / total
        level["load_avg_1m"] = a["load"]
        out[name] = level
    return out


def start_server(flags, shape, K, log_path):
    """``l1pca serve`` with ``flags`` (None: bench/canned_server.py) in a child process
    (:class:`l1pca.service.testing.ServeProcess`), once it reports SERVING (warm: its warm-up
    compiled the shape's bucket; the canned server once it listens): ``(process, target,
    metrics_port)``; ``metrics_port`` is None for the canned server."""
    workdir = tempfile.mkdtemp(prefix="l1pca-bench-")
    if flags is None:
        server = testing.ServeProcess(
            "--shape", f"{shape[0]}x{shape[1]}", "-k", str(K), workdir=workdir, log_path=log_path,
            command=[sys.executable, str(ROOT / "bench" / "canned_server.py")], port_flags=False,
            ready=lambda _: True)  # it writes its port file once listening, and has no health service
    else:
        server = testing.ServeProcess(
            "--warmup-shapes", f"{shape[0]}x{shape[1]}", "--warmup-components", str(K),
            "--warmup-wait", "on", "--max-queue", "4096", "--log-level", "WARNING", *flags, workdir=workdir,
            log_path=log_path)
    server.start(timeout_s=300)  # imports and warm-up compiles
    return server.proc, server.target, server.metrics_port


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="batched,batched-thread,unbatched,numpy-unbatched,canned",
                   help=f"server configurations to run, from {', '.join(CONFIGS)}")
    p.add_argument("--concurrency", default="1,4,16,64,256", help="comma-separated levels")
    p.add_argument("--requests", type=int, default=1000, help="Fit requests per level and server")
    p.add_argument("--rounds", type=int, default=4,
                   help="runs per level and server, the servers taken in turn (side by side)")
    p.add_argument("--shape", default="64x16", help="ROWSxCOLS of each matrix")
    p.add_argument("-k", "--n-components", type=int, default=2)
    p.add_argument("--timeout-s", type=float, default=120.0)
    p.add_argument("--target", default=None, help="benchmark this running server instead")
    p.add_argument("--metrics-port", type=int, default=9464, help="with --target: its metrics port")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "service_load"),
                   help="output path without suffix (.json and .md are written)")
    args = p.parse_args(argv)
    rows, cols = (int(v) for v in args.shape.lower().split("x"))
    K = args.n_components
    levels = [int(c) for c in args.concurrency.split(",")]
    pool = make_pool(rows, cols, K)
    configs = ["external"] if args.target else args.configs.split(",")
    results = {"machine": {**machine(), "gpu": None},
               "shape": [rows, cols], "n_components": K, "requests_per_level": args.requests,
               "rounds": args.rounds,
               "configs": {}}
    servers, info = {}, {}
    try:
        for name in configs:  # every server up front: they idle while another is measured
            if args.target:
                servers[name] = (None, args.target, args.metrics_port)
            else:
                log_path = Path(tempfile.gettempdir()) / f"l1pca-bench-{name}.log"
                servers[name] = start_server(CONFIGS[name], (rows, cols), K, log_path)
            from l1pca.client import Client

            with Client(servers[name][1]) as c:
                info[name] = c.server_info()
            results["machine"]["gpu"] = None if info[name].device == "cpu" else info[name].device
            results["configs"][name] = {"flags": CONFIGS.get(name, []), "backend": info[name].backend,
                                        "device": info[name].device, "levels": []}
        for conc in levels:
            measured = measure_level(servers, pool, K, conc, args.requests, args.rounds, args.timeout_s)
            for name, level in measured.items():
                results["configs"][name]["levels"].append(level)
                print(f"{name:16s} c={conc:4d} {level['throughput_rps']:8.1f} req/s  p50 "
                      f"{level['p50_ms']:7.2f} p90 {level['p90_ms']:7.2f} p99 {level['p99_ms']:7.2f} ms"
                      f"  batch {level['mean_batch']:5.1f}  queue {level['queue_ms']:6.2f} solve "
                      f"{level['solve_ms']:6.2f} other {level['overhead_ms']:6.2f} ms  "
                      f"errors {level['errors'] or 0}", flush=True)
    finally:
        for name, (proc, _, _) in servers.items():
            if proc is not None:
                results["configs"][name]["exit_status"] = stop_server(proc)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(render_markdown(results) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def render_markdown(results):
    m = results["machine"]
    lines = [
        "# Service load: `bench/service_load.py`",
        "",
        machine_sentence(m, m["gpu"]) + "Load generator and server on the same machine "
        "(loopback), so they share the cores.",
        f"Workload: `Fit` of {results['shape'][0]} x {results['shape'][1]} float64 matrices, "
        f"K={results['n_components']}, default options, {results['requests_per_level']} requests "
        "per concurrency level and server (at least 2 per slot in each round) after a warm-up "
        "pass. Every server runs at once and idles while another is measured; each level runs in "
        f"{results.get('rounds', 1)} rounds taking the servers in turn, so the ratios between servers "
        "are measured side by side, not minutes apart.",
        "",
        "Server-side columns are means per request from `/metrics` deltas: time in the server, queue "
        "wait, the solver call of its batch (from when the solver could start it), and the rest "
        "(decode, checks, encode, gRPC, and a full batch's wait at a busy solver process when it was "
        "handed over ahead of its turn). CPU columns: "
        "CPU time of the server process and of the load generator per request. `load`: the 1-minute "
        "load average during the level (other work on the machine shows up there).",
        "",
    ]
    for name, cfg in results["configs"].items():
        what = ("`python bench/canned_server.py`: gRPC alone, one canned answer, no solver (no "
                "metrics: server-side columns NaN)" if cfg["flags"] is None
                else f"`l1pca serve {' '.join(cfg['flags'])}`")
        lines += [f"## {name}: {what} (backend {cfg['backend']}, device {cfg['device']})", "",
                  "| concurrency | req/s | p50 ms | p90 ms | p99 ms | mean batch | server ms | "
                  "queue ms | solve ms | other ms | server CPU ms/req | client CPU ms/req | load | errors |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in cfg["levels"]:
            lines.append(
                f"| {r['concurrency']} | {r['throughput_rps']:.1f} | {r['p50_ms']:.2f} | "
                f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_batch']:.1f} | {r['server_ms']:.2f} | "
                f"{r['queue_ms']:.2f} | {r['solve_ms']:.2f} | {r['overhead_ms']:.2f} | "
                f"{r['server_cpu_ms_per_req']:.2f} | {r['client_cpu_ms_per_req']:.2f} | "
                f"{r['load_avg_1m']:.1f} | {r['errors'] or '-'} |")
        lines.append("")
    names = list(results["configs"])
    if "batched" in names:
        for base in [n for n in names if n not in ("batched", "canned")]:
            b = {r["concurrency"]: r for r in results["configs"]["batched"]["levels"]}
            u = {r["concurrency"]: r for r in results["configs"][base]["levels"]}
            common = sorted(set(b) & set(u))
            ratios = ", ".join(f"c={c}: {_ratio_text(b[c], u[c])}" for c in common)
            lines.append(f"Throughput, batched / {base}: {ratios}.")
        lines.append("")
    lines += _notes(results)
    return "\n".join(lines)


def round_ratios(a, b):
    """Throughput of level ``a`` over level ``b``, round by round (their runs of one round are
    adjacent in time)."""
    return [x / y for x, y in zip(a.get("round_rps", []), b.get("round_rps", []))]


def cpu_ms_per_req(level):
    """CPU per request of a level, server (with its solver processes) and load generator together."""
    return level["server_cpu_ms_per_req"] + level["client_cpu_ms_per_req"]


def _ratio_text(a, b):
    """Throughput of level ``a`` over level ``b``, over all rounds, with the median, lowest and
    highest ratio of one round's runs (the spread the machine's drift leaves) when there were
    several rounds."""
    text = f"{a['throughput_rps'] / b['throughput_rps']:.2f}x"
    per_round = round_ratios(a, b)
    if len(per_round) > 1:
        text += (f" (by round: median {_percentile(per_round, 50):.2f}x, "
                 f"{min(per_round):.2f}-{max(per_round):.2f}x)")
    return text


def _notes(results):
    """What the numbers say about the >= 3x target (batched vs --max-batch-size 1 at c=64)."""
    cfgs = results["configs"]
    if "batched" not in cfgs or "unbatched" not in cfgs:
        return []
    b = {r["concurrency"]: r for r in cfgs["batched"]["levels"]}
    u = {r["concurrency"]: r for r in cfgs["unbatched"]["levels"]}
    if 64 not in b or 64 not in u:
        return []
    ratio = b[64]["throughput_rps"] / u[64]["throughput_rps"]
    gpu = results["machine"]["gpu"]
    return [
        "## Notes",
        "",
        f"* Target: batching >= 3x the unbatched throughput at concurrency 64. Measured: "
        f"{_ratio_text(b[64], u[64])} ({'met' if ratio >= 3 else 'not met'}).",
        *_cpu_note(b[64], u[64]),
        *_floor_note(cfgs, b[64], u[64]),
        *(["* `numpy-unbatched` is one NumPy solve per request (what a direct `solve(X)` runs on the "
           "CPU for one matrix); the batched JAX service is compared with it too."]
          if "numpy-unbatched" in cfgs else []),
        *_process_note(cfgs),
        *_pool_note(cfgs),
        *_idle_note(cfgs),
        f"* GPU: {'measured on ' + gpu if gpu else 'none on this machine; no GPU numbers'}. The "
        "machine was shared with other jobs while this ran (see the `load` column), which lowers "
        "every absolute number here.",
    ]


def _cpu_note(b, u):
    """Where the CPU per request goes at one level, batched (``b``) against unbatched (``u``)."""
    def split(r):  # the solver call's share (one busy core while it runs) and the rest of the server
        solve = r["solve_ms"] / r["mean_batch"]
        return solve, r["server_cpu_ms_per_req"] - solve, r["client_cpu_ms_per_req"]

    sb, ob, cb = split(b)
    su, ou, cu = split(u)
    tb, tu = sb + ob + cb, su + ou + cu
    return [
        f"* CPU per request, server and load generator together: {tu:.2f} ms unbatched, {tb:.2f} ms "
        f"batched ({tu / tb:.2f}x; the cores are shared, so the throughput ratio follows this one). "
        f"The solver call: {su:.2f} ms for a lone problem, {sb:.2f} ms per problem in batches of "
        f"{b['mean_batch']:.1f} ({su / sb:.1f}x less). The work around it (gRPC, decoding and checks, "
        "queueing, the fit's steps outside the solver, encoding, metrics, thread hand-offs, the "
        f"client): {ou + cu:.2f} ms unbatched, {ob + cb:.2f} ms batched (batching shares the "
        "per-call part of it too, not the per-request part). With the solver this much cheaper per "
        f"batched problem, that work is {100 * (ob + cb) / tb:.0f}% of a batched request's CPU; "
        "even a free batched "
        f"solve would give at most {tu / (ob + cb):.1f}x. (The solver column is the wall time "
        "of the solver call as the server sees it, from when the solver could start it: the round "
        "trip to a solver process is included, a wait behind the batch before it is not; server "
        "CPU counts the solver processes.) A GPU runs the lanes side by side and takes the solver "
        "off these cores.",
    ]


def _floor_note(cfgs, b, u):
    """The canned server (gRPC alone) at c=64 beside ``batched`` (``b``) and ``unbatched`` (``u``)."""
    f = {r["concurrency"]: r for r in cfgs.get("canned", {}).get("levels", [])}.get(64)
    if f is None:
        return []
    tf, tb, tu = cpu_ms_per_req(f), cpu_ms_per_req(b), cpu_ms_per_req(u)
    return [
        f"* Transport floor (`canned`: the same load generator against a gRPC server that answers "
        f"every `Fit` with one canned answer): {f['throughput_rps']:.0f} req/s at c=64, "
        f"{tf:.2f} ms CPU per request (server {f['server_cpu_ms_per_req']:.2f}, load generator "
        f"{f['client_cpu_ms_per_req']:.2f}). That is {100 * tf / tb:.0f}% of a batched request's "
        f"CPU ({tb:.2f} ms) and {100 * tf / tu:.0f}% of an unbatched one's ({tu:.2f} ms); batching "
        "cannot share it (one call per request). Even if everything else a batched request costs "
        f"were free, batched / unbatched would be at most {tu / tf:.1f}x on this machine (by CPU; "
        f"{f['throughput_rps'] / u['throughput_rps']:.1f}x by throughput, canned / unbatched)."]


def _process_note(cfgs):
    """Where the fits ran: ``batched`` (``--solver-process auto``) against ``batched-thread`` (off)
    and ``batched-process`` (on), and ``unbatched`` against ``unbatched-process``, where both ran."""
    pairs = [(a, p) for a, p in (("batched", "batched-thread"), ("batched", "batched-process"),
                                 ("unbatched", "unbatched-process")) if a in cfgs and p in cfgs]
    if not pairs:
        return []
    cells = []
    for a, p in pairs:
        pa = {r["concurrency"]: r for r in cfgs[a]["levels"]}
        pp = {r["concurrency"]: r for r in cfgs[p]["levels"]}
        cells.append(f"{a} / {p}: " + ", ".join(
            f"c={c}: {pa[c]['throughput_rps'] / pp[c]['throughput_rps']:.2f}x"
            for c in sorted(set(pa) & set(pp))))
    return ["* Solver processes, throughput side by side: " + "; ".join(cells) + ". `batched` and "
            "`unbatched` run the default `--solver-process auto`: fits go to a child process with "
            "its own interpreter lock, with the next full batch already in its pipe, but a lone "
            "request with nothing else computing or queued stays in the server's solver thread (no "
            "round trip). `-thread` keeps every fit in that thread, where the solver's NumPy steps "
            "share the lock with the event loop serving gRPC; `-process` sends every fit to the "
            "child."]


def _pool_note(cfgs):
    """JAX's CPU pool: ``batched`` / ``unbatched`` (``--solver-threads 1``, the default) against
    ``-xla-pool`` (``--solver-threads 0``, XLA's default of a thread per CPU), where both ran."""
    cells = []
    for a in ("batched", "unbatched"):
        if a not in cfgs or f"{a}-xla-pool" not in cfgs:
            continue
        one = {r["concurrency"]: r for r in cfgs[a]["levels"]}
        pool = {r["concurrency"]: r for r in cfgs[f"{a}-xla-pool"]["levels"]}
        cells.append(f"{a} / {a}-xla-pool: " + ", ".join(
            f"c={c}: {one[c]['throughput_rps'] / pool[c]['throughput_rps']:.2f}x throughput, server "
            f"CPU {one[c]['server_cpu_ms_per_req']:.2f} against {pool[c]['server_cpu_ms_per_req']:.2f} "
            "ms/req" for c in sorted(set(one) & set(pool))))
    if not cells:
        return []
    return ["* JAX's CPU pool, side by side: " + "; ".join(cells) + ". The default "
            "`--solver-threads 1` gives JAX's CPU backend one compute thread in the server and in "
            "each solver process; `-xla-pool` runs `--solver-threads 0`, XLA's default of a thread "
            "per CPU (`docs/decisions/0002-solver-threads-1.md` has the fits alone)."]


def _idle_note(cfgs):
    """``batched`` (the default, --flush-when-idle on) against ``batched-wait`` (off), if both ran."""
    if "batched-wait" not in cfgs:
        return []
    b = {r["concurrency"]: r for r in cfgs["batched"]["levels"]}
    w = {r["concurrency"]: r for r in cfgs["batched-wait"]["levels"]}
    cells = "; ".join(f"c={c}: {b[c]['throughput_rps'] / w[c]['throughput_rps']:.2f}x throughput, p50 "
                      f"{b[c]['p50_ms']:.1f} against {w[c]['p50_ms']:.1f} ms, mean batch "
                      f"{b[c]['mean_batch']:.1f} against {w[c]['mean_batch']:.1f}"
                      for c in sorted(set(b) & set(w)))
    return ["* `--flush-when-idle` (on in `batched`, off in `batched-wait`): a lone client no longer "
            "waits the 2 ms delay for company, and clients in step still batch (the rule switches "
            f"itself off while waiting gathers batch-mates). Side by side: {cells}. At c >= 4 the "
            "two batch alike (same mean batch) and their ratio moves by 10-15% from run to run."]


if __name__ == "__main__":
    sys.exit(main())
