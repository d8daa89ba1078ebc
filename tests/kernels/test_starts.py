"""The start rule (``l1pca.kernels.starts``: starts stop once ``n_agree`` of them end at the best
objective) on every path, and the screened search's K >= 3 selection."""
import numpy as np
import pytest

from l1pca.kernels import SolveOptions, solve, solve_batch
from l1pca.kernels.bitflip import bitflip_search
from l1pca.kernels.errors import InputError
from l1pca.kernels.reduce import l2_start_matrix, search_data, sign
from l1pca.kernels.starts import (
    AGREE_RTOL,
    RESTART_GROWTH,
    RESTART_STEP,
    agreed,
    best_after_each,
    best_kept,
    restart_direction,
    starts_kept,
)


def _values_by_start(X, K, n_init, seed):
    """Every start's search value, in order, as the host loop runs them."""
    from l1pca.kernels.solve import host_search

    G = np.random.default_rng(seed).standard_normal((n_init - 1, X.shape[1], K))
    Y, l2 = search_data(X)
    best = host_search(Y, l2_start_matrix(l2, K), SolveOptions())
    values, step = [best.value], RESTART_STEP
    for g in G:  # the documented rule, written out: restart from the best so far
        res = host_search(Y, sign(X @ restart_direction(X.T @ best.signs, g, step)), SolveOptions())
        values.append(res.value)
        if res.value > best.value * (1 + AGREE_RTOL):
            best, step = res, RESTART_STEP
        else:
            step *= RESTART_GROWTH
    return values


def test_rule_on_value_sequences():
    v = 100.0
    close = v * (1 - AGREE_RTOL / 2)
    assert not agreed([v], 2)
    assert agreed([v, close], 2)  # within the tolerance: the same optimum
    assert not agreed([v, v * (1 - 2 * AGREE_RTOL)], 2)
    assert not agreed([v, 90.0, 80.0], 2)
    assert agreed([90.0, v, 80.0, v], 2)
    assert not agreed([v, v, v], 0)  # 0: every start runs
    assert not agreed([90.0, 90.0, 100.0], 2)  # the best moved on: its basin was reached once
    assert agreed([90.0], 1)


@pytest.mark.parametrize("n_agree", [0, 1, 2, 3])
def test_batched_rule_matches_the_loop(n_agree):
    """``starts_kept`` (vectorised, what the JAX path runs) stops where the host loop stops."""
    rng = np.random.default_rng(n_agree)
    for _ in range(300):
        S = int(rng.integers(1, 9))
        vals = rng.choice([1.0, 2.0, 3.0, 3.0 * (1 - AGREE_RTOL / 3)], size=S)
        loop = next((s + 1 for s in range(S) if agreed(list(vals[:s + 1]), n_agree)), S)
        assert int(starts_kept(vals[None], n_agree)[0]) == loop
        best, kept = best_kept(vals[None], n_agree)
        top = 0  # the host loop: a start replaces the best only when it beats it by the tolerance
        for s in range(1, loop):
            top = s if vals[s] > vals[top] * (1 + AGREE_RTOL) else top
        assert int(best[0]) == top


def test_best_replaced_only_beyond_rounding():
    v = 100.0
    same = v * (1 + AGREE_RTOL / 2)  # the same optimum reached by another path
    np.testing.assert_array_equal(best_after_each(np.array([v, same, 90.0, v * 1.01, v])),
                                  [0, 0, 0, 3, 3])
    np.testing.assert_array_equal(best_after_each(np.array([[1.0, 2.0], [2.0, 1.0]])),
                                  [[0, 1], [0, 0]])


def test_restart_direction_by_hand():
    """``h = Q + step g / ||g||``: Q the Procrustes factor of M; zero for a rank-deficient M."""
    M = np.array([[3.0, 0.0], [0.0, 2.0], [0.0, 0.0]])  # Q = the first two unit vectors
    g = np.array([[0.0, 1.0], [0.0, 0.0], [4.0, 0.0]])
    np.testing.assert_allclose(restart_direction(M, g, 0.5),
                               [[1.0, 0.5], [0.0, 1.0], [0.5, 0.0]], atol=1e-15)
    rotated = M @ np.array([[0.6, 0.8], [-0.8, 0.6]])  # same Q up to that rotation
    np.testing.assert_allclose(restart_direction(rotated, np.zeros((3, 2)), 1.0).T
                               @ restart_direction(rotated, np.zeros((3, 2)), 1.0), np.eye(2),
                               atol=1e-12)
    twin = np.array([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]])  # equal columns: Q is not unique
    np.testing.assert_allclose(restart_direction(twin, g, 2.0), 2.0 * g / np.linalg.norm(g, axis=0))
    K3 = np.ones((3, 3))
    np.testing.assert_allclose(restart_direction(K3, np.eye(3), 1.0), np.eye(3))


def test_restart_direction_in_jax_equals_numpy():
    jnp = pytest.importorskip("jax.numpy")
    import jax

    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        for K in (1, 2, 3):
            M, g = rng.standard_normal((6, K)), rng.standard_normal((6, K))
            np.testing.assert_allclose(np.asarray(restart_direction(jnp.asarray(M), jnp.asarray(g),
                                                                    1.5, jnp)),
                                       restart_direction(M, g, 1.5), rtol=1e-12, atol=1e-14)


def test_batched_rule_in_jax_equals_numpy():
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(5)
    vals = rng.choice([1.0, 2.0, 2.0, 3.0], size=(64, 8))
    for n_agree in (0, 2, 3):
        np.testing.assert_array_equal(np.asarray(starts_kept(jnp.asarray(vals), jnp.int32(n_agree), jnp)),
                                      starts_kept(vals, n_agree))


