"""Hypothesis strategies and answer checks for fuzzing the l1pca service.

Shared by ``tests/service/test_fuzz_service.py`` (a few hundred derandomised cases in ``make test``) and
``bench/fuzz_soak.py`` (10,000+ random cases). Requests are built as messages and sent as bytes
through a raw channel method (no client-side checks in the way).
"""
from __future__ import annotations

import time

import grpc
import numpy as np
from hypothesis import strategies as st

from l1pca.proto import wire
from l1pca.v1 import l1pca_pb2 as pb

RPCS = ("Fit", "Transform", "ScoreOutliers", "GetServerInfo")
ALLOWED = (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
"""Every fuzz case must end in one of these: a served request or a refusal that names the field."""

SCALES = (5e-324, 1e-310, 1e-300, 1e-8, 1.0, 1e8, 1e150, 1e200, 1e308)
"""Denormals to the largest doubles; the solvers accept |x| <= 1e150 and refuse more, by name."""

FAMILIES = ("gauss", "zeros", "constant columns", "duplicated columns", "rank 1", "one outlier",
            "integers")


def raw_call(channel, method):
    """The method as a bytes-in, bytes-out callable (no (de)serialisation on the client)."""
    return channel.unary_unary(f"/l1pca.v1.L1PCA/{method}")


def timed_raw_call(channel, method, payload, timeout_s):
    """Send raw bytes; ``(code, details, response bytes or None, seconds)`` whatever the outcome."""
    t0 = time.perf_counter()
    try:
        out = raw_call(channel, method)(payload, timeout=timeout_s)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        out, code, details = None, err.code(), err.details() or ""
    return code, details, out, time.perf_counter() - t0


def _u64():
    return st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1),
                     st.sampled_from([2**32, 2**63, 2**64 - 1]))


@st.composite
def garbage_matrix(draw, *, max_rows, max_cols):
    """A Matrix whose fields disagree: claimed shapes up to 2**64 - 1 (or just over the limits),
    unknown dtypes, byte counts that do not match -- and sometimes a consistent small one."""
    rows = draw(st.one_of(_u64(), st.sampled_from([max_rows, max_rows + 1])))
    cols = draw(st.one_of(_u64(), st.sampled_from([max_cols, max_cols + 1])))
    dtype = draw(st.integers(-3, 6))
    if draw(st.booleans()) and 0 < rows * cols <= 256 and dtype in (1, 2):
        size = rows * cols * (4 if dtype == 1 else 8) + draw(st.sampled_from([0, 0, 0, -1, 1]))
        data = draw(st.binary(min_size=max(0, size), max_size=max(0, size)))
    else:
        data = draw(st.binary(max_size=256))
    return pb.Matrix(rows=rows, cols=cols, dtype=dtype % 2**32 if dtype >= 0 else dtype, data=data)


@st.composite
def garbage_options(draw):
    opts = pb.FitOptions(n_components=draw(st.one_of(st.integers(0, 5), st.integers(0, 2**32 - 1))),
                         method=draw(st.integers(0, 8)),
                         n_init=draw(st.one_of(st.integers(0, 20), st.integers(0, 2**32 - 1))),
                         center=draw(st.integers(0, 6)))
    if draw(st.booleans()):
        opts.seed = draw(_u64())
    if draw(st.booleans()):
        opts.contamination = draw(st.floats(allow_nan=True, allow_infinity=True))
    return opts


@st.composite
def garbage_matrix_request(draw, *, max_rows, max_cols):
    """``(rpc, request)`` with a garbage matrix and garbage options; Transform / ScoreOutliers carry
    a placeholder model that :func:`model_msg` turns into a real or a broken one."""
    x = draw(garbage_matrix(max_rows=max_rows, max_cols=max_cols))
    rpc = draw(st.sampled_from(("Fit", "Fit", "Transform", "ScoreOutliers", "ScoreOutliers")))
    if rpc == "Fit":
        return rpc, pb.FitRequest(x=x, options=draw(garbage_options()))
    if rpc == "ScoreOutliers" and draw(st.booleans()):
        return rpc, pb.ScoreOutliersRequest(fit=draw(garbage_options()), x=x,
                                            return_entry_scores=draw(st.booleans()))
    placeholder = pb.Model(n_samples=1)
    if draw(st.booleans()):  # a broken model: its components are garbage
        placeholder.components.CopyFrom(draw(garbage_matrix(max_rows=max_cols, max_cols=max_cols)))
    if rpc == "Transform":
        return rpc, pb.TransformRequest(model=placeholder, x=x)
    return rpc, pb.ScoreOutliersRequest(model=placeholder, x=x,
                                        return_entry_scores=draw(st.booleans()))


def model_msg(placeholder, good):
    """The real model, with the placeholder's garbage components when it has some."""
    out = pb.Model()
    out.CopyFrom(good)
    if placeholder.HasField("components"):
        out.components.CopyFrom(placeholder.components)
    return out


