"""Which backend the service runs on, and which failures of it are worth a CPU re-run.

``"auto"`` resolves once, at start, to a backend that batches: JAX on a usable GPU, else CuPy on a
GPU, else JAX on the CPU (logged, and exported in the ``l1pca_build_info`` metric). The backend is
fixed for the life of the server, so an answer never depends on which requests shared its batch.
"""
from __future__ import annotations

from l1pca.kernels import backends

from .faults import InjectedDeviceFault


def select_backend(requested: str):
    """``(backend, device, on_gpu)`` for the ``--backend`` flag; see the module docstring."""
    gpus = backends.gpu_backends()
    if requested == "auto":
        backend = "jax" if "jax" in gpus or not gpus else "cupy"
    else:
        backend = requested
        if backend == "cupy" and "cupy" not in gpus:
            raise ValueError("--backend=cupy needs CuPy and a usable CUDA GPU; none is usable here "
                             "(use --backend=auto)")
    on_gpu = backend in gpus
    device = backends.device_description() if on_gpu else "cpu"
    return backend, device, on_gpu


def is_device_failure(exc: BaseException) -> bool:
    """A GPU failure worth a CPU re-run: out of memory, CUDA runtime/driver errors, XLA OOM."""
    if isinstance(exc, InjectedDeviceFault):
        return True
    name = type(exc).__name__
    if name in ("OutOfMemoryError", "CUDARuntimeError", "CUDADriverError", "CUBLASError",
                "CUSOLVERError"):
        return True
    text = str(exc)
    return name in ("XlaRuntimeError", "JaxRuntimeError") and any(
        s in text for s in ("RESOURCE_EXHAUSTED", "out of memory", "CUDA", "INTERNAL"))
