"""The one harness for running an l1pca server in tests, benchmarks and ``deploy/tools/loopback.py``.

Nothing is mocked; every server is real and bound to free loopback ports:

* :class:`ServerThread`: :class:`~l1pca.service.server.L1PCAServer` in this process, on its own
  event loop in a daemon thread (``with ServerThread(max_batch_size=8) as srv: ...``).
* :class:`ServeProcess`: ``l1pca serve`` (or another program that writes a port file) as a child
  process: ``--port 0 --metrics-port 0 --port-file``, output to a log file, waits for health
  SERVING, stops with SIGTERM (SIGKILL when that is not enough).

And the helpers both use: :func:`scrape` (a ``/metrics`` page parsed by prometheus_client),
:func:`value` / :func:`sample_sum` (look a sample up), :func:`health_status`, :func:`wait_until`,
:func:`free_port`.

This module imports only grpc, grpc_health, prometheus_client and the standard library, and
:mod:`l1pca.service` inside :class:`ServerThread` (never :mod:`l1pca.client`): servers are started
and watched without the client under test, and a child-process server without the server's code.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["TEST_CONFIG", "TEST_FLAGS", "ServeProcess", "ServerThread", "free_port", "health_status",
           "sample_sum", "scrape", "value", "wait_until"]

# A quick, self-contained server for tests: the NumPy backend (no compiles), no warm-up shapes, no
# JAX cache in the home directory. ServerThread's defaults (as ServeConfig fields) ...
TEST_CONFIG = dict(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                   backend="numpy", warmup_shapes=(), warmup_components=(1,), max_delay_ms=2.0,
                   grace_s=5.0, compile_cache_dir="", warmup_wait=True)
# ... and the same as `l1pca serve` flags, for ServeProcess(*TEST_FLAGS, ...). Flags given after
# them win (argparse keeps the last value).
TEST_FLAGS = ("--backend", "numpy", "--warmup-shapes", "", "--compile-cache-dir", "")


# -- small helpers ------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; whether it became true.

    It is called at least once, and once more at the deadline."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)


def scrape(where: int | str, timeout: float = 10.0) -> dict:
    """GET a ``/metrics`` page: ``{sample name: [(labels, value)]}``, parsed by prometheus_client.

    ``where`` is a metrics port on 127.0.0.1 or a full URL."""
    url = where if isinstance(where, str) else f"http://127.0.0.1:{where}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    samples: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def _matches(got: dict, labels: dict) -> bool:
    return all(got.get(k) == str(want) for k, want in labels.items())


def value(samples: dict, name: str, **labels) -> float:
    """The value of the first sample ``name`` whose labels include ``labels`` (0 when none)."""
    for got, v in samples.get(name, []):
        if _matches(got, labels):
            return v
    return 0.0


def sample_sum(samples: dict, name: str, **labels) -> float:
    """The sum of the samples ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(v for got, v in samples.get(name, []) if _matches(got, labels))


