"""The detection procedure over gRPC (issue 28), against a real server on loopback: the new fit
options reach fit_many, the outlier map and the cell scores come back equal to the local Model's,
"auto" K is reported, bad options are refused in the kernels' words, options are never batched
together, and requests and models of older clients are answered as before."""
import asyncio

import grpc
import numpy as np
import pytest

from l1pca.client import GROUPS, AsyncClient, Client, ClientError
from l1pca.kernels import L1PCA
from l1pca.kernels.fitting import fit_many
from l1pca.proto import wire
from l1pca.service.testing import value
from l1pca.v1 import l1pca_pb2 as pb
from l1pca.v1 import l1pca_pb2_grpc as pb_grpc

SERVER_OPTIONS = dict(max_batch_size=16, max_delay_ms=30)  # concurrent fits batch

NEW_MODEL_FIELDS = ("score_scales", "sd_cutoff", "od_cutoff", "score_cutoff", "cell_center",
                    "cell_scale", "residual_scale", "support_fraction", "cell_robust", "n_csteps")


def _sensors(n=120, d=6, seed=0):
    """Rows from a 2-D model plus noise; row 0 a bad leverage point, row 1 an orthogonal outlier,
    row 2 with one faulty cell (feature 3)."""
    rng = np.random.default_rng(seed)
    L = rng.normal(size=(2, d))
    X = rng.normal(size=(n, 2)) @ L + 0.1 * rng.normal(size=(n, d))
    X[0] = 9.0 * L[0] + 4.0 * rng.normal(size=d)
    X[1] += 3.0 * np.linalg.svd(L)[2][2]  # a direction orthogonal to the model's plane
    X[2, 3] += 5.0
    return X


@pytest.fixture(scope="module")
def client(server):
    with Client(server.target, timeout_s=60) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.L1PCAStub(channel)


def _same_model(a, b):
    for field in ("components", "center", "threshold", *NEW_MODEL_FIELDS):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_score_outliers_returns_the_outlier_map_and_the_cells(client):
    X = _sensors()
    res = client.score_outliers(X, n_components=2, seed=3, return_entry_scores=True)
    local = fit_many([X], 2, seeds=[3], backend="numpy")[0]
    _same_model(res.model, local)
    om = local.outlier_map(X)
    np.testing.assert_array_equal(res.sd, om.sd)
    np.testing.assert_array_equal(res.od, om.od)
    np.testing.assert_array_equal(res.scores, local.score_samples(X))
    np.testing.assert_array_equal(res.group, om.group)
    np.testing.assert_array_equal(res.outlier_score, local.outlier_scores(X))
    np.testing.assert_array_equal(res.outlier_rows, np.flatnonzero(local.predict(X) == -1))
    np.testing.assert_array_equal(res.entry_scores, local.score_entries(X))
    np.testing.assert_array_equal(res.cell_flags, local.cell_flags(X))
    assert res.cell_cutoff == pytest.approx(2.5758, abs=1e-4)
    # The planted rows: flagged, and the map tells the two kinds apart; the faulty cell is flagged.
    assert {0, 1, 2} <= set(res.outlier_rows.tolist())
    assert res.group_names[0] == "bad leverage" and res.group_names[1] == "orthogonal outlier"
    assert res.entry_scores[2].argmax() == 3 and res.cell_flags[2, 3]
    assert set(res.group_names) <= set(GROUPS)


def test_scoring_against_a_model_equals_the_local_model_in_float32(client):
    X = _sensors(seed=1)
    model = client.fit(X, 2, seed=0)
    Xnew = _sensors(n=40, seed=2).astype(np.float32)
    res = client.score_outliers(Xnew, model=model, return_entry_scores=True)
    assert res.sd.dtype == np.float32 and res.outlier_score.dtype == np.float32
    X64 = Xnew.astype(np.float64)
    np.testing.assert_array_equal(res.outlier_score, model.outlier_scores(X64).astype(np.float32))
    np.testing.assert_array_equal(res.is_outlier, model.predict(X64) == -1)
    np.testing.assert_array_equal(res.cell_flags, model.cell_flags(X64))


def test_the_new_options_reach_the_fit(client):
    X = _sensors(seed=4)
    for kwargs in ({"support_fraction": None, "cell_robust": False}, {"support_fraction": 0.6},
                   {"cell_robust": False, "contamination": 0.1}):
        model = client.fit(X, 2, seed=5, **kwargs)
        est = L1PCA(2, random_state=5, backend="numpy", **kwargs).fit(X)
        _same_model(model, est.to_model())
    plain = client.fit(X, 2, seed=5, support_fraction=1.0)  # 1.0 is the plain fit, as None
    assert plain.support_fraction is None
    _same_model(plain, L1PCA(2, random_state=5, backend="numpy", support_fraction=None).fit(X).to_model())


