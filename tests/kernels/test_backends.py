"""Backend selection on this machine, and the GPU paths where a GPU exists (skipped otherwise)."""
import numpy as np
import pytest

from l1pca.kernels import backends, solve, solve_batch

HAS_CUPY = backends.cupy_usable()
HAS_JAX_GPU = backends.jax_gpu_usable()


@pytest.mark.slow
def test_auto_on_cpu_picks_numpy_for_single_and_jax_for_batches(monkeypatch):
    monkeypatch.setenv(backends.FORCE_CPU_ENV, "1")
    monkeypatch.setattr(backends, "numba_usable", lambda: False)  # the rule without the compiled loop
    assert backends.gpu_backends() == ()
    assert backends.resolve("auto", "bitflip", 1) == "numpy"
    assert backends.resolve("auto", "bitflip", backends.JAX_MIN_BATCH - 1) == "numpy"
    assert backends.resolve("auto", "bitflip", backends.JAX_MIN_BATCH) == "jax"
    assert backends.resolve("auto", "exact", 100) == "numpy"
    # K >= 3 stays on NumPy on the CPU (bounded selection), even where JAX is compiled.
    assert backends.resolve("auto", "bitflip", backends.JAX_MIN_BATCH, n_components=2) == "jax"
    assert backends.resolve("auto", "bitflip", backends.JAX_MIN_BATCH, compiled=True,
                            n_components=3) == "numpy"
    assert backends.device_description() == "cpu"
    rng = np.random.default_rng(0)
    Xs = [rng.standard_normal((20, 5)) for _ in range(backends.JAX_MIN_BATCH)]
    # n_init=5 keys programs no other test compiles.
    assert {r.backend for r in solve_batch(Xs, 1, random_state=0, n_init=5)} == {"jax"}
    assert solve(Xs[0], 1, n_init=5).backend == "numpy"  # a batch of one is another program
    assert {r.backend for r in solve_batch(Xs, 3, random_state=0, n_init=2)} == {"numpy"}


@pytest.mark.slow
def test_auto_uses_jax_once_the_bucket_is_compiled(monkeypatch):
    monkeypatch.setenv(backends.FORCE_CPU_ENV, "1")
    monkeypatch.setattr(backends, "numba_usable", lambda: False)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 6))
    assert solve(X, 2, n_init=7).backend == "numpy"
    ref = solve(X, 2, n_init=7, backend="jax", random_state=0)  # compiles the (64 x 8, batch 1) program
    other = rng.standard_normal((50, 5))  # same bucket
    res = solve(other, 2, n_init=7)
    assert res.backend == "jax"
    assert solve(X, 2, n_init=7, random_state=0).objective == ref.objective


@pytest.mark.skipif(not backends.numba_usable(), reason="numba is not installed")
def test_auto_on_cpu_runs_batches_on_the_compiled_host_loop(monkeypatch):
    monkeypatch.setenv(backends.FORCE_CPU_ENV, "1")
    assert backends.resolve("auto", "bitflip", 4096, compiled=True, n_components=2) == "numpy"
    assert backends.resolve("auto", "bitflip", 4096, compiled=True, n_components=2,
                            n_samples=64) == "numpy"
    # Large problems: the compiled loop is slower than the screened search there; JAX as before.
    assert backends.resolve("auto", "bitflip", 16, compiled=True, n_components=2,
                            n_samples=backends.COMPILED_MAX_SAMPLES) == "jax"
    backends.warm_compiled_loop(background=False)
    assert backends.compiled_loop(wait=False) is not None
    monkeypatch.setenv(backends.COMPILED_LOOP_ENV, "0")  # switched off: JAX for compiled batches
    assert backends.resolve("auto", "bitflip", 4096, compiled=True, n_components=2) == "jax"
    res = solve(np.random.default_rng(0).standard_normal((30, 5)), 2, random_state=0)
    ref = solve(np.random.default_rng(0).standard_normal((30, 5)), 2, random_state=0, backend="numpy")
    np.testing.assert_array_equal(res.signs, ref.signs)


@pytest.mark.skipif(HAS_CUPY, reason="CuPy with a GPU is present; the refusal only applies without one")
def test_cupy_backend_refused_without_gpu():
    with pytest.raises(ValueError, match="backend='cupy' needs CuPy and a CUDA GPU"):
        solve(np.ones((4, 2)), 1, backend="cupy")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUPY, reason="no CuPy-usable CUDA GPU on this machine")
@pytest.mark.parametrize("K", [1, 2, 3])
def test_cupy_equals_numpy(K):
    rng = np.random.default_rng(K)
    X = rng.standard_normal((300, 12)) + rng.standard_t(2, (300, 12))
    a = solve(X, K, random_state=1, backend="numpy")
    b = solve(X, K, random_state=1, backend="cupy")
    assert b.backend == "cupy"
    np.testing.assert_array_equal(b.signs, a.signs)
    np.testing.assert_allclose(b.components, a.components, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_JAX_GPU, reason="JAX has no GPU backend on this machine")
@pytest.mark.parametrize("K", [1, 2])
def test_jax_gpu_batch_equals_numpy(K):
    rng = np.random.default_rng(10 + K)
    Xs = [rng.standard_normal((64, 16)) for _ in range(32)]
    batch = solve_batch(Xs, K, random_state=2, backend="jax")
    for X, res in zip(Xs, batch):
        ref = solve(X, K, random_state=2, backend="numpy")
        np.testing.assert_array_equal(res.signs, ref.signs)
        assert res.objective == pytest.approx(ref.objective, rel=1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUPY or HAS_JAX_GPU), reason="no usable GPU on this machine")
def test_auto_prefers_the_gpu(monkeypatch):
    monkeypatch.delenv(backends.FORCE_CPU_ENV, raising=False)
    assert backends.resolve("auto", "bitflip", 1) in ("cupy", "jax")
    assert backends.device_description() != "cpu"


def test_init_jax_cpu_checks_its_argument():
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="threads="):
            backends.init_jax_cpu(bad)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"),
                    reason="CPU affinity is Linux-only")
def test_init_jax_cpu_sizes_the_pool_once_and_pins_no_thread():
    """In a fresh interpreter: the first call sizes XLA's CPU pool and returns True; every thread
    keeps the process's CPUs; a second call (JAX started) changes nothing and returns False."""
    import json
    import os
    import subprocess
    import sys

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU here: a one-thread pool is XLA's default too")
    script = r"""
import json, os
from l1pca.kernels.backends import init_jax_cpu
mask = os.sched_getaffinity(0)
first = init_jax_cpu(1)
import jax.numpy as jnp
float(jnp.arange(4.0).sum())  # run a program: the pool exists and is used
second = init_jax_cpu(1)
names, pinned = [], 0
for tid in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{tid}/comm") as f:
        names.append(f.read().strip())
    pinned += os.sched_getaffinity(int(tid)) != mask
print(json.dumps({"first": first, "second": second, "pool": sum("XLAEigen" in n for n in names),
                  "pinned": pinned}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert (got["first"], got["second"], got["pinned"]) == (True, False, 0)
    if got["pool"] == 0:
        pytest.skip("no thread named tf_XLAEigen: this jaxlib names its CPU pool threads otherwise")
    assert got["pool"] == 1
