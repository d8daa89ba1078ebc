"""Scale-out rehearsal: three ``l1pca serve`` processes on loopback ports and one client whose target
lists all three. That is what the headless Service gives on Kubernetes (DNS returns every ready
pod; the client balances calls round-robin itself): calls spread over every process, as each
process's own /metrics shows, and the client carries on when a process is stopped mid-run, whether
it drains on SIGTERM (a pod deleted, a rollout) or dies on SIGKILL (a node lost).
"""
from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from l1pca.client import Client, ClientError
from l1pca.service.testing import ServeProcess, sample_sum, wait_until

SERVER_ARGS = ("--backend", "numpy", "--warmup-shapes", "", "--max-delay-ms", "2", "--grace-s", "10")
X = np.random.default_rng(0).normal(size=(40, 5))


@pytest.fixture
def servers(tmp_path):
    procs = [ServeProcess(*SERVER_ARGS, workdir=tmp_path, name=f"l1pca-{i}") for i in range(3)]
    try:
        for p in procs:  # start all three at once, then wait for each
            p.launch()
        for p in procs:
            p.wait_serving(timeout_s=60)
        yield procs
    finally:
        for p in procs:
            p.stop(signal.SIGKILL)


def fits_ok(server):
    return sample_sum(server.metrics(), "l1pca_requests_total", method="Fit", code="OK")


def multi_target(servers):
    return ",".join(s.target for s in servers)


def connect_all(client, servers):
    """Call until every process has answered once: the channel is connected to all three."""
    ok = wait_until(lambda: client.fit(X, 1, seed=0) is not None and all(fits_ok(s) for s in servers),
                    timeout=30, interval=0.01)
    assert ok, "the round-robin channel never reached every process"


@pytest.mark.slow
def test_round_robin_spreads_calls_over_every_process(servers):
    n = 60
    with Client(multi_target(servers), timeout_s=30) as client:
        connect_all(client, servers)
        base = [fits_ok(s) for s in servers]
        for i in range(n):
            client.fit(X, 1, seed=i)
        got = [fits_ok(s) - b for s, b in zip(servers, base, strict=True)]
    assert sum(got) == n
    # Round robin over three ready connections: sequential calls take turns.
    assert all(abs(g - n / 3) <= 3 for g in got), got


class Load:
    """Fit calls from 4 threads until stopped; records every outcome."""

    def __init__(self, client):
        self.client = client
        self.ok = 0
        self.errors = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(4)
        self._futures = []

    def _worker(self, k):
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                self.client.fit(X, 1, seed=k * 100000 + i)
                with self._lock:
                    self.ok += 1
            except ClientError as err:
                with self._lock:
                    self.errors.append(err)

    def __enter__(self):
        self._futures = [self._pool.submit(self._worker, k) for k in range(4)]
        return self

    def count(self):
        with self._lock:
            return self.ok

    def wait_for_more(self, n, timeout_s=20):
        start = self.count()
        assert wait_until(lambda: self.count() >= start + n, timeout_s, 0.01), \
            f"fewer than {n} calls completed in {timeout_s} s; errors: {self.errors[:3]}"

    def __exit__(self, *exc):
        self._stop.set()
        for f in self._futures:
            f.result(timeout=60)
        self._pool.shutdown()
        return False


@pytest.mark.slow
def test_client_carries_on_when_processes_stop(servers):
    s0, s1, s2 = servers
    with Client(multi_target(servers), timeout_s=30) as client:
        connect_all(client, servers)
        with Load(client) as load:
            load.wait_for_more(30)
            # A pod deleted: SIGTERM, the server drains (NOT_SERVING, finishes what it holds).
            before = [fits_ok(s) for s in (s1, s2)]
            assert s0.stop(signal.SIGTERM, timeout_s=30) == 0, s0.log_tail()
            load.wait_for_more(40)
            after = [fits_ok(s) for s in (s1, s2)]
            assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
            # A node lost: SIGKILL, calls in flight on it fail UNAVAILABLE and are retried.
            before = fits_ok(s2)
            s1.stop(signal.SIGKILL)
            load.wait_for_more(40)
            assert fits_ok(s2) > before + 20
        assert load.errors == [], load.errors[:3]
        assert s2.health() == "SERVING"
