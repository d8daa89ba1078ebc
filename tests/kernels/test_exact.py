"""The exact solver against an independent brute force, and the identities of the brief."""
import itertools

import numpy as np
import pytest

from l1pca.kernels import solve
from l1pca.kernels.exact import MAX_CANDIDATES, plan
from l1pca.kernels.reduce import reduce_rank


def brute_force(X, K):
    """max ||X^T B||_* over all 2^(N K) sign matrices, written independently of the package."""
    N = X.shape[0]
    best, arg = -1.0, None
    for bits in itertools.product((1.0, -1.0), repeat=N * K):
        B = np.array(bits).reshape(N, K)
        val = np.linalg.svd(X.T @ B, compute_uv=False).sum()
        if val > best:
            best, arg = val, B
    return best, arg


def _cases():
    rng = np.random.default_rng(1)
    out = []
    for N, D, K in [(5, 2, 1), (6, 3, 1), (7, 4, 1), (8, 2, 1), (9, 5, 1), (4, 3, 2), (5, 2, 2),
                    (6, 4, 2), (6, 3, 2), (4, 4, 3), (5, 3, 3), (5, 5, 2), (3, 6, 2), (4, 9, 2)]:
        for kind in ("gauss", "heavy"):
            X = rng.standard_normal((N, D)) if kind == "gauss" else rng.standard_t(1.5, (N, D))
            out.append(pytest.param(X, K, id=f"N{N}-D{D}-K{K}-{kind}"))
    return out


@pytest.mark.parametrize("X,K", _cases())
def test_exact_equals_brute_force(X, K):
    best, _ = brute_force(X, K)
    res = solve(X, K, method="exact")
    assert res.objective == pytest.approx(best, rel=1e-10)
    Q, B = res.components, res.signs.astype(float)
    # Orthonormal components; at the optimum ||X Q||_1 = ||X^T B||_* and B = sgn(X Q).
    np.testing.assert_allclose(Q.T @ Q, np.eye(K), atol=1e-10)
    assert np.linalg.svd(X.T @ B, compute_uv=False).sum() == pytest.approx(res.objective, rel=1e-10)
    np.testing.assert_array_equal(B, np.sign(X @ Q))


def test_polynomial_and_exhaustive_agree():
    rng = np.random.default_rng(7)
    for _ in range(10):
        # Rank-2 data with N = 14: the polynomial search is chosen, brute force is still cheap.
        X = rng.standard_normal((14, 2)) @ rng.standard_normal((2, 5))
        assert plan(reduce_rank(X), 1).strategy == "polynomial"
        best, _ = brute_force(X, 1)
        assert solve(X, 1, method="exact").objective == pytest.approx(best, rel=1e-10)


def test_polynomial_handles_rank_deficient_k2():
    rng = np.random.default_rng(3)
    for rank in (1, 2):  # rank below and equal to K: repeated columns must be allowed
        X = rng.standard_normal((7, rank)) @ rng.standard_normal((rank, 4))
        best, _ = brute_force(X, 2)
        assert solve(X, 2, method="exact").objective == pytest.approx(best, rel=1e-10)


def test_exact_with_duplicated_and_zero_samples():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((5, 3))
    X = np.vstack([base, base[:2], np.zeros((1, 3))])
    best, _ = brute_force(X, 1)
    assert solve(X, 1, method="exact").objective == pytest.approx(best, rel=1e-10)


def test_exact_refuses_large_problems_naming_the_limit():
    X = np.random.default_rng(0).standard_normal((60, 30))
    with pytest.raises(ValueError, match="max_candidates"):
        solve(X, 3, method="exact")
    with pytest.raises(ValueError, match=str(10)):
        solve(np.random.default_rng(0).standard_normal((20, 20)), 1, method="exact", max_candidates=10)
    assert MAX_CANDIDATES >= 1_000_000


def test_objective_identity_for_any_sign_matrix():
    """Procrustes of any B gives ||X Q||_1 >= ||X^T B||_* (the brief's identity)."""
    from l1pca.kernels.reduce import procrustes

    rng = np.random.default_rng(5)
    for _ in range(20):
        X = rng.standard_normal((12, 5))
        B = np.where(rng.standard_normal((12, 3)) > 0, 1.0, -1.0)
        Q = procrustes(X.T @ B)
        assert np.abs(X @ Q).sum() >= np.linalg.svd(X.T @ B, compute_uv=False).sum() - 1e-9


def test_rank_reduction_preserves_the_metric_both_orientations():
    rng = np.random.default_rng(6)
    for shape in [(10, 4), (4, 10), (6, 6)]:
        X = rng.standard_normal(shape)
        Y = reduce_rank(X)
        assert Y.shape == (min(shape), shape[0])
        np.testing.assert_allclose(Y.T @ Y, X @ X.T, atol=1e-10)
        B = np.where(rng.standard_normal((shape[0], 2)) > 0, 1.0, -1.0)
        assert np.linalg.svd(Y @ B, compute_uv=False).sum() == pytest.approx(
            np.linalg.svd(X.T @ B, compute_uv=False).sum(), rel=1e-10)
        # Rows by decreasing singular value: the first row is s_1 v_1^T.
        norms = np.linalg.norm(Y, axis=1)
        assert np.all(np.diff(norms) <= 1e-9)


def test_search_data_has_the_gram_of_x_and_the_l2_start_both_orientations():
    """L1-BF searches on ``search_data(X)``: ``X^T`` itself when N >= D (no rotation), the reduced
    factor when N < D; either way ``Y^T Y = X X^T`` and the start is the sign of the projections on
    the dominant right singular vector (fixed up to a global sign, as the singular vector)."""
    from l1pca.kernels.reduce import search_data

    rng = np.random.default_rng(8)
    for shape in [(40, 5), (5, 40), (7, 7)]:
        X = rng.standard_normal(shape) * np.linspace(3.0, 1.0, shape[1])
        Y, s = search_data(X)
        assert Y.shape == (min(shape), shape[0])
        np.testing.assert_allclose(Y.T @ Y, X @ X.T, atol=1e-10)
        if shape[0] >= shape[1]:
            assert np.shares_memory(Y, X)  # a view: no copy of the data
        v = np.linalg.svd(X, full_matrices=False)[0][:, 0]  # left vector: X v_1 / s_1
        expected = np.where(v >= 0, 1.0, -1.0)
        assert np.array_equal(s, expected) or np.array_equal(s, -expected)
