"""Monitoring end to end: ``l1pca serve`` and a real Prometheus server on loopback.

Prometheus (Debian's, from deploy/.tools/bin) scrapes the server every second with the job name,
rule files and target labels of the deployment (deploy/prometheus/prometheus.yml, Kubernetes
discovery swapped for a static target labelled like a GPU pod). A load generator drives Fit,
Transform and ScoreOutliers calls from 8 threads; the server runs with test-only fault injection
(``L1PCA_FAULT_INJECT``): every batch fails once "on the GPU" and is re-run on the CPU, and a batch
holding seed 999 fails with INTERNAL. Then the very expressions of the dashboard, the recording
rules, the alerts and the prometheus-adapter rule are sent to Prometheus' HTTP API and their answers
checked against what the load generator saw.

The dashboard's expressions are evaluated at the timestamp of a scrape taken after the load, with
``$__rate_interval`` set to exactly the time since a scrape taken before it: both ends of the window
fall on samples, Prometheus extrapolates nothing, and the answers are exact:

* request rate: the number of calls made over the window, per method and status code too;
* error ratio: the share of server errors the load generator received;
* p99 latency: the quantile of the server's own histogram over the load, and no more than the bucket
  bound above the latency the load generator measured;
* mean batch size: requests batched / batches, with every batch re-run on the CPU (fault injection).

The recording rules and alerts use fixed 5-minute windows, longer than this Prometheus has run, so
rate() extrapolates each series by up to half a scrape interval and their answers are checked
within that. Alerts: error ratio, CPU fallback and GPU-not-used active, the others quiet; target
down once the server is stopped.

Everything runs in one module fixture (about 25 s); the tests assert on what it collected.
"""
from __future__ import annotations

import collections
import datetime
import json
import math
import random
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "tools"))

from l1pca.client import Client, ClientError  # noqa: E402
from l1pca.service.metrics import LATENCY_BUCKETS_S  # noqa: E402
from l1pca.service.testing import ServeProcess, sample_sum, wait_until  # noqa: E402
from loopback import PrometheusProcess, ensure_tool  # noqa: E402

# One module fixture runs the whole scenario (about 25 s) before the first test.
pytestmark = pytest.mark.slow

PROM = ROOT / "deploy" / "prometheus"
MAX_BATCH_SIZE = 16
SERVER_ARGS = ("--backend", "numpy", "--warmup-shapes", "", "--max-batch-size", str(MAX_BATCH_SIZE),
               "--max-delay-ms", "10", "--max-n-init", "16", "--workers", "1", "--grace-s", "5")
POISON_SEED = 999
FAULTS = f"gpu_oom,internal_seed={POISON_SEED}"
TARGET_LABELS = {"namespace": "e2e", "pod": "l1pca-0", "accelerator": "gpu"}
N_FIT, N_TRANSFORM, N_SCORE, N_INVALID = 160, 40, 20, 20
CONCURRENCY = 8
WINDOW_S = 300  # the rules' [5m]; the dashboard's $__rate_interval is set to the same here

SERVER_ERRORS = {"UNKNOWN", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNIMPLEMENTED", "INTERNAL",
                 "UNAVAILABLE", "DATA_LOSS"}
QUIET_ALERTS = {"L1PCAHighLatencyP99", "L1PCAQueueSaturated", "L1PCALoadShedding", "L1PCATargetDown"}


@dataclass
class Call:
    method: str
    code: str
    latency_s: float


@dataclass
class Scenario:
    calls: list
    before: dict  # the server's /metrics before the load
    after: dict  # and after it
    window_s: float = 0.0  # between the scrapes before and after the load
    results: dict = field(default_factory=dict)  # query name -> [(labels, value)]
    alerts: list = field(default_factory=list)
    exit_code: int | None = None
    up_after_stop: list = field(default_factory=list)
    alerts_after_stop: list = field(default_factory=list)


