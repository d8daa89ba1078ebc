"""l1pca.service: the gRPC service (``l1pca serve``).

A request travels top to bottom: :mod:`.handlers` (decode and check; a thin servicer) ->
:mod:`.batcher` (dynamic batching, backpressure) -> :mod:`.executor` (the batch as one solver call;
CPU fallback, bad inputs isolated, hung workers replaced) -> :mod:`.solver_process` (optional child
processes) -> :mod:`l1pca.kernels`. Around it: :mod:`.server` (start, warm-up, drain, signals),
:mod:`.config` (flags and environment), :mod:`.backend_choice`, :mod:`.jax_setup`, :mod:`.warmup`,
:mod:`.faults` (tests only), :mod:`.errors` (status codes in one place), :mod:`.metrics`,
:mod:`.auth`, :mod:`.tls`, and :mod:`.testing` (the server harness of the tests and benchmarks).
"""
