"""Conversions between NumPy arrays / :class:`Model` and the ``l1pca.v1`` messages.

Shared by the server and the client (both import it; it imports only the kernels and the generated
stubs), so the two sides cannot disagree about the encoding:

* a matrix is ``Matrix(rows, cols, dtype, data)`` with ``data`` the raw little-endian row-major bytes,
  decoded with ``np.frombuffer(...).reshape(rows, cols)`` (no copy, no per-element fields);
* a fitted model is ``Model`` (components K x D and centre 1 x D as float64 matrices, threshold,
  method, objective, training shape, backend, flips, seed; the outlier map's score scales and
  cutoffs, the cell screen's per-feature centre and scales, the robust fit's support fraction and
  C-steps), decoded to :class:`l1pca.kernels.Model`; a model without the newer fields (an older
  client's) decodes with them at the kernels' defaults (``score_scales=None``: no outlier map);
* fit options are ``FitOptions`` with enums for method and centre, ``optional`` seed,
  contamination, support fraction and cell robustness, and ``auto_components`` for
  ``n_components="auto"``.

Decoding checks the claimed shape against the limits and the byte count *before* touching the data,
so a request that claims a huge shape with a small payload costs nothing. Every check raises
:class:`WireError` (an :class:`l1pca.kernels.InputError`) whose message names the field, the value and
what was expected. The method and centre enums are derived from the kernels' tables
(:data:`l1pca.kernels.METHODS`, :data:`l1pca.kernels.CENTERS`), so a new method is added in one place.
"""
from __future__ import annotations

import math

import numpy as np

from l1pca.kernels import CENTERS, DEFAULT_N_INIT, InputError, InputTypeError, Model
from l1pca.kernels import METHODS as METHOD_NAMES
from l1pca.kernels.options import DEFAULT_SUPPORT_FRACTION, check_n_components_choice, check_support_fraction
from l1pca.v1 import l1pca_pb2 as pb

DTYPES = {pb.DTYPE_FLOAT32: np.dtype("<f4"), pb.DTYPE_FLOAT64: np.dtype("<f8")}


def _enum_value(enum, prefix, name):
    return enum.Value(f"{prefix}_{name.upper().replace('-', '_')}")


METHODS = {_enum_value(pb.Method, "METHOD", name): name for name in METHOD_NAMES}
"""``Method`` enum value -> the kernels' method name ("bitflip", ...)."""
METHOD_ENUMS = {name: value for value, name in METHODS.items()}
CENTERS_BY_ENUM = {_enum_value(pb.Center, "CENTER", name): name for name in CENTERS}
"""``Center`` enum value -> the kernels' centre name ("median", "mean", "none")."""
CENTER_ENUMS = {name: value for value, name in CENTERS_BY_ENUM.items()}


class WireError(InputError):
    """A message whose content is not a valid request (the server answers INVALID_ARGUMENT)."""


def _enum_names(enum, values):
    return ", ".join(f"{enum.Name(v)} ({v})" for v in values)