def _data(seed, n=40, d=6):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)) @ rng.normal(size=(2, d)) + 0.2 * rng.normal(size=(n, d))
    X[:3] += 6.0 * rng.normal(size=(3, d))
    return X


@pytest.mark.parametrize("K", [1, 2])
def test_solve_stops_where_starts_agree(K):
    """With ``n_agree=2`` the answer is the best of the starts the rule kept, i.e. ``solve`` with
    that many starts and no rule; the flip count is theirs; the default (every start) is never
    worse."""
    stopped = 0
    for seed in range(6):
        X = _data(seed)
        vals = _values_by_start(X, K, 8, seed)
        kept = int(starts_kept(np.array(vals)[None], 2)[0])
        stopped += kept < 8
        res = solve(X, K, random_state=seed, backend="numpy", n_agree=2)
        same = solve(X, K, random_state=seed, backend="numpy", n_init=kept)
        np.testing.assert_array_equal(res.components, same.components)
        assert res.n_flips == same.n_flips
        every = solve(X, K, random_state=seed, backend="numpy")
        assert every.n_starts == 8 and res.n_starts == kept
        assert every.objective >= res.objective * (1 - 1e-12)
    assert stopped >= 3  # the rule did stop early on this structured data


@pytest.mark.slow
@pytest.mark.parametrize("K", [1, 2, 3])
def test_jax_applies_the_same_rule(K):
    """The batched JAX search runs the same restarts (each from the best so far) and keeps the ones
    the host loop ran: same signs, components and flip counts as NumPy, for the default rule and
    for all starts."""
    Xs = [_data(s, n=24, d=5) for s in range(10)]
    for n_agree in (2, 0):
        a = solve_batch(Xs, K, random_state=0, backend="numpy", n_agree=n_agree)
        b = solve_batch(Xs, K, random_state=0, backend="jax", n_agree=n_agree)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.signs, y.signs)
            np.testing.assert_allclose(x.components, y.components, atol=1e-12)
            assert x.n_flips == y.n_flips


def test_n_agree_is_checked():
    with pytest.raises(InputError, match="n_agree"):
        SolveOptions(n_agree=-1)
    with pytest.raises(InputError, match="n_agree"):
        solve(np.ones((4, 2)), 1, n_agree=-2)


@pytest.mark.parametrize("K", [3, 4])
def test_screened_bounded_selection_takes_the_reference_steps(K):
    """Many samples, K >= 3: the screened search ranks its candidate rows with the concavity bound
    (select_flip_bounded) and takes every step of the full evaluation."""
    from l1pca.kernels.bitflip_screened import SCREEN_MIN_SAMPLES
    from l1pca.kernels.solve import host_search

    rng = np.random.default_rng(31 + K)
    N, D = SCREEN_MIN_SAMPLES + 500, 10
    X = rng.standard_normal((N, D)) * np.sqrt(np.linspace(1.0, 0.81, D))
    X[: N // 50] += 20.0 * rng.standard_normal((N // 50, D))
    Y, l2 = search_data(X)
    for B0 in (np.repeat(l2[:, None], K, axis=1), sign(X @ rng.standard_normal((D, K)))):
        full = bitflip_search(Y, B0, screen=False)
        fast = host_search(Y, B0, SolveOptions())
        np.testing.assert_array_equal(fast.signs, full.signs)
        assert (fast.n_flips, fast.converged) == (full.n_flips, full.converged)
        assert full.n_flips > 20


@pytest.mark.parametrize("K", [3, 5])
def test_rank_deficient_selection_is_the_full_one(K):
    """While Y B is rank-deficient (the L2 start copies one column K times) the screened search
    picks its flip by a concavity bound at shifted Grams (select_flip_rank_deficient): the same bit
    and best gain as evaluating every bit, with and without bits excluded for the round, and ties
    broken alike (duplicated rows)."""
    from l1pca.kernels.bitflip_screened import select_flip_rank_deficient
    from l1pca.kernels.flip_rule import candidate_gains, gram_nuclear, inv_sqrt_gram, select_flip

    rng = np.random.default_rng(40 + K)
    N, D = 600, 12
    X = rng.standard_normal((N, D)) * np.linspace(3.0, 1.0, D)
    X[: N // 20] += 15.0 * rng.standard_normal((N // 20, D))
    X[N // 2:N // 2 + 5] = X[N // 2 - 5:N // 2]  # equal rows: tied gains
    Y, l2 = search_data(X)
    Yt = np.ascontiguousarray(Y.T)
    g = (Yt * Yt).sum(axis=1)
    B = np.repeat(l2[:, None], K, axis=1)
    flipped = np.zeros((N, K), dtype=bool)
    checked = 0
    for step in range(3 * K):
        A = Y @ B
        C, P = A.T @ A, Yt @ A
        if bool(inv_sqrt_gram(C)[1]):
            break
        cur = float(gram_nuclear(C))
        if step % 2:
            flipped[rng.integers(0, N, 50), rng.integers(0, K, 50)] = True
        ref = select_flip(np.where(flipped, -np.inf, candidate_gains(B, P, C, g)), cur)
        got = select_flip_rank_deficient(B, P, C, g, flipped, cur, 1e-9)
        assert got[0] == int(ref[0])
        assert got[1] == pytest.approx(float(ref[1]), rel=1e-12)
        n, k = divmod(got[0], K)
        B[n, k] = -B[n, k]
        flipped[n, k] = True
        checked += 1
    assert checked >= K - 1  # every rank-deficient step of the L2 start was checked
