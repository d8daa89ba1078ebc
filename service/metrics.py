"""Prometheus metrics of the service: names, labels and buckets declared once, here.

Every server instance owns a :class:`prometheus_client.CollectorRegistry` (tests run several servers
in one process), exposed over HTTP at ``/metrics`` by :func:`start_http`.

====================================  =========  ========================  ==========================
name                                  type       labels                    meaning
====================================  =========  ========================  ==========================
``l1pca_requests_total``              counter    method, code              finished calls, by status
``l1pca_request_duration_seconds``    histogram  method                    latency in the server
``l1pca_queue_wait_seconds``          histogram                            enqueue to batch start
``l1pca_solve_duration_seconds``      histogram  backend, method           one batched solver call
``l1pca_batch_size``                  histogram                            requests per solver call
``l1pca_batch_flushes_total``         counter    reason                    why batches went: full,
                                                                           ahead, delay, idle, drain
``l1pca_queue_depth``                 gauge                                requests waiting to batch
``l1pca_queue_capacity``              gauge                                --max-queue
``l1pca_inflight_requests``           gauge                                calls being handled
``l1pca_queue_dropped_total``         counter    reason                    left the queue uncomputed
``l1pca_cpu_fallback_total``          counter                              batches re-run on the CPU
``l1pca_sharded_fits_total``          counter                              fits on the device mesh
``l1pca_worker_restarts_total``       counter                              hung solver pools replaced
``l1pca_serving``                     gauge                                1 while health is SERVING
``l1pca_build_info``                  info       version, backend, device  what runs here
====================================  =========  ========================  ==========================
"""
from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0, 25.0, 60.0)
"""Sub-millisecond (a cached transform) to tens of seconds (a large fit, a first JAX compile)."""

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

RPC_METHODS = ("Fit", "Transform", "ScoreOutliers", "GetServerInfo")
STATUS_CODES = ("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED",
                "INTERNAL", "CANCELLED", "UNAUTHENTICATED", "PERMISSION_DENIED")


class ServiceMetrics:
    """The metric objects of one server, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("l1pca_requests", "Finished calls by RPC method and gRPC status code.",
                                ("method", "code"), registry=r)
        self.request_duration = Histogram(
            "l1pca_request_duration_seconds", "Call latency inside the server, by RPC method.",
            ("method",), buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_wait = Histogram(
            "l1pca_queue_wait_seconds", "Time a request waited in the batching queue.",
            buckets=LATENCY_BUCKETS_S, registry=r)
        self.solve_duration = Histogram(
            "l1pca_solve_duration_seconds",
            "Duration of one batched solver call, by backend and method.",
            ("backend", "method"), buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram(
            "l1pca_batch_size", "Requests per batched solver call.", buckets=BATCH_SIZE_BUCKETS,
            registry=r)
        self.batch_flushes = Counter(
            "l1pca_batch_flushes", "Batches sent to the solver, by why they went: full (max batch "
            "size), ahead (as large as a batch of its kind computing, sent to wait at the solver), "
            "delay (the oldest waited max delay), idle (no batch was computing), drain (shutdown).",
            ("reason",), registry=r)
        self.queue_depth = Gauge("l1pca_queue_depth", "Requests waiting in the batching queue.",
                                 registry=r)
        self.inflight = Gauge("l1pca_inflight_requests", "Calls being handled now.", registry=r)
        self.queue_dropped = Counter(
            "l1pca_queue_dropped", "Requests that left the queue without being computed, by reason.",
            ("reason",), registry=r)
        self.cpu_fallback = Counter(
            "l1pca_cpu_fallback", "Batches re-run on the CPU after a GPU failure.", registry=r)
        self.sharded_fits = Counter(
            "l1pca_sharded_fits", "Fits routed to the sharded solver (--sharded-min-rows).", registry=r)
        self.worker_restarts = Counter(
            "l1pca_worker_restarts", "Solver thread pools replaced after a hung solver call "
            "(--solve-timeout-s) or a pool that refused work.", registry=r)
        self.compiles = Counter(
            "l1pca_compiles", "JAX programs compiled in the background, by outcome (ok, failed).",
            ("outcome",), registry=r)
        self.compile_duration = Histogram(
            "l1pca_compile_duration_seconds", "Time to compile one JAX program in the background.",
            buckets=LATENCY_BUCKETS_S, registry=r)
        self.compile_queue = Gauge(
            "l1pca_compile_queue_depth", "JAX programs queued or compiling in the background.",
            registry=r)
        self.host_path_fits = Counter(
            "l1pca_host_path_fits", "Fits answered on the host path (NumPy, or CuPy on a GPU) "
            "because the JAX program of their shape was still compiling.", registry=r)
        self.oversized = Counter(
            "l1pca_oversized_requests", "Requests refused because the message was larger than "
            "--max-request-bytes (also counted in l1pca_requests_total as RESOURCE_EXHAUSTED).",
            registry=r)
        self.serving = Gauge("l1pca_serving", "1 while the health status is SERVING.", registry=r)
        self.build = Info("l1pca_build", "Version, solver backend and device of this server.",
                          registry=r)
        self.queue_capacity = Gauge("l1pca_queue_capacity",
                                    "Most requests the batching queue holds (--max-queue).", registry=r)
        self._call_series = {}
        # Export zeros from the start, so that rate() and increase() see the first call of each kind
        # after a pod starts (a series born at its first increment loses that increment).
        for method in RPC_METHODS:
            self.request_duration.labels(method)
            for code in STATUS_CODES:
                self.requests.labels(method, code)
        for reason in ("deadline", "cancelled"):
            self.queue_dropped.labels(reason)
        for reason in ("full", "ahead", "delay", "idle", "drain"):
            self.batch_flushes.labels(reason)
        for outcome in ("ok", "failed"):
            self.compiles.labels(outcome)

    def observe_compile(self, event):
        """A background compile queued or finished (a :class:`l1pca.kernels.compile_queue.CompileEvent`,
        from this process or from a solver process)."""
        if event.kind == "queued":
            self.compile_queue.inc()
            return
        self.compile_queue.dec()
        self.compiles.labels("ok" if event.kind == "compiled" else "failed").inc()
        self.compile_duration.observe(event.seconds)

    def observe_call(self, method, code, seconds):
        """A finished call (:class:`l1pca.service.errors.StatusInterceptor` calls this)."""
        # The labelled series of each (method, code), looked up once: ``labels()`` validates and
        # locks on every call, a cost paid per request (docs/decisions/0008-request-path-per-call-work.md).
        series = self._call_series.get((method, code))
        if series is None:
            series = self._call_series[(method, code)] = (self.requests.labels(method, code.name),
                                                          self.request_duration.labels(method))
        series[0].inc()
        series[1].observe(seconds)


def start_http(metrics: ServiceMetrics, host: str, port: int):
    """Serve ``/metrics`` on ``host:port`` (0 picks a free port) in a daemon thread.

    Returns ``(httpd, port)``; ``httpd.shutdown()`` stops it.
    """
    httpd, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return httpd, int(httpd.server_address[1])
