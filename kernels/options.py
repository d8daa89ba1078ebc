"""The options of a fit, declared once: the tables of methods, centres and backends, and
:class:`SolveOptions`, the frozen record every layer passes on instead of a dozen keyword arguments.

``solve``, ``solve_batch``, ``fit_many``, the estimator, the CLI, the wire codec and the service all
read these tables; :class:`SolveOptions` validates itself once, when it is made, so nothing below it
checks an option again.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from .errors import InputError, InputTypeError

METHODS = {
    "bitflip": "L1-BF, the bit-flipping search (Markopoulos et al. 2017)",
    "exact": "the exact optimum by enumeration (small problems only)",
    "l2": "ordinary PCA (SVD)",
    "fixed-point": "Kwak 2008, greedy fixed point",
    "non-greedy": "Nie et al. 2011, non-greedy fixed point",
}
"""Solvers by name, with a line each (the CLI's help and the docs read it)."""

CENTERS = {
    "median": "coordinate-wise median (robust)",
    "mean": "column means",
    "none": "no centring (the data as given)",
}
"""Centres a fit may subtract. ``None`` is accepted for ``"none"`` in the Python API."""

BACKENDS = ("auto", "numpy", "jax", "cupy")
"""Where L1-BF runs; ``auto`` picks per call (:mod:`l1pca.kernels.backends`)."""

COMPILE_MODES = {
    "wait": "a bucket whose JAX program is not compiled yet compiles it first, then runs on JAX",
    "background": "it runs on the host path (NumPy, or CuPy on a GPU) while its program compiles in "
                  "a background thread (l1pca.kernels.compile_queue); later buckets use JAX",
}
"""What a fit does when the JAX program it would run is not compiled yet."""

DEFAULT_N_INIT = 8
"""Starts of L1-BF: the L2-PCA start and seven random ones (``bench/optimality.py`` shows why)."""

DEFAULT_N_AGREE = 0
"""0: every one of the ``n_init`` starts runs. n > 0 stops the starts once n of them have ended at the
best objective so far (:mod:`l1pca.kernels.starts`): off by default, because it loses answers
(``docs/decisions/0012-default-starts.md``: with n = 2 the optimality benchmark's default falls from
99.8% to 96.1% exact hits, and at 32-256 samples the kept answer is worse than all eight starts' in
7-12% of problems)."""

DEFAULT_TOL = 1e-9
"""Relative gain a flip must exceed (rounding noise in the gains is far below it)."""

MAX_CANDIDATES = 5_000_000
"""``exact`` refuses problems that need more sign-matrix evaluations than this."""


def check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def check_center(center):
    """The centre's canonical name: ``"median"``, ``"mean"`` or ``"none"`` (for None)."""
    return "none" if center is None else check_choice(center, "center", CENTERS)


def check_int(value, name, *, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{name} must be an int; got {value!r}")
    if value < minimum:
        raise InputError(f"{name}={value} must be >= {minimum}")
    return int(value)


def check_contamination(contamination):
    """``"auto"`` or a float in (0, 0.5]: the outlier threshold rule (:mod:`l1pca.kernels.scoring`)."""
    if contamination == "auto":
        return contamination
    if (isinstance(contamination, numbers.Real) and not isinstance(contamination, bool)
            and 0.0 < contamination <= 0.5):
        return float(contamination)
    raise InputError(f"contamination={contamination!r} must be 'auto' or a float in (0, 0.5]")


DEFAULT_SUPPORT_FRACTION = 0.75
"""Share of the rows the detector's robust fit is fitted to (ROBPCA's h / n): the rows farthest from
the subspace, up to a quarter, cannot pull it (:mod:`l1pca.kernels.detection`)."""


def check_support_fraction(value):
    """``None`` or 1.0 (the plain fit on every row) or a number in [0.5, 1): the robust fit's support."""
    if value is None:
        return None
    if (isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
            and 0.5 <= value <= 1.0):
        return None if value == 1.0 else float(value)
    raise InputError(f"support_fraction={value!r} must be None or a number in [0.5, 1]")


def check_n_components_choice(value):
    """``"auto"`` or a positive int (checked against the shape later)."""
    if value == "auto" or (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
        return value
    raise InputTypeError(f"n_components must be a positive integer or 'auto'; got {value!r}")


def _check_bool(value, name):
    if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
        raise InputTypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


@dataclass(frozen=True)
class SolveOptions:
    """How to solve: every option of :func:`l1pca.kernels.solve` but the data, K and the seed.

    Made once at the top of a call (``SolveOptions(method="exact")``) and validated there; hashable,
    so the service keys its batches by it. See :func:`l1pca.kernels.solve` for each field.
    """

    method: str = "bitflip"
    n_init: int = DEFAULT_N_INIT
    backend: str = "auto"
    max_flips: int | None = None
    tol: float = DEFAULT_TOL
    warm_start: bool = True
    pair_moves: bool = True
    max_candidates: int = MAX_CANDIDATES
    compile: str = "wait"
    n_agree: int = DEFAULT_N_AGREE

    def __post_init__(self):
        check_choice(self.method, "method", METHODS)
        check_choice(self.backend, "backend", BACKENDS)
        check_choice(self.compile, "compile", COMPILE_MODES)
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        set_("n_init", check_int(self.n_init, "n_init"))
        set_("n_agree", check_int(self.n_agree, "n_agree", minimum=0))
        set_("max_candidates", check_int(self.max_candidates, "max_candidates"))
        if self.max_flips is not None:
            set_("max_flips", check_int(self.max_flips, "max_flips", minimum=0))
        tol = self.tol
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or math.isnan(tol) \
                or not 0.0 <= tol < 1.0:
            raise InputError(f"tol={tol!r} must be a float in [0, 1)")
        set_("tol", float(tol))
        set_("warm_start", _check_bool(self.warm_start, "warm_start"))
        set_("pair_moves", _check_bool(self.pair_moves, "pair_moves"))

    def replace(self, **changes) -> SolveOptions:
        """A copy with ``changes``, validated again."""
        return SolveOptions(**{**asdict(self), **changes})
