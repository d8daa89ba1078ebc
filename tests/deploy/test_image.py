"""deploy/docker: the Dockerfiles, their locks, and the CPU image's Python environment built for real.

There is no container engine on the CI machines, so:

* always (``make test``): every file a Dockerfile COPYs exists and its .dockerignore keeps it; the
  final stage runs ``l1pca serve`` as a non-root user, binding 0.0.0.0 through the environment;
  the locks pin every dependency of pyproject.toml at an allowed version, and the CUDA lock uses the
  CPU lock's versions of the packages both share;
* with ``L1PCA_TEST_IMAGE=1`` (``make test-image``, which CI runs; a few minutes, ~700 MB):
  the build stage of Dockerfile.cpu is executed line by line on this machine (its ARG, ENV,
  WORKDIR, COPY and RUN, with /opt/l1pca and /src moved to a temporary directory), which installs
  exactly what the image installs; then the final stage's ENTRYPOINT runs from it with the final
  stage's ENV: ``--help``, and a server on the image defaults (JAX on the CPU, the warm-up
  compile, 0.0.0.0) that reports SERVING and drains on SIGTERM. The CUDA lock (several GB of
  wheels) is not installed: pip resolves it for the image's platform and must find exactly its
  own pins, nothing missing, nothing conflicting.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
sys.path.insert(0, str(DOCKER))

from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402

import lock  # noqa: E402
from l1pca.service.config import FLAGS  # noqa: E402
from l1pca.service.testing import ServeProcess  # noqa: E402

VARIANTS = ("cpu", "cuda")


# -- a small Dockerfile reader ------------------------------------------------------------------
def instructions(path):
    """``[(INSTRUCTION, argument text)]``: continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(path):
    """``[(name, [(INSTRUCTION, text)])]`` per FROM; global ARGs under name None."""
    result = [(None, [])]
    for ins, text in instructions(path):
        if ins == "FROM":
            parts = text.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            result.append((name, [(ins, text)]))
        else:
            result[-1][1].append((ins, text))
    return result


def expand(text, env):
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), text)


def env_pairs(text):
    """``ENV a=1 b="2 3"`` -> ``[("a", "1"), ("b", "2 3")]``."""
    return [tuple(tok.split("=", 1)) for tok in shlex.split(text)]


def copy_args(text):
    flags, rest = {}, []
    for tok in shlex.split(text):
        if tok.startswith("--"):
            key, _, value = tok[2:].partition("=")
            flags[key] = value
        else:
            rest.append(tok)
    return flags, rest[:-1], rest[-1]


