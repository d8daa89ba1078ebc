"""Lock the images' Python environments: deploy/docker/requirements-{cpu,cuda}.txt.

    python deploy/docker/lock.py            # both locks
    python deploy/docker/lock.py cuda       # one

Each lock is the full set of wheels that pip resolves for the project's dependencies in
``pyproject.toml`` (plus the ``gpu`` extra for the CUDA image), for the image's interpreter and
platform (:data:`TARGETS`), pinned with ``==``. The Dockerfiles install a lock with ``--no-deps``
(deploy/docker/install.sh), so an image gets exactly these versions. Resolution uses
``pip install --dry-run --report`` for the target platform: nothing is installed here.

The CUDA lock is constrained to the CPU lock's versions of every package both use (NumPy, JAX,
SciPy, ...), so both images compute with the same library versions and a CPU fallback answers as
the CPU image would.

Re-run after changing the dependencies in ``pyproject.toml``; tests/deploy/test_image.py checks that
every dependency is pinned at a version its specifier allows, and (``make test-image``) that the CPU
lock installs and runs and the CUDA lock resolves to itself.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import NamedTuple

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


class Target(NamedTuple):
    python_version: str  # of the image's interpreter
    platforms: tuple  # wheel platform tags the image accepts
    extras: tuple  # extras of the l1pca project included


_MANYLINUX = ("manylinux_2_36_x86_64", "manylinux_2_35_x86_64", "manylinux_2_34_x86_64",
              "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
              "manylinux2014_x86_64", "manylinux_2_12_x86_64", "manylinux2010_x86_64")

TARGETS = {
    # python:3.11-slim-bookworm: CPython 3.11, glibc 2.36.
    "cpu": Target("3.11", _MANYLINUX, ()),
    # nvidia/cuda:12.x-runtime-ubuntu24.04: CPython 3.12, glibc 2.39.
    "cuda": Target("3.12", ("manylinux_2_39_x86_64", "manylinux_2_38_x86_64",
                            "manylinux_2_37_x86_64") + _MANYLINUX, ("gpu",)),
}


def lock_path(variant: str) -> Path:
    return HERE / f"requirements-{variant}.txt"


def project_requirements(extras=()):
    """The project's dependency specifiers (``[project.dependencies]`` plus ``extras``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return reqs


def parse_lock(path) -> dict:
    """``{canonical name: version}`` of a lock file's ``name==version`` lines."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        if len(spec) != 1 or spec[0].operator != "==":
            raise ValueError(f"{path}: {line!r} is not pinned with ==")
        pins[canonicalize_name(req.name)] = spec[0].version
    return pins


def pip_target_args(target: Target):
    """pip options that resolve for the image's interpreter and platform instead of this one."""
    args = ["--only-binary=:all:", "--python-version", target.python_version,
            "--implementation", "cp", "--abi", "cp" + target.python_version.replace(".", "")]
    for platform in target.platforms:
        args += ["--platform", platform]
    return args


def resolve(requirements, target: Target, *, constraints=None, no_deps=False, timeout_s=900) -> dict:
    """``{canonical name: version}`` that pip would install for ``requirements`` on ``target``.

    ``constraints``: ``{name: version}`` pins applied to whichever of those packages get resolved.
    """
    with tempfile.TemporaryDirectory() as tmp:
        req_file = Path(tmp) / "requirements.in"
        req_file.write_text("\n".join(requirements) + "\n")
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--disable-pip-version-check", "--target", str(Path(tmp) / "target"),
               "--report", str(report), *pip_target_args(target), "-r", str(req_file)]
        if constraints:
            con_file = Path(tmp) / "constraints.txt"
            con_file.write_text("".join(f"{n}=={v}\n" for n, v in sorted(constraints.items())))
            cmd += ["-c", str(con_file)]
        if no_deps:
            cmd.append("--no-deps")
        subprocess.run(cmd, check=True, timeout=timeout_s)
        installs = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def write_lock(variant: str) -> Path:
    target = TARGETS[variant]
    constraints = parse_lock(lock_path("cpu")) if variant != "cpu" else None
    pins = resolve(project_requirements(target.extras), target, constraints=constraints)
    pins.pop("l1pca", None)
    header = (f"# Lock of the {variant} image's Python environment (CPython {target.python_version}, "
              f"manylinux x86_64).\n"
              f"# Generated by `python deploy/docker/lock.py {variant}` from pyproject.toml; "
              f"do not edit by hand.\n")
    path = lock_path(variant)
    path.write_text(header + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins)))
    return path


def main(argv=None):
    variants = (argv if argv is not None else sys.argv[1:]) or list(TARGETS)  # cpu first: cuda follows it
    for variant in variants:
        if variant not in TARGETS:
            raise SystemExit(f"unknown variant {variant!r}; expected one of {', '.join(TARGETS)}")
        print(f"wrote {write_lock(variant).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
