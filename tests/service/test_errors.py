"""Bad input, deadlines, a full queue and cancelled calls, against a real server (raw stubs, so the
client's own checks do not stop the bad requests first)."""
import struct
import time

import grpc
import numpy as np
import pytest

from l1pca.client import Client, ClientError
from l1pca.proto import wire
from l1pca.service.testing import ServerThread, value, wait_until
from l1pca.v1 import l1pca_pb2 as pb
from l1pca.v1 import l1pca_pb2_grpc as pb_grpc

X = np.random.default_rng(0).normal(size=(20, 4))
SERVER_OPTIONS = dict(max_rows=1000, max_cols=50, max_n_init=16)  # the `server` fixture (conftest.py)


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.L1PCAStub(channel)


def _fit(x=None, **options):
    return pb.FitRequest(x=wire.encode_matrix(X) if x is None else x,
                         options=pb.FitOptions(n_components=options.pop("K", 1), **options))


def _matrix(rows, cols, data, dtype=pb.DTYPE_FLOAT64):
    return pb.Matrix(rows=rows, cols=cols, dtype=dtype, data=data)


def _nan_x():
    bad = X.copy()
    bad[3, 2] = np.nan
    return wire.encode_matrix(bad)


def _inf_x():
    bad = X.astype(np.float32)
    bad[5, 1] = np.inf
    return wire.encode_matrix(bad)


BAD_FITS = {
    "short data": (lambda: _fit(_matrix(20, 4, b"\0" * 100)), "has 100 bytes; shape (20, 4)"),
    "long data": (lambda: _fit(_matrix(2, 2, b"\0" * 40)), "needs 2 * 2 * 8 = 32"),
    "nan": (lambda: _fit(_nan_x()), "x must be finite; found nan at row 3, column 2"),
    "inf float32": (lambda: _fit(_inf_x()), "x must be finite; found inf at row 5, column 1"),
    "K too large": (lambda: _fit(K=5), "n_components=5 must be in [1, min(n_samples, n_features)=4]"),
    "unknown method": (lambda: _fit(method=99), "options.method=99 is not one of METHOD_BITFLIP"),
    "unknown centre": (lambda: _fit(center=7), "options.center=7"),
    "unknown dtype": (lambda: _fit(_matrix(2, 2, b"\0" * 32, dtype=7)), "x.dtype=7 is not supported"),
    "unspecified dtype": (lambda: _fit(_matrix(2, 2, b"\0" * 32, dtype=0)),
                          "x.dtype=DTYPE_UNSPECIFIED is not supported"),
    "empty shape": (lambda: _fit(_matrix(0, 4, b"")), "at least one row"),
    "missing x": (lambda: pb.FitRequest(options=pb.FitOptions(n_components=1)), "x is missing"),
    "huge claimed shape": (lambda: _fit(_matrix(10**12, 10, b"\0" * 80)),
                           "x.rows=1000000000000 exceeds this server's limit of 1000 rows"),
    "too many columns": (lambda: _fit(_matrix(2, 51, b"\0" * 816)), "limit of 50 columns"),
    "contamination": (lambda: _fit(contamination=0.7), "options.contamination=0.7 must be in (0, 0.5]"),
    "n_init": (lambda: _fit(n_init=17), "options.n_init=17 exceeds this server's limit of 16"),
}