def test_auto_k_is_chosen_and_reported(client):
    X = _sensors(seed=6)
    model = client.fit(X, "auto", seed=1)
    est = L1PCA("auto", random_state=1, backend="numpy").fit(X)
    assert model.n_components == est.n_components_ >= 1
    _same_model(model, est.to_model())
    res = client.score_outliers(X, n_components="auto", seed=1)
    assert res.model.n_components == est.n_components_


@pytest.mark.parametrize("options,match", [
    (pb.FitOptions(n_components=1, support_fraction=0.2),
     "options.support_fraction=0.2 must be None or a number in [0.5, 1]"),
    (pb.FitOptions(n_components=2, auto_components=True),
     "options.auto_components=true and options.n_components=2: give one"),
])
def test_bad_options_are_invalid_argument_in_the_kernels_words(stub, options, match):
    x = wire.encode_matrix(_sensors())
    for call, request in ((stub.Fit, pb.FitRequest(x=x, options=options)),
                          (stub.ScoreOutliers, pb.ScoreOutliersRequest(x=x, fit=options))):
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert match in err.value.details()


def test_the_client_refuses_a_bad_support_fraction_before_sending(client):
    with pytest.raises(ClientError) as err:
        client.fit(_sensors(), 1, support_fraction=0.2)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "support_fraction=0.2 must be None or a number in [0.5, 1]" in err.value.details


def test_an_old_style_fit_request_gets_the_default_detector(stub):
    """A client that knows none of the new fields: the kernels' defaults (robust, cell-robust)."""
    X = _sensors(seed=7)
    resp = stub.Fit(pb.FitRequest(x=wire.encode_matrix(X), options=pb.FitOptions(n_components=2,
                                                                                seed=9)), timeout=30)
    model = wire.decode_model(resp.model)
    _same_model(model, L1PCA(2, random_state=9, backend="numpy").fit(X).to_model())
    assert model.support_fraction == 0.75 and model.cell_robust


def test_a_model_from_an_older_client_still_scores(stub, client):
    X = _sensors(seed=8)
    model = client.fit(X, 2, seed=0)
    old = wire.encode_model(model)
    for field in NEW_MODEL_FIELDS:
        old.ClearField(field)
    resp = stub.ScoreOutliers(pb.ScoreOutliersRequest(model=old, x=wire.encode_matrix(X),
                                                      return_entry_scores=True), timeout=30)
    assert resp.map_missing
    assert not resp.HasField("score_distances") and not resp.HasField("outlier_scores")
    assert resp.groups == b"" and resp.cell_flags == b""
    od = wire.decode_matrix(resp.sample_scores)[:, 0]
    np.testing.assert_array_equal(od, model.score_samples(X))
    # The rule of such models: the distance from the subspace over the threshold; raw |residual|.
    assert list(resp.outlier_rows) == np.flatnonzero(od > model.threshold).tolist()
    np.testing.assert_array_equal(wire.decode_matrix(resp.entry_scores), np.abs(model.residuals(X)))
    # The client's answer says what is missing instead of inventing it.
    old_model = wire.decode_model(old)
    res = client.score_outliers(X, model=old_model)
    assert res.sd is None and res.group is None and res.outlier_score is None
    np.testing.assert_array_equal(res.is_outlier, old_model.predict(X) == -1)


def test_different_options_are_never_batched_together(server):
    """Concurrent fits of one shape with four option sets: each answer equals its own local fit
    (a batch with mixed options would give some requests another request's options)."""
    X = _sensors(n=60, seed=11)
    variants = [{}, {"support_fraction": None}, {"cell_robust": False},
                {"support_fraction": 0.6, "cell_robust": False}]
    jobs = [(variants[i % 4], i) for i in range(16)]
    before = value(server.metrics(), "l1pca_batch_size_count")

    async def run():
        async with AsyncClient(server.target, timeout_s=60) as c:
            return await asyncio.gather(*(c.fit(X, 2, seed=seed, **kw) for kw, seed in jobs))

    models = asyncio.run(run())
    batches = value(server.metrics(), "l1pca_batch_size_count") - before
    assert batches < len(jobs), "nothing was batched: the test shows nothing"
    for (kw, seed), model in zip(jobs, models):
        _same_model(model, L1PCA(2, random_state=seed, backend="numpy", **kw).fit(X).to_model())
