"""JAX's persistent compilation cache (``--compile-cache-dir``): a restart's warm-up loads the
programs the first start compiled, the answers do not change, and a directory that cannot be used
leaves the cache off without stopping the server. Real ``l1pca serve`` processes on JAX."""
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from l1pca.client import Client
from l1pca.kernels.backends import use_compile_cache

X = np.random.default_rng(7).normal(size=(16, 4))
# --warmup-wait on: the warm-up compiles (or loads) its programs before SERVING, so the first start
# has written them all when it stops.
JAX_FLAGS = ("--backend", "jax", "--warmup-shapes", "16x4", "--warmup-components", "1",
             "--max-batch-size", "2", "--warmup-wait", "on")


def _entries(cache):
    """``{key: last access (ns)}`` of the cache's programs (JAX writes ``<key>-atime`` on every
    read and write when the cache has a size bound)."""
    return {p.name[:-len("-cache")]: int.from_bytes((cache / (p.name[:-len("-cache")] + "-atime"))
                                                    .read_bytes(), "little")
            for p in cache.glob("*-cache")}


def _serve_once(serve_process, *flags):
    """Start, fit X, stop with SIGTERM; the model and the server's log."""
    srv = serve_process(*flags, timeout_s=300)
    proc = srv.proc
    try:
        with Client(srv.target, timeout_s=60, retry=None) as client:
            model = client.fit(X, 1, seed=3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        return model, srv.output()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_restart_loads_every_program_from_the_cache_and_answers_alike(tmp_path, serve_process):
    cache = tmp_path / "jax-cache"
    first, log1 = _serve_once(serve_process, *JAX_FLAGS, "--compile-cache-dir", str(cache))
    assert f"JAX compile cache: {cache}" in log1
    written = _entries(cache)
    assert any(key.startswith("jit__solve_bucket_jit") for key in written), sorted(written)

    second, log2 = _serve_once(serve_process, *JAX_FLAGS, "--compile-cache-dir", str(cache))
    read = _entries(cache)
    assert set(read) == set(written)  # nothing compiled anew
    hits = [key for key in written if read[key] > written[key]]
    assert hits == list(written), sorted(set(written) - set(hits))  # every program came from it
    np.testing.assert_array_equal(second.components, first.components)
    assert (second.threshold, second.objective) == (first.threshold, first.objective)


@pytest.mark.slow
def test_unusable_cache_directory_is_logged_and_the_server_serves(tmp_path, serve_process):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    model, log = _serve_once(serve_process, "--backend", "jax", "--compile-cache-dir",
                             str(blocker / "cache"))
    assert "JAX compile cache off: cannot use" in log and "warm-up compiles every program" in log
    assert model.components.shape == (1, 4)


def test_use_compile_cache_refuses_bad_arguments_before_touching_jax(tmp_path):
    with pytest.raises(ValueError, match="path is empty"):
        use_compile_cache(" ")
    with pytest.raises(ValueError, match="max_bytes"):
        use_compile_cache(tmp_path, max_bytes=0)
    (tmp_path / "f").write_text("")
    with pytest.raises(OSError):
        use_compile_cache(tmp_path / "f" / "cache")


def test_use_compile_cache_sets_jax_up_in_a_fresh_process(tmp_path):
    code = f"""
import jax, jax.numpy as jnp
from l1pca.kernels.backends import use_compile_cache
path = use_compile_cache({str(tmp_path / "c")!r}, max_bytes=2**20)
jax.jit(lambda x: x * 2 + 1)(jnp.arange(3.0)).block_until_ready()
print(path, jax.config.jax_compilation_cache_max_size,
      jax.config.jax_persistent_cache_min_compile_time_secs)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tmp_path / "c"), str(2**20), "0.0"]
    assert list(Path(tmp_path / "c").glob("*-cache"))  # even a program this quick is kept