@pytest.mark.parametrize("case", sorted(BAD_FITS))
def test_bad_fit_input_is_invalid_argument_and_the_server_goes_on(stub, case):
    make, expected = BAD_FITS[case]
    t0 = time.perf_counter()
    with pytest.raises(grpc.RpcError) as err:
        stub.Fit(make(), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert expected in err.value.details()
    assert time.perf_counter() - t0 < 2.0  # answered at once; a huge claimed shape allocates nothing
    assert stub.Fit(_fit(), timeout=10).model.components.rows == 1  # the next request is served


def test_bad_transform_and_score_input(stub):
    model = stub.Fit(_fit(K=2), timeout=10).model
    cases = [
        (stub.Transform, pb.TransformRequest(x=wire.encode_matrix(X)), "model is missing"),
        (stub.Transform, pb.TransformRequest(model=model, x=wire.encode_matrix(X[:, :3])),
         "x has 3 columns; the model was fitted on 4 features"),
        (stub.ScoreOutliers, pb.ScoreOutliersRequest(x=wire.encode_matrix(X)),
         "needs either `model`"),
    ]
    broken = pb.Model()
    broken.CopyFrom(model)
    broken.components.data = broken.components.data[:-8]
    cases.append((stub.Transform, pb.TransformRequest(model=broken, x=wire.encode_matrix(X)),
                  "model.components.data has 56 bytes"))
    nan_model = pb.Model()
    nan_model.CopyFrom(model)
    nan_model.center.data = struct.pack("<4d", 0.0, float("nan"), 0.0, 0.0)
    cases.append((stub.ScoreOutliers, pb.ScoreOutliersRequest(model=nan_model, x=wire.encode_matrix(X)),
                  "model.center holds NaN"))
    for rpc, request, expected in cases:
        with pytest.raises(grpc.RpcError) as err:
            rpc(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in err.value.details()
    resp = stub.Transform(pb.TransformRequest(model=model, x=wire.encode_matrix(X)), timeout=10)
    assert (resp.projections.rows, resp.projections.cols) == (20, 2)


def test_a_deadline_shorter_than_the_queue_wait_is_never_computed():
    with ServerThread(max_delay_ms=1500, flush_when_idle=False) as srv, \
            Client(srv.target, retry=None) as client:
        t0 = time.perf_counter()
        with pytest.raises(ClientError) as err:
            client.fit(X, 1, timeout_s=0.3)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.perf_counter() - t0 < 1.0
        assert wait_until(lambda: value(srv.metrics(), "l1pca_requests_total", method="Fit",
                                        code="DEADLINE_EXCEEDED") == 1, timeout=5)
        m = srv.metrics()
        assert value(m, "l1pca_queue_dropped_total", reason="deadline") == 1
        assert value(m, "l1pca_batch_size_count") == 0  # nothing was computed
        assert value(m, "l1pca_queue_depth") == 0
        assert client.fit(X, 1, timeout_s=10).n_features == 4  # waits its 1.5 s and is served


def test_a_full_queue_answers_resource_exhausted_at_once():
    with ServerThread(max_queue=2, max_delay_ms=1500, flush_when_idle=False) as srv:
        with grpc.insecure_channel(srv.target) as channel:
            stub = pb_grpc.L1PCAStub(channel)
            waiting = [stub.Fit.future(_fit(), timeout=20) for _ in range(2)]
            assert wait_until(lambda: value(srv.metrics(), "l1pca_queue_depth") == 2, timeout=10)
            t0 = time.perf_counter()
            with pytest.raises(grpc.RpcError) as err:
                stub.Fit(_fit(), timeout=20)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue is full (2 requests waiting)" in err.value.details()
            assert time.perf_counter() - t0 < 0.5
            assert all(f.result().model.components.rows == 1 for f in waiting)


@pytest.mark.slow
def test_a_cancelled_call_leaves_the_queue():
    with ServerThread(max_delay_ms=2000, flush_when_idle=False) as srv:
        with grpc.insecure_channel(srv.target) as channel:
            stub = pb_grpc.L1PCAStub(channel)
            call = stub.Fit.future(_fit(), timeout=20)
            assert wait_until(lambda: value(srv.metrics(), "l1pca_queue_depth") == 1, timeout=10)
            call.cancel()
            assert wait_until(lambda: value(srv.metrics(), "l1pca_queue_depth") == 0, timeout=5)
            m = srv.metrics()
            assert value(m, "l1pca_queue_dropped_total", reason="cancelled") == 1
            time.sleep(2.2)  # past the batch delay: the cancelled request must not be computed
            assert value(srv.metrics(), "l1pca_batch_size_count") == 0
            assert stub.Fit(_fit(), timeout=20).model.components.rows == 1
