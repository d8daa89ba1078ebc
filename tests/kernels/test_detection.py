"""The detector (l1pca.kernels.detection): cell residuals by hand, a fit that leverage points and a
glitching sensor cannot pull, n_components="auto", and the Model's new fields."""
from __future__ import annotations

import numpy as np
import pytest

from l1pca.kernels import L1PCA, InputError, Model, solve
from l1pca.kernels.detection import (
    CELL_CUTOFF,
    MAX_CSTEPS,
    cell_residuals,
    choose_n_components,
    clip_cells,
    project_on_cells,
    robust_scale,
    subspace_distance,
)
from l1pca.kernels.fitting import fit_many


def test_cell_cutoff_is_the_chi2_quantile():
    from scipy.stats import chi2

    assert CELL_CUTOFF == pytest.approx(np.sqrt(chi2.ppf(0.99, 1)), rel=1e-12)


def test_robust_scale_by_hand():
    # median 3, |deviations| 2 1 0 1 97 -> median 1 -> 1.4826.
    assert robust_scale(np.array([[1.0], [2.0], [3.0], [4.0], [100.0]]))[0] == pytest.approx(1.4826)
    # Over half the values equal: MAD 0, so 1.2533 * mean |deviation| = 1.2533 * 10 / 5.
    assert robust_scale(np.array([[0.0], [0.0], [0.0], [0.0], [10.0]]))[0] == pytest.approx(2.5066)
    assert robust_scale(np.zeros((4, 1)))[0] == 1.0


def test_clip_cells_by_hand():
    X = np.array([[0.0, 10.0], [1.0, -10.0]])
    out = clip_cells(X, np.array([0.0, 0.0]), np.array([1.0, 2.0]))
    np.testing.assert_allclose(out, [[0.0, 2 * CELL_CUTOFF], [1.0, -2 * CELL_CUTOFF]])


def test_projection_on_unflagged_cells_by_hand():
    # Basis (1, 1, 1) / sqrt(3); the row (1, 1, 10): its third cell is wrong.
    Q = np.ones((3, 1)) / np.sqrt(3)
    x = np.array([[1.0, 1.0, 10.0]])
    # On every cell: t = 12 / sqrt(3), and the residual leaks onto the two good cells (-3 each).
    t_all = project_on_cells(x, Q, None)
    assert t_all[0, 0] == pytest.approx(12 / np.sqrt(3))
    # On cells 0 and 1 only: t = argmin (1 - t/sqrt3)^2 * 2 -> t = sqrt(3); residual (0, 0, 9).
    flags = np.array([[False, False, True]])
    t = project_on_cells(x, Q, flags)
    assert t[0, 0] == pytest.approx(np.sqrt(3))
    np.testing.assert_allclose(x - t @ Q.T, [[0.0, 0.0, 9.0]], atol=1e-12)
    # Too few unflagged cells (fewer than K + 1): the row is projected on all of them.
    t_few = project_on_cells(x, Q, np.array([[True, True, False]]))
    assert t_few[0, 0] == pytest.approx(t_all[0, 0])


def test_cell_residuals_name_the_wrong_cell_by_hand():
    Q = np.ones((3, 1)) / np.sqrt(3)
    X = np.array([[1.0, 1.0, 10.0], [2.0, 2.0, 2.0]])
    scale = np.array([0.5, 0.5, 2.0])
    cf = cell_residuals(X, np.zeros(3), Q, scale, cell_center=np.full(3, 1.5), cell_scale=np.ones(3))
    # Row 0: cell 2 starts flagged (|10 - 1.5| > 2.576), the projection uses cells 0 and 1:
    # residual (0, 0, 9), z = (0, 0, 4.5). Row 1 lies in the subspace: z = 0.
    np.testing.assert_allclose(cf.z, [[0.0, 0.0, 4.5], [0.0, 0.0, 0.0]], atol=1e-12)
    np.testing.assert_array_equal(cf.flags, [[False, False, True], [False, False, False]])


def _low_rank(seed, n=300, d=8, k=2, noise=0.1, scales=None):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, k)))[0]
    scales = np.linspace(4, 2, k) if scales is None else scales
    X = (rng.standard_normal((n, k)) * scales) @ basis.T + noise * rng.standard_normal((n, d))
    return X, basis


def test_bad_leverage_points_do_not_pull_the_detector():
    X, basis = _low_rank(1)
    rng = np.random.default_rng(2)
    far = np.linalg.qr(np.column_stack([basis, rng.standard_normal(8)]))[0][:, 2]  # off the subspace
    X[:60] = 12.0 * far + 20.0 * basis[:, 0] + 0.1 * rng.standard_normal((60, 8))  # 20% bad leverage
    plain = L1PCA(2, random_state=0, support_fraction=None, cell_robust=False).fit(X)
    robust = L1PCA(2, random_state=0).fit(X)
    assert subspace_distance(plain.components_.T, basis) > 0.3  # pulled: over 17 degrees
    assert subspace_distance(robust.components_.T, basis) < 0.05
    assert not robust.support_[:60].any()
    assert np.all(robust.predict(X[:60]) == -1)
    assert np.mean(robust.predict(X[60:]) == 1) > 0.95
    groups = robust.outlier_map(X[:60]).group
    assert np.all(groups == 3)  # bad leverage: outside both cutoffs
    assert 0 < robust.n_csteps_ <= MAX_CSTEPS + 1