# -- expressions, taken from the files -----------------------------------------------------------
def dashboard_expr(title, ref_id):
    """A panel's query with "All" selected; ``{window}`` stands for ``$__rate_interval``."""
    dash = json.loads((PROM / "grafana" / "l1pca.json").read_text())
    [panel] = [p for p in dash["panels"] if p["title"] == title]
    [target] = [t for t in panel["targets"] if t["refId"] == ref_id]
    return (target["expr"].replace("{", "{{").replace("}", "}}")
            .replace("$__rate_interval", "{window}").replace('"$namespace"', '".*"')
            .replace('"$job"', '".*"'))


def rule_expr(name):
    for path in sorted((PROM / "rules").glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if rule.get("record") == name or rule.get("alert") == name:
                    return rule["expr"]
    raise KeyError(name)


def adapter_query():
    values = yaml.safe_load((ROOT / "deploy/k8s/prometheus-adapter/values.yaml").read_text())
    [rule] = values["rules"]["custom"]
    # What prometheus-adapter sends for GET .../namespaces/e2e/pods/*/l1pca_queue_depth.
    return (rule["metricsQuery"].replace("<<.Series>>", "l1pca_queue_depth")
            .replace("<<.LabelMatchers>>", 'namespace="e2e",pod=~"l1pca-0"')
            .replace("<<.GroupBy>>", "pod"))


DASHBOARD_QUERIES = {
    "throughput": dashboard_expr("Throughput", "A"),
    "by_method_code": dashboard_expr("Calls by method and status", "A"),
    "error_ratio": dashboard_expr("Server error ratio", "A"),
    "p99": dashboard_expr("Latency quantiles by method", "C"),
    "p50": dashboard_expr("Latency quantiles by method", "A"),
    "batch_mean": dashboard_expr("Batch size", "A"),
    "batch_p90": dashboard_expr("Batch size", "B"),
    "backend": dashboard_expr("Backend and device", "A"),
    "queue_depth": dashboard_expr("Queue depth", "A"),
}
RULE_QUERIES = {
    "rule_requests_rate": "namespace_job:l1pca_requests:rate5m",
    "rule_requests_rate_expr": rule_expr("namespace_job:l1pca_requests:rate5m"),
    "rule_error_ratio": "namespace_job:l1pca_request_errors:ratio_rate5m",
    "rule_p99": "namespace_job_method:l1pca_request_duration_seconds:p99_5m",
    "rule_batch_mean": "namespace_job:l1pca_batch_size:mean5m",
    "rule_batch_mean_expr": rule_expr("namespace_job:l1pca_batch_size:mean5m"),
    "alert_error_ratio": rule_expr("L1PCAHighErrorRatio"),
    "alert_p99": rule_expr("L1PCAHighLatencyP99"),
    "alert_cpu_fallback": rule_expr("L1PCACPUFallback"),
    "alert_gpu_not_used": rule_expr("L1PCAGPUNotUsed"),
    "adapter": adapter_query(),
    "raw_requests": "sum by (method, code) (l1pca_requests_total)",
}


# -- the load generator --------------------------------------------------------------------------
def _timed(method, fn):
    start = time.perf_counter()
    try:
        fn()
        code = "OK"
    except ClientError as err:
        code = err.code.name
    return Call(method, code, time.perf_counter() - start)


def run_load(client, model, seed=0):
    rng = np.random.default_rng(seed)
    X = [rng.normal(size=(48, 6)) for _ in range(8)]
    tasks = []
    for i in range(N_FIT):
        s = POISON_SEED if i % 10 == 0 else i  # every 10th poisons its batch: INTERNAL
        tasks.append(("Fit", lambda x=X[i % 8], s=s: client.fit(x, 2, seed=s)))
    for i in range(N_INVALID):  # over --max-n-init: refused by the server with INVALID_ARGUMENT
        tasks.append(("Fit", lambda x=X[i % 8]: client.fit(x, 2, n_init=32, seed=1)))
    for i in range(N_TRANSFORM):
        tasks.append(("Transform", lambda x=X[i % 8]: client.transform(model, x)))
    for i in range(N_SCORE):
        tasks.append(("ScoreOutliers", lambda x=X[i % 8]: client.score_outliers(x, model=model)))
    random.Random(seed).shuffle(tasks)
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(lambda t: _timed(*t), tasks, timeout=120))


