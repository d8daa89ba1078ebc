"""bench/gpu_check.sh on the CPU: without a GPU it skips with its reason and exits 0; its dry run
prints the plan for a GPU and runs nothing."""
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def run(*args, env_extra, timeout=60):
    env = {**os.environ, **env_extra}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=str(ROOT))


@pytest.mark.parametrize("args", [(), ("--dry-run",)])
def test_no_gpu_skips_with_the_reason_and_exits_0(args):
    proc = run(*args, env_extra={"NVIDIA_SMI": "nvidia-smi-not-installed-here"})
    assert proc.returncode == 0, proc.stderr
    assert ("no NVIDIA GPU visible (nvidia-smi-not-installed-here not found): skipping the GPU tests"
            in proc.stdout)
    assert "step" not in proc.stdout  # nothing planned, nothing run


def test_nvidia_smi_listing_no_gpu_skips(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nexit 9\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    proc = run("--dry-run", env_extra={"NVIDIA_SMI": str(fake)})
    assert proc.returncode == 0
    assert "no NVIDIA GPU visible" in proc.stdout and "lists none" in proc.stdout


def test_dry_run_with_a_gpu_prints_the_plan_and_runs_nothing(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\necho "NVIDIA H100 80GB HBM3"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    before = sorted(p.name for p in (ROOT / "bench" / "results").iterdir())
    proc = run("--dry-run", env_extra={"NVIDIA_SMI": str(fake), "PYTHON": "false"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "device 'NVIDIA H100 80GB HBM3' (files named 'nvidia_h100_80gb_hbm3')" in out
    for step in ("pytest", "solver_speed", "small_fits", "service_mixed"):
        assert f"step {step}" in out
    assert "-m pytest -q -m gpu" in out
    assert "bench/solver_speed.py --preset gpu" in out
    assert "solver_speed_gpu_nvidia_h100_80gb_hbm3.md" in out
    assert "service_mixed_gpu_nvidia_h100_80gb_hbm3" in out
    assert "dry run, nothing was run" in out
    assert sorted(p.name for p in (ROOT / "bench" / "results").iterdir()) == before


def test_unknown_argument_is_refused():
    proc = run("--fast", env_extra={"NVIDIA_SMI": "nvidia-smi-not-installed-here"})
    assert proc.returncode == 2
    assert "unknown argument '--fast'" in proc.stderr
