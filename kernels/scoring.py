"""Outlier scores from a fitted L1 subspace, and robust thresholds for them.

With centre c and orthonormal basis Q (n_features x K), a sample's residual is
``r = (x - c) - Q Q^T (x - c)``. ``||r||_2`` scores the sample (distance from the subspace); ``|r_j|``
scores entry j of it, so the largest one points at the sensor that is off.

Thresholds never use the mean and standard deviation of data that contain the outliers:

* ``contamination="auto"``: ``median + n_mad * 1.4826 * MAD`` of the training scores (1.4826 makes the
  MAD a consistent estimate of the standard deviation for Gaussian scores);
* ``contamination=p`` in (0, 0.5]: the ``1 - p`` quantile of the training scores.

These are the functions the estimator, the client's local ``Model`` and the service all call. Each
also takes a stack of equal-shaped problems (leading axes), computing for each exactly what it
computes for that problem alone: :func:`l1pca.kernels.fitting.fit_many` scores a batch at once.
"""
from __future__ import annotations

import numbers

import numpy as np

from .errors import InputError
from .options import check_contamination

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


def robust_threshold(scores, *, contamination="auto", n_mad=3.0):
    """Score above which a sample is called an outlier.

    Parameters
    ----------
    scores : ndarray (n_samples,) or (..., n_samples)
        Training scores (:func:`sample_scores`); a stack gives one threshold per problem (an array).
    contamination : "auto" or float in (0, 0.5]
        "auto": median + ``n_mad`` scaled MADs; a float: that upper quantile of the scores.
    n_mad : float
        Width of the "auto" rule in robust standard deviations.
    """
    contamination = check_contamination(contamination)
    if not (isinstance(n_mad, numbers.Real) and n_mad > 0):
        raise InputError(f"n_mad={n_mad!r} must be a positive number")
    scores = np.asarray(scores, dtype=np.float64)
    if contamination == "auto":
        med = np.median(scores, axis=-1, keepdims=True)
        mad = np.median(np.abs(scores - med), axis=-1)
        out = med[..., 0] + n_mad * MAD_SCALE * mad
    else:
        out = np.quantile(scores, 1.0 - contamination, axis=-1)
    return float(out) if out.ndim == 0 else out
