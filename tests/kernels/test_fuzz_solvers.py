"""Solver properties on any finite input, with hypothesis: no NaN objective, orthonormal components,
bounded flip loops, the same answer for the same seed on a backend.

Matrices are small (the exhaustive and polynomial solvers are in the set) but their entries span
denormals to the solvers' limit of 1e150, with zeros, constant and duplicated columns, rank 1,
N = 1, D = 1 and K = D among the shapes.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from l1pca.kernels import solve
from l1pca.kernels.bitflip import default_max_flips

PROPS = dict(deadline=None, derandomize=True, database=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ELEMENTS = st.one_of(
    st.floats(-1e150, 1e150, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 1.0, -1.0, 5e-324, -5e-324, 1e-300, 1e150, -1e150]),
)


@st.composite
def matrices(draw, max_n=12, max_d=6):
    n, d = draw(st.integers(1, max_n)), draw(st.integers(1, max_d))
    X = draw(hnp.arrays(np.float64, (n, d), elements=ELEMENTS))
    shape = draw(st.sampled_from(("as drawn", "as drawn", "constant columns", "duplicated",
                                  "rank 1", "scaled")))
    if shape == "constant columns":
        X = np.broadcast_to(X[:1], X.shape).copy()
    elif shape == "duplicated":
        X = np.repeat(X[:, :1], d, axis=1)
    elif shape == "rank 1":
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            X = np.outer(X[:, 0], np.linspace(1, 2, d)) / 2
        X = np.where(np.isfinite(X), X, 0.0)
    elif shape == "scaled":
        X = draw(hnp.arrays(np.float64, (n, d), elements=st.floats(-1, 1))) * draw(
            st.sampled_from([1e-310, 1e-150, 1e-8, 1e8, 1e149]))
    return X


def _check(res, X, K, n_init):
    Q = res.components
    assert Q.shape == (X.shape[1], K)
    assert np.isfinite(Q).all(), "components hold NaN/inf"
    assert np.allclose(Q.T @ Q, np.eye(K), atol=1e-8), Q.T @ Q
    assert np.isfinite(res.objective) and res.objective >= 0, res.objective
    if res.method == "bitflip":
        assert 0 <= res.n_flips <= n_init * default_max_flips(X.shape[0], K)  # flip loops bounded


@settings(max_examples=150, **PROPS)
@given(X=matrices(), data=st.data())
def test_bitflip_on_finite_input_is_finite_orthonormal_bounded_and_deterministic(X, data):
    K = data.draw(st.integers(1, min(X.shape)), label="K")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    n_init = data.draw(st.integers(1, 4), label="n_init")
    first = solve(X, K, n_init=n_init, random_state=seed, backend="numpy")
    _check(first, X, K, n_init)
    again = solve(X, K, n_init=n_init, random_state=seed, backend="numpy")
    assert np.array_equal(first.components, again.components)
    assert first.objective == again.objective and first.n_flips == again.n_flips


@settings(max_examples=80, **PROPS)
@given(X=matrices(max_n=8, max_d=4), data=st.data())
def test_every_method_on_finite_input_is_finite_and_orthonormal(X, data):
    method = data.draw(st.sampled_from(("exact", "l2", "fixed-point", "non-greedy")), label="method")
    K = data.draw(st.integers(1, min(X.shape) if method != "exact" else 1), label="K")
    res = solve(X, K, method=method, random_state=0, backend="numpy")
    _check(res, X, K, 1)
    assert np.array_equal(res.components,
                          solve(X, K, method=method, random_state=0, backend="numpy").components)


@pytest.mark.slow
@settings(max_examples=25, **PROPS)
@given(X=hnp.arrays(np.float64, (12, 5), elements=ELEMENTS), data=st.data())
def test_jax_bitflip_is_finite_orthonormal_and_deterministic(X, data):
    # One shape: one compiled program (each new bucket would compile again).
    K = data.draw(st.integers(1, 3), label="K")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    first = solve(X, K, n_init=2, random_state=seed, backend="jax")
    _check(first, X, K, 2)
    again = solve(X, K, n_init=2, random_state=seed, backend="jax")
    assert np.array_equal(first.components, again.components)


def test_answers_do_not_depend_on_the_scale_of_the_data():
    rng = np.random.default_rng(0)
    for t in range(20):
        X = rng.normal(size=(int(rng.integers(2, 12)), int(rng.integers(2, 6))))
        for scale in (1e100, 1e-160):
            ref = solve(X, 2, n_init=2, random_state=t, backend="numpy")
            with np.errstate(all="ignore"):
                got = solve(X * scale, 2, n_init=2, random_state=t, backend="numpy")
            assert got.objective / scale == pytest.approx(ref.objective, rel=1e-9), (t, scale)
