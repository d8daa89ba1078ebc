"""L1-BF: local optimality, exact-hit rate, agreement of backends, batching and padding."""
import numpy as np
import pytest

from l1pca.kernels import bucket_shape, solve, solve_batch
from l1pca.kernels.bitflip import bitflip_search
from l1pca.kernels.reduce import l2_start, reduce_rank, sign


def nuclear(X, B):
    return np.linalg.svd(X.T @ B, compute_uv=False).sum()


def problems(seed, count):
    """Small problems of several kinds: Gaussian, heavy-tailed, with outliers; D < N and D >= N."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        N = int(rng.integers(6, 13))
        D = int(rng.integers(2, 9))
        K = 1 + i % 3
        if K > min(N, D) or (K == 3 and N > 8) or (K == 2 and N > 11):
            K = 1  # keep the exact oracle cheap
        kind = ("gauss", "heavy", "outliers")[i % 3]
        if kind == "gauss":
            X = rng.standard_normal((N, D))
        elif kind == "heavy":
            X = rng.standard_t(1.5, (N, D))
        else:
            X = rng.standard_normal((N, 1)) @ rng.standard_normal((1, D)) + 0.2 * rng.standard_normal((N, D))
            X[: max(1, N // 5)] *= 15.0
        out.append((X, K))
    return out


@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("shape", [(12, 4), (5, 9)])
def test_end_point_is_single_flip_local_optimum(K, shape):
    rng = np.random.default_rng(K * 10 + shape[0])
    X = rng.standard_normal(shape)
    res = solve(X, K, n_init=3, random_state=0, backend="numpy")
    assert res.converged
    B = res.signs.astype(float)
    base = nuclear(X, B)
    for n in range(B.shape[0]):
        for k in range(K):
            B[n, k] *= -1
            assert nuclear(X, B) <= base * (1 + 1e-8), f"flipping ({n}, {k}) improves the metric"
            B[n, k] *= -1
    # The objective reported is ||X Q||_1 of the Procrustes step, never below ||X^T B||_*.
    assert res.objective >= base * (1 - 1e-12)
    np.testing.assert_allclose(res.components.T @ res.components, np.eye(K), atol=1e-10)


@pytest.mark.slow
def test_exact_hit_rate_over_many_small_problems():
    cases = problems(seed=11, count=240)
    hits_default, hits_single, by_k = 0, 0, {}
    for i, (X, K) in enumerate(cases):
        opt = solve(X, K, method="exact").objective
        res = solve(X, K, random_state=i, backend="numpy")
        single = solve(X, K, n_init=1, backend="numpy")
        # Nothing beats the optimum (up to rounding).
        assert res.objective <= opt * (1 + 1e-9)
        assert single.objective <= res.objective * (1 + 1e-9) or single.objective <= opt * (1 + 1e-9)
        hit = res.objective >= opt * (1 - 1e-9)
        hits_default += hit
        hits_single += single.objective >= opt * (1 - 1e-9)
        by_k.setdefault(K, []).append(hit)
    rate = hits_default / len(cases)
    assert rate >= 0.97, f"default L1-BF hit the exact optimum in {rate:.1%} of problems"
    assert hits_single / len(cases) >= 0.75
    assert all(np.mean(v) >= 0.9 for v in by_k.values()), {k: np.mean(v) for k, v in by_k.items()}


def test_k1_objective_never_below_l2():
    for X, _ in problems(seed=12, count=60):
        assert solve(X, 1, n_init=1).objective >= solve(X, 1, method="l2").objective * (1 - 1e-12)


@pytest.mark.slow
def test_numpy_and_jax_same_start_same_signs():
    from l1pca.kernels.bitflip_jax import search_single

    rng = np.random.default_rng(13)
    for K in (1, 2, 3):
        for warm in (False, True):
            X = rng.standard_normal((20, 6))
            Y = reduce_rank(X)
            B0 = np.repeat(l2_start(Y)[:, None], K, axis=1)
            ref = bitflip_search(Y, B0, warm_start=warm)
            B, val, flips, conv = search_single(Y, B0, max_flips=1000, tol=1e-9, warm_start=warm)
            np.testing.assert_array_equal(B, ref.signs)
            assert val == pytest.approx(ref.value, rel=1e-12)
            assert (flips, conv) == (ref.n_flips, ref.converged)


@pytest.mark.slow
@pytest.mark.parametrize("K, candidates", [(3, None), (4, None), (3, 2)])
def test_jax_bounded_selection_takes_the_reference_steps(K, candidates, monkeypatch):
    """K >= 3 on JAX evaluates only the bits its bound keeps (_select_bounded, a full evaluation when
    more than BOUNDED_CANDIDATES remain or Y B is rank-deficient): the same flips, sweeps, pair moves
    and end point as the NumPy reference without any bound, from the L2 start (rank-deficient at
    first) and random starts, on Gaussian and contaminated data, and with many ties (repeated rows)."""
    import jax

    from l1pca.kernels import bitflip_jax
    from l1pca.kernels.bitflip_jax import search_single

    if candidates is not None:  # few candidates: the full-evaluation fallback runs often
        monkeypatch.setattr(bitflip_jax, "BOUNDED_CANDIDATES", candidates)
    jax.clear_caches()  # BOUNDED_CANDIDATES is read when the search is traced
    rng = np.random.default_rng(40 + K)
    cases = [rng.standard_normal((24, 6)), rng.standard_normal((40, 8)) + rng.standard_t(2, (40, 8)),
             np.repeat(rng.standard_normal((8, 5)), 3, axis=0)]
    cases[1][:4] *= 10.0
    steps = 0
    for X in cases:
        Y = reduce_rank(X)
        starts = [np.repeat(l2_start(Y)[:, None], K, axis=1)]
        starts += [sign(X @ rng.standard_normal((X.shape[1], K))) for _ in range(2)]
        for B0 in starts:
            for warm, pairs in ((True, True), (False, False)):
                ref = bitflip_search(Y, B0, warm_start=warm, pair_moves=pairs, screen=False)
                B, val, flips, conv = search_single(Y, B0, max_flips=1000, tol=1e-9, warm_start=warm,
                                                    pair_moves=pairs)
                np.testing.assert_array_equal(B, ref.signs)
                assert (flips, conv) == (ref.n_flips, ref.converged)
                assert val == pytest.approx(ref.value, rel=1e-12)
                steps += ref.n_flips
    assert steps > 100  # the searches did real work

@pytest.mark.slow
@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("pairs", [True, False])
def test_jax_lane_compaction_keeps_every_search_on_its_reference_path(K, pairs):
    """The batched search (search_lanes) moves the running searches into smaller lane arrays as the
    others end, and runs later pair checks on the few that need them: every search, whichever
    array it ends in, takes the NumPy reference's flips and ends on its signs. 6 problems x 8 starts
    (levels 48, 12, 3), of several lengths (zero-padded rows and features, as a bucket pads them)."""
    import jax
    import jax.numpy as jnp

    from l1pca.kernels.bitflip_jax import _lane_levels, search_lanes

    assert _lane_levels(48) == (48, 12, 3) and _lane_levels(512) == (512, 128, 32, 8, 2)
    rng = np.random.default_rng(60 + K)
    N, D, S = 24, 6, 8
    Ys, starts = [], []
    for i in range(6):
        n, d = N - 3 * (i % 3), D - (i % 2)
        X = np.zeros((N, D))
        X[:n, :d] = rng.standard_normal((n, d)) + (rng.standard_t(2, (n, d)) if i % 2 else 0.0)
        Y = reduce_rank(X)
        Ys.append(Y)
        B0 = [np.repeat(l2_start(Y)[:, None], K, axis=1)]
        B0 += [sign(X @ rng.standard_normal((D, K))) for _ in range(S - 1)]
        starts.append(np.stack(B0))
    with jax.enable_x64(True):
        B, val, flips, conv = jax.jit(search_lanes, static_argnames=("warm_start", "pair_moves"))(
            jnp.asarray(np.stack(Ys)), jnp.asarray(np.stack(starts)), jnp.asarray(1000, jnp.int32),
            jnp.asarray(1e-9), warm_start=True, pair_moves=pairs)
    total = 0
    for i, Y in enumerate(Ys):
        for s in range(S):
            ref = bitflip_search(Y, starts[i][s], pair_moves=pairs, screen=False)
            np.testing.assert_array_equal(np.asarray(B[i, s]), ref.signs)
            assert (int(flips[i, s]), bool(conv[i, s])) == (ref.n_flips, ref.converged)
            assert float(val[i, s]) == pytest.approx(ref.value, rel=1e-12)
            total += ref.n_flips
    flips = np.asarray(flips)
    assert total > 100 and flips.max() > 2 * np.median(flips)  # long searches beside short ones

    jax.clear_caches()


@pytest.mark.slow
@pytest.mark.parametrize("K", [1, 2])
def test_solve_numpy_equals_jax(K):
    rng = np.random.default_rng(14 + K)
    X = rng.standard_normal((30, 7)) + rng.standard_t(2, (30, 7))
    a = solve(X, K, random_state=3, backend="numpy")
    b = solve(X, K, random_state=3, backend="jax")
    assert (a.backend, b.backend) == ("numpy", "jax")
    np.testing.assert_allclose(b.components, a.components, atol=1e-10)
    np.testing.assert_array_equal(b.signs, a.signs)
    assert b.objective == pytest.approx(a.objective, rel=1e-12)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("jax", marks=pytest.mark.slow)])
def test_batch_equals_one_by_one_with_mixed_shapes(backend):
    rng = np.random.default_rng(15)
    Xs = [rng.standard_normal((int(rng.integers(10, 16)), int(rng.integers(3, 8)))) for _ in range(6)]
    Xs.append(rng.standard_normal((5, 12)))  # D > N in the same call
    batch = solve_batch(Xs, 2, random_state=7, backend=backend)
    assert len(batch) == len(Xs)
    for X, res in zip(Xs, batch):
        one = solve(X, 2, random_state=7, backend="numpy")
        assert res.components.shape == (X.shape[1], 2) and res.signs.shape == (X.shape[0], 2)
        np.testing.assert_allclose(res.components, one.components, atol=1e-9)
        np.testing.assert_array_equal(res.signs, one.signs)
        assert res.objective == pytest.approx(one.objective, rel=1e-10)


def test_per_matrix_seeds_in_a_batch():
    rng = np.random.default_rng(16)
    Xs = [rng.standard_normal((12, 4)) for _ in range(3)]
    batch = solve_batch(Xs, 1, random_state=[1, 2, 3], n_init=3)
    for X, seed, res in zip(Xs, [1, 2, 3], batch):
        assert res.objective == solve(X, 1, random_state=seed, n_init=3).objective
    with pytest.raises(ValueError, match="one per matrix"):
        solve_batch(Xs, 1, random_state=[1, 2])


def test_zero_padding_leaves_the_solution_unchanged():
    """Zero samples and zero features change neither the objective nor the solution."""
    rng = np.random.default_rng(17)
    for K in (1, 2):
        X = rng.standard_normal((11, 5))
        P = np.zeros((16, 8))
        P[:11, :5] = X
        a, b = solve(X, K, random_state=0), solve(P, K, random_state=0)
        assert b.objective == pytest.approx(a.objective, rel=1e-10)
        np.testing.assert_allclose(b.components[:5], a.components, atol=1e-9)
        np.testing.assert_allclose(b.components[5:], 0.0, atol=1e-12)
        np.testing.assert_array_equal(b.signs[:11], a.signs)
    # The batched JAX path pads to a bucket; results keep the caller's shapes.
    assert bucket_shape(11, 5) == (16, 8)


@pytest.mark.slow
def test_flip_cap_bounds_the_loop_and_is_reported():
    X = np.random.default_rng(18).standard_normal((200, 6))
    res = solve(X, 2, n_init=1, warm_start=False, max_flips=3, backend="numpy")
    assert res.n_flips <= 3 and not res.converged
    res = solve(X, 2, n_init=1, warm_start=False, max_flips=3, backend="jax")
    assert res.n_flips <= 3 and not res.converged
    full = solve(X, 2, n_init=1, warm_start=False)
    assert full.converged and full.n_flips > 3


def test_deterministic_for_a_seed_and_sign_convention():
    X = np.random.default_rng(19).standard_normal((40, 6))
    a, b = solve(X, 3, random_state=5), solve(X, 3, random_state=5)
    np.testing.assert_array_equal(a.components, b.components)
    # Columns ordered by decreasing ||X q_k||_1; each column's largest entry positive.
    l1 = np.abs(X @ a.components).sum(axis=0)
    assert np.all(np.diff(l1) <= 1e-9)
    peak = a.components[np.abs(a.components).argmax(axis=0), np.arange(3)]
    assert np.all(peak > 0)


def test_warm_start_cuts_flips_and_keeps_local_optimality():
    X = np.random.default_rng(20).standard_normal((3000, 10)) * np.linspace(3, 1, 10)
    cold = solve(X, 1, n_init=1, warm_start=False, pair_moves=False)
    warm = solve(X, 1, n_init=1, warm_start=True)
    assert warm.n_flips * 3 <= cold.n_flips  # flip steps, sweeps included
    assert warm.objective >= cold.objective * (1 - 1e-3)
    Y = reduce_rank(X)
    b = warm.signs[:, 0].astype(float)
    # K = 1 single-flip optimality: ||y_n||^2 <= b_n y_n^T (Y b) for every n.
    v = Y @ b
    assert np.all((Y * Y).sum(axis=0) <= b * (Y.T @ v) + 1e-9 * np.abs(Y.T @ v).max())


def test_starts_are_l2_then_random():
    X = np.random.default_rng(21).standard_normal((25, 4))
    Y = reduce_rank(X)
    # With one start and no flips allowed the answer is the L2-PCA sign vector itself.
    res = solve(X, 1, n_init=1, max_flips=0, warm_start=False)
    s = l2_start(Y)
    assert np.array_equal(res.signs[:, 0], s) or np.array_equal(res.signs[:, 0], -s)
    np.testing.assert_array_equal(sign(np.zeros(3)), np.ones(3))


@pytest.mark.parametrize("K", [1, 2, 3, 4])
def test_candidate_gains_equal_a_fresh_svd_per_flip(K):
    """The incremental gains (closed forms for K = 1, 2; K x K eigenvalues above) against the
    definition: the nuclear norm of Y B with one bit flipped, minus the current one."""
    from l1pca.kernels.bitflip import candidate_gains

    rng = np.random.default_rng(30 + K)
    Y = rng.standard_normal((6, 25))
    B = np.where(rng.standard_normal((25, K)) > 0, 1.0, -1.0)
    A = Y @ B
    gains = candidate_gains(B, Y.T @ A, A.T @ A, (Y * Y).sum(axis=0))
    cur = np.linalg.svd(A, compute_uv=False).sum()
    for n in range(25):
        for k in range(K):
            B[n, k] *= -1
            assert gains[n, k] == pytest.approx(np.linalg.svd(Y @ B, compute_uv=False).sum() - cur, abs=1e-9)
            B[n, k] *= -1


@pytest.mark.slow
def test_sweeps_absorb_the_cascade_on_contaminated_data():
    """2% gross outliers: single flips alone (the paper's L1-BF) need thousands of O(N d) steps, the
    fixed-point sweeps a small fraction of them, and both end at a single-flip local optimum."""
    rng = np.random.default_rng(22)
    N, D = 4000, 40
    X = rng.standard_normal((N, D)) * np.linspace(3.0, 0.5, D)
    X[: N // 50] += 20.0 * rng.standard_normal((N // 50, D))
    cold = solve(X, 1, n_init=1, warm_start=False, pair_moves=False, backend="numpy")
    warm = solve(X, 1, n_init=1, warm_start=True, backend="numpy")
    assert cold.converged and warm.converged
    assert warm.n_flips * 10 <= cold.n_flips, (warm.n_flips, cold.n_flips)
    Y = reduce_rank(X)
    for res in (cold, warm):
        b = res.signs[:, 0].astype(float)
        P = Y.T @ (Y @ b)
        assert np.all((Y * Y).sum(axis=0) <= b * P + 1e-9 * np.abs(P).max())
    # The same rules on JAX: same end point from the same start.
    jx = solve(X, 1, n_init=1, warm_start=True, backend="jax")
    np.testing.assert_array_equal(jx.signs, warm.signs)
    assert jx.n_flips == warm.n_flips


@pytest.mark.parametrize("K, warm, pairs", [(1, True, True), (1, False, False), (2, True, True),
                                             pytest.param(2, False, False, marks=pytest.mark.slow),
                                             (3, True, True)])
def test_screened_search_takes_the_reference_steps(K, warm, pairs):
    """With many samples each step skips the bits whose gain bound rules them out (bitflip_screened):
    the same sweeps, flips, rounds and pair moves as the full pass, so the same end point."""
    from l1pca.kernels import SolveOptions
    from l1pca.kernels.bitflip_screened import SCREEN_MIN_SAMPLES
    from l1pca.kernels.solve import host_search

    rng = np.random.default_rng(23 + K)
    N, D = SCREEN_MIN_SAMPLES + 904, 30 if K == 1 else 8
    X = rng.standard_normal((N, D)) * np.linspace(3.0, 0.5, D)
    X[: N // 50] += 20.0 * rng.standard_normal((N // 50, D))
    Y = reduce_rank(X)
    starts = (np.repeat(sign(Y[:1].T), K, axis=1), sign(X @ rng.standard_normal((D, K))))
    for B0 in starts:
        full = bitflip_search(Y, B0, warm_start=warm, pair_moves=pairs, screen=False)
        # backend="numpy": the screened search, not the compiled loop "auto" would take
        fast = host_search(Y, B0, SolveOptions(warm_start=warm, pair_moves=pairs, backend="numpy"))
        np.testing.assert_array_equal(fast.signs, full.signs)
        assert (fast.n_flips, fast.converged) == (full.n_flips, full.converged)
        assert fast.value == pytest.approx(full.value, rel=1e-12)
        assert full.n_flips > 20  # the search did real work
    capped = host_search(Y, B0, SolveOptions(warm_start=warm, pair_moves=pairs, max_flips=5, backend="numpy"))
    assert capped.n_flips == 5 and not capped.converged


@pytest.mark.parametrize("scale", [2.0 ** -300, 1.0, 2.0 ** 300])
def test_single_precision_refresh_error_bound_holds(scale):
    """The screen's refreshes compute ``Y^T A`` in float32 (_SinglePass) with a bound on the error;
    the bound must hold for every entry, for rows of very different size and data of any scale (the
    float32 range is 1e-38 to 3e38: the factors are rescaled by powers of two first)."""
    from l1pca.kernels.bitflip_screened import _SinglePass

    rng = np.random.default_rng(7)
    N, d = 3000, 40
    Yt = rng.standard_normal((N, d)) * 10.0 ** rng.uniform(-45, 5, (N, 1)) * scale
    Yt[:5] = 0.0
    r = np.sqrt(np.einsum("nd,nd->n", Yt, Yt))
    single = _SinglePass(Yt, r)
    for K in (1, 2, 3):
        A = rng.standard_normal((d, K)) * 10.0 ** rng.uniform(-3, 3, K) * scale * 1e3
        P, rel, absolute = single.product(A)
        exact = Yt @ A  # float64: its own error is ~1e-14 of the bound below
        err = np.abs(P - exact)
        bound = rel[None, :] * r[:, None] + absolute[None, :] + 1e-13 * r[:, None] * np.linalg.norm(A, axis=0)
        assert np.all(err <= bound)
        assert np.all(P[:5] == 0.0)
        big = r > 1e-6 * r.max()
        assert np.max(err[big] / (r[big, None] * np.linalg.norm(A, axis=0))) < 1e-5  # and it is tight


@pytest.mark.parametrize("K", [1, 2])
def test_screened_search_with_pair_moves(K):
    """Mostly zero samples (as in a padded bucket): few enough non-zero bits for pair moves, which the
    screened path hands the full P; same steps as the reference."""
    from l1pca.kernels import SolveOptions
    from l1pca.kernels.bitflip_screened import SCREEN_MIN_SAMPLES
    from l1pca.kernels.solve import host_search

    rng = np.random.default_rng(50 + K)
    X = np.zeros((SCREEN_MIN_SAMPLES + 100, 6))
    X[:600] = rng.standard_t(2, (600, 6))
    X[:60] *= 5
    Y = reduce_rank(X)
    moved = 0
    for seed in range(12):
        B0 = sign(X @ np.random.default_rng(seed).standard_normal((6, K)))
        full = bitflip_search(Y, B0, screen=False)
        fast = host_search(Y, B0, SolveOptions(backend="numpy"))  # screened
        np.testing.assert_array_equal(fast.signs, full.signs)
        assert (fast.n_flips, fast.converged) == (full.n_flips, full.converged)
        moved += bitflip_search(Y, B0, pair_moves=False, screen=False).n_flips != full.n_flips
    assert moved  # pair moves changed the search at least once


@pytest.mark.parametrize("K", [3, pytest.param(4, marks=pytest.mark.slow)])
def test_bounded_selection_for_k_ge_3_takes_the_reference_steps(K):
    """K >= 3: only candidates whose concavity bound reaches the tolerance get an eigenvalue problem
    (select_flip_bounded); the flips, their order and the end point are those of the full evaluation."""
    rng = np.random.default_rng(24 + K)
    N, D = 400, 12
    X = rng.standard_normal((N, D)) + rng.standard_t(2, (N, D))
    X[: N // 10] *= 10
    Y = reduce_rank(X)
    for B0 in (np.repeat(l2_start(Y)[:, None], K, axis=1), sign(X @ rng.standard_normal((D, K)))):
        for warm in (True, False):
            full = bitflip_search(Y, B0, warm_start=warm, screen=False)
            fast = bitflip_search(Y, B0, warm_start=warm, screen=True)
            np.testing.assert_array_equal(fast.signs, full.signs)
            assert (fast.n_flips, fast.converged) == (full.n_flips, full.converged)
            assert full.n_flips > 20