def health_status(target: str, service: str = "", timeout: float = 5.0) -> str:
    """``grpc.health.v1`` Check over plaintext: ``"SERVING"``, ``"NOT_SERVING"``, ...; raises
    :class:`grpc.RpcError` when nothing answers."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


# -- in process ---------------------------------------------------------------------------------
class ServerThread:
    """An :class:`L1PCAServer` on its own event loop in a daemon thread.

    ``with ServerThread(max_batch_size=8) as srv:`` starts it, warms it up and stops it (grace 5 s).
    Keyword arguments are :class:`ServeConfig` fields over :data:`TEST_CONFIG`. ``warm=False``
    leaves it bound but not warm (health NOT_SERVING); ``fault_inject`` goes to the server.
    """

    def __init__(self, *, warm: bool = True, fault_inject: str | None = None, **overrides):
        # Imported here, not at the top: ServeProcess and the helpers (deploy/tools/loopback.py, the
        # benchmarks) never need the server in their own process.
        from l1pca.service.config import ServeConfig
        from l1pca.service.server import L1PCAServer

        self.config = ServeConfig(**{**TEST_CONFIG, **overrides})
        self.server = L1PCAServer(self.config, fault_inject=fault_inject)
        self._warm = warm
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="test-server-loop")

    def run(self, coro, timeout: float = 120):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self):
        self._thread.start()
        self.run(self.server.start())
        if self._warm:
            self.run(self.server.warm_up())
        return self

    def stop(self, grace_s: float = 5.0):
        if self._thread.is_alive():
            self.run(self.server.stop(grace_s))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    @property
    def port(self) -> int | None:
        return self.server.port

    @property
    def metrics_port(self) -> int | None:
        return self.server.metrics_port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def metrics(self) -> dict:
        return scrape(self.server.metrics_port)

    def health(self, service: str = "") -> str:
        return health_status(self.target, service)


# -- child process ------------------------------------------------------------------------------
def _health_serving(proc: ServeProcess) -> bool:
    try:
        return health_status(proc.target, timeout=2) == "SERVING"
    except grpc.RpcError:  # not up yet
        return False


class ServeProcess:
    """``l1pca serve`` in a child process on free loopback ports.

    ``with ServeProcess(*TEST_FLAGS, workdir=tmp_path) as srv:`` starts it and waits for SERVING,
    then stops it with SIGTERM; or :meth:`launch` several and :meth:`wait_serving` for each.

    Parameters
    ----------
    *args : str
        Flags of ``l1pca serve`` (after the port flags, so ``--port N`` here wins).
    workdir : path
        The port file and, by default, the log go here.
    env : dict, optional
        Added to this process's environment.
    command : list of str, optional
        The program; default ``[sys.executable, "-m", "l1pca.client.cli", "serve"]``.
    name : str
        Names the port file and the log file (``<name>.log``).
    loopback : bool
        Bind 127.0.0.1 (``--host``, ``--metrics-host``); False leaves the addresses to the
        environment or the defaults (the images bind 0.0.0.0). It is reached on 127.0.0.1 either way.
    port_flags : bool
        Add ``--port 0 --metrics-port 0`` (and the host flags); False adds ``--port-file`` alone,
        for a program that picks its ports itself.
    log_path : path, optional
        Where stdout and stderr go; default ``workdir/<name>.log``.
    ready : callable, optional
        ``ready(self) -> bool``, polled once the port file is there; default: health SERVING.

    Attributes
    ----------
    proc : subprocess.Popen or None
    port, metrics_port : int or None
        From the port file (``metrics_port`` None when the program keeps no metrics).
    """

    def __init__(self, *args, workdir, env=None, command=None, name="l1pca", loopback=True,
                 port_flags=True, log_path=None, ready: Callable[[ServeProcess], bool] | None = None):
        self.args = list(args)
        self.workdir = Path(workdir)
        self.env = dict(env or {})
        self.command = list(command or [sys.executable, "-m", "l1pca.client.cli", "serve"])
        self.name = name
        self.loopback = loopback
        self.port_flags = port_flags
        self.ready = ready or _health_serving
        self.proc: subprocess.Popen | None = None
        self.port = self.metrics_port = None
        self.log_path = Path(log_path) if log_path else self.workdir / f"{name}.log"
        self._port_file = self.workdir / f"{name}.ports.json"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def launch(self):
        """Start the process (returns at once; :meth:`wait_serving` waits for it)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._port_file.unlink(missing_ok=True)
        flags = []
        if self.port_flags:
            if self.loopback:
                flags += ["--host", "127.0.0.1", "--metrics-host", "127.0.0.1"]
            flags += ["--port", "0", "--metrics-port", "0"]
        cmd = [*self.command, *flags, "--port-file", str(self._port_file), *self.args]
        with open(self.log_path, "wb") as log:  # the child writes to its own copy
            self.proc = subprocess.Popen(cmd, env={**os.environ, **self.env}, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def wait_serving(self, timeout_s: float = 120.0):
        """Wait for the port file, then for :attr:`ready`; kill it and raise with the log tail
        otherwise."""
        ports = {}

        def port_file_read():
            try:
                ports.update(json.loads(self._port_file.read_text()))
                return True
            except (OSError, ValueError):  # not there yet, or half written
                return self.proc.poll() is not None

        if not wait_until(port_file_read, timeout_s, 0.05):
            self.kill()
            raise RuntimeError(f"{self.name}: no port file after {timeout_s} s\n{self.log_tail()}")
        if not ports:
            self.stop()
            raise RuntimeError(f"{self.name}: exited with {self.proc.returncode}\n{self.log_tail()}")
        self.port, self.metrics_port = ports["port"], ports.get("metrics_port")

        if not wait_until(lambda: self.proc.poll() is not None or self.ready(self), timeout_s, 0.1) \
                or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError(f"{self.name}: never ready (exit status {self.proc.returncode})\n"
                               f"{self.log_tail()}")
        return self

    def start(self, timeout_s: float = 120.0):
        """:meth:`launch`, then :meth:`wait_serving`."""
        return self.launch().wait_serving(timeout_s)

    def health(self, service: str = "") -> str:
        return health_status(self.target, service, timeout=2)

    def metrics(self) -> dict:
        return scrape(self.metrics_url)

    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n_chars: int = 4000) -> str:
        return self.output()[-n_chars:]

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 30.0):
        """Send ``sig`` and wait; SIGKILL after ``timeout_s``. The exit status (None if not started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self):
        return self.stop(signal.SIGKILL, 10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
