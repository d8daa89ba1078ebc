"""Warm-up: compile the batched JAX programs of the common shapes before the server reports SERVING.

JAX compiles one program per stacked shape; the kernels pad a batch to a power of two
(:func:`l1pca.kernels.compile_queue.jax_batch_size`), so :func:`batch_ladder` lists the sizes to compile.
"""
from __future__ import annotations

import ctypes
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from l1pca.kernels.fitting import fit_many

log = logging.getLogger("l1pca.service")


def batch_ladder(max_batch_size):
    """Stacked batch sizes JAX runs for batches of up to ``max_batch_size`` requests: the powers of
    two from 1 (:func:`l1pca.kernels.compile_queue.jax_batch_size` pads a batch to the next one)."""
    sizes, b = [1], 1
    while b < max_batch_size:
        b *= 2
        sizes.append(b)
    return tuple(sizes)


def run_warm_up(tasks, *, n_init, should_stop=None, threads=None):
    """Run warm-up ``tasks`` ``(rows, cols, K, batch, backend)``: one ``fit_many`` of ``batch``
    random matrices each, on ``threads`` threads. Returns the number of calls made."""
    def one(task):
        rows, cols, K, b, backend = task
        if should_stop is not None and should_stop():
            return 0
        X = np.random.default_rng(rows * 7919 + cols).standard_normal((rows, cols))
        t0 = time.perf_counter()
        fit_many([X] * b, K, n_init=n_init, seeds=[0] * b, backend=backend)
        log.info("warm-up: %dx%d K=%d batch=%d in %.2f s", rows, cols, K, b, time.perf_counter() - t0)
        return 1

    threads = threads or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(threads, thread_name_prefix="l1pca-warmup") as pool:
        calls = sum(pool.map(one, tasks))
    release_freed_memory()
    return calls


def release_freed_memory() -> bool:
    """Give the memory the C allocator keeps after ``free`` back to the system (glibc's
    ``malloc_trim``; False where there is none). The compiles of a warm-up, on several threads,
    leave their scratch memory in per-thread arenas: after the default warm-up on the 2-core test
    box, the server process went from 0.84 to 0.39 GB resident and its solver process from 1.29 to
    0.72 GB (the compiled programs stay; the peak during warm-up is unchanged)."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False
