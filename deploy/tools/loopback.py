"""l1pca servers and a Prometheus on loopback: the Prometheus half of the monitoring tests' harness,
and a sandbox for working on the rules and the dashboard.

    python deploy/tools/loopback.py --servers 3
    # prints the gRPC targets and the Prometheus URL; Ctrl-C stops everything

Every server is ``l1pca serve`` in its own process on free ports, logging to a file
(:class:`l1pca.service.testing.ServeProcess`, the servers' harness of the tests and benchmarks).
Prometheus is the binary from ``deploy/.tools/bin`` (``make deploy-tools``) with a configuration
derived from ``deploy/prometheus/prometheus.yml``: the same job name and rule files, Kubernetes
discovery replaced by static loopback targets that carry the labels Kubernetes discovery would add
(``namespace``, ``pod``, ``accelerator``).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

# The servers' side comes from the one harness; sample_sum and scrape are re-exported for callers.
from l1pca.service.testing import ServeProcess, free_port, sample_sum, scrape, wait_until  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TOOLS_BIN = DEPLOY / ".tools" / "bin"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
INSTALL_TOOLS = DEPLOY / "tools" / "install-tools.sh"
JOB = "l1pca"


# -- small helpers ------------------------------------------------------------------------------
def find_tool(name: str) -> str | None:
    """``deploy/.tools/bin/<name>`` (``make deploy-tools``), else ``<name>`` on PATH, else None."""
    local = TOOLS_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def ensure_tool(name: str, *, timeout_s: float = 600) -> tuple[str | None, str]:
    """Find ``name``, running deploy/tools/install-tools.sh once if it is missing.

    Returns ``(path, "")``, or ``(None, why)`` when it is neither there nor installable here.
    """
    path = find_tool(name)
    if path:
        return path, ""
    try:
        proc = subprocess.run(["bash", str(INSTALL_TOOLS)], capture_output=True, text=True,
                              timeout=timeout_s)
        why = (proc.stdout + proc.stderr).strip()[-800:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = f"{type(exc).__name__}: {exc}"
    path = find_tool(name)
    if path:
        return path, ""
    return None, (f"{name} is not in deploy/.tools/bin nor on PATH, and deploy/tools/install-tools.sh "
                  f"could not install it (run `make deploy-tools` as root with access to the Debian "
                  f"and npm registries): {why}")


# -- Prometheus ---------------------------------------------------------------------------------
def derive_config(targets, *, interval="1s", keep_relabel=False, base=PROMETHEUS_YML) -> dict:
    """deploy/prometheus/prometheus.yml with static targets instead of Kubernetes discovery.

    ``targets``: ``[(host:port, {label: value})]``. Rule files become absolute paths; Alertmanager
    is dropped. ``keep_relabel=True`` keeps the job's relabelling (for ``promtool check config``:
    it matches Kubernetes discovery labels, so at run time it would drop static targets).
    """
    base = Path(base)
    cfg = copy.deepcopy(yaml.safe_load(base.read_text()))
    cfg.setdefault("global", {}).update(scrape_interval=interval, evaluation_interval=interval,
                                        scrape_timeout=interval)
    cfg["rule_files"] = [str((base.parent / f).resolve()) for f in cfg.get("rule_files", [])]
    cfg.pop("alerting", None)
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == JOB]
    if len(jobs) != 1:
        raise ValueError(f"{base}: expected one scrape job named {JOB!r}, found {len(jobs)}")
    job = jobs[0]
    job.pop("kubernetes_sd_configs", None)
    if not keep_relabel:
        job.pop("relabel_configs", None)
    job["static_configs"] = [{"targets": [t], "labels": dict(labels)} for t, labels in targets]
    return cfg


class PrometheusProcess:
    """A Prometheus server on a free loopback port, with its own config and data directory.

    Parameters
    ----------
    binary : str
        The ``prometheus`` executable.
    workdir : path
    targets : list of (str, dict)
        ``(host:port, labels)`` of the l1pca job (see :func:`derive_config`).
    interval : str
        Scrape and rule evaluation interval.
    """

    def __init__(self, binary, workdir, targets, *, interval="1s"):
        self.binary = binary
        self.workdir = Path(workdir)
        self.targets = list(targets)
        self.interval = interval
        self.proc: subprocess.Popen | None = None
        self.port = None
        self.log_path = self.workdir / "prometheus.log"
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0):
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(derive_config(self.targets, interval=self.interval)))
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        self.port = free_port()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
             "--storage.tsdb.retention.time=1h"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir)

        def ready():
            if self.proc.poll() is not None:
                return True
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    return resp.status == 200
            except (urllib.error.URLError, OSError):
                return False

        if not wait_until(ready, timeout_s, 0.1) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"prometheus did not become ready\n{self.log_tail()}")
        return self

    def api(self, path: str, **params):
        """GET /api/v1/<path>; the ``data`` of a successful answer."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError(f"GET {url}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list:
        """An instant query: ``[(labels, value)]`` of the resulting vector (or scalar)."""
        data = self.api("query", query=expr, time=at)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise RuntimeError(f"{expr!r} is a {data['resultType']}, not an instant vector")
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def value(self, expr: str, at: float | None = None) -> float:
        """The value of a query that must return exactly one sample."""
        result = self.query(expr, at)
        if len(result) != 1:
            raise AssertionError(f"{expr!r} returned {len(result)} samples, expected 1: {result}")
        return result[0][1]

    def alerts(self) -> list:
        """Active alerts (pending and firing): ``[{"labels", "annotations", "state", "value"}]``."""
        return self.api("alerts")["alerts"]

    def wait_scraped_after(self, t: float, timeout_s: float = 30.0, n_targets: int | None = None):
        """Wait until every target of the job has been scraped after wall-clock time ``t``."""
        want = len(self.targets) if n_targets is None else n_targets

        def done():
            res = self.query(f'timestamp(up{{job="{JOB}"}})')
            return len(res) >= want and all(v > t for _, v in res)

        if not wait_until(done, timeout_s, 0.2):
            raise TimeoutError(f"targets not scraped after t={t} within {timeout_s} s: "
                               f"{self.api('targets')}")

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


# -- command line -------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=1, help="l1pca servers to start (default 1)")
    parser.add_argument("--interval", default="5s", help="scrape and rule interval (default 5s)")
    parser.add_argument("serve_args", nargs=argparse.REMAINDER,
                        help="after --: extra flags of l1pca serve (e.g. -- --backend numpy)")
    args = parser.parse_args(argv)
    binary, why = ensure_tool("prometheus")
    if binary is None:
        raise SystemExit(why)
    extra = [a for a in args.serve_args if a != "--"]
    with tempfile.TemporaryDirectory(prefix="l1pca-loopback-") as tmp, contextlib.ExitStack() as stack:
        servers = [ServeProcess(*extra, workdir=tmp, name=f"l1pca-{i}").launch()
                   for i in range(args.servers)]
        for s in servers:
            stack.callback(s.stop)
        for s in servers:
            s.wait_serving()
        targets = [(f"127.0.0.1:{s.metrics_port}", {"namespace": "loopback", "pod": s.name,
                                                     "accelerator": "cpu"}) for s in servers]
        prom = stack.enter_context(PrometheusProcess(binary, Path(tmp) / "prometheus", targets,
                                                     interval=args.interval))
        print("gRPC target:", ",".join(s.target for s in servers))
        for s in servers:
            print(f"{s.name}: {s.metrics_url} (log {s.log_path})")
        print("Prometheus:", prom.url, "- Ctrl-C stops everything")
        try:
            while all(s.proc.poll() is None for s in servers) and prom.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
