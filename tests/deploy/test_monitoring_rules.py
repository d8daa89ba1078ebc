"""deploy/prometheus: promtool checks of the scrape config and the rules, the promtool unit tests of
every alert, and the dashboard; every metric they name is one the service exports.

promtool is Debian's (deploy/tools/install-tools.sh, run by ``make test``). Debian builds
Prometheus without Kubernetes service discovery, so ``promtool check config`` runs on the scrape
config with its ``kubernetes_sd_configs`` block swapped for a static target (everything else,
relabelling and rule files included, is checked as written); the Kubernetes part is checked here
by replaying the relabelling on the labels Kubernetes discovery gives the rendered Services.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "tools"))

import k8s_check  # noqa: E402
from l1pca.service.metrics import ServiceMetrics  # noqa: E402
from loopback import derive_config, ensure_tool  # noqa: E402

PROM = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.rules.yml"))
RULE_TESTS = sorted((PROM / "tests").glob("*.test.yml"))
DASHBOARD = PROM / "grafana" / "l1pca.json"
ADAPTER_VALUES = ROOT / "deploy/k8s/prometheus-adapter/values.yaml"
CONFIG_ENV = ROOT / "deploy/k8s/base/config.env"
README = ROOT / "deploy" / "README.md"

SERVER_ERROR_CODES = ("UNKNOWN|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED|UNIMPLEMENTED|INTERNAL|UNAVAILABLE"
                      "|DATA_LOSS")
PROMQL_WORDS = {"sum", "rate", "increase", "by", "without", "histogram_quantile", "avg_over_time",
                "max_over_time", "max", "min", "avg", "count", "or", "and", "unless", "on", "ignoring",
                "le", "round", "timestamp", "label_values", "absent", "group_left", "group_right",
                "bool", "offset"}


@pytest.fixture(scope="module")
def promtool():
    path, why = ensure_tool("promtool")
    if path is None:
        pytest.skip(why)
    return path


def run(cmd, timeout=120):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def rules():
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out += group["rules"]
    return out


def alerts():
    return [r for r in rules() if "alert" in r]


def dashboard_exprs():
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["refId"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def grafana_to_promql(expr, rate_interval="5m"):
    """A dashboard expression as Prometheus sees it once Grafana has filled in the variables."""
    return (expr.replace("$__rate_interval", rate_interval).replace('"$namespace"', '".*"')
            .replace('"$job"', '".*"'))


def exported_sample_names():
    """Every sample name the server's registry exposes (counters' _total, histograms' _bucket...)."""
    metrics = ServiceMetrics()
    metrics.build.info({"version": "0", "backend": "numpy", "device": "cpu"})
    metrics.requests.labels("Fit", "OK").inc()
    metrics.queue_dropped.labels("deadline").inc()
    metrics.solve_duration.labels("numpy", "bitflip").observe(0.1)
    return {s.name for fam in metrics.registry.collect() for s in fam.samples}