def _matrix(draw, n, d, family, scale):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if family == "gauss":
        X = rng.normal(size=(n, d))
    elif family == "zeros":
        X = np.zeros((n, d))
    elif family == "constant columns":
        X = np.ones((n, 1)) * rng.normal(size=(1, d))
    elif family == "duplicated columns":
        X = np.repeat(rng.normal(size=(n, 1)), d, axis=1)
    elif family == "rank 1":
        X = np.outer(rng.normal(size=n), rng.normal(size=d))
    elif family == "one outlier":
        X = rng.normal(size=(n, d))
        X[rng.integers(n)] *= 1e6
    else:
        X = rng.integers(-3, 4, size=(n, d)).astype(np.float64)
    with np.errstate(over="ignore", under="ignore"):
        return X * scale


@st.composite
def adversarial_fit(draw, *, rpc="Fit", n_features=4):
    """``(rpc, request)``: a well-formed request with an adversarial matrix (denormal to 1e308,
    zeros, constant / duplicated columns, rank 1, N=1, D=1, K=D), sometimes sent as float32
    (1e200 becomes inf) or with its bytes relabelled as a float32 matrix of twice the columns."""
    n = draw(st.one_of(st.integers(1, 3), st.integers(1, 40)))
    d = n_features if rpc != "Fit" else draw(st.one_of(st.integers(1, 2), st.integers(1, 10)))
    family = draw(st.sampled_from(FAMILIES))
    scale = draw(st.sampled_from(SCALES)) * draw(st.sampled_from([1.0, -1.0]))
    X = _matrix(draw, n, d, family, scale)
    how = draw(st.sampled_from(("float64", "float64", "float32", "relabel")))
    if how == "float32":
        with np.errstate(over="ignore"):
            x = wire.encode_matrix(X.astype(np.float32))
    else:
        x = wire.encode_matrix(X)
        if how == "relabel":  # the same bytes, claimed to be float32 with twice the columns
            x.dtype, x.cols = pb.DTYPE_FLOAT32, 2 * d
    method = draw(st.sampled_from((1, 1, 1, 2, 3, 4, 5)))
    if method == 2:  # exact: keep it small (the kernels refuse large problems anyway)
        n = min(n, 10)
        X = X[:n, : min(d, 3)]
        x = wire.encode_matrix(X)
    cols = int(x.cols)
    K = draw(st.integers(1, max(1, min(n, cols))))
    if draw(st.booleans()):
        K = min(n, cols)  # K = D (or N)
    opts = pb.FitOptions(n_components=K, method=method, n_init=draw(st.integers(0, 4)),
                         center=draw(st.integers(0, 3)), seed=draw(st.integers(0, 2**32 - 1)))
    if draw(st.integers(0, 3)) == 0:
        opts.contamination = draw(st.sampled_from([0.01, 0.1, 0.5]))
    if rpc == "Fit":
        return rpc, pb.FitRequest(x=x, options=opts)
    if rpc == "Transform":
        return rpc, pb.TransformRequest(model=pb.Model(n_samples=1), x=x)
    if draw(st.booleans()):
        return rpc, pb.ScoreOutliersRequest(fit=opts, x=x, return_entry_scores=draw(st.booleans()))
    return rpc, pb.ScoreOutliersRequest(model=pb.Model(n_samples=1), x=x,
                                        return_entry_scores=draw(st.booleans()))


def _check_model(model):
    Q = wire.decode_matrix(model.components, name="components")
    K = Q.shape[0]
    assert np.isfinite(Q).all(), "components hold NaN/inf"
    assert np.allclose(Q @ Q.T, np.eye(K), atol=1e-6), f"components not orthonormal: {Q @ Q.T}"
    assert np.isfinite(model.objective) and model.objective >= 0, model.objective
    assert np.isfinite(model.threshold), model.threshold
    assert np.isfinite(wire.decode_matrix(model.center, name="center")).all()


def check_answer(method, request, code, details, out):
    """The checks of one fuzz case (raises AssertionError with what was wrong)."""
    assert code in ALLOWED, f"{method}: {code} {details!r}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert details and len(details) < 2000, details
        return
    if method == "Fit":
        resp = pb.FitResponse.FromString(out)
        _check_model(resp.model)
        assert resp.model.components.cols == request.x.cols
    elif method == "Transform":
        resp = pb.TransformResponse.FromString(out)
        Z = wire.decode_matrix(resp.projections, name="projections")
        assert Z.shape == (request.x.rows, request.model.components.rows)
        assert np.isfinite(Z).all()
    elif method == "ScoreOutliers":
        resp = pb.ScoreOutliersResponse.FromString(out)
        s = wire.decode_matrix(resp.sample_scores, name="scores")
        assert s.shape == (request.x.rows, 1) and np.isfinite(s).all() and (s >= 0).all()
        if request.WhichOneof("source") == "fit":
            _check_model(resp.model)
        if request.return_entry_scores:
            assert resp.entry_scores.rows == request.x.rows
    else:
        pb.ServerInfo.FromString(out)