def warm_up(client):
    """One call of each kind the load makes, before Prometheus' first scrape: every series the
    queries read exists from the first sample on, so the rates of all of them cover the same span."""
    X = np.random.default_rng(1).normal(size=(48, 6))
    model = client.fit(X, 2, seed=1)
    codes = [_timed("Fit", lambda: client.fit(X, 2, seed=POISON_SEED)).code,
             _timed("Fit", lambda: client.fit(X, 2, n_init=32, seed=1)).code]
    assert codes == ["INTERNAL", "INVALID_ARGUMENT"]
    client.transform(model, X)
    client.score_outliers(X, model=model)
    return model


def _groups_evaluated_after(prom, t):
    """Whether every rule group's last evaluation is later than wall-clock time ``t``."""
    groups = prom.api("rules")["groups"]

    def seconds(stamp):  # RFC 3339 with nanoseconds: keep microseconds for datetime
        head, _, frac = stamp.rstrip("Z").partition(".")
        when = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.timezone.utc)
        return when.timestamp() + float("0." + (frac or "0"))

    return bool(groups) and all(seconds(g["lastEvaluation"]) > t for g in groups)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    binary, why = ensure_tool("prometheus")
    if binary is None:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("monitoring")
    server = ServeProcess(*SERVER_ARGS, workdir=tmp, env={"L1PCA_FAULT_INJECT": FAULTS},
                          name="l1pca-0")
    prom = None
    try:
        server.start(timeout_s=60)
        # retry=None: each call reaches the server once, so counts compare exactly.
        with Client(server.target, timeout_s=30, retry=None) as client:
            model = warm_up(client)
            prom = PrometheusProcess(binary, tmp / "prometheus",
                                     [(f"127.0.0.1:{server.metrics_port}", TARGET_LABELS)]).start()
            prom.wait_scraped_after(time.time(), timeout_s=30)
            t_before = prom.value('timestamp(up{job="l1pca"})')  # a scrape of the quiet server
            # A few quiet scrapes more: the rules' windows then span enough samples that their
            # extrapolation error (at most 1.5 scrape intervals over that span) stays small.
            prom.wait_scraped_after(t_before + 4, timeout_s=30)
            before = server.metrics()  # the same values: nothing has run since
            calls = run_load(client, model)
        t_end = time.time()
        prom.wait_scraped_after(t_end, timeout_s=30)
        t_after = prom.value('timestamp(up{job="l1pca"})')  # a scrape after the load
        after = server.metrics()
        sc = Scenario(calls, before, after)
        window_ms = round((t_after - t_before) * 1000)
        sc.window_s = window_ms / 1000
        sc.results = {name: prom.query(expr.format(window=f"{window_ms}ms"), f"{t_after:.3f}")
                      for name, expr in DASHBOARD_QUERIES.items()}
        t_scraped = time.time()
        assert wait_until(lambda: prom.value("timestamp(namespace_job:l1pca_requests:rate5m)")
                          > t_scraped, 30, 0.2), "recording rules not evaluated"
        # The alerting rules are another group, on their own tick, and read the recorded series: the
        # alert's `value` must come from an evaluation after the recording one just awaited.
        t_recorded = time.time()
        assert wait_until(lambda: _groups_evaluated_after(prom, t_recorded), 30, 0.2), \
            "alerting rules not evaluated"
        at = time.time()
        sc.results.update({name: prom.query(expr, at) for name, expr in RULE_QUERIES.items()})
        sc.alerts = prom.alerts()

        sc.exit_code = server.stop(signal.SIGTERM, timeout_s=30)
        wait_until(lambda: any(a["labels"]["alertname"] == "L1PCATargetDown" for a in prom.alerts()),
                   30, 0.2)
        sc.up_after_stop = prom.query('up{job="l1pca"}')
        sc.alerts_after_stop = prom.alerts()
        yield sc
    finally:
        if prom is not None:
            prom.stop()
        server.stop(signal.SIGKILL)


# -- helpers -------------------------------------------------------------------------------------
def delta(sc, name, **labels):
    return sample_sum(sc.after, name, **labels) - sample_sum(sc.before, name, **labels)


def only(result):
    assert len(result) == 1, result
    return result[0][1]


