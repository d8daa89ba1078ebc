"""Bad input gets a clear error naming the argument; odd but valid input is handled."""
import warnings

import numpy as np
import pytest

from l1pca.kernels import solve, solve_batch


@pytest.mark.parametrize("X,exc,match", [
    (np.array([[1.0, np.nan], [2.0, 3.0]]), ValueError, r"X must be finite; found nan at row 0, column 1"),
    (np.array([[1.0, 2.0], [np.inf, 3.0]]), ValueError, "X must be finite"),
    (np.zeros((0, 3)), ValueError, "at least one sample"),
    (np.zeros((3, 0)), ValueError, "at least one sample"),
    (np.arange(5.0), ValueError, "X must be 2-D"),
    (np.zeros((2, 2, 2)), ValueError, "X must be 2-D"),
    (np.array([["a", "b"], ["c", "d"]]), TypeError, "real numbers"),
    (np.ones((3, 2), dtype=complex), TypeError, "real numbers"),
    (np.array([[1e200, 0.0], [0.0, 1.0]]), ValueError, "magnitude"),
])
def test_bad_matrices(X, exc, match):
    with pytest.raises(exc, match=match):
        solve(X, 1)


@pytest.mark.parametrize("K", [0, -1, 4, 10])
def test_n_components_out_of_range(K):
    with pytest.raises(ValueError, match=r"n_components=.* must be in \[1, min\(n_samples, n_features\)=3\]"):
        solve(np.ones((5, 3)), K)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_components=1.5), "n_components must be an int"),
    (dict(method="pca"), "method='pca' is not one of"),
    (dict(backend="tpu"), "backend='tpu' is not one of"),
    (dict(n_init=0), "n_init=0 must be >= 1"),
    (dict(tol=-1.0), "tol=-1.0"),
    (dict(random_state="x"), "random_state"),
    (dict(max_flips=-2), "max_flips=-2"),
    (dict(method="exact", backend="jax"), "runs on the 'numpy' backend only"),
])
def test_bad_options(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        solve(np.random.default_rng(0).standard_normal((6, 3)), **{"n_components": 1, **kwargs})


@pytest.mark.parametrize("raw,dtype", [
    (b"\x01\x00\x80\x7f", "<f4"),  # float32 signalling NaN
    (b"\x01" + b"\x00" * 5 + b"\xf0\x7f", "<f8"),  # float64 signalling NaN
])
def test_signalling_nan_is_refused_without_a_warning(raw, dtype):
    # Raw bytes from the wire may hold any bit pattern; widening a float32 signalling NaN raised
    # NumPy's "invalid value encountered in cast" before the finiteness check named the entry.
    X = np.frombuffer(raw * 6, dtype).reshape(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"X must be finite; found nan at row 0, column 0"):
            solve(X, 1)


def test_batch_names_the_bad_matrix():
    good = np.ones((4, 2))
    with pytest.raises(ValueError, match=r"Xs\[1\] must be finite"):
        solve_batch([good, np.full((3, 2), np.nan)], 1)
    assert solve_batch([], 1) == []


def test_integers_bools_and_float32_are_accepted():
    rng = np.random.default_rng(1)
    X = rng.integers(-5, 6, size=(20, 4))
    ref = solve(X.astype(np.float64), 2, random_state=0)
    for variant in (X, X.astype(np.float32), X.astype(np.int8), X.tolist()):
        res = solve(variant, 2, random_state=0)
        assert res.objective == pytest.approx(ref.objective, rel=1e-12)
        assert res.components.dtype == np.float64
    assert solve(X > 0, 1).components.shape == (4, 1)


@pytest.mark.parametrize("X", [
    np.zeros((5, 3)),                      # all zeros
    np.ones((6, 4)),                       # constant
    np.array([[1.0, 1.0]] * 4),            # duplicated samples, rank 1
    np.array([[3.0]]),                     # 1 x 1
    np.arange(12.0).reshape(12, 1),        # D = 1
    np.arange(12.0).reshape(1, 12),        # N = 1
    np.full((4, 3), 1e-300),               # denormal scale
])
@pytest.mark.parametrize("backend", ["numpy", pytest.param("jax", marks=pytest.mark.slow)])
def test_degenerate_inputs_give_finite_orthonormal_components(X, backend):
    K = min(X.shape)
    res = solve(X, K, backend=backend, random_state=0)
    assert np.isfinite(res.objective) and np.isfinite(res.components).all()
    np.testing.assert_allclose(res.components.T @ res.components, np.eye(K), atol=1e-9)
    assert set(np.unique(res.signs)) <= {-1, 1}
    for method in ("exact", "l2", "fixed-point", "non-greedy"):
        other = solve(X, K, method=method)
        np.testing.assert_allclose(other.components.T @ other.components, np.eye(K), atol=1e-9)


@pytest.mark.parametrize("method", ["fixed-point", "non-greedy", "bitflip", "l2"])
@pytest.mark.parametrize("scale", [1e-300, 1.0, 1e120])
def test_k_equal_d_on_rank_deficient_data_of_any_scale(method, scale):
    """K = D with rank < D, at extreme scales (found by the service fuzzer): still orthonormal."""
    rng = np.random.default_rng(9)
    for N, D, r in [(31, 9, 3), (9, 9, 2), (15, 12, 5)]:
        X = scale * (rng.standard_normal((N, r)) @ rng.standard_normal((r, D)))
        res = solve(X, D, method=method, random_state=0)
        np.testing.assert_allclose(res.components.T @ res.components, np.eye(D), atol=1e-9)
        assert np.isfinite(res.objective) and res.objective > 0


@pytest.mark.parametrize("K", [1, 2, 3])
def test_power_of_two_scaling_changes_no_decision(K):
    """Data inside [2^-64, 2^64) is solved as given, data outside is divided by a power of two first
    (kernels/solve.py): both routes must reach the same signs and components, and the objective must
    scale exactly, whichever route a matrix takes. 4100 samples also run the screened search."""
    rng = np.random.default_rng(3)
    for N, D in [(40, 6), (4100, 8)]:
        X = rng.standard_normal((N, D)) * np.linspace(2.0, 0.5, D)
        X[: N // 20] += 10.0 * rng.standard_normal((N // 20, D))
        base = solve(X, K, n_init=2, random_state=0, backend="numpy")
        for e in (-90, 70):  # outside the range: the rescaled route
            other = solve(X * 2.0 ** e, K, n_init=2, random_state=0, backend="numpy")
            np.testing.assert_array_equal(other.signs, base.signs)
            np.testing.assert_array_equal(other.components, base.components)
            assert other.objective == base.objective * 2.0 ** e
