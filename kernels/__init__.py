"""l1pca.kernels: L1-norm principal components (L1-BF and exact solvers, baselines) and outlier scores.

>>> from l1pca.kernels import solve, solve_batch, L1PCA, Model
"""
from .errors import InputError, InputTypeError, L1PCAError
from .model import Model
from .options import BACKENDS, CENTERS, DEFAULT_N_INIT, METHODS, SolveOptions
from .solve import SolveResult, bucket_shape, solve, solve_batch

__all__ = ["BACKENDS", "CENTERS", "DEFAULT_N_INIT", "METHODS", "InputError", "InputTypeError", "L1PCA",
           "L1PCAError", "Model", "SolveOptions", "SolveResult", "bucket_shape", "solve", "solve_batch"]


def __getattr__(name):
    # The estimator pulls in scikit-learn; import it on first use so `solve` stays light.
    if name == "L1PCA":
        from .estimator import L1PCA

        return L1PCA
    raise AttributeError(f"module 'l1pca.kernels' has no attribute {name!r}")
