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


@pytest.mark.slow
@pytest.mark.parametrize("K", [1, 2])
def test_jax_answers_do_not_depend_on_the_batch(K):
    """A matrix gets the same answer alone and inside any batch (a lone matrix is paired; the
    search compacts a batch's lanes; equal shapes are centred and scored as one stack), field by
    field."""
    Xs = [_data(i, n=20, d=4) for i in range(5)] + [_data(7, n=17, d=4)]
    seeds = list(range(6))
    together = fit_many(Xs, K, seeds=seeds, backend="jax")
    for X, seed, res in zip(Xs[2:], seeds[2:], together[2:]):
        alone = fit_many([X], K, seeds=[seed], backend="jax")[0]
        np.testing.assert_array_equal(alone.components, res.components)
        np.testing.assert_array_equal(alone.center, res.center)
        np.testing.assert_array_equal(alone.training_scores, res.training_scores)
        assert (alone.threshold, alone.objective, alone.n_flips) == (res.threshold, res.objective,
                                                                      res.n_flips)
        assert alone.backend == "jax"


def test_batch_ladder_covers_the_kernels_padding():
    from l1pca.kernels.solve import jax_batch_size
    from l1pca.service.warmup import batch_ladder

    assert batch_ladder(1) == (1,)
    assert batch_ladder(16) == (1, 2, 4, 8, 16)
    assert batch_ladder(20) == (1, 2, 4, 8, 16, 32)
    for count in range(1, 33):  # every batch the server can form is padded to a warmed-up size
        assert jax_batch_size(count) in batch_ladder(max(count, 20))


def test_fit_many_checks_its_input():
    with pytest.raises(ValueError, match="seeds has 1 entries for 2 matrices"):
        fit_many([_data(0), _data(1)], 1, seeds=[0])
    with pytest.raises(ValueError, match=r"n_components=9 must be in \[1, min"):
        fit_many([_data(0)], 9)
    with pytest.raises(ValueError, match="center='max'"):
        fit_many([_data(0)], 1, center="max")
    assert fit_many([], 1) == []