def by(result, *keys):
    return {tuple(labels.get(k, "") for k in keys): v for labels, v in result}


def bucket_deltas(sc, method):
    """Cumulative ``[(le, count)]`` of the server's latency histogram for ``method`` over the load."""
    les = sorted({float(lbl["le"]) for lbl, _ in sc.after["l1pca_request_duration_seconds_bucket"]})
    return [(le, delta(sc, "l1pca_request_duration_seconds_bucket", method=method,
                       le=("+Inf" if math.isinf(le) else repr(le))))
            for le in les]


def histogram_quantile(q, buckets):
    """Prometheus' histogram_quantile on cumulative ``[(upper bound, count)]`` ending with +Inf."""
    assert math.isinf(buckets[-1][0])
    observations = buckets[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(buckets) - 1) if buckets[i][1] >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0]
    start, count = 0.0, buckets[b][1]
    if b > 0:
        start = buckets[b - 1][0]
        count -= buckets[b - 1][1]
        rank -= buckets[b - 1][1]
    return start + (buckets[b][0] - start) * rank / count


def client_counts(sc):
    return collections.Counter((c.method, c.code) for c in sc.calls)


def active(alerts):
    return {a["labels"]["alertname"]: a for a in alerts}


# -- tests ---------------------------------------------------------------------------------------
def test_every_call_of_the_load_is_counted_by_method_and_code(scenario):
    sc = scenario
    expected = client_counts(sc)
    assert sum(expected.values()) == N_FIT + N_INVALID + N_TRANSFORM + N_SCORE
    assert expected[("Fit", "INVALID_ARGUMENT")] == N_INVALID
    assert expected[("Transform", "OK")] == N_TRANSFORM and expected[("ScoreOutliers", "OK")] == N_SCORE
    assert expected[("Fit", "INTERNAL")] >= N_FIT // 10
    server = {(m, c): delta(sc, "l1pca_requests_total", method=m, code=c) for m, c in expected}
    assert server == dict(expected)
    # Prometheus stored the server's counters as they are.
    stored = by(sc.results["raw_requests"], "method", "code")
    assert stored == {k: sample_sum(sc.after, "l1pca_requests_total", method=k[0], code=k[1])
                      for k in stored}


def test_request_rate_is_the_load_over_the_window(scenario):
    sc = scenario
    n = len(sc.calls)
    assert only(sc.results["throughput"]) * sc.window_s == pytest.approx(n, rel=1e-9)
    per_key = by(sc.results["by_method_code"], "method", "code")
    expected = client_counts(sc)
    assert {k: v * sc.window_s for k, v in per_key.items() if k in expected} == \
        pytest.approx(dict(expected), rel=1e-9)
    assert all(v == 0 for k, v in per_key.items() if k not in expected)  # warm-up only
    # The rules' rate() over [5m], on series younger than that: the calls, extrapolated by at most
    # half a scrape interval before the first sample and one after the last, over 300 s.
    for name in ("rule_requests_rate", "rule_requests_rate_expr"):
        assert n <= only(sc.results[name]) * WINDOW_S <= n * (1 + 1.5 / sc.window_s), name


def test_error_ratio_is_the_share_of_server_errors(scenario):
    sc = scenario
    expected = sum(c.code in SERVER_ERRORS for c in sc.calls) / len(sc.calls)
    assert expected > 0.05  # so the alert must be active
    assert only(sc.results["error_ratio"]) == pytest.approx(expected, rel=1e-9)
    # [5m] windows: each series extrapolated by up to half a scrape interval.
    tolerance = 1.5 / sc.window_s
    assert only(sc.results["rule_error_ratio"]) == pytest.approx(expected, rel=tolerance)
    assert only(sc.results["alert_error_ratio"]) == pytest.approx(expected, rel=tolerance)
    alert = active(sc.alerts)["L1PCAHighErrorRatio"]
    assert alert["state"] == "pending"  # for: 5m
    assert alert["labels"]["namespace"] == "e2e" and alert["labels"]["job"] == "l1pca"
    assert float(alert["value"]) == pytest.approx(expected, rel=tolerance)


