"""``l1pca.kernels.fitting.fit_many``: the estimator's fit for many matrices (what the server calls)."""
import numpy as np
import pytest

from l1pca.kernels import L1PCA
from l1pca.kernels.fitting import fit_many


def _data(seed, n=30, d=5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)) @ rng.normal(size=(2, d)) + 0.1 * rng.normal(size=(n, d))
    X[:2] += 8.0
    return X


@pytest.mark.parametrize("center", ["median", "mean", None])
@pytest.mark.parametrize("method", ["bitflip", "l2", "fixed-point"])
def test_fit_many_equals_the_estimator(center, method):
    Xs = [_data(i) for i in range(3)] + [_data(9, n=12, d=3)]
    got = fit_many(Xs, 2, method=method, center=center, seeds=[0, 1, 2, 3], backend="numpy",
                   contamination=0.1)
    for X, seed, res in zip(Xs, [0, 1, 2, 3], got):
        est = L1PCA(2, method=method, center=center, random_state=seed, backend="numpy",
                    contamination=0.1).fit(X)
        np.testing.assert_array_equal(res.components, est.components_)
        np.testing.assert_array_equal(res.center, est.center_)
        assert res.threshold == est.threshold_
        assert res.objective == est.objective_
        assert res.n_samples == X.shape[0]


def test_jax_answers_do_not_depend_on_the_batch():
    """A matrix gets the same answer alone and inside any batch (a lone matrix is paired)."""
    Xs = [_data(i, n=20, d=4) for i in range(5)]
    seeds = list(range(5))
    together = fit_many(Xs, 1, seeds=seeds, backend="jax")
    for X, seed, res in zip(Xs[:3], seeds, together):
        alone = fit_many([X], 1, seeds=[seed], backend="jax")[0]
        np.testing.assert_array_equal(alone.components, res.components)
        assert alone.backend == "jax"


def test_batch_ladder_covers_the_kernels_padding():
    from l1pca.service.runner import batch_ladder

    assert batch_ladder(1) == (2,)
    assert batch_ladder(16) == (2, 4, 8, 16)
    assert batch_ladder(20) == (2, 4, 8, 16, 32)


def test_fit_many_checks_its_input():
    with pytest.raises(ValueError, match="seeds has 1 entries for 2 matrices"):
        fit_many([_data(0), _data(1)], 1, seeds=[0])
    with pytest.raises(ValueError, match=r"n_components=9 must be in \[1, min"):
        fit_many([_data(0)], 9)
    with pytest.raises(ValueError, match="center='max'"):
        fit_many([_data(0)], 1, center="max")
    assert fit_many([], 1) == []
