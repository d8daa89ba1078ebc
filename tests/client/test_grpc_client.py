"""The Python client and the CLI against real servers: retries, deadlines, round-robin, errors."""
import asyncio
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from l1pca.client import AsyncClient, Client, ClientError, Model, Retry
from l1pca.client.cli import main as cli_main
from l1pca.client.grpc_client import resolve_target
from l1pca.kernels import L1PCA
from l1pca.service.testing import ServerThread, free_port, sample_sum, value
from l1pca.v1 import l1pca_pb2 as pb
from l1pca.v1 import l1pca_pb2_grpc as pb_grpc

X = np.random.default_rng(1).normal(size=(40, 6))
SERVER_OPTIONS = dict(max_n_init=16)  # the `server` fixture (tests/conftest.py)


def test_the_client_retries_into_a_server_that_starts_late():
    port = free_port()
    late = ServerThread(port=port)
    starter = threading.Timer(1.5, late.__enter__)
    starter.start()
    try:
        t0 = time.perf_counter()
        with Client(f"127.0.0.1:{port}", timeout_s=30) as client:
            model = client.fit(X, 2, seed=0)
        assert time.perf_counter() - t0 >= 1.4
        np.testing.assert_array_equal(model.components,
                                      L1PCA(2, random_state=0, backend="numpy").fit(X).components_)
    finally:
        starter.join()
        late.stop()


def test_retries_stop_at_the_deadline():
    port = free_port()  # nothing listens there
    t0 = time.perf_counter()
    with Client(f"127.0.0.1:{port}", timeout_s=1.0) as client, pytest.raises(ClientError) as err:
        client.fit(X, 1)
    assert time.perf_counter() - t0 < 2.5
    assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_no_retry_for_a_permanent_error_and_the_code_is_kept(server):
    before = value(server.metrics(), "l1pca_requests_total", method="Fit", code="INVALID_ARGUMENT")
    with Client(server.target, timeout_s=10) as client, pytest.raises(ClientError) as err:
        client.fit(X, 1, n_init=17)  # over the server's limit of 16
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "options.n_init=17 exceeds this server's limit of 16" in err.value.details
    assert isinstance(err.value.__cause__, grpc.RpcError)
    after = value(server.metrics(), "l1pca_requests_total", method="Fit", code="INVALID_ARGUMENT")
    assert after - before == 1


def test_resource_exhausted_is_retried_with_backoff():
    with ServerThread(max_queue=1, max_delay_ms=300, flush_when_idle=False) as srv:
        async def both():
            async with AsyncClient(srv.target, timeout_s=20,
                                   retry=Retry(initial_s=0.05, maximum_s=0.2)) as client:
                return await asyncio.gather(*(client.fit(X, 1, seed=i) for i in range(3)))

        models = asyncio.run(both())
        m = srv.metrics()
    assert len(models) == 3
    assert value(m, "l1pca_requests_total", method="Fit", code="RESOURCE_EXHAUSTED") >= 1
    assert value(m, "l1pca_requests_total", method="Fit", code="OK") == 3


def test_round_robin_over_a_list_of_addresses():
    with ServerThread() as a, ServerThread() as b:
        with Client(f"{a.target},{b.target}", timeout_s=10) as client:
            for i in range(20):
                client.fit(X, 1, seed=i)
        counts = [value(s.metrics(), "l1pca_requests_total", method="Fit", code="OK") for s in (a, b)]
    assert sum(counts) == 20 and min(counts) >= 5, counts


def test_client_side_checks_send_nothing(server):
    before = value(server.metrics(), "l1pca_request_duration_seconds_count", method="Fit")
    bad = X.copy()
    bad[2, 3] = np.inf
    with Client(server.target) as client:
        for args, expected in (((bad, 1), "X must be finite; found inf at row 2, column 3"),
                               ((X, 7), "n_components=7 must be 'auto' or an int in [1, min"),
                               ((X[0], 1), "X must be 2-D (n_samples, n_features); got 1-D"),
                               ((X.astype(complex), 1), "real numbers")):
            with pytest.raises(ClientError) as err:
                client.fit(*args)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert expected in err.value.details
        with pytest.raises(ClientError, match="method='pca'"):
            client.fit(X, 1, method="pca")
        with pytest.raises(ClientError, match="fitted on 6"):
            client.transform(client.fit(X, 1), X[:, :4])
    assert value(server.metrics(), "l1pca_request_duration_seconds_count", method="Fit") == before + 1


