"""Which array backends are usable here, and what ``backend="auto"`` resolves to.

Detection imports CuPy and JAX lazily and caches the answer per process (the hardware does not change
under a running process). Nothing here runs at import time of :mod:`l1pca.kernels`, so the package
imports with no CuPy and no GPU.

``"auto"``:

* a usable GPU first: JAX on the GPU for batches (one ``vmap``-ed launch), CuPy for single matrices
  (no compile per shape), whichever of the two is present otherwise;
* on the CPU, for K <= :data:`JAX_CPU_MAX_COMPONENTS`: JAX once its program for the shape bucket is
  compiled in this process (the service's warm-up compiles its buckets; a compiled ``while_loop``
  beats NumPy's Python loop per flip at every batch size, see ``bench/results/solver_speed.md``), and
  for batches of at least :data:`JAX_MIN_BATCH` matrices, where the compile pays for itself at once;
  NumPy otherwise, since a one-off compile (about a second) costs more than a small NumPy solve;
* on the CPU for K >= 3: NumPy. Both select flips with the concavity bound, but JAX steps every
  lane of a batch together, falls back to evaluating every bit for all of them when one lane needs
  it (a rank-deficient start), and ranks pair candidates by exact gains of every bit; NumPy was as
  fast or faster on every bucket measured (64 matrices 64 x 16, K = 3: 3.4 s against 3.3; 64 of
  16 x 4: 1.1 s against 1.5; 64 of 12 x 6, K = 4: 2.1 s against 5.0; 16 of 200 x 10: 0.53 s against
  11 s).

The host path's search (:func:`l1pca.kernels.solve.host_search`) is the compiled loop of
:mod:`l1pca.kernels.bitflip_numba` for ``backend="auto"`` wherever Numba is installed, below
:data:`COMPILED_MAX_SAMPLES` samples (the screened NumPy search is faster above): same steps and
signs as the NumPy reference, 5-40x faster (the most on small problems)
(``docs/decisions/0011-compiled-search-loop.md``). ``backend="numpy"`` stays the reference. With
the compiled loop, a batch of small K <= 2 problems on the CPU runs faster on the host than as one
batched JAX call, so ``"auto"`` no longer sends CPU batches to JAX when the loop is usable.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading

from .errors import InputError

JAX_MIN_BATCH = 16
"""Smallest batch (per shape bucket) sent to JAX on the CPU by ``backend="auto"``."""

JAX_CPU_MAX_COMPONENTS = 2
"""Largest K that ``backend="auto"`` runs on JAX on the CPU."""

COMPILED_MAX_SAMPLES = 16384
"""``backend="auto"`` runs the compiled loop (:mod:`l1pca.kernels.bitflip_numba`) below this many
samples; the screened NumPy search above (per start on planted data of 30 features: 9.6 against
37.8 ms at 8192 samples, K = 2; 32 against 73 at 16384; 105 against 88 at 32768;
``docs/decisions/0011-compiled-search-loop.md``)."""

COMPILED_LOOP_ENV = "L1PCA_COMPILED_LOOP"
"""Set to 0 to leave the compiled loop unused (the NumPy reference and JAX serve as without Numba)."""

FORCE_CPU_ENV = "L1PCA_FORCE_CPU"
"""Set to 1 to ignore any GPU (the service's CPU fallback and tests use it)."""


def _force_cpu() -> bool:
    return os.environ.get(FORCE_CPU_ENV, "").strip().lower() in ("1", "true", "yes")


def init_jax_cpu(threads: int | None = 1) -> bool:
    """Start JAX's backends with ``threads`` threads in the CPU backend's compute pool.

    XLA gives its CPU client one pool thread per CPU the creating thread may run on, and offers no
    option to change it (jax-ml/jax#1539: "setting the task affinity map is the correct way"). So
    this narrows the calling thread's affinity to ``threads`` of its CPUs, starts the backends, and
    gives the original affinity back to the calling thread and to every thread the start created
    (they inherited the narrowed one): the pool stays small, and no thread stays pinned.

    Why: the batched L1-BF programs are loops of many small operations, which a larger pool mostly
    hands between threads. On the 2-core box one thread used 30-36% less CPU per ``fit_many`` call
    on 64 x 16 and 256 x 16 matrices, 1 or 16 per call, in 0.91-1.01x the time; large matrices lose
    time (20000 x 50: 1.31x, at 0.8x the CPU). See ``docs/decisions/0002-solver-threads-1.md``.

    Parameters
    ----------
    threads : int or None, default=1
        Pool threads; None (or at least the CPU count) leaves XLA's default.

    Returns
    -------
    bool
        Whether the pool was sized here: False when ``threads`` is None or not below the CPU count,
        on systems without ``sched_setaffinity`` (not Linux), and when JAX's backends were already
        started in this process (then nothing changes).

    Examples
    --------
    >>> from l1pca.kernels.backends import init_jax_cpu
    >>> init_jax_cpu(1)  # before anything else in the process uses JAX  # doctest: +SKIP
    True
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise InputError(f"threads={threads!r} must be a positive int or None")
    import jax
    from jax._src import xla_bridge  # backends_are_initialized has no public name

    if xla_bridge.backends_are_initialized():
        return False
    getaffinity = getattr(os, "sched_getaffinity", None)
    if threads is None or getaffinity is None or threads >= len(getaffinity(0)):
        jax.devices()
        return False
    mask = getaffinity(0)
    before = _thread_ids()
    os.sched_setaffinity(0, set(sorted(mask)[:threads]))
    try:
        jax.devices()
    finally:
        os.sched_setaffinity(0, mask)
        for tid in _thread_ids() - before:
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:  # the thread ended meanwhile
                pass
    return True


def use_compile_cache(path, *, max_bytes: int = 256 * 2**20) -> str:
    """Keep JAX's compiled programs in the directory ``path``, so that a later process loads them
    instead of compiling (the service's warm-up: 66-70 s cold, 15-18 s from the cache on the 2-core box).

    Every program is kept, however fast its compile (JAX's default keeps only those over a second),
    and the least recently used are deleted once the directory holds more than ``max_bytes``. JAX
    keys an entry by the program, the JAX and XLA versions, the XLA flags and the device, and
    treats an entry it cannot read as a miss. On the CPU the program is machine code for this
    CPU: give each node (or each CPU model) its own directory rather than one shared by all.

    Call it before this process compiles anything with JAX.

    Parameters
    ----------
    path : str or os.PathLike
        The directory (``~`` is expanded); created if missing.
    max_bytes : int, default=256 MiB
        Size bound of the directory's entries.

    Returns
    -------
    str
        The directory, absolute.

    Raises
    ------
    ValueError
        ``path`` is empty or ``max_bytes`` is not a positive int.
    OSError
        The directory cannot be created or written to.
    ImportError
        The ``filelock`` package (a dependency of l1pca) is missing.

    Examples
    --------
    >>> from l1pca.kernels.backends import use_compile_cache
    >>> use_compile_cache("~/.cache/l1pca/jax")  # doctest: +SKIP
    '/home/me/.cache/l1pca/jax'
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise InputError(f"max_bytes={max_bytes!r} must be a positive int")
    if not str(path).strip():
        raise InputError("path is empty; give the directory for JAX's compiled programs")
    directory = os.path.abspath(os.path.expanduser(str(path)))
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".l1pca-write-probe-{os.getpid()}")
    with open(probe, "wb"):  # JAX would only warn on each write it fails: fail here, once
        pass
    os.remove(probe)
    import filelock  # noqa: F401 - JAX needs it for a bounded cache, and would fail each compile
    import jax

    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
    global _COMPILE_CACHE
    _COMPILE_CACHE = (directory, int(max_bytes))
    return directory


_COMPILE_CACHE = None


def compile_cache_in_use():
    """``(directory, max_bytes)`` of this process's persistent compile cache, or None
    (:func:`use_compile_cache`)."""
    return _COMPILE_CACHE


def _thread_ids() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


@functools.cache
def cupy_usable() -> bool:
    """CuPy imports, sees a CUDA device, and can run a kernel on it."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False
        return float(cupy.arange(4, dtype=cupy.float64).sum()) == 6.0
    except Exception:  # ImportError, CUDARuntimeError, missing driver libraries, ...
        return False


@functools.cache
def jax_gpu_usable() -> bool:
    """JAX has a GPU backend with at least one device."""
    try:
        import jax

        return len(jax.devices("gpu")) > 0
    except Exception:  # RuntimeError: no GPU backend
        return False


def gpu_backends() -> tuple[str, ...]:
    """The GPU backends usable now, best first; empty when forced to the CPU."""
    if _force_cpu():
        return ()
    return tuple(name for name, ok in (("jax", jax_gpu_usable()), ("cupy", cupy_usable())) if ok)


def device_description() -> str:
    """A short human description of where the GPU backends would run, for logs and metrics."""
    if "cupy" in gpu_backends():
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    if "jax" in gpu_backends():
        import jax

        return str(jax.devices("gpu")[0].device_kind)
    return "cpu"


def numba_usable() -> bool:
    """Numba is installed (the compiled host search, :mod:`l1pca.kernels.bitflip_numba`) and not
    switched off (:data:`COMPILED_LOOP_ENV`). Found without importing it: the import takes about a
    second, which a request must not wait for."""
    if os.environ.get(COMPILED_LOOP_ENV, "").strip().lower() in ("0", "false", "no"):
        return False
    return _numba_installed()


@functools.cache
def _numba_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba") is not None


_START_LOCK = threading.Lock()
_LOAD_LOCK = threading.Lock()
_LOOP_STATE = {"ready": False, "thread": None, "error": None}


def compiled_loop(wait: bool = True):
    """The compiled search (:func:`l1pca.kernels.bitflip_numba.bitflip_search_numba`) when it can
    run now, else None (then the caller runs the NumPy reference).

    Numba keeps the machine code in its on-disk cache. Loading it takes about 2 s in a process (the
    import of Numba, then the code); compiling it, when the cache is cold, about 30 s on a 2-core box.
    ``wait=True`` (``compile="wait"``, the library's default) loads it now when the cache holds it;
    a cold cache is never compiled in the caller's time: :func:`warm_compiled_loop` starts in the
    background and this call and the next run the reference until it is done. ``wait=False``
    (``compile="background"``, the service) never loads either: the service's warm-up, or the first
    call, starts :func:`warm_compiled_loop`.
    """
    if not numba_usable() or _LOOP_STATE["error"] is not None:
        return None
    if _LOOP_STATE["ready"]:
        from .bitflip_numba import bitflip_search_numba

        return bitflip_search_numba
    if wait and _cache_is_warm():
        _load_loop()
        return compiled_loop(wait=False) if _LOOP_STATE["ready"] else None
    warm_compiled_loop(background=True)
    return None


def warm_compiled_loop(background: bool = True) -> threading.Thread | None:
    """Make the compiled search ready in this process: compile it into Numba's on-disk cache in a
    child process (the compile does not hold this process's interpreter lock), then load it from the
    cache. ``background=True`` does it in a daemon thread (started once) and returns the thread.

    The service's warm-up should call it; ``python -m l1pca.kernels.bitflip_numba`` fills the cache
    ahead (an image build, an install step)."""
    if not numba_usable() or _LOOP_STATE["ready"]:
        return None
    if not background:
        if not _cache_is_warm():
            _compile_in_child()
        _load_loop()
        return None
    with _START_LOCK:
        if _LOOP_STATE["thread"] is None:
            def run():
                # The child runs even when the index looks warm: its entries may be another CPU's
                # (the index is not keyed by CPU), and then this process's load would compile,
                # holding the interpreter lock for about 30 s.
                _compile_in_child()
                _load_loop()

            _LOOP_STATE["thread"] = threading.Thread(target=run, name="l1pca-numba-warm", daemon=True)
            _LOOP_STATE["thread"].start()
        return _LOOP_STATE["thread"]


def _cache_is_warm() -> bool:
    """Numba's on-disk cache holds the search for this source (its index is stamped with the
    source file's time and size; a stale one reads as empty)."""
    try:
        from .bitflip_numba import search

        return bool(search._cache._cache_file._load_index())  # no public name for the check
    except Exception:  # a Numba whose internals differ: treat as cold, warm in the background
        return False


def _compile_in_child():
    try:
        # At nice 19, as the JAX compile worker: the compile (about 30 s on 2 cores) yields the
        # cores to the requests served meanwhile (docs/decisions/0010-background-compiles.md).
        code = ("import os, runpy; os.nice(19); "
                "runpy.run_module('l1pca.kernels.bitflip_numba', run_name='__main__')")
        subprocess.run([sys.executable, "-c", code], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    except (OSError, subprocess.SubprocessError):
        pass  # _load_loop compiles in this process instead


def _load_loop():
    with _LOAD_LOCK:
        if _LOOP_STATE["ready"] or _LOOP_STATE["error"] is not None:
            return
        try:
            from .bitflip_numba import warm_up

            warm_up()
        except Exception as exc:  # a broken Numba install: the NumPy reference serves
            _LOOP_STATE["error"] = exc
            return
        _LOOP_STATE["ready"] = True


def host_backend() -> str:
    """The backend that needs no compile per shape: CuPy on a usable GPU, else NumPy (what a bucket
    runs on while its JAX program compiles in the background)."""
    return "cupy" if "cupy" in gpu_backends() else "numpy"


def resolve(backend: str, method: str, batch_size: int = 1, compiled: bool = False,
            n_components: int = 1, n_samples: int | None = None) -> str:
    """The backend that will run ``method`` for a bucket of ``batch_size`` equal-shaped problems
    with K = ``n_components`` and ``n_samples`` rows (None: small); ``compiled`` says whether JAX
    already holds the compiled program for that bucket."""
    if method != "bitflip":
        if backend not in ("auto", "numpy"):
            raise InputError(
                f"backend={backend!r}: method={method!r} runs on the 'numpy' backend only "
                "(use backend='auto' or 'numpy')"
            )
        return "numpy"
    if backend == "cupy" and not cupy_usable():
        raise InputError("backend='cupy' needs CuPy and a CUDA GPU; none is usable here (use 'auto')")
    if backend != "auto":
        return backend
    gpus = gpu_backends()
    if gpus:
        if batch_size > 1 and "jax" in gpus:
            return "jax"
        return "cupy" if "cupy" in gpus else "jax"
    if n_components > JAX_CPU_MAX_COMPONENTS:
        return "numpy"
    if numba_usable() and (n_samples is None or n_samples < COMPILED_MAX_SAMPLES):
        return "numpy"  # the host path, where the compiled loop runs each problem

    return "jax" if compiled or batch_size >= JAX_MIN_BATCH else "numpy"
