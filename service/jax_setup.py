"""JAX's process-wide set-up, the same in the server and in every solver process: the persistent
compilation cache and the size of the CPU backend's thread pool. Both must happen before JAX
starts its backend in that process; both are logged, and a failure leaves JAX as it is (logged)."""
from __future__ import annotations

import logging

from l1pca.kernels import backends

log = logging.getLogger("l1pca.service")


def use_compile_cache(cache):
    """JAX's persistent compilation cache in this process (``cache``: ``(directory, max_bytes)``, or
    None for none), logged; a directory that cannot be used leaves it off, with a warning, and the
    server compiles as without it."""
    if cache is None:
        return None
    directory, max_bytes = cache
    try:
        path = backends.use_compile_cache(directory, max_bytes=max_bytes)
    except (OSError, ValueError, ImportError) as exc:
        log.warning("JAX compile cache off: cannot use %s (%s: %s); warm-up compiles every program",
                    directory, type(exc).__name__, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - a JAX without these settings: serve without the cache
        log.warning("JAX compile cache off: JAX refused its settings (%s: %s)",
                    type(exc).__name__, exc)
        return None
    log.info("JAX compile cache: %s (up to %d MiB)", path, max_bytes // 2**20)
    return path


def size_jax_pool(threads):
    """:func:`l1pca.kernels.backends.init_jax_cpu` in this process, logged; a JAX that fails to
    start is left to the backend choice to report."""
    try:
        sized = backends.init_jax_cpu(threads)
    except Exception as exc:  # noqa: BLE001 - e.g. a broken GPU plugin: select_backend decides
        log.warning("JAX's CPU pool not sized: JAX did not start (%s: %s)", type(exc).__name__, exc)
        return
    log.info("JAX's CPU pool: %s", f"{threads} thread(s)" if sized else
             "XLA's default, a thread per CPU" if threads is None else
             f"not resized (JAX already started in this process, at most {threads} CPU(s) here, "
             "or not Linux)")
