"""ROBPCA's outlier map (l1pca.kernels.scoring.fit_outlier_map / outlier_map; issue 28's first
piece) against values computed by hand on a small set, and through the estimator."""
from __future__ import annotations

import numpy as np
import pytest

from l1pca.kernels import L1PCA, Model
from l1pca.kernels.errors import InputError
from l1pca.kernels.scoring import GROUPS, fit_outlier_map, outlier_map

# Seven regular samples near the x-axis, then a good leverage point (far along the axis), an
# orthogonal outlier (far off it) and a bad leverage point (both).
X = np.array([[1, .1], [-1, -.1], [2, .2], [-2, -.2], [0, 0], [3, -.3], [-3, .3],
              [10, 0], [0, 5], [10, 5]], dtype=float)
Q = np.array([[1.0], [0.0]])
C = np.zeros(2)


def test_scales_and_cutoffs_by_hand():
    scales = fit_outlier_map(X, C, Q)
    # Scores t = x_1: median 0.5, absolute deviations' median (1.5 + 2.5) / 2 = 2.0.
    assert scales.score_scales == pytest.approx([1.4826 * 2.0])
    # sqrt(chi2_1(0.99)) = z_0.995 = 2.5758.
    assert scales.sd_cutoff == pytest.approx(2.575829, abs=1e-6)
    # OD^(2/3): 0, 0, 0.1^(2/3) x2, 0.2^(2/3) x2, 0.3^(2/3) x2, 5^(2/3) x2 -> median 0.2^(2/3);
    # absolute deviations' median (0.2^(2/3) - 0.1^(2/3)); cutoff (m + 1.4826 s z_0.99)^(3/2).
    m = 0.2 ** (2 / 3)
    s = 1.4826 * (0.2 ** (2 / 3) - 0.1 ** (2 / 3))
    assert scales.od_cutoff == pytest.approx((m + s * 2.326348) ** 1.5, rel=1e-6)
    assert scales.od_cutoff == pytest.approx(0.686861, abs=1e-6)


def test_distances_groups_and_ranking_by_hand():
    mapped = outlier_map(X, C, Q, fit_outlier_map(X, C, Q))
    np.testing.assert_allclose(mapped.sd, np.abs(X[:, 0]) / (1.4826 * 2.0))
    np.testing.assert_allclose(mapped.od, np.abs(X[:, 1]))
    assert [GROUPS[g] for g in mapped.group] == ["regular"] * 7 + [
        "good leverage", "orthogonal outlier", "bad leverage"]
    # The ranking score is the larger excess over a cutoff: above 1 exactly for the three outliers.
    assert np.all(mapped.score[:7] < 1) and np.all(mapped.score[7:] > 1)
    assert mapped.score[9] == pytest.approx(5 / 0.686861, rel=1e-5)


def test_the_estimator_maps_new_samples_with_its_training_scales():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((200, 2)) @ np.array([[3.0, 0.0], [0.0, 0.3]])
    est = L1PCA(1, random_state=0, backend="numpy").fit(train)
    new = np.array([[0.5, 0.0], [30.0, 0.0], [0.0, 6.0], [30.0, 6.0]])
    groups = [GROUPS[g] for g in est.outlier_map(new).group]
    assert groups == ["regular", "good leverage", "orthogonal outlier", "bad leverage"]
    # A Model without the map's scales (an older file or client) cannot give the map.
    with pytest.raises(InputError, match="outlier map"):
        L1PCA.from_model(Model(components=est.components_, center=est.center_,
                               threshold=1.0)).outlier_map(new)
