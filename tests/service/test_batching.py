"""Dynamic batching against a real server: batches form, answers equal the unbatched ones, a failed
batch fails only its own requests, a device failure re-runs the batch on the CPU."""
import asyncio
import time

import grpc
import numpy as np
import pytest

from l1pca.client import AsyncClient, Client, ClientError
from l1pca.kernels import L1PCA
from l1pca.kernels.fitting import fit_many
from l1pca.service.testing import ServerThread, value


def _data(i, n=20, d=4):
    rng = np.random.default_rng(1000 + i)
    X = rng.normal(size=(n, 2)) @ rng.normal(size=(2, d)) + 0.3 * rng.normal(size=(n, d))
    X[0] += 6.0
    return X


async def _fit_all(target, jobs, **kw):
    async with AsyncClient(target, timeout_s=60) as client:
        return await asyncio.gather(*(client.fit(X, K, seed=seed, **kw) for X, K, seed in jobs),
                                    return_exceptions=True)


@pytest.mark.slow
def test_200_concurrent_fits_form_batches_and_equal_the_unbatched_answer():
    jobs = [(_data(i, n=16 + i % 5), 1 + i % 2, i) for i in range(200)]
    with ServerThread(max_batch_size=32, max_delay_ms=20) as srv:
        models = asyncio.run(_fit_all(srv.target, jobs))
        m = srv.metrics()
        batches = value(m, "l1pca_batch_size_count")
        assert value(m, "l1pca_batch_size_sum") == 200
        assert 200 / batches > 1.0, f"{batches} batches for 200 requests: nothing was batched"
        assert value(m, "l1pca_requests_total", method="Fit", code="OK") == 200
        with Client(srv.target, timeout_s=30) as client:  # the same requests one at a time
            alone = [client.fit(X, K, seed=seed) for X, K, seed in jobs[:10]]
    for (X, K, seed), model in zip(jobs, models):
        assert not isinstance(model, Exception), model
        est = L1PCA(K, random_state=seed, backend="numpy").fit(X)  # the direct, unbatched fit
        np.testing.assert_array_equal(model.components, est.components_)
        assert model.threshold == est.threshold_
    for a, b in zip(alone, models[:10]):
        np.testing.assert_array_equal(a.components, b.components)


@pytest.fixture(scope="module")
def jax_server():
    # Warm-up compiles the (16, 8) bucket for K=1 at batch sizes 1, 2, 4 and 8.
    with ServerThread(backend="jax", max_batch_size=8, max_delay_ms=20, warmup_shapes=((16, 4),),
                      warmup_components=(1,)) as srv:
        yield srv


@pytest.mark.slow
def test_jax_batches_equal_the_direct_call_and_the_unbatched_answer(jax_server):
    from l1pca.kernels.solve import DEFAULT_N_INIT

    srv = jax_server
    assert srv.server.ready
    # Warm-up compiled every padded batch size, a lone request's too, where the fits run (the
    # solver process): no request waits for XLA.
    compiled = srv.server.executor.compiled_buckets()
    assert {(b, 16, 8, 1, DEFAULT_N_INIT, True, True) for b in (1, 2, 4, 8)} <= compiled
    jobs = [(_data(i, n=13 + i % 4, d=3 + i % 2), 1, i) for i in range(40)]  # one bucket, K=1
    before = value(srv.metrics(), "l1pca_batch_size_count")
    models = asyncio.run(_fit_all(srv.target, jobs))
    m = srv.metrics()
    batches = value(m, "l1pca_batch_size_count") - before
    assert 40 / batches > 1.0
    assert value(m, "l1pca_build_info", backend="jax", device="cpu") == 1
    with Client(srv.target, timeout_s=30) as client:
        alone = [client.fit(X, K, seed=seed) for X, K, seed in jobs[:5]]
    for (X, K, seed), model in zip(jobs, models):
        direct = fit_many([X], K, seeds=[seed], backend="jax")[0]
        np.testing.assert_array_equal(model.components, direct.components)
        assert model.threshold == direct.threshold and model.backend == "jax"
    for a, b in zip(alone, models[:5]):
        np.testing.assert_array_equal(a.components, b.components)


def test_a_failed_batch_fails_only_its_own_requests():
    # Seed 666 makes its batch raise an unexpected error (fault injection, tests only).
    with ServerThread(max_delay_ms=300, flush_when_idle=False, fault_inject="internal_seed=666") as srv:
        X = _data(0)
        jobs = [(X, 1, 666), (X, 1, 1), (X, 2, 2), (_data(1, n=40, d=12), 1, 3)]
        results = asyncio.run(_fit_all(srv.target, jobs))
        assert [type(r).__name__ for r in results] == ["ClientError", "ClientError", "Model", "Model"]
        for r in results[:2]:
            assert r.code == grpc.StatusCode.INTERNAL
            assert "ref " in r.details and "Traceback" not in r.details
        with Client(srv.target, timeout_s=10) as client:  # still serving
            assert client.fit(X, 1, seed=5).components.shape == (1, 4)


