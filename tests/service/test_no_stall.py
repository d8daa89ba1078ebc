"""No stalls (issue 27): SERVING without waiting for the compiler, a new shape answered at once on
the host path while its program compiles in the background (logged, counted), one server per port,
and oversized requests refused with what to do, counted and logged. Real servers on loopback."""
from __future__ import annotations

import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from l1pca.client import Client, ClientError
from l1pca.service.testing import ServerThread, sample_sum, value, wait_until

X = np.random.default_rng(3).normal(size=(40, 6))


@pytest.mark.slow
def test_serving_at_once_and_a_new_shape_answers_on_the_host_path_until_its_program_is_ready():
    t0 = time.monotonic()
    # The default path of `l1pca serve` on the CPU: JAX, solver processes, warm-up in the background.
    with ServerThread(backend="jax", warmup_wait=False, warmup_shapes=((16, 4),),
                      warmup_components=(1,), max_batch_size=2) as srv:
        ready_s = time.monotonic() - t0
        with Client(srv.target, timeout_s=120, retry=None) as client:
            t1 = time.monotonic()
            first = client.fit(X, 2, seed=5)  # a shape nothing compiled: answered on NumPy now
            first_s = time.monotonic() - t1
            assert first.backend == "numpy"
            m = srv.metrics()
            assert sample_sum(m, "l1pca_host_path_fits_total") >= 1
            assert srv.server.executor.wait_compiles(600)
            assert wait_until(lambda: sample_sum(srv.metrics(), "l1pca_compile_queue_depth") == 0,
                              timeout=30)
            again = client.fit(X, 2, seed=5)  # the compiled program now
        m = srv.metrics()
    assert again.backend == "jax"
    np.testing.assert_allclose(again.components, first.components, atol=1e-9)
    assert again.objective == pytest.approx(first.objective, rel=1e-12)
    assert value(m, "l1pca_compiles_total", outcome="ok") >= 2  # the warm-up's and the new shape's
    assert value(m, "l1pca_compiles_total", outcome="failed") == 0
    assert sample_sum(m, "l1pca_compile_duration_seconds_count") >= 2
    # No compile in the way: SERVING and the first answer took seconds, not a compile each.
    assert ready_s < 30 and first_s < 5, (ready_s, first_s)


def test_a_second_server_on_a_bound_port_fails_naming_the_port():
    with ServerThread() as first:
        second = ServerThread(port=first.server.port)
        second._thread.start()
        with pytest.raises(OSError, match=f"port 127.0.0.1:{first.server.port}.*in use"):
            second.run(second.server.start())
        second.run(second.server.stop(0))
        second.loop.call_soon_threadsafe(second.loop.stop)
        with Client(first.target, retry=None) as client:  # the first one still serves alone
            assert client.fit(X, 1, seed=1).n_features == 6


@pytest.mark.slow
def test_l1pca_serve_on_a_bound_port_exits_non_zero_with_the_port_in_the_message(tmp_path):
    with ServerThread() as first:
        port = first.server.port
        proc = subprocess.run([sys.executable, "-m", "l1pca.client.cli", "serve", "--port", str(port),
                               "--metrics-port", "0", "--backend", "numpy", "--warmup-shapes", ""],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"127.0.0.1:{port}" in proc.stderr and "in use" in proc.stderr


def test_an_oversized_request_is_refused_with_what_to_do_and_counted():
    with ServerThread(max_request_bytes=20_000) as srv:
        big = np.random.default_rng(0).normal(size=(300, 6))  # 14,400 bytes of data: fits
        huge = np.random.default_rng(0).normal(size=(600, 6))  # 28,800 bytes: over the limit
        with Client(srv.target, retry=None) as client:
            assert client.fit(big, 1, seed=0).n_samples == 300
            with pytest.raises(ClientError) as err:
                client.fit(huge, 1, seed=0)
        m = srv.metrics()
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    for hint in ("--max-request-bytes=20000", "float32", "split the rows", "l1pca fit"):
        assert hint in err.value.details
    assert value(m, "l1pca_oversized_requests_total") == 1
    assert value(m, "l1pca_requests_total", method="Fit", code="RESOURCE_EXHAUSTED") == 1
