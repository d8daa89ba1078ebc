"""The products of a flip step in the batched JAX search, written as XLA runs them fastest on the CPU.

Each flip step of :mod:`l1pca.kernels.bitflip_jax` updates ``A = Y B`` and ``P = Y^T A`` for every
lane (one start of one problem); under ``vmap`` these are batches of (16 x 64) @ (64 x 2)-sized
products for the service's 64 x 16, K = 2 problems. XLA's CPU backend runs such a batch as a batched
matrix product much more slowly than the same arithmetic as batched matrix-vector products, one per
column (``bitflip_jax._by_columns``). Two measurements:

1. The step's three products alone (``A + Y delta``, ``Y^T A``, ``A^T A``), and the whole flip step
   traced with each form, in jitted loops of 30 dependent steps over 128 and 8 lanes, the forms
   alternating in one process: microseconds per lane and step (best of the repeats: the work is
   fixed, so the least disturbed run is its cost).
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

from _bucket_cpu import compare_variants
from _report import machine, machine_sentence, write_results

ROOT = Path(__file__).resolve().parents[1]

FORMS = {"columns": "", "matmul": "bitflip_jax._by_columns = lambda M, X: M @ X"}


def products_us(lanes, K, repeats, steps=30):
    """Microseconds per lane and step, for each form (best of ``repeats``): of the three products
    alone, and of the whole flip step (``bitflip_jax._flip_step``, traced with each form)."""
    from l1pca.kernels.backends import init_jax_cpu

    init_jax_cpu(1)
    import jax
    import jax.numpy as jnp
    from jax import lax

    from l1pca.kernels import bitflip_jax

    def matmul(M, X):
        return M @ X

    forms = {"columns": bitflip_jax._by_columns, "matmul": matmul}
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        Y = jnp.asarray(rng.standard_normal((lanes, 16, 64)))
        B = jnp.asarray(np.sign(rng.standard_normal((lanes, 64, K))))
        g = jnp.sum(Y * Y, axis=1)
        A0 = jnp.einsum("ldn,lnk->ldk", Y, B)
        P0 = jnp.einsum("ldn,ldk->lnk", Y, A0)
        state = bitflip_jax.FlipState(
            B=B, A=A0, P=P0, C=jnp.einsum("zdk,zdj->zkj", A0, A0),
            flipped=jnp.zeros(B.shape, bool), n_flips=jnp.zeros(lanes, jnp.int32),
            steps=jnp.zeros(lanes, jnp.int32), done=jnp.zeros(lanes, bool),
            converged=jnp.zeros(lanes, bool))

        def products(prod):
            def step(Y, B, A):
                A = A + prod(Y, 1e-3 * B)
                P = prod(Y.T, A)
                return A + 1e-9 * (A.T @ A).sum() + 1e-9 * P[:A.shape[0]]

            @jax.jit
            def loop(Y, B, A):
                return lax.fori_loop(0, steps, lambda i, a: jax.vmap(step)(Y, B, a), A)
            return lambda: loop(Y, B, A0)

        def flip_step(prod):
            def step(Y, g, st):
                return bitflip_jax._flip_step(Y, g, 10 ** 6, 1e-9, True, st)

            @jax.jit
            def loop(Y, g, st):
                return lax.fori_loop(0, steps, lambda i, s: jax.vmap(step)(Y, g, s), st)
            kept = bitflip_jax._by_columns
            bitflip_jax._by_columns = prod  # read while the loop is traced, on its first call
            try:
                jax.block_until_ready(loop(Y, g, state))
            finally:
                bitflip_jax._by_columns = kept
            return lambda: loop(Y, g, state)

        runs = {(what, name): make(prod) for what, make in (("products", products),
                                                             ("flip step", flip_step))
                for name, prod in forms.items()}
        best = {key: float("inf") for key in runs}
        for _ in range(repeats):
            for key, run in runs.items():
                t0 = time.process_time()
                jax.block_until_ready(run())
                best[key] = min(best[key], (time.process_time() - t0) / steps / lanes * 1e6)
    return {what: {name: best[(what, name)] for name in forms} for what in ("products", "flip step")}


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
            for what, us in got.items():
                micro.append({"what": what, "lanes": lanes, "K": K, "us_per_lane_step": us})
                print(f"{what}, {lanes} lanes, K={K}: "
                      + ", ".join(f"{f} {v:.3f} us" for f, v in us.items()), flush=True)

    rows = compare_variants(FORMS, args.rounds, args.calls)

    info = machine()
    result = {"machine": info, "rounds": args.rounds, "calls": args.calls, "micro": micro,
              "rows": rows}
    lines = [
        "# Products of a flip step in the batched JAX search: `bench/lane_products.py`", "",
        machine_sentence(info) + "JAX's CPU pool at one thread, as the service runs it.", "",
        "## 1. The products alone, and the whole flip step (64 x 16 per lane)", "",
        f"Microseconds per lane and step, best of {args.repeats} runs of 30 dependent steps, the "
        "forms alternating in one process. `products`: `A + Y delta`, `Y^T A` and `A^T A`; `flip "
        "step`: `bitflip_jax._flip_step` (gains, sweep mask, choice and update) traced with each "
        "form.", "",
        "| what | lanes | K | `@` (batched matrix product) | by columns (matrix-vector) | "
        "columns / `@` |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in micro:
        u = m["us_per_lane_step"]
        lines.append(f"| {m['what']} | {m['lanes']} | {m['K']} | {u['matmul']:.3f} | "
                     f"{u['columns']:.3f} | {u['columns'] / u['matmul']:.2f} |")
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
