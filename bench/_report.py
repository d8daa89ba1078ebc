"""What the CPU benches ``solver_threads.py``, ``compaction.py`` and ``request_path.py`` share: the
machine they ran on, told the same way, and their results written as a ``.json`` / ``.md`` pair."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine() -> dict:
    """CPUs this process may run on (its affinity, which a container or ``taskset`` narrows),
    platform and Python version."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": cpus, "platform": platform.platform(), "python": platform.python_version()}


def machine_sentence(info: dict) -> str:
    """The report's opening words about the machine (these benches run on the CPU only)."""
    return f"Machine: {info['cpus']} CPUs, no GPU ({info['platform']}, Python {info['python']}). "


def write_results(out: str, result: dict, lines: list[str]):
    """``out.json`` (the raw runs) and ``out.md`` (the report, also printed)."""
    Path(out + ".json").write_text(json.dumps(result, indent=1))
    Path(out + ".md").write_text("\n".join(lines))
    print("\n".join(lines))
