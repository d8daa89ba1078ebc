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

from . import scoring
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
        Outlier scores of the training samples (kept by a local fit; not sent over the wire).
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

    def score_entries(self, X):
        """``|residual|`` per entry; the largest in a row names the suspicious feature."""
        return np.abs(self.residuals(X))

    def score_samples(self, X):
        """Distance from the subspace (higher = more outlying)."""
        return scoring.sample_scores(self.residuals(X))

    def predict(self, X):
        """+1 inlier, -1 outlier."""
        return np.where(self.score_samples(X) <= self.threshold, 1, -1)

    def summary(self):
        return {"n_samples": self.n_samples, "n_features": self.n_features,
                "n_components": self.n_components, "method": self.method,
                "objective": self.objective, "threshold": self.threshold, "backend": self.backend,
                "n_flips": self.n_flips, "converged": self.converged,
                **({} if self.seed is None else {"seed": self.seed})}

    def save(self, path):
        """Write a ``.npz`` file (arrays plus a JSON header; no pickle)."""
        meta = json.dumps({k: v for k, v in self.summary().items()
                           if k not in ("n_features", "n_components")})
        np.savez(path, components=self.components, center=self.center, meta=np.array(meta))

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
                       seed=None if meta.get("seed") is None else int(meta["seed"]))
        except KeyError as exc:
            raise refuse(f"its meta header lacks {exc}") from None
        except InputError as exc:
            raise refuse(str(exc)) from None
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            raise refuse(f"its contents are not valid ({exc})") from None