def test_async_client_equals_the_blocking_client(server):
    async def run():
        async with AsyncClient(server.target, timeout_s=10) as client:
            model = await client.fit(X, 2, seed=3)
            Z = await client.transform(model, X)
            scores = await client.score_outliers(X, model=model, return_entry_scores=True)
            return model, Z, scores

    model, Z, scores = asyncio.run(run())
    with Client(server.target, timeout_s=10) as client:
        ref = client.fit(X, 2, seed=3)
    np.testing.assert_array_equal(model.components, ref.components)
    np.testing.assert_array_equal(Z, ref.transform(X))
    np.testing.assert_array_equal(scores.entry_scores, ref.score_entries(X))


def test_model_converts_to_and_from_the_estimator(server, tmp_path):
    with Client(server.target, timeout_s=10) as client:
        model = client.fit(X, 2, seed=0)
    est = L1PCA.from_model(model)
    np.testing.assert_array_equal(est.transform(X), model.transform(X))
    back = (L1PCA(2, random_state=0, backend="numpy").fit(X)).to_model()
    np.testing.assert_array_equal(back.components, model.components)
    model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(Model.load(tmp_path / "m.npz").components, model.components)


def test_retry_backoff_is_full_jitter_and_capped():
    retry = Retry(initial_s=0.1, maximum_s=1.0, multiplier=2.0)
    rng = random.Random(0)
    for attempt in range(8):
        cap = min(1.0, 0.1 * 2 ** attempt)
        sleeps = [retry.sleep_s(attempt, rng) for _ in range(200)]
        assert 0 <= min(sleeps) and max(sleeps) <= cap and max(sleeps) > 0.5 * cap
    assert retry.retryable(grpc.StatusCode.UNAVAILABLE, "")
    assert retry.retryable(grpc.StatusCode.CANCELLED, "CANCELLED")
    assert not retry.retryable(grpc.StatusCode.INVALID_ARGUMENT, "")
    assert not retry.retryable(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               "Received message larger than max (5 vs. 4)")
    assert not retry.retryable(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               "the request is 5 bytes, more than this server's --max-request-bytes=4")
    assert retry.retryable(grpc.StatusCode.RESOURCE_EXHAUSTED, "the queue is full (--max-queue=1)")


def test_resolve_target():
    assert resolve_target("127.0.0.1:5000") == "127.0.0.1:5000"
    assert resolve_target("dns:///l1pca.ns.svc:50051") == "dns:///l1pca.ns.svc:50051"
    assert resolve_target("127.0.0.1:1, 127.0.0.2:2") == "ipv4:127.0.0.1:1,127.0.0.2:2"
    assert resolve_target("[::1]:1,[::2]:2") == "ipv6:[::1]:1,[::2]:2"
    assert resolve_target("localhost:7,127.0.0.1:8") == "ipv4:127.0.0.1:7,127.0.0.1:8"
    with pytest.raises(ValueError, match="HOST:PORT"):
        resolve_target("a,b")