def test_a_glitching_sensor_does_not_become_an_axis():
    X, basis = _low_rank(3)
    rng = np.random.default_rng(4)
    rows = rng.choice(300, 45, replace=False)  # sensor 5 wrong in 15% of the rows
    X[rows, 5] += rng.choice([-1.0, 1.0], 45) * 6 * robust_scale(X)[5]
    named = {}
    for cell_robust in (False, True):
        est = L1PCA(2, random_state=0, cell_robust=cell_robust).fit(X)
        named[cell_robust] = np.mean(est.score_entries(X[rows]).argmax(axis=1) == 5)
        if cell_robust:
            assert subspace_distance(est.components_.T, basis) < 0.1
            assert np.mean(est.cell_flags(X)[rows, 5]) > 0.9
            others = np.setdiff1d(np.arange(300), rows)
            assert np.mean(est.cell_flags(X)[others]) < 0.03
    assert named[True] >= 0.95
    assert named[True] >= named[False]


def test_plain_fit_is_the_paper_problem_and_batch_equals_alone():
    X1, _ = _low_rank(5, n=120)
    X2, _ = _low_rank(6, n=90)
    plain = fit_many([X1], 2, seeds=[0], backend="numpy", support_fraction=None, cell_robust=False)[0]
    ref = solve(X1 - np.median(X1, axis=0), 2, random_state=0, backend="numpy")
    np.testing.assert_allclose(plain.components, ref.components.T)
    alone = [fit_many([X], 2, seeds=[s], backend="numpy")[0] for X, s in ((X1, 0), (X2, 1))]
    batch = fit_many([X1, X2, X1], 2, seeds=[0, 1, 0], backend="numpy")
    for a, b in zip(alone + alone[:1], batch):
        np.testing.assert_array_equal(a.components, b.components)
        np.testing.assert_array_equal(a.residual_scale, b.residual_scale)
        assert (a.od_cutoff, a.n_csteps) == (b.od_cutoff, b.n_csteps)


def test_auto_components_counts_the_structure():
    # k equal components: their shares are 1/k, 2/k, ..., so 80% needs all k of them.
    for k in (1, 2, 3):
        X, _ = _low_rank(7 + k, n=400, d=10, k=k, noise=0.05, scales=np.full(k, 3.0))
        assert choose_n_components(X) == k
        est = L1PCA("auto", random_state=0).fit(X)
        assert est.n_components_ == k and est.components_.shape == (k, 10)
    models = fit_many([_low_rank(20, k=1)[0], _low_rank(21, k=3, scales=np.full(3, 3.0))[0]], "auto",
                      seeds=[0, 0])
    assert [m.n_components for m in models] == [1, 3]


def test_contamination_sets_the_score_cutoff():
    X, _ = _low_rank(9)
    est = L1PCA(2, contamination=0.1, random_state=0).fit(X)
    assert np.mean(est.predict(X) == -1) == pytest.approx(0.1, abs=0.01)
    assert est.offset_ == pytest.approx(-np.quantile(-est.score_samples(X), 0.9))


def test_model_round_trips_every_field(tmp_path):
    X, _ = _low_rank(10)
    m = fit_many([X], 2, seeds=[3])[0]
    m.save(tmp_path / "m.npz")
    back = Model.load(tmp_path / "m.npz")
    for name in ("components", "center", "score_scales", "cell_center", "cell_scale", "residual_scale"):
        np.testing.assert_array_equal(getattr(back, name), getattr(m, name))
    for name in ("threshold", "sd_cutoff", "od_cutoff", "score_cutoff", "support_fraction",
                 "cell_robust", "n_csteps", "seed"):
        assert getattr(back, name) == getattr(m, name)
    np.testing.assert_array_equal(back.predict(X), m.predict(X))
    np.testing.assert_allclose(back.score_entries(X), m.score_entries(X))
    est = L1PCA.from_model(back)
    np.testing.assert_allclose(est.score_samples(X), -m.outlier_scores(X))
    # A model written before the outlier map (no scales) still loads, transforms and scores OD.
    old = Model(components=m.components, center=m.center, threshold=1.0)
    old.save(tmp_path / "old.npz")
    with np.load(tmp_path / "old.npz") as f:
        np.savez(tmp_path / "older.npz", components=f["components"], center=f["center"], meta=f["meta"])
    older = Model.load(tmp_path / "older.npz")
    assert not older.has_outlier_map
    np.testing.assert_allclose(older.outlier_scores(X), older.score_samples(X))


@pytest.mark.parametrize("kwargs,match", [
    (dict(support_fraction=0.2), "support_fraction=0.2 must be None or a number in"),
    (dict(support_fraction="all"), "support_fraction='all'"),
    (dict(cell_robust="yes"), "cell_robust must be True or False"),
    (dict(n_components="many"), "n_components must be a positive integer or 'auto'"),
])
def test_bad_detector_options_name_the_argument(kwargs, match):
    X, _ = _low_rank(11, n=40)
    with pytest.raises(InputError, match=match):
        L1PCA(**kwargs).fit(X)
    with pytest.raises(InputError, match=match):
        fit_many([X], **kwargs)
