"""Background compiles (l1pca.kernels.compile_queue): with ``compile="background"`` a bucket whose
JAX program is not compiled runs on NumPy at once, its program compiles in a worker thread, and the
next bucket of the shape runs on JAX, with the same answer."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from l1pca.kernels import SolveOptions
from l1pca.kernels.compile_queue import COMPILES, CompileQueue, compiled, program_key
from l1pca.kernels.fitting import fit_many
from l1pca.kernels.solve import bucket_shape, jax_batch_size

# The solver's compile switch, not the detector: the plain fit solves the matrices as given (the
# detector's first fit would solve 75% of the rows, another bucket).
PLAIN = dict(support_fraction=None, cell_robust=False)


def _problems(count, n, d, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        X = rng.standard_normal((n, 2)) @ rng.standard_normal((2, d)) + 0.3 * rng.standard_normal((n, d))
        X[:2] += 8 * rng.standard_normal((2, d))
        out.append(X)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("K", [1, 2])
def test_a_fit_never_waits_and_answers_alike_across_the_switch(K):
    # A shape no other test compiles: rows 40 -> bucket 64, columns 7 -> 8; batches of 3 -> 4.
    Xs = _problems(3, 40, 7, seed=K)
    opts = SolveOptions(backend="jax", n_init=5, compile="background")
    key = program_key(3, bucket_shape(40, 7), K, 5)
    assert key == (jax_batch_size(3), 64, 8, K, 5, True, True)
    assert not compiled(key)
    events = []
    COMPILES.add_listener(events.append)
    try:
        before = fit_many(Xs, K, options=opts, seeds=[1, 2, 3], **PLAIN)
        assert {m.backend for m in before} == {"numpy"}  # ran at once, on the host
        assert key in COMPILES.pending() or compiled(key)
        assert COMPILES.wait_idle(300)
        assert compiled(key)
        after = fit_many(Xs, K, options=opts, seeds=[1, 2, 3], **PLAIN)
    finally:
        COMPILES.remove_listener(events.append)
    assert {m.backend for m in after} == {"jax"}
    for a, b in zip(before, after):  # same local optimum: components to rounding
        np.testing.assert_allclose(b.components, a.components, atol=1e-9)
        assert b.objective == pytest.approx(a.objective, rel=1e-12)
        assert b.threshold == pytest.approx(a.threshold, rel=1e-9)
    kinds = [(e.kind, e.key) for e in events]
    assert kinds[:1] == [("queued", key)] and ("compiled", key) in kinds
    assert next(e for e in events if e.kind == "compiled").seconds > 0


@pytest.mark.slow
def test_same_signs_on_numpy_and_on_the_compiled_program_over_many_problems():
    """The host path and the JAX program take the same steps (one step rule): over 24 problems of
    one bucket, the signs and components agree."""
    Xs = _problems(24, 30, 6, seed=9)
    host = fit_many(Xs, 2, backend="numpy", n_init=4, seeds=list(range(24)), **PLAIN)
    COMPILES.request(program_key(24, bucket_shape(30, 6), 2, 4))
    assert COMPILES.wait_idle(300)
    jx = fit_many(Xs, 2, backend="jax", n_init=4, seeds=list(range(24)), compile="background",
                  **PLAIN)
    assert {m.backend for m in jx} == {"jax"}
    for a, b in zip(host, jx):
        np.testing.assert_allclose(b.components, a.components, atol=1e-9)


def test_the_queue_compiles_each_key_once_in_order_and_reports_failures():
    done = []
    # Keys no real program has (buckets are powers of two >= 8), whatever other tests compiled.
    a, b, bad, c = ((1, rows, 8, 1, 8, True, True) for rows in (3, 5, 7, 11))

    release = threading.Event()

    def fake_compile(key):  # stands for XLA: the queue's own logic is what is tested here
        release.wait(10)  # held until the duplicate request below (else b may be done by then)
        if key == bad:
            raise RuntimeError("no such program")
        done.append(key)

    q = CompileQueue(compile_fn=fake_compile)
    events = []
    q.add_listener(events.append)
    assert q.request(a) and q.request(b) and q.request(bad)
    assert not q.request(b)  # queued already
    release.set()
    assert q.wait_idle(10)
    assert done == [a, b]
    assert q.failed == {bad: "RuntimeError: no such program"}
    assert not q.request(bad)  # a failed key stays on the host path, not retried forever
    assert sorted(e.kind for e in events) == ["compiled", "compiled", "failed"] + ["queued"] * 3
    assert [e.key for e in events if e.kind != "queued"] == [a, b, bad]  # in the order queued
    q.request(c)
    assert q.cancel(10)  # drops what is queued, waits for what runs
    assert q.pending() == ()


@pytest.mark.slow
def test_with_a_persistent_cache_the_compile_runs_in_a_worker_process(tmp_path):
    """The serving process only loads the program: XLA compiles it in a compile worker process at
    nice 19 (a fresh interpreter, since the cache must be set before JAX's first compile)."""
    import subprocess
    import sys

    script = f"""
import numpy as np
from l1pca.kernels.backends import use_compile_cache
use_compile_cache({str(tmp_path / 'cache')!r})
from l1pca.kernels import compile_queue as cq
from l1pca.kernels.fitting import fit_many
X = np.random.default_rng(0).standard_normal((40, 6))
host = fit_many([X], 2, backend="jax", seeds=[0], n_init=4, compile="background",
                support_fraction=None, cell_robust=False)[0]
assert host.backend == "numpy"
assert cq.COMPILES.wait_idle(300) and not cq.COMPILES.failed
worker = next(iter(cq._WORKERS.values()))
assert worker.proc is not None and worker.proc.poll() is None  # the compile ran there
import os
assert os.getpriority(os.PRIO_PROCESS, worker.proc.pid) == 19
jx = fit_many([X], 2, backend="jax", seeds=[0], n_init=4, compile="background",
              support_fraction=None, cell_robust=False)[0]
assert jx.backend == "jax"
np.testing.assert_allclose(jx.components, host.components, atol=1e-9)
cq.close_workers()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
    assert any((tmp_path / "cache").iterdir())  # the program went through the shared cache
