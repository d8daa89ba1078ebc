"""l1pca.kernels: L1-norm principal components (L1-BF and exact solvers, baselines) and outlier scores.

>>> from l1pca.kernels import solve, solve_batch, L1PCA
"""
from .solve import DEFAULT_N_INIT, SolveResult, bucket_shape, solve, solve_batch

__all__ = ["solve", "solve_batch", "SolveResult", "L1PCA", "DEFAULT_N_INIT", "bucket_shape"]


def __getattr__(name):
    # The estimator pulls in scikit-learn; import it on first use so `solve` stays light.
    if name == "L1PCA":
        from .estimator import L1PCA

        return L1PCA
    raise AttributeError(f"module 'l1pca.kernels' has no attribute {name!r}")
