"""Soak test: steady load on one ``l1pca serve`` for a long time; RSS growth and latency drift.

Starts the server in a child process (default flags, the JAX backend on this machine's CPU), then
sends an open-loop mix at a fixed rate -- 80% ``Fit`` (64 x 16, K=2), 10% ``Transform``, 10%
``ScoreOutliers`` against a fitted model -- for ``--duration-s`` seconds, and records per window
(``--window-s``): requests sent / ok / failed by code, p50 / p99 latency, the server's RSS and the
machine's load. Every request is counted: sent = ok + each error code.

    python bench/soak.py                         # 10 minutes at 40 requests/s
    python bench/soak.py --duration-s 60 --rate 20

Writes ``bench/results/soak.json`` (``--name`` to change). RSS growth is taken between the end of
the first window (caches and allocator arenas warm) and the end of the run; latency drift compares
the first and last windows.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path

from _reliability import (
    code_name,
    load_average,
    machine,
    make_pool,
    pct,
    rss_mib,
    start_server,
    stop_server,
    write_json,
)


async def soak(target, pid, *, duration_s, rate, window_s, max_outstanding, timeout_s):
    from l1pca.client import AsyncClient

    pool = make_pool(64, 16, 2, size=32)
    windows = []
    cur = {"sent": 0, "ok": 0, "codes": collections.Counter(), "lat": []}
    totals = collections.Counter()
    outstanding = set()
    async with AsyncClient(target, timeout_s=timeout_s, retry=None) as client:
        model = await client.fit(pool[0], 2, seed=0)

        async def one(i, bucket):
            kind = i % 10
            X = pool[i % len(pool)]
            t0 = time.perf_counter()
            try:
                if kind == 8:
                    await client.transform(model, X)
                elif kind == 9:
                    await client.score_outliers(X, model=model)
                else:
                    await client.fit(X, 2, seed=i)
                bucket["ok"] += 1
                bucket["lat"].append(time.perf_counter() - t0)
                totals["OK"] += 1
            except Exception as exc:  # counted by code
                bucket["codes"][code_name(exc)] += 1
                totals[code_name(exc)] += 1

        start = time.perf_counter()
        next_window = start + window_s
        i = 0
        skipped = 0
        while True:
            now = time.perf_counter()
            if now >= next_window or now - start >= duration_s:
                windows.append({"t_s": round(now - start, 1), "sent": cur["sent"], "ok": cur["ok"],
                                "errors": dict(cur["codes"]),
                                "p50_ms": 1e3 * pct(cur["lat"], 50),
                                "p99_ms": 1e3 * pct(cur["lat"], 99),
                                "rss_mib": rss_mib(pid), "load": load_average()})
                w = windows[-1]
                print(f"[{w['t_s']:7.1f} s] sent {w['sent']} ok {w['ok']} errors {w['errors']} "
                      f"p50 {w['p50_ms']:.1f} ms p99 {w['p99_ms']:.1f} ms rss {w['rss_mib']:.1f} MiB "
                      f"load {w['load']:.1f}", flush=True)
                cur = {"sent": 0, "ok": 0, "codes": collections.Counter(), "lat": []}
                next_window += window_s
                if now - start >= duration_s:
                    break
            due = start + i / rate
            if due > now:
                await asyncio.sleep(min(due - now, next_window - now))
                continue
            if len(outstanding) >= max_outstanding:  # never more than this in flight: not sent
                skipped += 1
            else:
                cur["sent"] += 1
                totals["sent"] += 1
                task = asyncio.ensure_future(one(i, cur))
                outstanding.add(task)
                task.add_done_callback(outstanding.discard)
            i += 1
        if outstanding:  # late answers count in the last window
            await asyncio.wait(set(outstanding), timeout=timeout_s + 5)
    return windows, dict(totals), skipped


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration-s", type=float, default=600.0)
    p.add_argument("--rate", type=float, default=40.0, help="requests per second (open loop)")
    p.add_argument("--window-s", type=float, default=30.0)
    p.add_argument("--max-outstanding", type=int, default=256)
    p.add_argument("--timeout-s", type=float, default=30.0)
    p.add_argument("--server-args", default="", help="extra `l1pca serve` flags, space-separated")
    p.add_argument("--name", default="soak", help="result file bench/results/NAME.json")
    args = p.parse_args(argv)
    log_path = Path(tempfile.gettempdir()) / f"l1pca-{args.name}.log"
    proc, target, _mport = start_server(args.server_args.split(), (64, 16), 2, log_path)
    try:
        rss_start = rss_mib(proc.pid)
        windows, totals, skipped = asyncio.run(soak(
            target, proc.pid, duration_s=args.duration_s, rate=args.rate, window_s=args.window_s,
            max_outstanding=args.max_outstanding, timeout_s=args.timeout_s))
    finally:
        code = stop_server(proc)
    answered = sum(v for k, v in totals.items() if k != "sent")
    first, last = windows[0], windows[-1]
    # Drift: the last full window (a final partial one is short and noisy).
    full = [w for w in windows if w["sent"] >= 0.9 * args.rate * args.window_s] or windows
    result = {
        "machine": machine(), "duration_s": args.duration_s, "rate_rps": args.rate,
        "window_s": args.window_s, "server_args": args.server_args, "windows": windows,
        "totals": totals, "answered": answered, "lost": totals.get("sent", 0) - answered,
        "not_sent_backlog": skipped, "server_exit_code": code,
        "rss_mib": {"after_warmup": rss_start, "end_first_window": first["rss_mib"],
                    "end": last["rss_mib"], "max": max(w["rss_mib"] for w in windows),
                    "growth_after_first_window": last["rss_mib"] - first["rss_mib"]},
        "latency_ms": {"first_p50": first["p50_ms"], "first_p99": first["p99_ms"],
                       "last_full_p50": full[-1]["p50_ms"], "last_full_p99": full[-1]["p99_ms"],
                       "p99_all_windows_max": max(w["p99_ms"] for w in windows)},
    }
    path = write_json(args.name, result)
    print(f"wrote {path}: sent {totals.get('sent', 0)}, answered {answered}, lost {result['lost']}; "
          f"RSS {first['rss_mib']:.1f} -> {last['rss_mib']:.1f} MiB; p99 {first['p99_ms']:.1f} -> "
          f"{full[-1]['p99_ms']:.1f} ms")
    return 0 if result["lost"] == 0 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
