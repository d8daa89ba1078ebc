"""l1pca.service: the gRPC service (``l1pca serve``).

Modules, one job each: :mod:`.config` (flags and environment), :mod:`.server` (lifecycle, health,
reflection, signals), :mod:`.handlers` (the RPCs), :mod:`.batcher` (dynamic batching and
backpressure), :mod:`.runner` (backend, batched fits, CPU fallback, warm-up), :mod:`.errors` (domain
errors to status codes), :mod:`.metrics` (Prometheus).
"""