def test_a_bad_matrix_found_by_the_solver_fails_alone():
    rng = np.random.default_rng(0)
    small, huge = rng.normal(size=(40, 3)), rng.normal(size=(60, 8))  # same bucket, K=2
    with ServerThread(max_delay_ms=300, flush_when_idle=False) as srv:
        results = asyncio.run(_fit_all(srv.target, [(small, 2, 0), (huge, 2, 0), (small, 2, 1)],
                                       method="exact"))
        assert isinstance(results[1], ClientError)
        assert results[1].code == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_candidates" in results[1].details
        for r, seed in ((results[0], 0), (results[2], 1)):
            est = L1PCA(2, method="exact", random_state=seed).fit(small)
            np.testing.assert_array_equal(r.components, est.components_)


def test_a_device_failure_reruns_the_batch_on_the_cpu(caplog):
    jobs = [(_data(i), 1, i) for i in range(6)]
    with ServerThread(max_delay_ms=50, fault_inject="gpu_oom") as srv:
        models = asyncio.run(_fit_all(srv.target, jobs))
        m = srv.metrics()
        batches = value(m, "l1pca_batch_size_count")
        assert value(m, "l1pca_cpu_fallback_total") == batches >= 1
    for (X, K, seed), model in zip(jobs, models):
        est = L1PCA(K, random_state=seed, backend="numpy").fit(X)
        np.testing.assert_array_equal(model.components, est.components_)
        assert model.backend == "numpy"
    assert any("re-running it on the CPU" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("split", [False, True])
def test_an_idle_solver_takes_a_partial_batch_at_once_and_a_busy_one_lets_it_fill(split):
    """--flush-when-idle (the default): a lone request is not held for --max-delay-ms while nothing
    computes; requests that arrive while a batch (of another shape) computes queue and go together
    when it ends; with --split-batches on, as two halves, the second ahead to wait in the solver
    process's pipe while the first computes."""
    rng = np.random.default_rng(5)
    big = rng.standard_normal((30000, 30))  # a solve of about half a second, another shape bucket
    big[:600] *= 20.0
    plain = dict(support_fraction=None, cell_robust=False)  # the batcher's test, not the detector's
    small = [(_data(i), 1, i) for i in range(10)]
    with ServerThread(max_batch_size=16, max_delay_ms=5000, split_batches=split) as srv:
        with Client(srv.target, timeout_s=30) as client:
            t0 = time.perf_counter()
            client.fit(_data(99), 1, seed=0)
            assert time.perf_counter() - t0 < 2.5  # not the 5 s delay

        async def load():
            async with AsyncClient(srv.target, timeout_s=60) as client:
                slow = asyncio.ensure_future(client.fit(big, 1, seed=0, **plain))
                while value(srv.metrics(), "l1pca_batch_size_count") < 2:  # the big one computes
                    await asyncio.sleep(0.005)
                fast = await asyncio.gather(*(client.fit(X, K, seed=s, **plain) for X, K, s in small))
                return await slow, fast

        t0 = time.perf_counter()
        _, models = asyncio.run(load())
        assert time.perf_counter() - t0 < 4.5  # nothing waited for the delay
        m = srv.metrics()
    # The lone one, the big one, the ten together (or in two halves).
    assert value(m, "l1pca_batch_size_count") == (4 if split else 3)
    assert value(m, "l1pca_batch_size_sum") == 12
    assert value(m, "l1pca_batch_flushes_total", reason="idle") == 3
    assert value(m, "l1pca_batch_flushes_total", reason="ahead") == (1 if split else 0)
    assert value(m, "l1pca_batch_flushes_total", reason="delay") == 0
    for (X, K, seed), model in zip(small, models):
        est = L1PCA(K, random_state=seed, backend="numpy", **plain).fit(X)
        np.testing.assert_array_equal(model.components, est.components_)


def test_without_idle_flush_a_partial_batch_waits_for_the_delay():
    with ServerThread(max_delay_ms=600, flush_when_idle=False) as srv, \
            Client(srv.target, timeout_s=30) as client:
        t0 = time.perf_counter()
        client.fit(_data(0), 1, seed=0)
        assert time.perf_counter() - t0 >= 0.6
        m = srv.metrics()
        assert value(m, "l1pca_batch_flushes_total", reason="delay") == 1
        assert value(m, "l1pca_batch_flushes_total", reason="idle") == 0


def test_auto_on_the_cpu_serves_k_of_3_or_more_on_numpy():
    """--backend auto resolves to JAX on the CPU, but K >= 3 batches run on NumPy (many times faster
    there); the choice depends on K only, so answers still never depend on batch-mates."""
    jobs = [(_data(i, n=24, d=6), 3, i) for i in range(6)]
    with ServerThread(backend="auto", warmup_shapes=(), max_delay_ms=50) as srv:
        assert srv.server.executor.backend == "jax"
        models = asyncio.run(_fit_all(srv.target, jobs))
    for (X, K, seed), model in zip(jobs, models):
        assert not isinstance(model, Exception), model
        assert model.backend == "numpy"
        est = L1PCA(K, random_state=seed, backend="numpy").fit(X)
        np.testing.assert_array_equal(model.components, est.components_)
