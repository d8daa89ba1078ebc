"""``L1PCA``: scikit-learn estimator for L1-norm PCA and faulty-measurement detection."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._validation import check_matrix
from .errors import InputError
from .fitting import fit_many
from .model import Model
from .options import DEFAULT_N_INIT, DEFAULT_SUPPORT_FRACTION, DEFAULT_TOL, SolveOptions
from .scoring import outlier_map, residuals


class L1PCA(TransformerMixin, OutlierMixin, BaseEstimator):
    """L1-norm principal component analysis and faulty-measurement detection.

    Finds L1 principal axes (L1-BF) of the data the way a detector needs them: fitted to the 75% of
    rows closest to the subspace, with faulty cells screened first (:mod:`l1pca.kernels.detection`),
    so neither far-out rows nor a glitching sensor can pull them. Rows are scored on ROBPCA's outlier
    map (score distance within the subspace, orthogonal distance from it, each with its cutoff);
    cells by their residual divided by a robust scale of their feature's residuals, so the largest
    names the faulty sensor. ``support_fraction=None, cell_robust=False`` fits the paper's problem,
    ``max ||(X - c) Q||_1``, on every row.

    Parameters
    ----------
    n_components : int or "auto", default=1
        Number of components K, ``1 <= K <= min(n_samples, n_features)``; "auto": the smallest K
        whose robust dispersion reaches 80% (:func:`l1pca.kernels.detection.choose_n_components`),
        in ``n_components_``.
    method : str, default="bitflip"
        Solver, one of :data:`l1pca.kernels.options.METHODS`; see :func:`l1pca.kernels.solve`.
    center : {"median", "mean", "none"} or None, default="median"
        Centre subtracted before the fit. The coordinate-wise median is robust to outliers.
    n_init : int, default=8
        L1-BF starts (the L2-PCA start, then random ones).
    backend : {"auto", "numpy", "jax", "cupy"}, default="auto"
    random_state : None, int or numpy.random.Generator, default=None
    contamination : "auto" or float in (0, 0.5], default="auto"
        "auto": a sample is an outlier outside either cutoff of the outlier map (0.99 quantiles); a
        float: the fraction of training samples expected to be outliers.
    support_fraction : float in [0.5, 1] or None, default=0.75
        Share of rows the robust fit is fitted to; None (or 1.0): every row.
    cell_robust : bool, default=True
        Screen faulty cells before and during the fit and when scoring cells.
    max_flips : int, optional
    tol : float, default=1e-9
    warm_start : bool, default=True
        Fixed-point sweeps between flips (see :func:`l1pca.kernels.solve`).
    pair_moves : bool, default=True
        Two-flip moves at each single-flip local optimum (see :func:`l1pca.kernels.solve`).

    Attributes
    ----------
    components_ : ndarray (n_components, n_features)
        L1 principal axes (rows), as scikit-learn's PCA lays them out.
    center_ : ndarray (n_features,)
    n_components_ : int
        K as fitted (the chosen one under "auto").
    objective_ : float
        ``||(X - center_) components_.T||_1`` on the training data.
    offset_ : float
        ``decision_function = score_samples - offset_``; ``-1`` under ``contamination="auto"``.
    threshold_ : float
        The outlier map's cutoff on the orthogonal distance (``od_cutoff_``).
    sd_cutoff_, od_cutoff_ : float
        The outlier map's cutoffs.
    support_ : ndarray (n_samples,) of bool
        The training rows of the final fit.
    n_csteps_ : int
    residual_scale_ : ndarray (n_features,)
        Robust scale of each feature's training residuals (cell residuals are divided by it).
    training_scores_ : ndarray (n_samples,)
        Distances of the training samples from the subspace.
    n_features_in_ : int
    n_flips_ : int
    backend_ : str
        The backend that ran the fit.
    converged_ : bool
    model_ : Model
        The fitted record (:class:`l1pca.kernels.Model`): ``to_model()`` returns it.
    outlier_map_scales_ : OutlierMapScales or None
        The outlier map's score scales and cutoffs, from the training samples (:meth:`outlier_map`).

    See Also
    --------
    l1pca.kernels.solve : the functional API.
    sklearn.decomposition.PCA : L2 PCA.

    References
    ----------
    P. P. Markopoulos, S. Kundu, S. Chamadia, D. A. Pados, "Efficient L1-norm principal-component
    analysis via bit flipping", IEEE Trans. Signal Processing 65(16), 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from l1pca.kernels import L1PCA
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 1)) @ [[3.0, 1.0, 0.5]] + 0.05 * rng.normal(size=(200, 3))
    >>> X[:5] = [40.0, -40.0, 40.0]            # five corrupted samples
    >>> X[10, 2] = 9.0                         # one faulty cell
    >>> est = L1PCA(n_components=1, random_state=0).fit(X)
    >>> est.components_.shape
    (1, 3)
    >>> bool(np.all(est.predict(X[:5]) == -1)), float(np.mean(est.predict(X[11:]) == 1)) > 0.9
    (True, True)
    >>> int(est.score_entries(X[10:11]).argmax())   # the faulty sensor of row 10
    2
    """

    _parameter_constraints = {}  # validated in fit by the shared checks of l1pca.kernels

    def __init__(self, n_components=1, *, method="bitflip", center="median", n_init=DEFAULT_N_INIT,
                 backend="auto", random_state=None, contamination="auto",
                 support_fraction=DEFAULT_SUPPORT_FRACTION, cell_robust=True, max_flips=None,
                 tol=DEFAULT_TOL, warm_start=True, pair_moves=True):
        self.n_components = n_components
        self.method = method
        self.center = center
        self.n_init = n_init
        self.backend = backend
        self.random_state = random_state
        self.contamination = contamination
        self.support_fraction = support_fraction
        self.cell_robust = cell_robust
        self.max_flips = max_flips
        self.tol = tol
        self.warm_start = warm_start
        self.pair_moves = pair_moves

    def fit(self, X, y=None, *, progress=None):
        """Fit the L1 subspace, the outlier map and the cell scales. ``y`` is ignored.

        ``progress(done, total)``, if given, is called as L1-BF starts finish.
        """
        X = self._checked(X, reset=True)
        options = SolveOptions(method=self.method, n_init=self.n_init, backend=self.backend,
                               max_flips=self.max_flips, tol=self.tol, warm_start=self.warm_start,
                               pair_moves=self.pair_moves)
        model = fit_many([X], self.n_components, options=options, center=self.center,
                         seeds=[self.random_state], contamination=self.contamination,
                         support_fraction=self.support_fraction, cell_robust=self.cell_robust,
                         progress=progress)[0]
        self._set_fitted(model)
        return self

    def _set_fitted(self, model: Model):
        """Every fitted attribute, from the one record of a fit (set in this place only)."""
        self.model_ = model
        self.center_ = model.center
        self.components_ = model.components
        self.objective_ = model.objective
        self.n_flips_ = model.n_flips
        self.backend_ = model.backend
        self.converged_ = model.converged
        self.training_scores_ = (np.empty(0) if model.training_scores is None
                                 else model.training_scores)
        self.threshold_ = model.threshold
        self.n_components_ = model.n_components
        self.offset_ = -model.score_cutoff
        self.sd_cutoff_, self.od_cutoff_ = model.sd_cutoff, model.od_cutoff
        self.n_csteps_ = model.n_csteps
        self.support_ = model.support
        self.residual_scale_ = model.residual_scale
        self.n_features_in_ = model.n_features
        self.outlier_map_scales_ = model.outlier_map_scales if model.has_outlier_map else None

    @classmethod
    def from_model(cls, model: Model):
        """A fitted estimator that scores and transforms like ``model`` (a :class:`Model` from
        :func:`l1pca.kernels.fitting.fit_many`, a file or the service)."""
        est = cls(model.n_components, method=model.method, support_fraction=model.support_fraction,
                  cell_robust=model.cell_robust)
        est._set_fitted(model)
        return est

    def to_model(self) -> Model:
        """The fitted :class:`Model` (to save, or to send to the service)."""
        check_is_fitted(self)
        return self.model_

    def _checked(self, X, *, reset):
        """X as float64. scikit-learn's ``validate_data`` converts it, refuses a wrong shape or
        type (with the messages scikit-learn's checks expect) and records the feature names and
        count, but leaves NaN and infinity to :func:`check_matrix`, whose InputError (a
        ValueError) names the first one as ``solve``, the CLI and the service do: "X must be
        finite; found nan at row 5, column 3 ..."."""
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite=False, ensure_min_samples=1,
                          reset=reset)
        return check_matrix(X, name="X")

    def _validated(self, X):
        check_is_fitted(self)
        return self._checked(X, reset=False)

    def transform(self, X):
        """Coordinates in the L1 subspace: ``(X - center_) @ components_.T``."""
        X = self._validated(X)
        return (X - self.center_) @ self.components_.T

    def inverse_transform(self, X):
        """Back to feature space: ``X @ components_ + center_``."""
        check_is_fitted(self)
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.components_.shape[0]:
            raise InputError(
                f"X must have shape (n_samples, {self.components_.shape[0]}); got {X.shape}"
            )
        return X @ self.components_ + self.center_

    def residuals(self, X):
        """Signed per-entry residuals ``(x - c) - Q Q^T (x - c)``, shape (n_samples, n_features)."""
        return residuals(self._validated(X), self.center_, self.components_.T)

    def score_entries(self, X):
        """Standardised cell residuals ``|z|`` (n_samples, n_features), higher = more suspicious and
        comparable across features: each row projected on its unflagged cells, each residual divided
        by ``residual_scale_``. The largest in a row names the faulty feature."""
        X = self._validated(X)
        return self.model_.score_entries(X)

    def cell_flags(self, X):
        """True for cells whose ``|z|`` exceeds :data:`l1pca.kernels.detection.CELL_CUTOFF` (2.576)."""
        X = self._validated(X)
        return self.model_.cell_flags(X)

    def expected(self, X):
        """The value each cell is expected to have, given the row's unflagged cells and the fit."""
        X = self._validated(X)
        return self.model_.expected(X)

    def outlier_map(self, X):
        """ROBPCA's outlier map of X against the fitted subspace
        (:func:`l1pca.kernels.scoring.outlier_map`): score distance, orthogonal distance, the group
        of each sample (index into :data:`l1pca.kernels.scoring.GROUPS`: regular, good leverage,
        orthogonal outlier, bad leverage) and a ranking score. The scales and cutoffs were learnt
        from the training samples (``outlier_map_scales_``)."""
        X = self._validated(X)
        if getattr(self, "outlier_map_scales_", None) is None:
            raise InputError("this estimator was made from a Model without the outlier map's scales; "
                             "fit it on data to get them")
        return outlier_map(X, self.center_, self.components_.T, self.outlier_map_scales_)

    def score_samples(self, X):
        """Normality of each sample, higher = more normal (scikit-learn's convention): minus the
        outlier map's ranking score ``max(SD / sd_cutoff, OD / od_cutoff)``."""
        X = self._validated(X)
        return -self.model_.outlier_scores(X)

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for outliers, as scikit-learn's detectors."""
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 for inliers, -1 for outliers."""
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
