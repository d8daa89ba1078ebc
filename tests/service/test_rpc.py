"""Each RPC against a real server equals the direct library result (solve / estimator / Model)."""
import numpy as np
import pytest

from l1pca.client import Client, ClientError
from l1pca.kernels import L1PCA, solve
from l1pca.kernels.scoring import center_of

LIMITS = dict(max_rows=400, max_cols=24, max_request_bytes=60_000)
SERVER_OPTIONS = LIMITS  # the `server` fixture (tests/conftest.py)


@pytest.fixture(scope="module")
def client(server):
    with Client(server.target, timeout_s=30) as c:
        yield c


def _data(n=60, d=6, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)) @ rng.normal(size=(2, d)) * 3 + 0.2 * rng.normal(size=(n, d))
    X[:3] += 15.0  # a few outliers
    return X.astype(dtype)


WIRE_FIELDS = ("components", "center", "threshold", "method", "objective", "n_samples", "backend",
               "n_flips", "converged", "score_scales", "sd_cutoff", "od_cutoff", "score_cutoff",
               "cell_center", "cell_scale", "residual_scale", "support_fraction", "cell_robust",
               "n_csteps")
"""Every field of :class:`l1pca.kernels.Model` that travels (all but ``seed``, which a local fit
may not know, and ``training_scores``, which stays local)."""


def _assert_model_equals_estimator(model, est):
    local = est.to_model()
    for field in WIRE_FIELDS:
        np.testing.assert_array_equal(getattr(model, field), getattr(local, field), err_msg=field)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fit_equals_estimator_and_solve(client, dtype):
    X = _data(dtype=dtype)
    model = client.fit(X, 2, seed=7)
    est = L1PCA(2, random_state=7, backend="numpy").fit(X)
    _assert_model_equals_estimator(model, est)
    assert model.seed == 7 and model.method == "bitflip" and model.has_outlier_map
    # The plain fit is the paper's problem on the centred data.
    plain = client.fit(X, 2, seed=7, support_fraction=1.0, cell_robust=False)
    direct = solve(X.astype(np.float64) - center_of(X.astype(np.float64), "median"), 2,
                   random_state=7, backend="numpy")
    np.testing.assert_array_equal(plain.components, direct.components.T)
    assert plain.support_fraction is None and plain.n_csteps == 0 and not plain.cell_robust


@pytest.mark.parametrize("method", ["exact", "l2", "fixed-point", "non-greedy"])
def test_fit_other_methods(client, method):
    X = _data(n=12, d=3, seed=3)
    model = client.fit(X, 1, method=method, seed=1)
    _assert_model_equals_estimator(model, L1PCA(1, method=method, random_state=1).fit(X))
    assert model.method == method


@pytest.mark.parametrize("center,contamination,n_init", [("mean", 0.1, 2), (None, "auto", 6)])
def test_fit_options(client, center, contamination, n_init):
    X = _data(seed=4)
    model = client.fit(X, 2, center=center, contamination=contamination, n_init=n_init, seed=3)
    est = L1PCA(2, center=center, contamination=contamination, n_init=n_init, random_state=3,
                backend="numpy").fit(X)
    _assert_model_equals_estimator(model, est)


def test_seed_is_drawn_when_absent_and_repeats_the_fit(client):
    X = _data(seed=5)
    first = client.fit(X, 2)
    seed = first.seed
    again = client.fit(X, 2, seed=seed)
    np.testing.assert_array_equal(first.components, again.components)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_transform_equals_model_and_estimator(client, dtype):
    X = _data(dtype=dtype)
    model = client.fit(X, 2, seed=0)
    Z = client.transform(model, X)
    assert Z.dtype == dtype and Z.shape == (X.shape[0], 2)
    np.testing.assert_array_equal(Z, model.transform(X).astype(dtype))
    est = L1PCA.from_model(model)
    np.testing.assert_allclose(Z, est.transform(X.astype(np.float64)),
                               rtol=1e-6 if dtype == np.float32 else 0)


def test_score_outliers_with_a_model_equals_local_scores(client):
    X = _data()
    model = client.fit(X, 2, seed=0)
    Xnew = _data(n=25, seed=9)
    res = client.score_outliers(Xnew, model=model, return_entry_scores=True)
    np.testing.assert_array_equal(res.scores, model.score_samples(Xnew))
    np.testing.assert_array_equal(res.entry_scores, model.score_entries(Xnew))
    np.testing.assert_array_equal(res.is_outlier, model.predict(Xnew) == -1)
    np.testing.assert_array_equal(res.model.components, model.components)


def test_score_outliers_fit_and_score_in_one_call(client):
    X = _data(seed=2)
    res = client.score_outliers(X, n_components=2, seed=11)
    est = L1PCA(2, random_state=11, backend="numpy").fit(X)
    _assert_model_equals_estimator(res.model, est)
    np.testing.assert_array_equal(res.scores, res.model.score_samples(X))  # OD
    # The service's outlier score is higher = more outlying; the estimator's score_samples has
    # scikit-learn's sign.
    np.testing.assert_array_equal(res.outlier_score, -est.score_samples(X))
    np.testing.assert_array_equal(res.is_outlier, est.predict(X) == -1)
    assert res.entry_scores is None
    assert res.is_outlier[:3].all()  # the planted outliers


def test_model_round_trip_through_the_estimator(client):
    X = _data()
    model = client.fit(X, 2, seed=0)
    est = L1PCA.from_model(model)
    Xnew = _data(n=10, seed=8)
    np.testing.assert_array_equal(est.score_samples(Xnew), -model.outlier_scores(Xnew))
    np.testing.assert_array_equal(est.predict(Xnew), model.predict(Xnew))
    np.testing.assert_array_equal(est.score_entries(Xnew), model.score_entries(Xnew))
    np.testing.assert_array_equal(est.transform(Xnew), model.transform(Xnew))
    _assert_model_equals_estimator(model, L1PCA(2, random_state=0, backend="numpy").fit(X))


def test_matrices_near_the_limits(client, server):
    # 300 x 24 float64 = 57.6 kB, under the 60 kB request limit; 400 x 24 float32 = 38.4 kB.
    for X in (_data(n=300, d=24, seed=1), _data(n=400, d=24, seed=2, dtype=np.float32)):
        model = client.fit(X, 2, seed=0)
        _assert_model_equals_estimator(model, L1PCA(2, random_state=0, backend="numpy").fit(X))
        np.testing.assert_array_equal(client.transform(model, X), model.transform(X).astype(X.dtype))
    with pytest.raises(ClientError) as err:
        client.fit(_data(n=401, d=4), 1)
    assert err.value.code.name == "INVALID_ARGUMENT" and "limit of 400 rows" in err.value.details
    with pytest.raises(ClientError) as err:
        client.fit(_data(n=30, d=25), 1)
    assert err.value.code.name == "INVALID_ARGUMENT" and "limit of 24 columns" in err.value.details
    with pytest.raises(ClientError) as err:  # 400 x 24 float64 = 76.8 kB > 60 kB: gRPC's own limit
        client.fit(_data(n=400, d=24), 1)
    assert err.value.code.name == "RESOURCE_EXHAUSTED"
    assert client.fit(_data(n=20, d=4), 1).components.shape == (1, 4)  # still serving


def test_server_info(client):
    info = client.server_info()
    assert info.backend == "numpy" and info.device == "cpu"
    assert (info.max_rows, info.max_cols, info.max_request_bytes) == (400, 24, 60_000)
