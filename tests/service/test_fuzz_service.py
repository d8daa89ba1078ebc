"""Fuzzing every RPC of a real server with hypothesis: malformed bytes, garbage messages, adversarial
matrices.

Each case checks: the right status code (OK, or INVALID_ARGUMENT with a message; never INTERNAL,
UNKNOWN or a crash), an answer well within the deadline, finite orthonormal components when a fit
succeeds, no memory allocated for claimed-but-absent data, and that the next request is served. The
examples are derandomised (the same few hundred cases on every run); ``bench/fuzz_soak.py`` runs
the same generators, randomised, for 10,000+ cases.
"""
import resource

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_strategies import (
    RPCS,
    adversarial_fit,
    check_answer,
    garbage_matrix_request,
    model_msg,
    raw_call,
    timed_raw_call,
)
from l1pca.proto import wire
from l1pca.v1 import l1pca_pb2 as pb

FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TIMEOUT_S = 10.0
LIMITS = dict(max_rows=1_000_000, max_cols=100_000, max_n_init=16)
SERVER_OPTIONS = dict(max_delay_ms=0.5, **LIMITS)  # the `server` fixture (tests/conftest.py)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def model(channel):
    X = np.random.default_rng(1).normal(size=(30, 4))
    call = raw_call(channel, "Fit")
    req = pb.FitRequest(x=wire.encode_matrix(X), options=pb.FitOptions(n_components=2, seed=0))
    return pb.FitResponse.FromString(call(req.SerializeToString(), timeout=10)).model


def _served(channel):
    """The next request is served."""
    info = pb.ServerInfo.FromString(raw_call(channel, "GetServerInfo")(b"", timeout=5))
    assert info.backend == "numpy"


def _send(channel, method, payload):
    code, details, out, elapsed = timed_raw_call(channel, method, payload, TIMEOUT_S)
    assert elapsed < TIMEOUT_S / 2, f"{method} took {elapsed:.1f} s"
    return code, details, out


@settings(max_examples=100, **FUZZ)
@given(method=st.sampled_from(RPCS), payload=st.binary(max_size=512))
def test_malformed_bytes_answer_invalid_argument_or_ok(channel, method, payload):
    code, details, out = _send(channel, method, payload)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (code, details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert details
    _served(channel)


def test_bytes_that_are_no_protobuf_name_the_message(channel):
    code, details, _ = _send(channel, "Fit", b"\xff\xff\xff\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid l1pca.v1.FitRequest message" in details


@settings(max_examples=120, **FUZZ)
@given(case=garbage_matrix_request(max_rows=LIMITS["max_rows"], max_cols=LIMITS["max_cols"]))
def test_garbage_matrices_and_options_never_allocate_the_claimed_size(channel, model, case):
    method, request = case
    if method in ("Transform", "ScoreOutliers") and request.HasField("model"):
        request.model.CopyFrom(model_msg(request.model, model))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, details, out = _send(channel, method, request.SerializeToString())
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    check_answer(method, request, code, details, out)
    assert grown_mib < 64, f"peak RSS grew {grown_mib:.0f} MiB on a {request.ByteSize()}-byte request"
    _served(channel)


@settings(max_examples=200, **FUZZ)
@given(case=adversarial_fit())
def test_adversarial_matrices_fit_to_finite_orthonormal_components_or_invalid_argument(channel, case):
    method, request = case
    code, details, out = _send(channel, method, request.SerializeToString())
    check_answer(method, request, code, details, out)
    _served(channel)


@settings(max_examples=60, **FUZZ)
@given(case=adversarial_fit(rpc="Transform") | adversarial_fit(rpc="ScoreOutliers"))
def test_adversarial_matrices_against_a_model(channel, model, case):
    method, request = case
    request.model.CopyFrom(model_msg(request.model, model))
    code, details, out = _send(channel, method, request.SerializeToString())
    check_answer(method, request, code, details, out)
    _served(channel)


EDGE_SHAPES = {
    "1e6 x 1": np.random.default_rng(2).normal(size=(1_000_000, 1)),
    "1 x 1e5": np.random.default_rng(3).normal(size=(1, 100_000)),
    "1 x 1": np.array([[3.0]]),
}


@pytest.mark.parametrize("name", sorted(EDGE_SHAPES))
def test_extreme_shapes(channel, name):
    X = EDGE_SHAPES[name]
    request = pb.FitRequest(x=wire.encode_matrix(X), options=pb.FitOptions(n_components=1, seed=0))
    code, details, out = _send(channel, "Fit", request.SerializeToString())
    check_answer("Fit", request, code, details, out)
    assert code == grpc.StatusCode.OK, details
    _served(channel)
