"""Helpers for the service and client tests: a real server on a free loopback port.

Imported by ``tests/test_service_*.py`` and ``tests/test_client_*.py`` (``from conftest_service
import ...``). Nothing is mocked: :class:`ServerThread` runs :class:`l1pca.service.server.L1PCAServer`
on its own event loop in a background thread (port 0, metrics on port 0), and
:func:`start_subprocess_server` runs ``l1pca serve`` as a separate process for the signal tests.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from l1pca.service.config import ServeConfig
from l1pca.service.server import L1PCAServer

TEST_DEFAULTS = dict(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                     backend="numpy", warmup_shapes=(), warmup_components=(1,), max_delay_ms=2.0,
                     grace_s=5.0, compile_cache_dir="")  # no JAX cache in the home directory


class ServerThread:
    """An L1PCAServer on its own event loop in a daemon thread.

    ``with ServerThread(max_batch_size=8) as srv:`` starts it, warms it up and stops it (grace 5 s).
    ``warm=False`` leaves it bound but not warm (health NOT_SERVING).
    """

    def __init__(self, *, warm=True, fault_inject=None, **overrides):
        self.config = ServeConfig(**{**TEST_DEFAULTS, **overrides})
        self.server = L1PCAServer(self.config, fault_inject=fault_inject)
        self._warm = warm
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="test-server-loop")

    def run(self, coro, timeout=120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self):
        self._thread.start()
        self.run(self.server.start())
        if self._warm:
            self.run(self.server.warm_up())
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def stop(self, grace_s=5.0):
        if self._thread.is_alive():
            self.run(self.server.stop(grace_s))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    @property
    def target(self):
        return f"127.0.0.1:{self.server.port}"

    def metrics(self):
        return scrape(self.server.metrics_port)


def scrape(port):
    """GET /metrics, parsed with prometheus_client's parser: ``{sample: [(labels, value)]}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples, name, **labels):
    """The value of the sample ``name`` whose labels include ``labels`` (0 when absent)."""
    for got, v in samples.get(name, []):
        if all(got.get(k) == str(want) for k, want in labels.items()):
            return v
    return 0.0


def health_status(target, service="", timeout=5):
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def wait_until(predicate, timeout=20.0, interval=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False


def free_port():
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_subprocess_server(tmp_path, *args, env=None, timeout=60):
    """``l1pca serve`` in a child process on free ports; returns ``(proc, port, metrics_port)`` once
    health is SERVING."""
    port_file = Path(tmp_path) / f"ports-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "l1pca.client.cli", "serve", "--port", "0", "--metrics-port", "0",
           "--backend", "numpy", "--warmup-shapes", "", "--compile-cache-dir", "",
           "--port-file", str(port_file), *args]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if not wait_until(lambda: port_file.exists() or proc.poll() is not None, timeout):
        proc.kill()
        raise RuntimeError("server did not write its port file")
    if proc.poll() is not None:
        raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
    ports = json.loads(port_file.read_text())
    target = f"127.0.0.1:{ports['port']}"

    def serving():
        try:
            return health_status(target, timeout=2) == "SERVING"
        except grpc.RpcError:
            return False

    if not wait_until(serving, timeout):
        proc.kill()
        raise RuntimeError("server never reported SERVING")
    return proc, ports["port"], ports["metrics_port"]


def replace_config(config, **changes):
    return dataclasses.replace(config, **changes)
