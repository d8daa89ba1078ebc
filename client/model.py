"""``Model``: a fitted L1-PCA model as plain arrays, kept by the caller and sent back to any replica.

The service is stateless: ``Client.fit`` returns a Model, and ``transform`` / ``score_outliers`` take
it back. A Model also works locally (the same scoring code as the estimator,
:mod:`l1pca.kernels.scoring`), converts to and from :class:`l1pca.kernels.L1PCA`, and saves to a
``.npz`` file that loads without pickle.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from l1pca.kernels import scoring
from l1pca.kernels._validation import check_matrix


@dataclass(frozen=True)
class Model:
    """Fitted L1-PCA model.

    Attributes
    ----------
    components : ndarray (n_components, n_features)
        L1 principal axes as rows (the estimator's ``components_``).
    center : ndarray (n_features,)
    threshold : float
        Outlier threshold on the sample score.
    method : str
    objective : float
        L1 objective on the training data.
    n_samples : int
        Training samples.
    backend : str
        Where the fit ran.
    n_flips : int
    converged : bool
    """

    components: np.ndarray
    center: np.ndarray
    threshold: float
    method: str = "bitflip"
    objective: float = float("nan")
    n_samples: int = 0
    backend: str = ""
    n_flips: int = 0
    converged: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        comps = np.asarray(self.components, dtype=np.float64)
        center = np.asarray(self.center, dtype=np.float64)
        if comps.ndim != 2 or center.shape != (comps.shape[1],):
            raise ValueError(
                f"components must be (n_components, n_features) and center (n_features,); got "
                f"{comps.shape} and {center.shape}"
            )
        object.__setattr__(self, "components", comps)
        object.__setattr__(self, "center", center)

    @property
    def n_components(self):
        return self.components.shape[0]

    @property
    def n_features(self):
        return self.components.shape[1]

    # -- local use ----------------------------------------------------------------------------
    def _check(self, X):
        X = check_matrix(X)
        if X.shape[1] != self.n_features:
            raise ValueError(f"X has {X.shape[1]} features; the model was fitted on {self.n_features}")
        return X

    def transform(self, X):
        """Coordinates in the L1 subspace, (n_samples, n_components)."""
        return (self._check(X) - self.center) @ self.components.T

    def inverse_transform(self, Z):
        Z = np.asarray(Z, dtype=np.float64)
        if Z.ndim != 2 or Z.shape[1] != self.n_components:
            raise ValueError(f"Z must have shape (n_samples, {self.n_components}); got {Z.shape}")
        return Z @ self.components + self.center

    def residuals(self, X):
        return scoring.residuals(self._check(X), self.center, self.components.T)

    def score_entries(self, X):
        """``|residual|`` per entry; the largest in a row names the suspicious feature."""
        return np.abs(self.residuals(X))

    def score_samples(self, X):
        """Distance from the subspace (higher = more outlying)."""
        return scoring.sample_scores(self.residuals(X))

    def predict(self, X):
        """+1 inlier, -1 outlier."""
        return np.where(self.score_samples(X) <= self.threshold, 1, -1)

    # -- conversions --------------------------------------------------------------------------
    @classmethod
    def from_estimator(cls, est):
        """From a fitted :class:`l1pca.kernels.L1PCA`."""
        return cls(components=est.components_, center=est.center_, threshold=float(est.threshold_),
                   method=est.method, objective=float(est.objective_),
                   n_samples=int(est.training_scores_.shape[0]), backend=est.backend_,
                   n_flips=int(est.n_flips_), converged=bool(est.converged_))

    def to_estimator(self):
        """A fitted :class:`l1pca.kernels.L1PCA` that scores and transforms like this model."""
        from l1pca.kernels import L1PCA

        est = L1PCA(self.n_components, method=self.method)
        est.components_ = self.components.copy()
        est.center_ = self.center.copy()
        est.threshold_ = est.offset_ = float(self.threshold)
        est.objective_ = float(self.objective)
        est.n_features_in_ = self.n_features
        est.n_flips_ = self.n_flips
        est.backend_ = self.backend
        est.converged_ = self.converged
        est.training_scores_ = np.empty(0)
        return est

    def summary(self):
        return {"n_samples": self.n_samples, "n_features": self.n_features,
                "n_components": self.n_components, "method": self.method,
                "objective": self.objective, "threshold": self.threshold, "backend": self.backend,
                "n_flips": self.n_flips, "converged": self.converged}

    def save(self, path):
        """Write a ``.npz`` file (arrays plus a JSON header; no pickle)."""
        meta = json.dumps({k: v for k, v in self.summary().items()
                           if k not in ("n_features", "n_components")})
        np.savez(path, components=self.components, center=self.center, meta=np.array(meta))

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            return cls(components=f["components"], center=f["center"],
                       threshold=float(meta["threshold"]), method=meta["method"],
                       objective=float(meta["objective"]), n_samples=int(meta["n_samples"]),
                       backend=meta["backend"], n_flips=int(meta["n_flips"]),
                       converged=bool(meta["converged"]))
