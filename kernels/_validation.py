"""Input checks shared by every entry point of :mod:`l1pca.kernels`.

One place decides what a valid matrix and valid options are, so that ``solve``, the estimator, the CLI
and the service all reject the same inputs with the same messages. Every message names the argument,
the value it got and what was expected.

Precision policy: the solvers compute in float64 whatever the input dtype. Integer, boolean and float32
inputs are accepted and converted; complex, object and string arrays are refused with ``TypeError``.
Sign decisions compare sums of many products, and float32 would make near-ties flip between backends.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import InputError, InputTypeError


def check_matrix(X, *, name="X"):
    """Return ``X`` as a C-contiguous float64 array of shape (n_samples, n_features).

    Raises
    ------
    InputTypeError
        If ``X`` is not numeric (complex, object, strings).
    InputError
        If ``X`` is not 2-D, is empty, or holds NaN or infinity.
    """
    return check_matrix_peak(X, name=name)[0]


def check_matrix_peak(X, *, name="X"):
    """:func:`check_matrix`, and ``max |x|`` found on the way: ``(array, peak)``.

    Two reductions over the data do both checks: the largest and the smallest entry are finite
    exactly when every entry is (NaN propagates through both), and they give the peak.
    """
    if hasattr(X, "__cuda_array_interface__") or type(X).__module__.startswith(("jax", "jaxlib")):
        # Device arrays are brought to the host here; the solvers move them back where they run.
        X = np.asarray(X.get() if hasattr(X, "get") else X)
    arr = check_layout(np.asarray(X), name=name)
    # A signalling NaN (bytes a client can send) raises the FPU's invalid flag when float32 widens
    # to float64, which NumPy reports as a RuntimeWarning per call; the finiteness check below
    # refuses it with a message instead.
    with np.errstate(invalid="ignore"):
        arr = np.ascontiguousarray(arr, dtype=np.float64)
    hi, lo = float(arr.max()), float(arr.min())
    if not (math.isfinite(hi) and math.isfinite(lo)):
        raise nonfinite_error(arr, name=name)
    # Values near the float64 limit overflow in the Gram matrix; refuse them with a message rather
    # than return NaN components.
    peak = max(hi, -lo)
    if peak > 1e150:
        raise InputError(
            f"{name} has entries of magnitude {peak:.3g}; the solvers need |x| <= 1e150 "
            "(rescale the data, the components do not change)"
        )
    return arr, peak


def check_layout(arr, *, name="X"):
    """Refuse what is not a non-empty 2-D array of real numbers; ``arr`` (anything with ``dtype``,
    ``ndim`` and ``shape``: an ndarray, a memory map) is returned as it is, never copied.

    The words are the ones every entry point uses (the library, the CLI with ``name="DATA"``, the
    client, the service with ``name="x"``).
    """
    if np.dtype(arr.dtype).kind not in "biuf":
        raise InputTypeError(
            f"{name} must hold real numbers (bool, int or float); got dtype {arr.dtype}"
        )
    if arr.ndim != 2:
        raise InputError(
            f"{name} must be 2-D (n_samples, n_features); got {arr.ndim}-D array of shape "
            f"{tuple(arr.shape)}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name} must have at least one sample and one feature; got shape "
                         f"{tuple(arr.shape)}")
    return arr


def nonfinite_error(arr, *, name="X", row_offset=0):
    """The :class:`InputError` for a matrix that holds NaN or infinity, naming the first such entry:
    ``X must be finite; found nan at row 5, column 3 (...)``. ``row_offset`` is added to the row of
    ``arr`` (a chunk of a larger matrix). Call it only when ``arr`` has a non-finite entry."""
    bad = np.argwhere(~np.isfinite(arr))[0]
    return InputError(
        f"{name} must be finite; found {float(arr[tuple(bad)])} at row {row_offset + int(bad[0])}, "
        f"column {int(bad[1])} (remove or impute the NaN and inf entries)"
    )


def check_n_components(n_components, n_samples, n_features):
    """Validate K against the matrix shape: ``1 <= K <= min(n_samples, n_features)``."""
    if isinstance(n_components, (bool, np.bool_)) or not isinstance(n_components, numbers.Integral):
        raise InputTypeError(f"n_components must be an int; got {n_components!r}")
    limit = min(n_samples, n_features)
    if not 1 <= n_components <= limit:
        raise InputError(
            f"n_components={n_components} must be in [1, min(n_samples, n_features)={limit}]"
        )
    return int(n_components)


def check_random_state(random_state):
    """Turn ``None``, an int or a Generator into a :class:`numpy.random.Generator`."""
    if random_state is None or isinstance(random_state, numbers.Integral):
        if isinstance(random_state, (bool, np.bool_)):
            raise InputTypeError(
                f"random_state must be None, an int or a numpy Generator; got {random_state!r}")
        if random_state is not None and random_state < 0:
            raise InputError(f"random_state={random_state} must be >= 0")
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        # scikit-learn passes RandomState objects around; derive a Generator from it deterministically.
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    raise InputTypeError(f"random_state must be None, an int or a numpy Generator; got {random_state!r}")
