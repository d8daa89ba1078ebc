"""Outlier scores from a fitted subspace, and robust cutoffs for them.

With centre c and orthonormal basis Q (n_features x K), a sample's residual is
``r = (x - c) - Q Q^T (x - c)``; ``||r||_2`` is its orthogonal distance (OD) from the subspace.

The outlier map (:func:`fit_outlier_map`, :func:`outlier_map`; Hubert, Rousseeuw & Vanden Branden
2005, ROBPCA) scores a sample twice: its score distance (SD) within the subspace, with robust
per-component scales, and its OD, each with its own cutoff, and sorts samples into four groups;
``max(SD / SD cutoff, OD / OD cutoff)`` ranks them; :func:`map_scales` learns the scales from
scores and distances alone (the CLI's streamed ``--devices`` fit). The detector
(:mod:`l1pca.kernels.detection`) scores cells.

Cutoffs never use the mean and standard deviation of data that contain the outliers: medians,
MADs (times 1.4826, a consistent estimate of the standard deviation for Gaussian scores),
chi-square and Wilson-Hilferty quantiles.

Each function also takes a stack of equal-shaped problems (leading axes) where it says so,
computing for each exactly what it computes for that problem alone.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import InputError

MAD_SCALE = 1.4826


def center_of(X, center):
    """The centre a fit subtracts: coordinate-wise median, mean, or zeros; X (..., n, d) -> (..., d)."""
    if center == "median":
        return np.median(X, axis=-2)
    if center == "mean":
        return X.mean(axis=-2)
    if center is None or center == "none":
        return np.zeros(X.shape[:-2] + X.shape[-1:])
    raise InputError(f"center={center!r} is not one of 'median', 'mean', None")


def residuals(X, center, components):
    """Signed residuals ``(x - c) - Q Q^T (x - c)`` per entry; ``components`` is (n_features, K)
    (stacks: X (..., n, d), center (..., d), components (..., d, K))."""
    Xc = X - center[..., None, :]
    return Xc - (Xc @ components) @ np.swapaxes(components, -1, -2)


def sample_scores(R):
    """Distance of each sample from the subspace: the row norms of the residual matrix."""
    return np.sqrt((R * R).sum(axis=-1))


# -- the outlier map ---------------------------------------------------------------------------------
OUTLIER_MAP_QUANTILE = 0.99
"""Both cutoffs of the outlier map sit at this quantile. ROBPCA's default is 0.975; at that level a
sample of clean low-rank Gaussian data falls outside one of the two cutoffs 4.8-6.7% of the time
(n from 100 to 1000, 10 seeds each), at 0.99 2.0-3.1%: the detector's false alarms stay under 5%
(``docs/decisions/0013-robust-detection.md``)."""

GROUPS = ("regular", "good leverage", "orthogonal outlier", "bad leverage")
"""The outlier map's groups, by (SD over its cutoff, OD over its cutoff): neither, SD only, OD only,
both. ``OutlierMap.group`` holds indices into this tuple."""


class OutlierMapScales(NamedTuple):
    """What the outlier map learns from the training samples."""

    score_scales: np.ndarray  # (K,) robust scale of each component's scores (1.4826 MAD)
    sd_cutoff: float  # sqrt(chi2_K(0.99))
    od_cutoff: float  # (m + s z_0.99)^(3/2), m and s the median and scaled MAD of OD^(2/3)


class OutlierMap(NamedTuple):
    """Per sample: score distance, orthogonal distance, group (index into :data:`GROUPS`) and one
    score for ranking, ``max(sd / sd_cutoff, od / od_cutoff)`` (above 1 outside a cutoff)."""

    sd: np.ndarray
    od: np.ndarray
    group: np.ndarray
    score: np.ndarray


def _scores_and_od(X, center, components):
    Xc = X - center
    T = Xc @ components  # (n, K) scores
    od = np.sqrt(((Xc - T @ components.T) ** 2).sum(axis=1))
    return T, od


def fit_outlier_map(X, center, components) -> OutlierMapScales:
    """The outlier map's scales and cutoffs from training samples X (n, d), the centre and the
    basis (d, K) (:func:`map_scales` of their scores and orthogonal distances)."""
    return map_scales(*_scores_and_od(X, center, components))


def map_scales(T, od) -> OutlierMapScales:
    """The outlier map's scales and cutoffs from the training scores T (n, K) and orthogonal
    distances od (n,) (a streamed fit computes them block by block).

    * Score scales: ``l_k = 1.4826 * median(|t_k - median(t_k)|)`` for each component's scores
      ``t_k``; never the standard deviation, which outliers inflate. A zero scale (more than half
      the scores equal) is replaced by the smallest positive one, or 1.
    * SD cutoff: ``sqrt(chi2_K(0.99))``.
    * OD cutoff (Wilson-Hilferty): :func:`fit_od_cutoff`.
    """
    from scipy.stats import chi2

    T = np.asarray(T, dtype=np.float64)
    med = np.median(T, axis=0)
    scales = MAD_SCALE * np.median(np.abs(T - med), axis=0)
    positive = scales[scales > 0]
    scales = np.where(scales > 0, scales, positive.min() if positive.size else 1.0)
    sd_cutoff = float(np.sqrt(chi2.ppf(OUTLIER_MAP_QUANTILE, T.shape[1])))
    return OutlierMapScales(scales, sd_cutoff, fit_od_cutoff(np.asarray(od, dtype=np.float64)))


def fit_od_cutoff(od):
    """Wilson-Hilferty cutoff on orthogonal distances: ``(m + s z_q)^(3/2)`` with ``m`` and ``s`` the
    median and scaled MAD of ``OD^(2/3)``."""
    from scipy.stats import norm

    w = od ** (2.0 / 3.0)
    m = float(np.median(w))
    s = MAD_SCALE * float(np.median(np.abs(w - m)))
    return float((m + s * norm.ppf(OUTLIER_MAP_QUANTILE)) ** 1.5)


def outlier_map(X, center, components, scales: OutlierMapScales) -> OutlierMap:
    """The outlier map of samples X (n, d) against a fitted subspace and its
    :func:`fit_outlier_map` scales: ``SD = sqrt(sum_k t_k^2 / l_k^2)`` with ``t = Q^T (x - c)``,
    ``OD = ||(x - c) - Q t||``, the group of each sample and its ranking score."""
    T, od = _scores_and_od(X, center, components)
    sd = np.sqrt(((T / scales.score_scales) ** 2).sum(axis=1))
    over_sd, over_od = sd > scales.sd_cutoff, od > scales.od_cutoff
    group = over_sd.astype(np.int8) + 2 * over_od.astype(np.int8)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_od = np.where(scales.od_cutoff > 0, od / scales.od_cutoff, np.where(od > 0, np.inf, 0.0))
    return OutlierMap(sd=sd, od=od, group=group, score=np.maximum(sd / scales.sd_cutoff, rel_od))
