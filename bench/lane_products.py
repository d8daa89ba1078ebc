"""The products of a flip step in the batched JAX search, written as XLA runs them fastest on the CPU.

Each flip step of :mod:`l1pca.kernels.bitflip_jax` updates ``A = Y B`` and ``P = Y^T A`` for every
lane (one start of one problem); under ``vmap`` these are batches of (16 x 64) @ (64 x 2)-sized
products for the service's 64 x 16, K = 2 problems. XLA's CPU backend runs such a batch as a batched
matrix product much more slowly than the same arithmetic as batched matrix-vector products, one per
column (``bitflip_jax._by_columns``). Two measurements:

1. The step's three products alone (``A + Y delta``, ``Y^T A``, ``A^T A``) in a jitted loop of 30
   dependent steps over 128 and 8 lanes, both forms alternating in one process: microseconds per
   lane and step (best of the repeats: the work is fixed, so the least disturbed run is its cost).
2. CPU per ``solve_bucket`` call, with the shipped form (``columns``) and with plain ``@``
   (``matmul``, the form before 2026-12-02), each in a fresh interpreter (the form is read when the
   search is traced; ``bench/_bucket_cpu.py``), taking turns for ``--rounds`` rounds; medians.

    python bench/lane_products.py        # writes bench/results/lane_products.{md,json}
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _bucket_cpu import DATA, bucket_cpu_ms
from _report import machine, machine_sentence, write_results

ROOT = Path(__file__).resolve().parents[1]

BATCHES = (1, 16, 64)
FORMS = {"columns": "", "matmul": "bitflip_jax._by_columns = lambda M, X: M @ X"}


def products_us(lanes, K, repeats, steps=30):
    """Microseconds per lane and step of the three products, for each form (best of ``repeats``)."""
    from l1pca.kernels.backends import init_jax_cpu

    init_jax_cpu(1)
    import jax
    import jax.numpy as jnp
    from jax import lax

    from l1pca.kernels.bitflip_jax import _by_columns

    def matmul(M, X):
        return M @ X

    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        Y = jnp.asarray(rng.standard_normal((lanes, 16, 64)))
        B = jnp.asarray(np.sign(rng.standard_normal((lanes, 64, K))))
        A0 = jnp.einsum("ldn,lnk->ldk", Y, B)

        def make(prod):
            def step(Y, B, A):
                A = A + prod(Y, 1e-3 * B)
                P = prod(Y.T, A)
                return A + 1e-9 * (A.T @ A).sum() + 1e-9 * P[:A.shape[0]]

            @jax.jit
            def loop(Y, B, A):
                return lax.fori_loop(0, steps, lambda i, a: jax.vmap(step)(Y, B, a), A)
            jax.block_until_ready(loop(Y, B, A0))
            return loop

        loops = {"columns": make(_by_columns), "matmul": make(matmul)}
        best = {name: float("inf") for name in loops}
        for _ in range(repeats):
            for name, loop in loops.items():
                t0 = time.process_time()
                jax.block_until_ready(loop(Y, B, A0))
                best[name] = min(best[name], (time.process_time() - t0) / steps / lanes * 1e6)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=60, help="timed calls per measurement (a third of "
                                                          "that for batches of 64)")
    p.add_argument("--repeats", type=int, default=50, help="repeats of the products loop")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "lane_products"))
    args = p.parse_args(argv)

    micro = []
    for lanes in (128, 8):
        for K in (1, 2):
            got = products_us(lanes, K, args.repeats)
            micro.append({"lanes": lanes, "K": K, "us_per_lane_step": got})
            print(f"products, {lanes} lanes, K={K}: "
                  + ", ".join(f"{f} {v:.3f} us" for f, v in got.items()), flush=True)

    rows = []
    for data in DATA:
        for batch in BATCHES:
            calls = args.calls if batch < 64 else max(2, args.calls // 3)
            got = {f: [] for f in FORMS}
            for r in range(args.rounds):
                order = list(FORMS) if r % 2 == 0 else list(FORMS)[::-1]
                for form in order:
                    got[form].append(bucket_cpu_ms(FORMS[form], data, batch, calls))
            med = {f: float(np.median(v)) for f, v in got.items()}
            rows.append({"data": data, "batch": batch, "runs": got, "median_cpu_ms": med})
            print(f"{data} b={batch}: " + ", ".join(f"{f} {m:.2f} ms" for f, m in med.items()),
                  flush=True)

    info = machine()
    result = {"machine": info, "rounds": args.rounds, "calls": args.calls, "micro": micro,
              "rows": rows}
    lines = [
        "# Products of a flip step in the batched JAX search: `bench/lane_products.py`", "",
        machine_sentence(info) + "JAX's CPU pool at one thread, as the service runs it.", "",
        "## 1. The three products alone (64 x 16 per lane)", "",
        f"Microseconds per lane and step, best of {args.repeats} runs of 30 dependent steps, the "
        "two forms alternating in one process.", "",
        "| lanes | K | `@` (batched matrix product) | by columns (matrix-vector) | columns / `@` |",
        "|---:|---:|---:|---:|---:|",
    ]
    for m in micro:
        u = m["us_per_lane_step"]
        lines.append(f"| {m['lanes']} | {m['K']} | {u['matmul']:.3f} | {u['columns']:.3f} | "
                     f"{u['columns'] / u['matmul']:.2f} |")
    lines += [
        "", "## 2. CPU per `solve_bucket` call (64 x 16, K=2, 8 starts)", "",
        f"Median of {args.calls} calls ({max(2, args.calls // 3)} for 64 matrices) after the compile, "
        f"in a fresh interpreter per measurement; the forms take turns, {args.rounds} rounds; "
        "medians of the rounds. `gaussian`: standard normal matrices; `service`: the matrices "
        "`bench/service_load.py` sends, median-centred.", "",
        "| data | matrices per call | `@`: CPU ms | by columns: CPU ms | columns / `@` | rounds, `@` "
        "| rounds, by columns |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        med = row["median_cpu_ms"]
        spread = {f: ", ".join(f"{v:.2f}" for v in row["runs"][f]) for f in FORMS}
        lines.append(f"| {row['data']} | {row['batch']} | {med['matmul']:.2f} | "
                     f"{med['columns']:.2f} | {med['columns'] / med['matmul']:.2f} | "
                     f"{spread['matmul']} | {spread['columns']} |")
    lines += ["", "Ratios below 1: the shipped form (`bitflip_jax._by_columns`, K <= 2) is cheaper.",
              ""]
    write_results(args.out, result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
