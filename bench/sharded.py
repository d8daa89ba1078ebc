"""The sharded L1-BF: correctness on simulated devices, collectives per flip, memory per device.

Runs on 8 simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``, set here when
absent) or on the real devices of a GPU host. Simulated devices share this machine's cores, so their
times show overhead, not speed-up.

1. Same answer on 1, 2, 4 and 8 devices as the single-device solver (signs, objective, flips).
2. Collective operations per flip step, counted in the program.
3. Memory per device from XLA's compiled-memory analysis against N (D=16, K=2): arguments plus
   temporaries, which should fall as 1 / devices.

Prints tables and writes ``bench/results/sharded.md``.

    python bench/sharded.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

from l1pca.kernels import (
    sharded,  # noqa: E402
    solve,  # noqa: E402
)


def correctness(N, D, Ks, device_counts, out):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, D)) * np.linspace(3, 0.5, D)
    X[: N // 50] += 20 * rng.standard_normal((N // 50, D))
    out.append(f"## 1. Same end point as one device (N={N}, D={D}, n_init=2)\n")
    out.append("| K | devices | same signs | objective rel. diff | flips (sharded / single) | time (s) |")
    out.append("|---|---|---|---|---|---|")
    for K in Ks:
        ref = solve(X, K, random_state=0, n_init=2, backend="numpy")
        for nd in device_counts:
            if K >= 3 and nd > 4 and jax.devices()[0].platform == "cpu":
                # Known issue of *simulated* CPU devices: with K >= 3 (LAPACK eigh in the program)
                # 8 device threads on this 2-core box starve each other: XLA's rendezvous of the
                # first all-reduce saw 3 of 8 threads and aborted after 40 s. 1, 2 and 4 run.
                out.append(f"| {K} | {nd} | skipped: simulated CPU devices deadlock (known issue) | | | |")
                continue
            solve(X, K, random_state=0, n_init=2, devices=nd)  # compile
            t0 = time.perf_counter()
            res = solve(X, K, random_state=0, n_init=2, devices=nd)
            dt = time.perf_counter() - t0
            out.append(f"| {K} | {nd} | {np.array_equal(res.signs, ref.signs)} | "
                       f"{abs(res.objective - ref.objective) / ref.objective:.1e} | "
                       f"{res.n_flips} / {ref.n_flips} | {dt:.2f} |")
            print(out[-1], flush=True)
    out.append("")


def collectives(out):
    mesh = sharded.make_mesh(min(4, len(jax.devices())))
    counts = sharded.collectives_per_flip(mesh, 4096, 16, 2)
    out.append("## 2. Collectives per flip step\n")
    out.append("| collective | count per flip | payload |")
    out.append("|---|---|---|")
    payload = {"pmax": "3 floats (best gain, whether any shard has a sweep bit, current value)",
               "pmin": "1 int (lowest tied index)",
               "psum": "d x K floats (each shard's share of the change of Y B)"}
    for name, count in sorted(counts.items()):
        out.append(f"| {name} | {count} | {payload.get(name, '')} |")
    out.append("\nThe P = Y^T A update after a flip is local to each device; per-sample state never moves.\n")


def memory(Ns, D, K, device_counts, out):
    out.append(f"## 3. Memory per device (D={D}, K={K}, one start), from XLA's memory analysis\n")
    out.append("| N | devices | arguments (MiB) | temporaries (MiB) | total per device (MiB) "
               "| N d / devices x 8 B (MiB) |")
    out.append("|---|---|---|---|---|---|")
    for N in Ns:
        for nd in device_counts:
            mesh = sharded.make_mesh(nd)
            with jax.enable_x64(True):
                prog = sharded._search_program(mesh, True, True, True)  # warm start, pair moves, L2 start
                X = jax.ShapeDtypeStruct((N, D), jnp.float64,
                                         sharding=NamedSharding(mesh, P("samples", None)))
                g = jax.ShapeDtypeStruct((D, K), jnp.float64)
                compiled = prog.lower(X, g, jnp.asarray(10, jnp.int32), jnp.asarray(1e-9)).compile()
            mem = compiled.memory_analysis()
            args = mem.argument_size_in_bytes / 2**20
            temp = mem.temp_size_in_bytes / 2**20
            out.append(f"| {N:.0e} | {nd} | {args:.1f} | {temp:.1f} | {args + temp:.1f} | "
                       f"{N * D / nd * 8 / 2**20:.1f} |")
            print(out[-1], flush=True)
    out.append("")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sharded.md"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    devs = jax.devices()
    counts = [n for n in (1, 2, 4, 8) if n <= len(devs)]
    out = ["# Sharded L1-BF\n",
           f"Devices: {len(devs)} x {devs[0].platform} ({devs[0].device_kind}); "
           f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}. Simulated CPU devices share 2 cores, so the "
           "times below are not a speed-up measurement.\n"]
    if args.quick:
        correctness(1000, 6, [1], counts[:2], out)
        collectives(out)
        memory([10_000], 16, 2, counts[:2], out)
    else:
        correctness(20_000, 16, [1, 2, 3], counts, out)
        collectives(out)
        memory([100_000, 1_000_000, 10_000_000], 16, 2, counts, out)
    out.append(f"Run time {time.perf_counter() - t0:.0f} s.")
    report = "\n".join(out) + "\n"
    print(report)
    if not args.quick or args.out != ap.get_default("out"):
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
