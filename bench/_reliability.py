"""Shared pieces of the reliability benchmarks (``bench/soak.py``, ``bench/overload.py``,
``bench/fuzz_soak.py``): a server in a child process, its RSS, percentiles, result files.

The server start/stop and the data pool are those of ``bench/service_load.py``.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_load import make_pool, scrape, start_server, stop_server  # noqa: E402,F401


def rss_mib(pid):
    """Resident set size of a process in MiB (Linux /proc), or NaN elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return float("nan")


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def pct(values, q):
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


def machine():
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "gpu": None}


def code_name(exc):
    """The gRPC status name of a client error (or the exception's type name)."""
    code = getattr(exc, "code", None)
    code = code() if callable(code) else code
    return getattr(code, "name", type(exc).__name__)


def write_json(name, data):
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True, default=float) + "\n")
    return path
