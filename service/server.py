"""The gRPC server: a small class with async ``start`` / ``warm_up`` / ``stop``, and ``serve``.

Lifecycle:

1. ``start``: pick the backend (GPU if usable, else the CPU, logged), bind the port, serve
   ``grpc.health.v1`` (NOT_SERVING) and reflection, start the batcher and ``/metrics``. The L1PCA
   methods answer UNAVAILABLE until warm.
2. ``warm_up``: the solver processes answer, the warm-up shapes' programs are queued for the
   background compiler (:mod:`l1pca.kernels.compile_queue`), then health SERVING: seconds after the
   start, whatever the compile cache holds. Until a shape's program is compiled, its fits run on
   the host path (NumPy) with the same answers. ``--warmup-wait on`` compiles first, then SERVING.
3. ``stop(grace_s)``: health NOT_SERVING, no new calls, queued requests flushed at once, running calls
   given ``grace_s`` to finish; then the threads and the metrics endpoint stop.

``serve(config)`` runs this under asyncio with SIGTERM / SIGINT handlers (SIGHUP re-reads the token
file) and returns the exit status (0 after a clean drain).

Security (SECURITY.md): TLS or mutual TLS on the gRPC port (:mod:`l1pca.service.tls`), bearer tokens
(:mod:`l1pca.service.auth`; health stays open for probes), reflection can be switched off, and both
ports bind loopback unless configured.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from l1pca.kernels import DEFAULT_N_INIT
from l1pca.proto.wire import METHOD_ENUMS
from l1pca.v1 import l1pca_pb2 as pb
from l1pca.v1 import l1pca_pb2_grpc as pb_grpc

from .auth import AuthInterceptor, TokenFile
from .batcher import Batcher
from .config import ServeConfig
from .errors import StatusInterceptor
from .executor import FitExecutor
from .faults import FAULT_INJECT_ENV
from .handlers import L1PCAServicer, Limits
from .metrics import ServiceMetrics, start_http
from .tls import server_credentials

log = logging.getLogger("l1pca.service")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["L1PCA"].full_name  # "l1pca.v1.L1PCA"


def _version():
    try:
        return metadata.version("l1pca")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _address(host, port):
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class L1PCAServer:
    """One server instance.

    Parameters
    ----------
    config : ServeConfig
    fault_inject : str, optional
        Tests only (see :data:`l1pca.service.faults.FAULT_INJECT_ENV`).

    Attributes
    ----------
    port, metrics_port : int
        Bound ports (after ``start``); ``metrics_port`` is None when metrics are disabled.
    metrics : ServiceMetrics
    """

    def __init__(self, config: ServeConfig, *, fault_inject: str | None = None):
        self.config = config
        self.metrics = ServiceMetrics()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._fault_inject = fault_inject
        self._ready = False
        self._stopping = False
        self._grpc = None
        self._httpd = None
        self.tokens: TokenFile | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self):
        self._t_start = time.perf_counter()
        cfg = self.config
        credentials = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)  # read first:
        if cfg.auth_token_file:                                                         # bad files
            self.tokens = TokenFile(cfg.auth_token_file)                                # fail fast
        cache = (cfg.compile_cache_dir, cfg.compile_cache_max_mb * 2**20) \
            if cfg.compile_cache_dir else None
        self.executor = FitExecutor(
            cfg.backend, workers=cfg.workers, max_batch_size=cfg.max_batch_size, metrics=self.metrics,
            fault_inject=self._fault_inject, sharded_min_rows=cfg.sharded_min_rows,
            solver_process=cfg.solver_process, solver_threads=cfg.solver_threads,
            compile_cache=cache, solve_timeout_s=cfg.solve_timeout_s)
        self.metrics.queue_capacity.set(cfg.max_queue)
        self.metrics.build.info({"version": _version(), "backend": self.executor.backend,
                                 "device": self.executor.device})
        self.batcher = Batcher(self._run_batch, max_batch_size=cfg.max_batch_size,
                               max_delay_s=cfg.max_delay_ms / 1000.0, max_queue=cfg.max_queue,
                               max_concurrent_batches=cfg.workers,
                               standby_batches=self.executor.standby_batches,
                               flush_when_idle=cfg.flush_when_idle,
                               split_batches=cfg.split_batches, metrics=self.metrics)
        self._light = ThreadPoolExecutor(2, thread_name_prefix="l1pca-io")
        info = pb.ServerInfo(version=_version(), backend=self.executor.backend, device=self.executor.device,
                             max_rows=cfg.max_rows, max_cols=cfg.max_cols,
                             max_request_bytes=cfg.max_request_bytes, max_n_init=cfg.max_n_init,
                             max_batch_size=cfg.max_batch_size, methods=list(METHOD_ENUMS.values()))
        servicer = L1PCAServicer(batcher=self.batcher,
                                 limits=Limits(cfg.max_rows, cfg.max_cols, cfg.max_n_init),
                                 executor=self._light, info=info, is_ready=lambda: self._ready)
        interceptors = [StatusInterceptor(self.metrics.observe_call, inflight=self.metrics.inflight,
                                          max_request_bytes=cfg.max_request_bytes,
                                          on_oversized=self.metrics.oversized.inc)]
        if self.tokens is not None:  # outermost: a refused call reaches nothing else
            interceptors.insert(0, AuthInterceptor(self.tokens, observe=self.metrics.observe_call))
        # Beyond what can queue or compute, calls are refused by gRPC itself (cheap, before the
        # request is read): overload is shed even when the event loop is saturated.
        self.max_concurrent_rpcs = (cfg.max_concurrent_rpcs
                                    or cfg.max_queue + (cfg.workers + self.executor.standby_batches)
                                    * cfg.max_batch_size + 64)
        self._grpc = grpc.aio.server(
            maximum_concurrent_rpcs=self.max_concurrent_rpcs,
            interceptors=interceptors,
            # gRPC itself refuses only messages over twice the limit (memory stays bounded); the
            # status interceptor refuses the ones between with a message that says what to do,
            # and counts and logs them. SO_REUSEPORT off: a second server on a bound port fails
            # to start instead of silently sharing the port.
            options=[("grpc.max_receive_message_length", 2 * cfg.max_request_bytes),
                     ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)],
        )
        pb_grpc.add_L1PCAServicer_to_server(servicer, self._grpc)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        if cfg.reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME), self._grpc)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        address = _address(cfg.host, cfg.port)
        try:
            self.port = (self._grpc.add_insecure_port(address) if credentials is None
                         else self._grpc.add_secure_port(address, credentials))
        except RuntimeError:  # grpcio raises on a failed bind
            self.port = 0
        if not self.port:
            raise OSError(f"cannot bind the gRPC port {address}: it is in use (another l1pca serve?) "
                          "or not available here; choose another with --port")
        await self._grpc.start()
        self.batcher.start()
        if cfg.metrics_port >= 0:
            self._httpd, self.metrics_port = start_http(self.metrics, cfg.metrics_host, cfg.metrics_port)
        log.info("security: %s, %s, reflection %s",
                 "mutual TLS" if cfg.tls_client_ca else "TLS" if credentials else "plaintext (no TLS)",
                 f"bearer tokens from {cfg.auth_token_file}" if self.tokens else "no token check",
                 "on" if cfg.reflection else "off")
        log.info("l1pca %s: gRPC on %s, metrics on %s; %s", _version(), _address(cfg.host, self.port),
                 f"http://{_address(cfg.metrics_host, self.metrics_port)}/metrics"
                 if self.metrics_port is not None else "disabled", self.executor.describe())
        if not self.executor.on_gpu:
            log.info("no usable GPU (CuPy / JAX found none): running on the CPU")
        if cfg.port_file:
            tmp = Path(cfg.port_file + ".tmp")
            tmp.write_text(json.dumps({"port": self.port, "metrics_port": self.metrics_port,
                                       "pid": os.getpid()}))
            tmp.replace(cfg.port_file)

    async def warm_up(self):
        """Queue (or, with ``--warmup-wait on``, compile) the warm-up programs, then SERVING."""
        cfg = self.config
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        calls = await loop.run_in_executor(
            self.executor.pool, lambda: self.executor.warm_up(
                cfg.warmup_shapes, cfg.warmup_components, n_init=DEFAULT_N_INIT,
                should_stop=lambda: self._stopping, wait=cfg.warmup_wait))
        if self._stopping:
            return
        self._ready = True
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.metrics.serving.set(1)
        if cfg.warmup_wait:
            log.info("warm-up done (%d solver calls in %.1f s): SERVING", calls,
                     time.perf_counter() - t0)
        else:
            log.info("SERVING %.1f s after the start (%d warm-up programs compile in the background; "
                     "their shapes run on NumPy until then)", time.perf_counter() - self._t_start,
                     calls)

    def _run_batch(self, key, payloads):
        """The batcher's call: the batch to the executor, saying whether requests wait behind it."""
        return self.executor.run_batch(key, payloads, queued=self.batcher.depth > 0)

    def reload_auth(self):
        """Re-read the token file (SIGHUP)."""
        if self.tokens is not None:
            self.tokens.reload()

    async def stop(self, grace_s: float | None = None):
        """Drain: NOT_SERVING, refuse new calls, finish queued and running ones within ``grace_s``."""
        if self._grpc is None or self._stopping:
            return
        grace_s = self.config.grace_s if grace_s is None else grace_s
        self._stopping = True
        self.metrics.serving.set(0)
        await self.health.enter_graceful_shutdown()
        self.batcher.drain()
        log.info("draining: %d requests queued, grace %.1f s", self.batcher.depth, grace_s)
        await self._grpc.stop(grace_s)
        await self.batcher.close(timeout_s=1.0)
        self.executor.shutdown()
        self._light.shutdown(wait=False, cancel_futures=True)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        log.info("stopped")


