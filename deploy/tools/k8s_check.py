"""Render the kustomize overlays and validate every object offline.

    python deploy/tools/k8s_check.py          # the base, both overlays (each also with the
                                              # prometheus-operator component) and the multi-host Job

* The base and the overlays as committed hold no prometheus-operator kinds, so they apply to any
  cluster; the optional component deploy/k8s/components/prometheus-operator adds the ServiceMonitor
  and the PrometheusRule. Each overlay is also rendered the way docs/deploy.md tells a user to add
  the component: with its commented ``components:`` lines uncommented, in a copy.

* Built-in kinds: strictly (unknown fields are errors) against the Kubernetes OpenAPI schemas the
  ``kubernetes-validate`` package ships, for each version in :data:`K8S_VERSIONS`.
* prometheus-operator kinds (ServiceMonitor, PrometheusRule): against the JSON Schemas in
  deploy/k8s/schemas, equally strict.
* A kind with no schema is an error, never a silent pass.

tests/deploy/test_k8s.py runs the same functions and adds checks that span objects (selectors,
ports, probes, grace periods, the ConfigMap against the server's flags).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback import DEPLOY, ensure_tool  # noqa: E402

K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAYS = {"cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu"}
MONITORING = K8S / "components" / "prometheus-operator"
# The lines each overlay carries, commented out, that add MONITORING (docs/deploy.md, step 3).
MONITORING_LINES = "# components:\n#   - ../../components/prometheus-operator\n"
OPERATOR_API = "monitoring.coreos.com/"
MULTIHOST_JOB = K8S / "multihost" / "job.yaml"
SCHEMAS = K8S / "schemas"

# Native gRPC probes are GA from 1.27; the newest version the installed kubernetes-validate knows.
MIN_K8S_VERSION = "1.27"
K8S_VERSIONS = (MIN_K8S_VERSION, kubernetes_validate.utils.latest_version())

CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SCHEMAS / "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): SCHEMAS / "prometheusrule-monitoring-v1.json",
}


def load_all(text: str) -> list:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kustomize_build(path, kustomize: str) -> list:
    """``kustomize build path`` as a list of objects."""
    proc = subprocess.run([kustomize, "build", str(path)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"kustomize build {path} failed:\n{proc.stderr}")
    return load_all(proc.stdout)


def kustomize_build_monitored(overlay, kustomize: str) -> list:
    """``overlay`` rendered with the prometheus-operator component: a copy of deploy/k8s in which
    the overlay's commented :data:`MONITORING_LINES` are uncommented, as a user would do."""
    overlay = Path(overlay)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "k8s"
        shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("schemas"))
        kfile = copy / overlay.relative_to(K8S) / "kustomization.yaml"
        text = kfile.read_text()
        if MONITORING_LINES not in text:
            raise RuntimeError(f"{overlay.relative_to(DEPLOY.parent)}/kustomization.yaml lacks the "
                               f"commented lines that add the component:\n{MONITORING_LINES}")
        kfile.write_text(text.replace(MONITORING_LINES, "components:\n"
                                      "  - ../../components/prometheus-operator\n"))
        return kustomize_build(kfile.parent, kustomize)


def operator_objects(objects) -> list:
    """The prometheus-operator objects (monitoring.coreos.com) among ``objects``."""
    return [o for o in objects if str(o.get("apiVersion", "")).startswith(OPERATOR_API)]


def kubectl_kustomize(path, kubectl: str) -> list:
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return load_all(proc.stdout)


def kubectl_kustomize_version(kubectl: str):
    """``(major, minor)`` of the kustomize inside ``kubectl``, or None when it has none usable."""
    try:
        proc = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True,
                              text=True, timeout=60)
        info = json.loads(proc.stdout)
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return None
    version = info.get("kustomizeVersion", "")  # e.g. "v5.5.0"; absent before kubectl 1.24
    try:
        major, minor = version.lstrip("v").split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def _crd_errors(obj: dict) -> list:
    schema = json.loads(CRD_SCHEMAS[(obj["apiVersion"], obj["kind"])].read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))]


def validate_object(obj: dict, version: str) -> list:
    """Error messages for ``obj`` against Kubernetes ``version`` (empty when valid)."""
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if (obj.get("apiVersion"), obj.get("kind")) in CRD_SCHEMAS:
        return [f"{name}: {msg}" for msg in _crd_errors(obj)]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path) or "<root>"
        return [f"{name} (Kubernetes {version}): {path}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError as err:
        return [f"{name}: no schema: {err.message}"]
    return []


def validate_all(objects, versions=K8S_VERSIONS) -> list:
    return [msg for obj in objects for version in versions for msg in validate_object(obj, version)]


def main():
    kustomize, why = ensure_tool("kustomize")
    if kustomize is None:
        raise SystemExit(why)
    errors = []
    renderings = [("base", lambda: kustomize_build(BASE, kustomize), False)]
    for overlay, path in OVERLAYS.items():
        renderings += [
            (f"overlays/{overlay}", lambda path=path: kustomize_build(path, kustomize), False),
            (f"overlays/{overlay} + components/prometheus-operator",
             lambda path=path: kustomize_build_monitored(path, kustomize), True)]
    for label, build, monitored in renderings:
        objects = build()
        errs = validate_all(objects)
        kinds = sorted(o["kind"] for o in operator_objects(objects))
        if kinds != (["PrometheusRule", "ServiceMonitor"] if monitored else []):
            errs.append(f"{label}: prometheus-operator objects {kinds}; expected "
                        + ("a PrometheusRule and a ServiceMonitor" if monitored else "none"))
        print(f"{label}: {len(objects)} objects, {len(errs)} errors "
              f"(Kubernetes {', '.join(K8S_VERSIONS)})")
        errors += errs
    objects = load_all(MULTIHOST_JOB.read_text())
    errs = validate_all(objects)
    print(f"multihost/job.yaml: {len(objects)} objects, {len(errs)} errors")
    errors += errs
    for msg in errors:
        print("ERROR", msg)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
