"""CPU per batched ``solve_bucket`` call, measured in a fresh interpreter with a variant of the JAX
search set up first: the worker and the side-by-side loop that ``bench/compaction.py`` and
``bench/lane_products.py`` share.

Choices the JAX search reads when it is traced (``COMPACT_FACTOR``, the product form) can only be
compared in separate interpreters; each measurement runs ``setup`` (Python, with ``bitflip_jax`` in
scope) before the compile. JAX's CPU pool runs at one thread, as the service runs it. Data: 64 x 16
matrices, K = 2, 8 starts, either standard normal (``gaussian``: long searches) or the matrices
``bench/service_load.py`` sends, median-centred as the service centres them (``service``).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent

DATA = ("gaussian", "service")

BATCHES = (1, 16, 64)

_WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
setup, data, b, calls = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
from l1pca.kernels.backends import init_jax_cpu
init_jax_cpu(1)  # as the service runs it (--solver-threads 1)
import numpy as np
from l1pca.kernels import bitflip_jax
exec(setup, {"bitflip_jax": bitflip_jax})
rng = np.random.default_rng(0)
if data == "service":
    from service_load import make_pool
    pool = np.stack(make_pool(64, 16, 2, size=256))
    pool = pool - np.median(pool, axis=1, keepdims=True)
def draw():
    X = pool[rng.integers(0, len(pool), b)] if data == "service" else rng.standard_normal((b, 64, 16))
    return X, rng.standard_normal((b, 7, 16, 2))
bitflip_jax.solve_bucket(*draw(), max_flips=3000, tol=1e-9)  # compile
cpu = []
for _ in range(calls):
    X, G = draw()
    c0 = time.process_time()
    bitflip_jax.solve_bucket(X, G, max_flips=3000, tol=1e-9)
    cpu.append(time.process_time() - c0)
print(json.dumps({"cpu_ms": 1e3 * float(np.median(cpu)), "calls": calls}))
"""


def bucket_cpu_ms(setup: str, data: str, batch: int, calls: int) -> float:
    """Median CPU milliseconds per ``solve_bucket`` call of ``batch`` matrices, over ``calls`` calls
    after the compile, in a fresh interpreter that ran ``setup`` first."""
    if data not in DATA:
        raise ValueError(f"data={data!r} must be one of {DATA}")
    out = subprocess.run([sys.executable, "-c", _WORKER, str(BENCH), setup, data, str(batch),
                          str(calls)], capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["cpu_ms"]


def compare_variants(variants: dict, rounds: int, calls: int, label=str) -> list[dict]:
    """Each variant (key -> ``setup``) on each kind of data and batch size of :data:`BATCHES`, the
    variants taking turns (the order rotates each round) for ``rounds`` rounds, so that their
    ratios are side by side on a noisy machine. ``calls`` per measurement, a third of that for
    batches of 64. Returns one row per data and batch: ``runs`` (key -> CPU ms per round) and
    ``median_cpu_ms`` (key -> median of the rounds); prints each as it ends."""
    keys = list(variants)
    rows = []
    for data in DATA:
        for batch in BATCHES:
            n = calls if batch < 64 else max(2, calls // 3)
            got = {k: [] for k in keys}
            for r in range(rounds):
                for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                    got[k].append(bucket_cpu_ms(variants[k], data, batch, n))
            med = {k: float(np.median(v)) for k, v in got.items()}
            rows.append({"data": data, "batch": batch, "runs": got, "median_cpu_ms": med})
            print(f"{data} b={batch}: " + ", ".join(f"{label(k)} {med[k]:.2f} ms" for k in keys),
                  flush=True)
    return rows
