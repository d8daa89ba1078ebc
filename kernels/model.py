"""``Model``: a fitted L1-PCA model as plain arrays, the one record of a fit everywhere.

:func:`l1pca.kernels.fitting.fit_many` returns Models; the estimator stores their fields; the wire
codec (:mod:`l1pca.proto.wire`) sends and receives them; the service is stateless, so
``Client.fit`` returns a Model and ``transform`` / ``score_outliers`` take it back. A Model also works
locally (the same scoring code as the estimator, :mod:`l1pca.kernels.scoring`), converts to and from
:class:`l1pca.kernels.L1PCA`, and saves to a ``.npz`` file that loads without pickle.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from . import detection, scoring
from ._validation import check_matrix
from .errors import InputError


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
    seed : int or None
        The seed the fit's random starts were drawn with, when known (the service reports it, so a
        fit can be repeated).
    training_scores : ndarray (n_samples,) or None
        Distances of the training samples from the subspace (kept by a local fit; not sent over
        the wire).
    score_scales : ndarray (n_components,) or None
        Robust scale of each component's training scores (the outlier map's SD scales).
    sd_cutoff, od_cutoff : float
        The outlier map's cutoffs on the score and orthogonal distances (nan when unknown).
    score_cutoff : float
        Cutoff on :meth:`outlier_scores`: 1.0 (either cutoff of the map) under
        ``contamination="auto"``, else that upper quantile of the training outlier scores.
    cell_center, cell_scale : ndarray (n_features,) or None
        Each feature's median and robust scale on the training data (cell-robust fits): cells beyond
        :data:`~l1pca.kernels.detection.CELL_CUTOFF` of them start flagged when cells are scored.
    residual_scale : ndarray (n_features,) or None
        Robust scale of each feature's training residuals: cell residuals are divided by it.
    support_fraction : float or None
        Share of the rows the robust fit used; None for the plain fit on every row.
    cell_robust : bool
        Whether faulty cells were screened before and during the fit.
    n_csteps : int
        C-steps of the robust fit.
    support : ndarray (n_samples,) of bool or None
        The training rows of the final fit (kept by a local fit; not sent over the wire).
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
    seed: int | None = None
    training_scores: np.ndarray | None = None
    score_scales: np.ndarray | None = None
    sd_cutoff: float = float("nan")
    od_cutoff: float = float("nan")
    score_cutoff: float = 1.0
    cell_center: np.ndarray | None = None
    cell_scale: np.ndarray | None = None
    residual_scale: np.ndarray | None = None
    support_fraction: float | None = None
    cell_robust: bool = False
    n_csteps: int = 0
    support: np.ndarray | None = None

    _VECTORS = ("score_scales", "cell_center", "cell_scale", "residual_scale")

    def __post_init__(self):
        comps = np.asarray(self.components, dtype=np.float64)
        center = np.asarray(self.center, dtype=np.float64)
        if comps.ndim != 2 or center.shape != (comps.shape[1],):
            raise InputError(
                f"components must be (n_components, n_features) and center (n_features,); got "
                f"{comps.shape} and {center.shape}"
            )
        object.__setattr__(self, "components", comps)
        object.__setattr__(self, "center", center)
        for name in self._VECTORS:
            value = getattr(self, name)
            if value is None:
                continue
            value = np.asarray(value, dtype=np.float64)
            size = comps.shape[0] if name == "score_scales" else comps.shape[1]
            if value.shape != (size,):
                raise InputError(f"{name} must have shape ({size},); got {value.shape}")
            object.__setattr__(self, name, value)

    @property
    def has_outlier_map(self):
        """Whether the model carries the outlier map's scales (fits since issue 28 do)."""
        return (self.score_scales is not None and np.isfinite(self.sd_cutoff)
                and np.isfinite(self.od_cutoff))

    @property
    def outlier_map_scales(self):
        if not self.has_outlier_map:
            raise InputError("this model has no outlier map scales (it was saved or sent by an older "
                             "version): fit it again to score with the outlier map")
        return scoring.OutlierMapScales(self.score_scales, float(self.sd_cutoff), float(self.od_cutoff))

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
            raise InputError(f"X has {X.shape[1]} features; the model was fitted on {self.n_features}")
        return X

    def transform(self, X):
        """Coordinates in the L1 subspace, (n_samples, n_components)."""
        return (self._check(X) - self.center) @ self.components.T

    def inverse_transform(self, Z):
        Z = np.asarray(Z, dtype=np.float64)
        if Z.ndim != 2 or Z.shape[1] != self.n_components:
            raise InputError(f"Z must have shape (n_samples, {self.n_components}); got {Z.shape}")
        return Z @ self.components + self.center

    def residuals(self, X):
        return scoring.residuals(self._check(X), self.center, self.components.T)

    def cells(self, X):
        """The cell scores of X (:func:`l1pca.kernels.detection.cell_residuals`)."""
        X = self._check(X)
        scale = self.residual_scale if self.residual_scale is not None else np.ones(self.n_features)
        return detection.cell_residuals(
            X, self.center, self.components.T, scale,
            cell_center=self.cell_center if self.cell_robust else None,
            cell_scale=self.cell_scale if self.cell_robust else None)

    def cell_residuals(self, X):
        """Standardised cell residuals z (n_samples, n_features), signed; comparable across features."""
        return self.cells(X).z

    def score_entries(self, X):
        """``|z|`` per cell (higher = more suspicious): the largest in a row names the faulty feature."""
        return np.abs(self.cell_residuals(X))

    def cell_flags(self, X):
        """True where ``|z|`` exceeds :data:`~l1pca.kernels.detection.CELL_CUTOFF`."""
        return self.cells(X).flags

    def expected(self, X):
        """The value each cell is expected to have given the row's other cells and the fit."""
        cf = self.cells(X)
        return self.center + cf.scores @ self.components

    def score_samples(self, X):
        """Distance from the subspace, OD (higher = more outlying)."""
        return scoring.sample_scores(self.residuals(X))

    def outlier_map(self, X):
        """The outlier map of X (:func:`l1pca.kernels.scoring.outlier_map`)."""
        return scoring.outlier_map(self._check(X), self.center, self.components.T,
                                   self.outlier_map_scales)

    def outlier_scores(self, X):
        """``max(SD / sd_cutoff, OD / od_cutoff)`` (higher = more outlying; above 1 outside a cutoff).
        A model without the map's scales scores ``OD / threshold``."""
        if not self.has_outlier_map:
            return self.score_samples(X) / self.threshold if self.threshold > 0 else \
                self.score_samples(X)
        return self.outlier_map(X).score

    def predict(self, X):
        """+1 inlier, -1 outlier (outlier score above ``score_cutoff``)."""
        return np.where(self.outlier_scores(X) <= self.score_cutoff, 1, -1)

    def summary(self):
        return {"n_samples": self.n_samples, "n_features": self.n_features,
                "n_components": self.n_components, "method": self.method,
                "objective": self.objective, "threshold": self.threshold, "backend": self.backend,
                "n_flips": self.n_flips, "converged": self.converged,
                "support_fraction": self.support_fraction, "cell_robust": self.cell_robust,
                "n_csteps": self.n_csteps, "sd_cutoff": _json_float(self.sd_cutoff),
                "od_cutoff": _json_float(self.od_cutoff), "score_cutoff": self.score_cutoff,
                **({} if self.seed is None else {"seed": self.seed})}

    def save(self, path):
        """Write a ``.npz`` file (arrays plus a JSON header; no pickle)."""
        meta = json.dumps({k: v for k, v in self.summary().items()
                           if k not in ("n_features", "n_components")})
        arrays = {k: getattr(self, k) for k in self._VECTORS if getattr(self, k) is not None}
        np.savez(path, components=self.components, center=self.center, meta=np.array(meta), **arrays)

    @classmethod
    def load(cls, path, *, name="path"):
        """Read a file written by :meth:`save` (``l1pca fit`` writes ``model.npz``).

        Raises :class:`InputError` (its message starts with ``name=path``) for anything else: a
        missing file, a ``.npy`` array, an archive without the model's arrays, a bad header.
        """
        def refuse(reason):
            return InputError(f"{name}={str(path)!r} is not a model file written by `l1pca fit` "
                              f"(model.npz): {reason}")

        if not os.path.isfile(path):
            raise refuse("no such file" if not os.path.exists(path) else "not a file")
        with open(path, "rb") as fh:
            magic = fh.read(6)
        if magic == b"\x93NUMPY":
            raise refuse("it is a .npy array (components.npy?), not a model")
        if magic[:4] != b"PK\x03\x04":
            raise refuse("it is not an .npz archive")
        try:
            f = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise refuse(f"cannot read it as .npz ({exc})") from None
        with f:
            missing = [k for k in ("components", "center", "meta") if k not in f.files]
            if missing:
                raise refuse(f"it lacks {', '.join(missing)} (it holds {', '.join(f.files) or 'nothing'})")
            try:
                components, center, meta = f["components"], f["center"], str(f["meta"])
                arrays = {k: f[k] for k in cls._VECTORS if k in f.files}
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                raise refuse(f"cannot read its arrays ({exc})") from None
        try:
            meta = json.loads(meta)
            if not isinstance(meta, dict):
                raise ValueError(f"a JSON {type(meta).__name__}, not an object")
            return cls(components=components, center=center,
                       threshold=float(meta["threshold"]), method=str(meta["method"]),
                       objective=float(meta["objective"]), n_samples=int(meta["n_samples"]),
                       backend=str(meta["backend"]), n_flips=int(meta["n_flips"]),
                       converged=bool(meta["converged"]),
                       seed=None if meta.get("seed") is None else int(meta["seed"]),
                       sd_cutoff=_float(meta.get("sd_cutoff")), od_cutoff=_float(meta.get("od_cutoff")),
                       score_cutoff=float(meta.get("score_cutoff", 1.0)),
                       support_fraction=None if meta.get("support_fraction") is None
                       else float(meta["support_fraction"]),
                       cell_robust=bool(meta.get("cell_robust", False)),
                       n_csteps=int(meta.get("n_csteps", 0)), **arrays)
        except KeyError as exc:
            raise refuse(f"its meta header lacks {exc}") from None
        except InputError as exc:
            raise refuse(str(exc)) from None
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            raise refuse(f"its contents are not valid ({exc})") from None


def _json_float(v):
    """JSON has no nan: unknown cutoffs are written as null."""
    return None if v is None or not np.isfinite(v) else float(v)


def _float(v):
    return float("nan") if v is None else float(v)
