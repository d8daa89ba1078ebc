"""A process that compiles JAX programs for :mod:`l1pca.kernels.compile_queue`, at the lowest CPU
priority, into the persistent compile cache that the serving process shares.

Why a process: compiling a program in the serving process costs it seconds of interpreter lock
(tracing) and seconds of CPU from XLA's compile threads, which run at normal priority whatever the
calling thread's. Here every thread of the compile runs at nice 19, and the serving process then
loads the finished program from the cache: tracing and a cache read, no compile.

Protocol (``python -m l1pca.kernels.compile_worker DIRECTORY MAX_BYTES``): one JSON compile key per
line on stdin; one JSON line per key on the answer stream, ``{"ok": true, "seconds": s}`` or
``{"ok": false, "error": "..."}``. Anything the compile prints goes to stderr.
"""
from __future__ import annotations

import json
import os
import sys
import time


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    directory, max_bytes = argv[0], int(argv[1])
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of JAX or XLA must not corrupt the answer stream
    try:
        os.nice(19)  # before JAX starts: every thread it makes inherits it
    except OSError:
        pass
    from .backends import use_compile_cache
    from .compile_queue import compile_bucket

    use_compile_cache(directory, max_bytes=max_bytes)
    for line in sys.stdin:
        if not line.strip():
            continue
        t0 = time.perf_counter()
        try:
            compile_bucket(tuple(json.loads(line)))
            answer = {"ok": True, "seconds": time.perf_counter() - t0}
        except Exception as exc:  # noqa: BLE001 - reported to the queue, which keeps serving
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
