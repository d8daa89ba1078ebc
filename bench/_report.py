"""The machine a service benchmark ran on, told the same way in every report
(``bench/service_load.py``)."""
from __future__ import annotations

import os
import platform


def cpu_model() -> str | None:
    """The processor's name from ``/proc/cpuinfo`` (None where there is none, as off Linux).

    Why it is recorded: the service benches' ratios move with the host. Sessions of this project
    ran on VMs of one kind whose hosts differed by 2x in speed (the canned server's throughput), and
    batching's gain at 64 clients fell from a median 3.00x on the slower to 2.57x on the faster
    (``docs/decisions/0007-batching-ratio-on-2-cores.md``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return None


def machine() -> dict:
    """CPUs this process may run on (its affinity, which a container or ``taskset`` narrows),
    the processor's name, platform and Python version."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": cpus, "cpu_model": cpu_model(), "platform": platform.platform(),
            "python": platform.python_version()}


def machine_sentence(info: dict, gpu: str | None = None) -> str:
    """The report's opening words about the machine (``gpu``: the device the server used, if any)."""
    model = f" ({info['cpu_model']})" if info.get("cpu_model") else ""
    return (f"Machine: {info['cpus']} CPUs{model}, {'GPU ' + gpu if gpu else 'no GPU'} "
            f"({info['platform']}, Python {info['python']}). ")