def dockerignore(variant):
    lines = (DOCKER / f"Dockerfile.{variant}.dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(rel_path, patterns):
    """Whether ``rel_path`` (or a parent) matches a .dockerignore pattern (`**` = any depth)."""
    parts = Path(rel_path).parts
    for pattern in patterns:
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatch(prefix, pattern) or (pattern.startswith("**/") and
                                                    fnmatch.fnmatch(parts[i - 1], pattern[3:])):
                return True
    return False


def dockerfile(variant):
    return DOCKER / f"Dockerfile.{variant}"


def final_stage(variant):
    return stages(dockerfile(variant))[-1][1]


# -- always -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_copied_file_exists_and_is_in_the_context(variant):
    patterns = dockerignore(variant)
    copied = []
    for _name, body in stages(dockerfile(variant)):
        for ins, text in body:
            if ins in ("COPY", "ADD"):
                flags, sources, _dest = copy_args(text)
                if "from" in flags:
                    continue
                for src in sources:
                    path = ROOT / src
                    assert path.exists(), f"{dockerfile(variant).name}: COPY {src}: no such file"
                    assert not ignored(src.rstrip("/"), patterns), f"{src} is excluded by .dockerignore"
                    copied.append(src.rstrip("/"))
    # What the package build needs: pyproject.toml, its readme, and every package directory.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {d.split("/")[0] for d in project["tool"]["setuptools"]["package-dir"].values()}
    assert needed <= set(copied), f"not copied: {sorted(needed - set(copied))}"
    # And nothing under a copied directory that the build needs is filtered out.
    for d in (c for c in copied if (ROOT / c).is_dir()):
        for f in (ROOT / d).rglob("*.py"):
            rel = f.relative_to(ROOT).as_posix()
            assert "__pycache__" in rel or not ignored(rel, patterns), rel


@pytest.mark.parametrize("variant", VARIANTS)
def test_multi_stage_non_root_entrypoint_and_bind_address(variant):
    all_stages = stages(dockerfile(variant))
    assert len(all_stages) == 3 and all_stages[1][0] == "build"  # global ARGs, build, final
    final = dict((ins, text) for ins, text in final_stage(variant) if ins != "ENV")
    env = dict(kv for ins, text in final_stage(variant) if ins == "ENV" for kv in env_pairs(text))
    assert final["USER"] == "10001:10001"  # runAsUser in deploy/k8s
    assert json.loads(final["ENTRYPOINT"]) == ["l1pca", "serve"]
    assert env["L1PCA_HOST"] == "0.0.0.0" and env["L1PCA_METRICS_HOST"] == "0.0.0.0"
    defaults = {flag: default for flag, _t, default, _h in FLAGS}
    assert set(final["EXPOSE"].split()) == {defaults["--port"], defaults["--metrics-port"]}
    copies = [copy_args(text) for ins, text in final_stage(variant) if ins == "COPY"]
    assert [flags.get("from") for flags, *_ in copies] == ["build"]  # only the built environment
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["l1pca"] == "l1pca.client.cli:main"


@pytest.mark.parametrize("variant", VARIANTS)
def test_lock_pins_every_dependency_at_an_allowed_version(variant):
    target = lock.TARGETS[variant]
    pins = lock.parse_lock(lock.lock_path(variant))
    for spec in lock.project_requirements(target.extras):
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{variant} lock misses {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (spec, pins[name])
    text = dockerfile(variant).read_text()
    assert f"requirements-{variant}.txt" in text


def test_cuda_lock_follows_the_cpu_lock():
    cpu = lock.parse_lock(lock.lock_path("cpu"))
    cuda = lock.parse_lock(lock.lock_path("cuda"))
    assert set(cpu) <= set(cuda)
    assert {n: cuda[n] for n in cpu} == cpu  # same NumPy, JAX, SciPy... in both images
    assert {"cupy-cuda12x", "jax-cuda12-plugin"} <= set(cuda)


# -- make test-image ----------------------------------------------------------------------------
def run_build_stage(variant, venv, src, timeout_s=900):
    """Execute the build stage of the Dockerfile here, ``VENV``/``SRC`` pointing into tmp."""
    overrides = {"VENV": str(venv), "SRC": str(src)}
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
           # The interpreter the image's python3 is: the one running these tests, same version.
           "PYTHON": sys.executable}
    for key in ("PIP_CERT", "PIP_FIND_LINKS", "PIP_DEFAULT_TIMEOUT", "PIP_INDEX_URL",
                "PIP_EXTRA_INDEX_URL", "PIP_CONFIG_FILE", "SSL_CERT_FILE"):
        if key in os.environ:  # how this machine reaches the package index
            env[key] = os.environ[key]
    cwd = Path("/")
    [(name, body)] = [s for s in stages(dockerfile(variant)) if s[0] == "build"]
    patterns = dockerignore(variant)
    for ins, text in body[1:]:
        if ins == "ARG":
            key, _, default = text.partition("=")
            env[key] = overrides.get(key, expand(default, env))
        elif ins == "ENV":
            env.update((k, expand(v, env)) for k, v in env_pairs(text))
        elif ins == "WORKDIR":
            cwd = cwd / expand(text, env)
            cwd.mkdir(parents=True, exist_ok=True)
        elif ins == "COPY":
            flags, sources, dest = copy_args(expand(text, env))
            assert not flags, f"COPY {flags} in the build stage"
            dest_path = cwd / dest
            for src in sources:
                s = ROOT / src
                if s.is_dir():  # COPY dir/ dest/: the directory's content
                    shutil.copytree(s, dest_path, dirs_exist_ok=True, ignore=lambda d, names: [
                        n for n in names if ignored((Path(d) / n).relative_to(ROOT).as_posix(), patterns)])
                else:
                    target = dest_path / s.name if dest.endswith("/") or len(sources) > 1 else dest_path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(s, target)
        elif ins == "RUN":
            subprocess.run(["sh", "-c", text], cwd=cwd, env=env, check=True, timeout=timeout_s)
        else:
            raise AssertionError(f"the build stage uses {ins}, which this test cannot replay")


@pytest.mark.image  # only with L1PCA_TEST_IMAGE=1 (tests/conftest.py)
def test_cpu_image_environment_builds_and_serves(tmp_path):
    target = lock.TARGETS["cpu"]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != target.python_version:
        pytest.skip(f"the CPU image runs CPython {target.python_version}; this is {here}")
    venv, src = tmp_path / "opt" / "l1pca", tmp_path / "src"
    run_build_stage("cpu", venv, src)

    # The final stage: its ENV (PATH with the venv first), its ENTRYPOINT.
    env = {}
    for ins, text in final_stage("cpu"):
        if ins == "ENV":
            env.update((k, expand(v, {"VENV": str(venv), "PATH": os.environ["PATH"], **env}))
                       for k, v in env_pairs(text))
    entrypoint = json.loads(dict(final_stage("cpu"))["ENTRYPOINT"])
    program = shutil.which(entrypoint[0], path=env["PATH"])
    assert program == str(venv / "bin" / "l1pca")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("L1PCA_", "VIRTUAL_ENV"))}
    help_text = subprocess.run([program, *entrypoint[1:], "--help"], env={**clean, **env},
                               capture_output=True, text=True, timeout=120, check=True).stdout
    assert "--max-batch-size" in help_text and "L1PCA_HOST" in help_text

    # A server on the image's defaults (backend auto -> JAX on the CPU, warm-up compile; K=1 only,
    # to halve the compile time here), bound to 0.0.0.0 by the environment: SERVING, then a clean
    # drain on SIGTERM.
    server = ServeProcess("--warmup-components", "1", workdir=tmp_path, env=env,
                          command=[program, *entrypoint[1:]], loopback=False, name="image")
    try:
        server.start(timeout_s=240)
        log = server.log_tail()
        assert "gRPC on 0.0.0.0:" in log and "backend=jax" in log, log
        assert server.stop(signal.SIGTERM, timeout_s=60) == 0, server.log_tail()
    finally:
        server.stop(signal.SIGKILL)


@pytest.mark.image  # only with L1PCA_TEST_IMAGE=1 (tests/conftest.py)
def test_cuda_lock_resolves_to_exactly_its_pins():
    pins = lock.parse_lock(lock.lock_path("cuda"))
    resolved = lock.resolve([f"{n}=={v}" for n, v in pins.items()], lock.TARGETS["cuda"])
    assert resolved == pins  # nothing missing, nothing else pulled in, no conflict