async def _serve(config: ServeConfig) -> int:
    server = L1PCAServer(config, fault_inject=os.environ.get(FAULT_INJECT_ENV))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_auth)
    try:
        await server.start()
    except (OSError, ValueError) as exc:  # a bad TLS / token file, a port in use: say which, exit 2
        log.error("cannot start: %s", exc)
        await server.stop(0)
        return 2
    warm = asyncio.ensure_future(server.warm_up())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({warm, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if warm.done() and warm.exception() is not None:
        log.error("warm-up failed", exc_info=warm.exception())
        stopped.cancel()
        await server.stop(0)
        return 1
    await stopped
    log.info("signal received: stopping")
    await server.stop(config.grace_s)
    if not warm.done():
        warm.cancel()
    return 0


def main(argv=None, prog="l1pca serve") -> int:
    """``l1pca serve [FLAGS]``: parse the flags (:mod:`l1pca.service.config`) and :func:`serve`."""
    from .config import build_parser

    args = build_parser(prog).parse_args(argv)
    try:
        config = ServeConfig.from_args(args)
    except ValueError as exc:  # a flag set through the environment, or TLS files that do not go together
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return serve(config)


def serve(config: ServeConfig) -> int:
    """Run the server until SIGTERM / SIGINT; the exit status (0 after a clean drain)."""
    logging.basicConfig(level=getattr(logging, config.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(max(logging.WARNING, logging.getLogger().level))  # backend probes
    return asyncio.run(_serve(config))