@pytest.mark.parametrize("method", ["Fit", "Transform"])
def test_p99_latency_is_the_quantile_of_the_server_histogram(scenario, method):
    sc = scenario
    expected = histogram_quantile(0.99, bucket_deltas(sc, method))
    got = by(sc.results["p99"], "method")[(method,)]
    assert got == pytest.approx(expected, rel=1e-9)
    assert by(sc.results["p50"], "method")[(method,)] <= got
    # The recording rule's [5m] extrapolation shifts bucket counts by a few %: same bucket or next.
    rule = by(sc.results["rule_p99"], "method")[(method,)]
    assert expected / 2.5 <= rule <= expected * 2.5
    # The server times each call inside the client's timing, so its p99 lies at most in the
    # histogram bucket holding the client-measured p99.
    latencies = sorted(c.latency_s for c in sc.calls if c.method == method)
    client_p99 = latencies[math.ceil(0.99 * len(latencies)) - 1]
    bound = min(le for le in LATENCY_BUCKETS_S + (math.inf,) if le >= client_p99)
    assert 0 < got <= bound


def test_latency_alert_is_quiet_for_fast_calls(scenario):
    assert scenario.results["alert_p99"] == []  # every p99 is far below 2.5 s
    assert "L1PCAHighLatencyP99" not in active(scenario.alerts)


def test_batch_size_counts_the_batched_fits(scenario):
    sc = scenario
    batched = sum(c.method == "Fit" and c.code in ("OK", "INTERNAL") for c in sc.calls)
    assert delta(sc, "l1pca_batch_size_sum") == batched  # invalid fits never reach the queue
    batches = delta(sc, "l1pca_batch_size_count")
    mean = batched / batches
    assert 1 < mean <= MAX_BATCH_SIZE  # 8 concurrent callers: requests did share solver calls
    assert only(sc.results["batch_mean"]) == pytest.approx(mean, rel=1e-9)
    for name in ("rule_batch_mean", "rule_batch_mean_expr"):
        assert only(sc.results[name]) == pytest.approx(mean, rel=1.5 / sc.window_s), name
    assert 1 <= only(sc.results["batch_p90"]) <= MAX_BATCH_SIZE


def test_cpu_fallback_and_gpu_not_used_alerts(scenario):
    sc = scenario
    # gpu_oom: every batch failed once "on the GPU" and was re-run on the CPU.
    assert delta(sc, "l1pca_cpu_fallback_total") == delta(sc, "l1pca_batch_size_count") > 0
    alerts = active(sc.alerts)
    assert alerts["L1PCACPUFallback"]["state"] == "firing"  # no `for`: a fallback is news
    assert alerts["L1PCACPUFallback"]["labels"]["pod"] == "l1pca-0"
    assert only(sc.results["alert_cpu_fallback"]) >= 1
    # The target is labelled like a GPU pod, and the server solves on the CPU.
    assert alerts["L1PCAGPUNotUsed"]["state"] == "pending"  # for: 5m
    assert alerts["L1PCAGPUNotUsed"]["labels"]["backend"] == "numpy"
    assert only(sc.results["alert_gpu_not_used"]) == 1
    [(labels, _)] = sc.results["backend"]
    assert (labels["backend"], labels["device"]) == ("numpy", "cpu")


def test_other_alerts_are_quiet_while_the_server_is_healthy(scenario):
    assert QUIET_ALERTS & set(active(scenario.alerts)) == set()


def test_adapter_query_gives_the_pod_queue_depth(scenario):
    [(labels, value)] = scenario.results["adapter"]
    assert labels == {"pod": "l1pca-0"}
    assert 0 <= value <= N_FIT
    [(labels, depth)] = scenario.results["queue_depth"]
    assert depth == 0  # the load is over: nothing waits


def test_target_down_after_the_server_stops(scenario):
    assert scenario.exit_code == 0  # SIGTERM: a clean drain
    assert [v for _, v in scenario.up_after_stop] == [0]
    alert = active(scenario.alerts_after_stop)["L1PCATargetDown"]
    assert alert["state"] == "pending"  # for: 5m
    assert alert["labels"]["pod"] == "l1pca-0" and alert["labels"]["namespace"] == "e2e"