def test_cli_fit_and_score_with_server_equal_local(server, tmp_path):
    data = tmp_path / "x.npy"
    Xo = X.copy()
    Xo[:2] += 12.0
    np.save(data, Xo)
    common = ["-k", "2", "--seed", "4", "--backend", "numpy", "--quiet"]
    assert cli_main(["fit", str(data), "-o", str(tmp_path / "local"), *common]) == 0
    assert cli_main(["fit", str(data), "-o", str(tmp_path / "remote"), "--server", server.target,
                     *common]) == 0
    for name in ("components.npy", "projections.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "local" / name),
                                      np.load(tmp_path / "remote" / name))
    assert cli_main(["score", str(data), "-o", str(tmp_path / "slocal"), *common]) == 0
    assert cli_main(["score", str(data), "-o", str(tmp_path / "sremote"), "--server", server.target,
                     *common]) == 0
    assert (tmp_path / "slocal" / "sample_scores.csv").read_text() == \
        (tmp_path / "sremote" / "sample_scores.csv").read_text()
    model = str(tmp_path / "local" / "model.npz")
    assert cli_main(["score", str(data), "-o", str(tmp_path / "mremote"), "--server", server.target,
                     "--model", model, "--quiet"]) == 0
    assert cli_main(["score", str(data), "-o", str(tmp_path / "mlocal"), "--model", model,
                     "--quiet"]) == 0
    remote = json.loads((tmp_path / "mremote" / "summary.json").read_text())
    local = json.loads((tmp_path / "mlocal" / "summary.json").read_text())
    assert remote["outliers"] == local["outliers"] and remote["n_outliers"] == local["n_outliers"]
    np.testing.assert_allclose(np.load(tmp_path / "mremote" / "entry_scores.npy"),
                               np.load(tmp_path / "mlocal" / "entry_scores.npy"), rtol=0, atol=0)


def test_cli_exits_2_when_the_server_refuses_the_input(server, tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, X)
    status = cli_main(["fit", str(data), "--server", server.target, "--n-init", "99", "--quiet",
                       "-o", str(tmp_path / "o")])
    assert status == 2
    assert capsys.readouterr().err.strip() == (
        "l1pca fit: error: INVALID_ARGUMENT: options.n_init=99 exceeds this server's limit of 16")


def test_cli_with_nan_data_says_the_same_with_and_without_server(server, tmp_path, capsys):
    bad = X.copy()
    bad[5, 3] = np.nan
    np.save(tmp_path / "x.npy", bad)
    words = "DATA must be finite; found nan at row 5, column 3"
    for extra in ([], ["--server", server.target]):
        assert cli_main(["fit", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o"), "--quiet",
                         *extra]) == 2
        assert words in capsys.readouterr().err
    with Client(server.target) as client, pytest.raises(ClientError) as err:
        client.fit(bad, 1)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "X must be finite; found nan at row 5, column 3" in err.value.details
    with pytest.raises(ValueError, match=r"X must be finite; found nan at row 5, column 3"):
        L1PCA(1).fit(bad)


def test_cli_with_no_server_fails_within_the_connect_timeout(tmp_path):
    import subprocess
    import sys

    data = tmp_path / "x.npy"
    np.save(data, X)
    port = free_port()  # nothing listens there
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "l1pca.client.cli", "fit", str(data), "--server",
                        f"127.0.0.1:{port}", "--connect-timeout-s", "1", "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == (f"l1pca fit: server error UNAVAILABLE: no server at 127.0.0.1:{port} "
                                "(nothing answered within 1 s)")
    assert elapsed < 20  # the interpreter's start and imports, then 1 s, not --timeout-s (60)


def test_wait_for_server(server):
    port = free_port()
    for timeout_s in (0.5, 1):
        t0 = time.perf_counter()
        with Client(f"127.0.0.1:{port}", timeout_s=60) as client, pytest.raises(ClientError) as err:
            client.wait_for_server(timeout_s)
        assert time.perf_counter() - t0 < timeout_s + 1.0
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert err.value.details == (f"no server at 127.0.0.1:{port} (nothing answered within "
                                     f"{timeout_s:g} s)")

    async def no_server():
        async with AsyncClient(f"127.0.0.1:{port}") as client:
            await client.wait_for_server(0.5)

    with pytest.raises(ClientError, match="no server at"):
        asyncio.run(no_server())

    async def up():
        async with AsyncClient(server.target) as client:
            await client.wait_for_server(5)
            return await client.fit(X, 1, seed=0)

    with Client(server.target) as client:
        client.wait_for_server(5)  # returns as soon as the channel is connected
        assert client.fit(X, 1, seed=0).n_features == 6
    assert asyncio.run(up()).n_features == 6