# -- matrices -----------------------------------------------------------------------------------
def encode_matrix(X, *, name="x"):
    """``Matrix`` message of a 2-D array. float32 travels as float32; other real dtypes as float64."""
    arr = np.asarray(X)
    if arr.dtype.kind not in "biuf":
        raise InputTypeError(f"{name} must hold real numbers; got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise InputError(f"{name} must be 2-D (n_samples, n_features); got shape {arr.shape}")
    dtype = pb.DTYPE_FLOAT32 if arr.dtype == np.float32 else pb.DTYPE_FLOAT64
    data = np.ascontiguousarray(arr, dtype=DTYPES[dtype]).tobytes()
    return pb.Matrix(rows=arr.shape[0], cols=arr.shape[1], dtype=dtype, data=data)


def check_limits(rows, cols, *, name="x", max_rows=None, max_cols=None):
    """Refuse a shape over a server's ``--max-rows`` / ``--max-cols`` (None or 0: no limit), with
    the words the server answers and the client checks with (after ``GetServerInfo``)."""
    if max_rows and rows > max_rows:
        raise WireError(f"{name}.rows={rows} exceeds this server's limit of {max_rows} rows; "
                        "split the matrix or ask for a larger --max-rows")
    if max_cols and cols > max_cols:
        raise WireError(f"{name}.cols={cols} exceeds this server's limit of {max_cols} columns")


def oversized_message(size, limit=None):
    """What to do about a request message of ``size`` bytes over a server's ``--max-request-bytes``
    (``limit``, when known): the same words from the server and from the client, which also sees
    gRPC's own refusal ("Received message larger than max (N vs. M)")."""
    over = (f"more than this server's --max-request-bytes={limit}" if limit
            else "more than this server accepts (--max-request-bytes)")
    return (f"the request is {size} bytes, {over}: send float32 data (half the bytes), split the "
            "rows over several calls, ask the operator for a larger --max-request-bytes, or fit "
            "locally (`l1pca fit` without --server, or with --devices for a matrix larger than "
            "memory)")


def decode_matrix(msg, *, name="x", max_rows=None, max_cols=None, required=True):
    """The array of a ``Matrix`` message, a read-only view of its bytes (no copy).

    Checks, in this order and before any allocation: the dtype is known, the shape is non-empty and
    within ``max_rows`` / ``max_cols``, and ``len(data) == rows * cols * itemsize``.
    """
    if msg is None or (not required and msg.ByteSize() == 0):
        return None
    if msg.dtype not in DTYPES:
        raise WireError(
            f"{name}.dtype={pb.DType.Name(msg.dtype) if msg.dtype in pb.DType.values() else msg.dtype}"
            f" is not supported; use {_enum_names(pb.DType, DTYPES)}"
        )
    rows, cols = int(msg.rows), int(msg.cols)
    if rows < 1 or cols < 1:
        raise WireError(f"{name} has shape ({rows}, {cols}); it needs at least one row and one column")
    check_limits(rows, cols, name=name, max_rows=max_rows, max_cols=max_cols)
    dtype = DTYPES[msg.dtype]
    expected = rows * cols * dtype.itemsize
    if len(msg.data) != expected:
        raise WireError(
            f"{name}.data has {len(msg.data)} bytes; shape ({rows}, {cols}) of "
            f"{pb.DType.Name(msg.dtype)} needs {rows} * {cols} * {dtype.itemsize} = {expected} "
            "(raw little-endian, row-major)"
        )
    return np.frombuffer(msg.data, dtype=dtype).reshape(rows, cols)


def encode_vector(v, *, dtype=np.float64):
    """A vector as an n x 1 ``Matrix``."""
    v = np.asarray(v, dtype=dtype).reshape(-1, 1)
    return encode_matrix(v)


# -- options ------------------------------------------------------------------------------------
def encode_options(n_components=1, *, method="bitflip", n_init=None, center="median", seed=None,
                   contamination="auto", support_fraction=DEFAULT_SUPPORT_FRACTION, cell_robust=True):
    """``FitOptions`` from the Python names used by :class:`l1pca.kernels.L1PCA`.

    ``n_components="auto"`` travels as ``auto_components=true``; ``support_fraction=None`` (the plain
    fit) as 1.0, since an absent field means the kernels' default."""
    if method not in METHOD_ENUMS:
        raise InputError(f"method={method!r} is not one of {', '.join(map(repr, METHOD_ENUMS))}")
    center = "none" if center is None else center
    if center not in CENTER_ENUMS:
        raise InputError(f"center={center!r} is not one of {', '.join(map(repr, CENTER_ENUMS))}")
    support_fraction = check_support_fraction(support_fraction)
    auto = check_n_components_choice(n_components) == "auto"
    opts = pb.FitOptions(n_components=0 if auto else int(n_components), auto_components=auto,
                         method=METHOD_ENUMS[method], n_init=0 if n_init is None else int(n_init),
                         center=CENTER_ENUMS[center],
                         support_fraction=1.0 if support_fraction is None else support_fraction,
                         cell_robust=bool(cell_robust))
    if seed is not None:
        opts.seed = int(seed)
    if contamination != "auto":
        opts.contamination = float(contamination)
    return opts


def decode_options(msg, *, max_n_init=None):
    """Keyword arguments of :func:`l1pca.kernels.fitting.fit_many` (plus ``n_components``, an int or
    ``"auto"``, and ``seed``, ``None`` when absent) from a ``FitOptions`` message, defaults filled in.
    ``support_fraction`` is checked here, in the kernels' words, and comes out ``None`` for the
    plain fit (1.0)."""
    method = msg.method or pb.METHOD_BITFLIP
    if method not in METHODS:
        raise WireError(f"options.method={method} is not one of {_enum_names(pb.Method, METHODS)}")
    center = msg.center or pb.CENTER_MEDIAN
    if center not in CENTERS_BY_ENUM:
        raise WireError(f"options.center={center} is not one of "
                        f"{_enum_names(pb.Center, CENTERS_BY_ENUM)}")
    n_init = int(msg.n_init) or DEFAULT_N_INIT  # the kernels' default, as the estimator
    if max_n_init is not None and n_init > max_n_init:
        raise WireError(f"options.n_init={n_init} exceeds this server's limit of {max_n_init}")
    contamination = "auto"
    if msg.HasField("contamination"):
        contamination = float(msg.contamination)
        if not (0.0 < contamination <= 0.5):
            raise WireError(f"options.contamination={contamination!r} must be in (0, 0.5]; "
                            "leave it unset for the outlier map's cutoffs")
    if msg.auto_components and msg.n_components:
        raise WireError(f"options.auto_components=true and options.n_components={msg.n_components}: "
                        "give one (n_components=0 with auto_components)")
    support = msg.support_fraction if msg.HasField("support_fraction") else DEFAULT_SUPPORT_FRACTION
    try:
        support = check_support_fraction(support)
    except InputError as exc:
        raise WireError(f"options.{exc}") from None
    return {
        "n_components": "auto" if msg.auto_components else int(msg.n_components) or 1,
        "method": METHODS[method],
        "n_init": n_init,
        "center": CENTERS_BY_ENUM[center],
        "seed": int(msg.seed) if msg.HasField("seed") else None,
        "contamination": contamination,
        "support_fraction": support,
        "cell_robust": msg.cell_robust if msg.HasField("cell_robust") else True,
    }


# -- models -------------------------------------------------------------------------------------
_MODEL_VECTORS = {"score_scales": "n_components", "cell_center": "n_features",
                  "cell_scale": "n_features", "residual_scale": "n_features"}
"""The model's optional per-component / per-feature arrays, each a 1 x K or 1 x D float64 Matrix."""


def encode_model(model: Model):
    """``Model`` message of a :class:`l1pca.kernels.Model` (seed 0 when unknown); the outlier map's
    and the cell screen's fields when the model has them."""
    msg = pb.Model(
        components=encode_matrix(np.asarray(model.components, dtype=np.float64)),
        center=encode_matrix(np.asarray(model.center, dtype=np.float64).reshape(1, -1)),
        threshold=float(model.threshold),
        method=METHOD_ENUMS.get(model.method, pb.METHOD_UNSPECIFIED),
        objective=float(model.objective),
        n_samples=int(model.n_samples),
        n_features=int(np.asarray(model.components).shape[1]),
        backend=str(model.backend),
        n_flips=int(model.n_flips),
        converged=bool(model.converged),
        seed=int(model.seed or 0),
        score_cutoff=float(model.score_cutoff),
        cell_robust=bool(model.cell_robust),
        n_csteps=int(model.n_csteps),
    )
    for field in _MODEL_VECTORS:
        value = getattr(model, field)
        if value is not None:
            getattr(msg, field).CopyFrom(
                encode_matrix(np.asarray(value, dtype=np.float64).reshape(1, -1)))
    for field in ("sd_cutoff", "od_cutoff"):
        value = float(getattr(model, field))
        if math.isfinite(value):
            setattr(msg, field, value)
    if model.support_fraction is not None:
        msg.support_fraction = float(model.support_fraction)
    return msg


def _decode_vector(msg, field, length, *, name, max_cols):
    """A model's optional 1 x ``length`` array (None when absent), finite."""
    if not msg.HasField(field):
        return None
    arr = decode_matrix(getattr(msg, field), name=f"{name}.{field}", max_rows=1, max_cols=max_cols)
    if arr.shape != (1, length):
        raise WireError(f"{name}.{field} has shape {arr.shape}; this model needs (1, {length})")
    if not np.isfinite(arr).all():
        raise WireError(f"{name}.{field} holds NaN or infinity")
    if field != "cell_center" and not (arr > 0).all():
        raise WireError(f"{name}.{field} holds a scale <= 0; scales are positive")
    return arr[0].astype(np.float64)


def _decode_cutoff(msg, field, *, name, default):
    if not msg.HasField(field):
        return default
    value = float(getattr(msg, field))
    if not (math.isfinite(value) and value >= 0):
        raise WireError(f"{name}.{field}={value!r} must be a finite number >= 0")
    return value


def decode_model(msg, *, name="model", max_cols=None):
    """A :class:`l1pca.kernels.Model` from a ``Model`` message, checked for shape and finiteness.

    The outlier map (``score_scales``, ``sd_cutoff``, ``od_cutoff``) comes whole or not at all: a
    model from an older client has none of it and decodes with ``score_scales=None``; one with only
    part of it is refused."""
    if not msg.HasField("components") or not msg.HasField("center"):
        raise WireError(f"{name} needs components (K x D) and center (1 x D); send back the model "
                        "that Fit returned")
    comps = decode_matrix(msg.components, name=f"{name}.components", max_cols=max_cols,
                          max_rows=max_cols)
    center = decode_matrix(msg.center, name=f"{name}.center", max_cols=max_cols, max_rows=1)
    if center.shape != (1, comps.shape[1]):
        raise WireError(f"{name}.center has shape {center.shape}; components {comps.shape} need "
                        f"(1, {comps.shape[1]})")
    if comps.shape[0] > comps.shape[1]:
        raise WireError(f"{name}.components has {comps.shape[0]} rows for {comps.shape[1]} "
                        "features; a model has at most one component per feature")
    for field, arr in (("components", comps), ("center", center)):
        if not np.isfinite(arr).all():
            raise WireError(f"{name}.{field} holds NaN or infinity")
    if not math.isfinite(msg.threshold):
        raise WireError(f"{name}.threshold={msg.threshold} must be finite")
    method = METHODS.get(msg.method or pb.METHOD_BITFLIP)
    if method is None:
        raise WireError(f"{name}.method={msg.method} is not one of {_enum_names(pb.Method, METHODS)}")
    sizes = {"n_components": comps.shape[0], "n_features": comps.shape[1]}
    vectors = {field: _decode_vector(msg, field, sizes[size], name=name, max_cols=max_cols)
               for field, size in _MODEL_VECTORS.items()}
    cutoffs = {field: _decode_cutoff(msg, field, name=name, default=math.nan)
               for field in ("sd_cutoff", "od_cutoff")}
    has_map = [vectors["score_scales"] is not None, *(math.isfinite(v) for v in cutoffs.values())]
    if any(has_map) and not all(has_map):
        raise WireError(f"{name} has part of the outlier map: score_scales, sd_cutoff and od_cutoff "
                        "come together (send back the model that Fit returned)")
    support = None
    if msg.HasField("support_fraction"):
        try:
            support = check_support_fraction(float(msg.support_fraction))
        except InputError as exc:
            raise WireError(f"{name}.{exc}") from None
    return Model(components=comps.astype(np.float64), center=center[0].astype(np.float64),
                 threshold=float(msg.threshold), method=method, objective=float(msg.objective),
                 n_samples=int(msg.n_samples), backend=msg.backend, n_flips=int(msg.n_flips),
                 converged=bool(msg.converged), seed=int(msg.seed), **vectors, **cutoffs,
                 support_fraction=support, n_csteps=int(msg.n_csteps),
                 **({"score_cutoff": _decode_cutoff(msg, "score_cutoff", name=name, default=1.0)}
                    if msg.HasField("score_cutoff") else {}),
                 **({"cell_robust": msg.cell_robust} if msg.HasField("cell_robust") else {}))