def metric_names(expr):
    """Names of metrics and recording rules that a PromQL expression reads."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # drop label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # drop matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # drop ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # labels
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d.*|e", n)}


# -- promtool -----------------------------------------------------------------------------------
def test_promtool_check_config(promtool, tmp_path):
    cfg = derive_config([("127.0.0.1:9464", {})], interval="15s", keep_relabel=True)
    cfg["global"]["scrape_timeout"] = "10s"
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    code, out = run([promtool, "check", "config", str(path)])
    assert code == 0, out
    assert out.count("SUCCESS") >= 1 + len(RULE_FILES), out  # the config and each rule file


def test_scrape_config_keeps_only_the_metrics_port(kustomize_objects):
    """Replay the job's relabelling on the endpoints Kubernetes discovery reports for the Services."""
    job = yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"][0]
    assert job["kubernetes_sd_configs"] == [{"role": "endpoints"}]
    pod = next(o for o in kustomize_objects if o["kind"] == "Deployment")["spec"]["template"]
    kept = []
    for svc in (o for o in kustomize_objects if o["kind"] == "Service"):
        for port in svc["spec"]["ports"]:
            meta = {"__meta_kubernetes_namespace": "prod",
                    "__meta_kubernetes_service_name": svc["metadata"]["name"],
                    "__meta_kubernetes_endpoint_port_name": port["name"],
                    "__meta_kubernetes_pod_name": "l1pca-abc"}
            for key, value in svc["metadata"]["labels"].items():
                meta["__meta_kubernetes_service_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
            for key, value in pod["metadata"]["labels"].items():
                meta["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
            labels = relabel(meta, job["relabel_configs"])
            if labels is not None:
                kept.append((svc["metadata"]["name"], port["name"], labels))
    assert [(s, p) for s, p, _ in kept] == [("l1pca-metrics", "metrics")]
    labels = kept[0][2]
    assert labels["namespace"] == "prod" and labels["pod"] == "l1pca-abc"
    assert labels["accelerator"] == pod["metadata"]["labels"]["accelerator"]


def relabel(labels, configs):
    """Prometheus relabelling (the replace and keep actions), or None when the target is dropped."""
    labels = dict(labels)
    for rc in configs:
        value = rc.get("separator", ";").join(labels.get(s, "") for s in rc.get("source_labels", []))
        regex = re.compile(f"^(?:{rc.get('regex', '(.*)')})$")
        action = rc.get("action", "replace")
        if action == "keep":
            if not regex.match(value):
                return None
        elif action == "replace":
            m = regex.match(value)
            if m:
                labels[rc["target_label"]] = m.expand(rc.get("replacement", "$1").replace("$1", r"\1"))
        else:
            raise NotImplementedError(action)
    return labels


@pytest.fixture(scope="module")
def kustomize_objects():
    path, why = ensure_tool("kustomize")
    if path is None:
        pytest.skip(why)
    return k8s_check.kustomize_build(k8s_check.OVERLAYS["gpu"], path)


def test_promtool_check_rules(promtool):
    code, out = run([promtool, "check", "rules", *map(str, RULE_FILES)])
    assert code == 0, out
    assert out.count("SUCCESS") == len(RULE_FILES)


def test_promtool_unit_tests(promtool):
    code, out = run([promtool, "test", "rules", *map(str, RULE_TESTS)], timeout=300)
    assert code == 0, out
    assert "SUCCESS" in out


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    firing, quiet = set(), set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names == {"L1PCAHighErrorRatio", "L1PCAHighLatencyP99", "L1PCAQueueSaturated",
                     "L1PCALoadShedding", "L1PCACPUFallback", "L1PCAGPUNotUsed", "L1PCATargetDown"}
    assert names - firing == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


# -- rules --------------------------------------------------------------------------------------
def test_alerts_carry_severity_summary_and_a_runbook_in_the_readme():
    readme = README.read_text().lower()
    for rule in alerts():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        anchor = rule["annotations"]["runbook"]
        assert anchor == f"deploy/README.md#{rule['alert'].lower()}"
        assert f"### {rule['alert'].lower()}" in readme, f"no README section for {rule['alert']}"


def test_rules_and_dashboard_read_only_metrics_the_service_exports():
    exported = exported_sample_names() | {"up"}
    recorded = {r["record"] for r in rules() if "record" in r}
    exprs = [r["expr"] for r in rules()] + [grafana_to_promql(e) for *_, e in dashboard_exprs()]
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    exprs += [r["seriesQuery"] for r in adapter]
    unknown = set()
    for expr in exprs:
        unknown |= metric_names(expr) - exported - recorded
    assert unknown == set(), f"metrics not exported by l1pca.service.metrics: {sorted(unknown)}"


def test_server_error_codes_agree_between_rules_and_dashboard():
    exprs = [r["expr"] for r in rules()] + [e for *_, e in dashboard_exprs()]
    code_sets = {m for e in exprs for m in re.findall(r'code=~"([^"]+)"', e)}
    assert code_sets == {SERVER_ERROR_CODES}


def test_queue_saturation_threshold_is_80_percent_of_max_queue():
    env = dict(line.split("=", 1) for line in CONFIG_ENV.read_text().split())
    [rule] = [r for r in alerts() if r["alert"] == "L1PCAQueueSaturated"]
    threshold = float(re.search(r">\s*([0-9.]+)\s*$", rule["expr"]).group(1))
    assert threshold == int(0.8 * int(env["L1PCA_MAX_QUEUE"]))


def test_target_down_watches_the_scrape_job():
    [rule] = [r for r in alerts() if r["alert"] == "L1PCATargetDown"]
    job = yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"][0]["job_name"]
    assert f'up{{job="{job}"}}' in rule["expr"]


# -- dashboard ----------------------------------------------------------------------------------
def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job"):
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(g["x"] + dx, g["y"] + dy) for dx in range(g["w"]) for dy in range(g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert 'namespace=~"$namespace"' in t["expr"] and 'job=~"$job"' in t["expr"], p["title"]


def test_dashboard_shows_latency_throughput_batching_queue_and_backend():
    exprs = " ".join(e for *_, e in dashboard_exprs())
    for needle in ("histogram_quantile(0.99, sum by (method, le) (rate(l1pca_request_duration_seconds_bucket",
                   "sum(rate(l1pca_requests_total", "l1pca_batch_size_sum", "l1pca_batch_size_bucket",
                   "l1pca_queue_depth", "l1pca_build_info", "l1pca_cpu_fallback_total",
                   "l1pca_worker_restarts_total"):
        assert needle in exprs, needle


def test_dashboard_and_adapter_expressions_are_valid_promql(promtool, tmp_path):
    exprs = [(f"{title} {ref}", grafana_to_promql(e)) for title, ref, e in dashboard_exprs()]
    for i, rule in enumerate(yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]):
        query = (rule["metricsQuery"].replace("<<.Series>>", "l1pca_queue_depth")
                 .replace("<<.LabelMatchers>>", 'namespace="prod",pod=~"l1pca-a|l1pca-b"')
                 .replace("<<.GroupBy>>", "pod"))
        exprs.append((f"adapter rule {i}", query))
        exprs.append((f"adapter series {i}", rule["seriesQuery"]))
    groups = [{"name": "exprs", "rules": [{"record": f"check:expr_{i}:x", "expr": e}
                                          for i, (_, e) in enumerate(exprs)]}]
    path = tmp_path / "exprs.rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    code, out = run([promtool, "check", "rules", str(path)])
    assert code == 0, out + "\n" + "\n".join(f"{i}: {name}" for i, (name, _) in enumerate(exprs))
