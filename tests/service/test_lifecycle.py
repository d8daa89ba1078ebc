"""Health, reflection, metrics, configuration and shutdown of a real server."""
import signal
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from l1pca.client import Client, ClientError
from l1pca.service.config import FLAGS, ServeConfig, add_serve_arguments, env_name
from l1pca.service.testing import ServerThread, health_status, scrape, value, wait_until

X = np.random.default_rng(0).normal(size=(30, 5))


def test_health_is_not_serving_until_warm_then_serving_then_not_serving_on_drain():
    srv = ServerThread(warm=False)
    with srv:
        for service in ("", "l1pca.v1.L1PCA"):
            assert health_status(srv.target, service) == "NOT_SERVING"
        with Client(srv.target, retry=None) as client:
            with pytest.raises(ClientError) as err:
                client.fit(X, 1)
            assert err.value.code == grpc.StatusCode.UNAVAILABLE and "warming up" in err.value.details
            assert client.server_info().backend == "numpy"  # info answers while warming
        assert value(srv.metrics(), "l1pca_serving") == 0
        srv.run(srv.server.warm_up())
        assert health_status(srv.target) == "SERVING"
        assert health_status(srv.target, "l1pca.v1.L1PCA") == "SERVING"
        assert value(srv.metrics(), "l1pca_serving") == 1

        statuses = []
        with grpc.insecure_channel(srv.target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="l1pca.v1.L1PCA"), timeout=20)

            def follow():
                for resp in watch:
                    statuses.append(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
                    if statuses[-1] == "NOT_SERVING":
                        watch.cancel()
                        return

            reader = threading.Thread(target=follow)
            reader.start()
            assert wait_until(lambda: statuses == ["SERVING"], timeout=5)
            srv.stop(grace_s=5)
            reader.join(10)
        assert statuses == ["SERVING", "NOT_SERVING"]


def test_reflection_lists_the_service_and_drives_a_call():
    with ServerThread() as srv, grpc.insecure_channel(srv.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"l1pca.v1.L1PCA", "grpc.health.v1.Health"} <= services
        # What grpcurl does: build the messages from the reflected descriptors and call.
        pool = descriptor_pool.DescriptorPool(db)
        method = pool.FindServiceByName("l1pca.v1.L1PCA").methods_by_name["GetServerInfo"]
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary("/l1pca.v1.L1PCA/GetServerInfo",
                                   request_serializer=request_cls.SerializeToString,
                                   response_deserializer=response_cls.FromString)
        info = call(request_cls(), timeout=10)
        assert info.backend == "numpy" and info.device == "cpu"


def test_metrics_are_consistent_with_the_calls_made():
    with ServerThread() as srv, Client(srv.target, timeout_s=10, retry=None) as client:
        models = [client.fit(X, 2, seed=i) for i in range(3)]
        with pytest.raises(ClientError):
            client.fit(X, 1, n_init=10_000)  # over the server's limit: INVALID_ARGUMENT
        client.transform(models[0], X)
        client.transform(models[0], X)
        client.score_outliers(X, model=models[0])
        client.score_outliers(X, n_components=1, seed=0)  # fits on the server too
        m = scrape(srv.server.metrics_port)
    assert value(m, "l1pca_requests_total", method="Fit", code="OK") == 3
    assert value(m, "l1pca_requests_total", method="Fit", code="INVALID_ARGUMENT") == 1
    assert value(m, "l1pca_requests_total", method="Transform", code="OK") == 2
    assert value(m, "l1pca_requests_total", method="ScoreOutliers", code="OK") == 2
    assert value(m, "l1pca_request_duration_seconds_count", method="Fit") == 4
    assert value(m, "l1pca_request_duration_seconds_count", method="Transform") == 2
    assert value(m, "l1pca_batch_size_sum") == 4  # 3 fits + 1 fit inside ScoreOutliers
    assert value(m, "l1pca_queue_wait_seconds_count") == 4
    assert value(m, "l1pca_solve_duration_seconds_count", backend="numpy", method="bitflip") \
        == value(m, "l1pca_batch_size_count")
    assert value(m, "l1pca_queue_depth") == 0 and value(m, "l1pca_inflight_requests") == 0
    assert value(m, "l1pca_cpu_fallback_total") == 0
    assert value(m, "l1pca_build_info", backend="numpy", device="cpu") == 1
    # Histogram buckets go from sub-millisecond to tens of seconds.
    bounds = {float(labels["le"]) for labels, _ in m["l1pca_request_duration_seconds_bucket"]}
    assert min(bounds) <= 0.001 and max(b for b in bounds if b != float("inf")) >= 30


@pytest.mark.slow
def test_sigterm_finishes_every_request_in_flight_and_exits_0(serve_process):
    srv = serve_process("--max-delay-ms", "1500", "--flush-when-idle", "off", "--grace-s", "20")
    proc, port, mport = srv.proc, srv.port, srv.metrics_port
    try:
        target = f"127.0.0.1:{port}"
        results, errors = [], []

        def call(i):
            try:
                with Client(target, timeout_s=30, retry=None) as client:
                    size = (300, 20) if i == 0 else (30, 5)  # one takes a while to compute
                    Xi = np.random.default_rng(i).normal(size=size)
                    results.append(client.fit(Xi, 3 if i == 0 else 1, n_init=24 if i == 0 else None))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        assert wait_until(lambda: value(scrape(mport), "l1pca_inflight_requests") == 8, timeout=15)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert proc.wait(30) == 0
        assert not errors, errors
        assert len(results) == 8
        out = srv.output()
        assert "signal received" in out and "stopped" in out
        with pytest.raises(ClientError) as err, Client(target, timeout_s=1, retry=None) as client:
            client.server_info()
        assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_help_documents_every_flag_with_its_default_and_env_var():
    out = subprocess.run([sys.executable, "-m", "l1pca.client.cli", "serve", "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    flat = " ".join(out.split())
    for flag, _typ, default, _help in FLAGS:
        assert flag in out
        assert f"(default: {default}; env {env_name(flag)})" in flat, flag


def test_docs_flags_table_is_current():
    """docs/service.md holds the flags table generated from FLAGS (`make docs` rewrites it)."""
    from pathlib import Path

    from l1pca.service.config import FLAGS_BEGIN, FLAGS_END, flags_markdown

    text = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text()
    start = text.index("\n", text.index(FLAGS_BEGIN)) + 1
    assert text[start:text.index(FLAGS_END)] == flags_markdown(), "stale: run `make docs`"
    for flag, _typ, default, _help in FLAGS:
        assert f"| `{flag}` | `{env_name(flag)}` | `{default}` |" in text


def test_help_texts_say_what_a_flag_does_not_what_a_benchmark_measured():
    """Numbers of runs (ratios, timings, result files) belong in docs/decisions, not in --help."""
    import re

    for flag, _typ, _default, text in FLAGS:
        assert not re.search(r"bench/results|\d+(\.\d+)?x\b|\d+(\.\d+)?-\d+(\.\d+)? ?s\b", text), flag


def test_flags_mirror_environment_variables():
    import argparse

    parser = add_serve_arguments(argparse.ArgumentParser(),
                                 environ={"L1PCA_MAX_QUEUE": "7", "L1PCA_MAX_DELAY_MS": "2.5",
                                          "L1PCA_WARMUP_SHAPES": "8x4,16x8"})
    cfg = ServeConfig.from_args(parser.parse_args([]))
    assert (cfg.max_queue, cfg.max_delay_ms, cfg.warmup_shapes) == (7, 2.5, ((8, 4), (16, 8)))
    assert (cfg.host, cfg.port, cfg.metrics_port) == ("127.0.0.1", 50051, 9464)
    cfg = ServeConfig.from_args(parser.parse_args(["--max-queue", "9"]))  # the flag wins
    assert cfg.max_queue == 9
    with pytest.raises(SystemExit):
        add_serve_arguments(argparse.ArgumentParser(), environ={"L1PCA_PORT": "http"}).parse_args([])
    with pytest.raises(ValueError, match="L1PCA_BACKEND"):
        ServeConfig(backend="tpu")


def test_make_serve_runs_the_server_with_loopback_defaults():
    out = subprocess.run(["make", "-n", "serve"], capture_output=True, text=True, timeout=60,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.returncode == 0, out.stderr
    assert "l1pca.client.cli serve" in out.stdout