def test_a_request_over_the_size_limit_says_what_to_do(tmp_path, capsys):
    rows = np.random.default_rng(2).normal(size=(1600, 8))  # 102 KB as float64
    with ServerThread(max_request_bytes=16 * 1024, max_rows=1000) as srv, \
            Client(srv.target, timeout_s=30) as client:
        # Over the limit (25 KB: the server's refusal) and far over it (102 KB: gRPC's own): one
        # attempt each, no retries, and the advice in either case.
        for X_big in (rows[:400], rows):
            t0 = time.perf_counter()
            with pytest.raises(ClientError) as err:
                client.fit(X_big, 1)
            assert time.perf_counter() - t0 < 2.0
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "more than this server" in err.value.details
            for advice in ("send float32 data (half the bytes)", "split the rows",
                           "a larger --max-request-bytes", "`l1pca fit` without --server"):
                assert advice in err.value.details, err.value.details
            assert err.value.details.startswith("the request is "), err.value.details
        assert client.fit(rows[:400].astype(np.float32)[:300], 1).n_features == 8  # 9.6 KB
        # Once the client knows the limits, it refuses such requests without sending them.
        info = client.server_info()
        assert client.limits == (1000, info.max_cols, 16 * 1024)
        before = sample_sum(srv.metrics(), "l1pca_requests_total", method="Fit")
        with pytest.raises(ClientError) as err:
            client.fit(rows[:400], 1)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.value.details.startswith("the request is ") and \
            "more than this server's --max-request-bytes=16384: send float32" in err.value.details
        with pytest.raises(ClientError) as err:
            client.score_outliers(rows.astype(np.float32)[:, :2], n_components=1)  # 1600 rows
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "X.rows=1600 exceeds this server's limit of 1000 rows" in err.value.details
        assert sample_sum(srv.metrics(), "l1pca_requests_total", method="Fit") == before
        # The CLI: status 1 (the server cannot take it; the input is fine) and the advice.
        np.save(tmp_path / "big.npy", rows[:400])
        assert cli_main(["fit", str(tmp_path / "big.npy"), "--server", srv.target, "--quiet",
                         "-o", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("l1pca fit: server error RESOURCE_EXHAUSTED: the request is ")
        assert "send float32 data" in err


class _CancelsFirst(pb_grpc.L1PCAServicer):
    """A servicer that ends its first calls with CANCELLED, as a shutting-down gRPC server does to the
    calls it has received but not yet started (grpc/grpc#41785), then answers."""

    def __init__(self, n_cancelled):
        self.calls = 0
        self.n_cancelled = n_cancelled

    def GetServerInfo(self, request, context):
        self.calls += 1
        if self.calls <= self.n_cancelled:
            context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        return pb.ServerInfo(version="test")


@pytest.fixture
def cancelling_server():
    servicer = _CancelsFirst(n_cancelled=2)
    srv = grpc.server(ThreadPoolExecutor(2))
    pb_grpc.add_L1PCAServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        srv.stop(0)


def test_cancelled_from_the_server_is_retried(cancelling_server):
    target, servicer = cancelling_server
    with Client(target, timeout_s=10, retry=Retry(initial_s=0.01, maximum_s=0.05)) as client:
        assert client.server_info().version == "test"
    assert servicer.calls == 3

    async def run():
        async with AsyncClient(target, timeout_s=10, retry=Retry(initial_s=0.01)) as client:
            return await client.server_info()

    servicer.calls = 0
    assert asyncio.run(run()).version == "test"
    assert servicer.calls == 3
    # Without retries the status reaches the caller unchanged.
    servicer.calls = 0
    with Client(target, timeout_s=10, retry=None) as client, pytest.raises(ClientError) as err:
        client.server_info()
    assert err.value.code == grpc.StatusCode.CANCELLED and servicer.calls == 1
