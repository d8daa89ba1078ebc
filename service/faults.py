"""Fault injection, for tests only: make the solver fail the way a GPU, a bug or a hung worker
would, on a machine without any of them (``L1PCA_FAULT_INJECT``)."""
from __future__ import annotations

FAULT_INJECT_ENV = "L1PCA_FAULT_INJECT"
"""Tests only. Comma-separated: ``gpu_oom`` (every batch's first attempt fails like a GPU out of
memory), ``internal_seed=N`` (a solver call holding a request with seed N raises an unexpected
error), ``bug_seed=N`` (the same with a ``ValueError``, as a solver bug might raise: it must still
answer INTERNAL, not INVALID_ARGUMENT), ``hang_seed=N`` (a solver call holding a request with seed N
blocks until the server stops: a hung worker)."""

FAULTS = ("gpu_oom", "internal_seed", "bug_seed", "hang_seed")


class InjectedDeviceFault(RuntimeError):
    """Stands for a GPU failure (out of memory) in tests."""


def parse_fault_inject(spec: str | None):
    faults = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, _, value = part.partition("=")
        if name not in FAULTS:
            raise ValueError(f"{FAULT_INJECT_ENV}={spec!r}: unknown fault {name!r}")
        faults[name] = int(value) if value else True
    return faults


class FaultInjector:
    """The faults of :data:`FAULT_INJECT_ENV` for one server; :meth:`before_call` runs at the start of
    every solver attempt. ``released`` (an Event) ends an injected hang (set at shutdown)."""

    def __init__(self, spec: str | None, released):
        self.faults = parse_fault_inject(spec)
        self._released = released

    def __bool__(self):
        return bool(self.faults)

    def before_call(self, seeds, *, first_attempt: bool):
        if first_attempt and "gpu_oom" in self.faults:
            raise InjectedDeviceFault("out of memory allocating the batch (injected fault)")
        if "internal_seed" in self.faults and self.faults["internal_seed"] in seeds:
            raise RuntimeError("injected internal error")
        if "bug_seed" in self.faults and self.faults["bug_seed"] in seeds:
            # A solver bug that happens to raise ValueError: still the server's fault, not the caller's.
            raise ValueError("injected solver bug")
        if "hang_seed" in self.faults and self.faults["hang_seed"] in seeds:
            self._released.wait(3600.0)  # a hung worker, until the server stops (bounded)
            raise RuntimeError("injected hang ended")
