"""The paper-reproduction benchmarks keep running: every script in ``bench/paper`` in ``--quick`` mode,
into a temporary folder (the committed results are not touched), plus the two baselines that live
in ``bench/paper/baselines.py`` checked on problems with known answers."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PAPER = Path(__file__).resolve().parents[2] / "bench" / "paper"
SCRIPTS = {
    "optimality": ["paper_optimality.md", "paper_optimality_hits.png", "paper_optimality_cost.png"],
    "subspace_recovery": ["paper_subspace_recovery.md", "paper_subspace_recovery.png",
                          "paper_subspace_magnitude.png"],
    "classification": ["paper_classification.md", "paper_classification.png"],
    "fault_detection": ["paper_fault_detection.md", "paper_fault_detection.png",
                        "paper_fault_detection_fraction.png"],
}

pytest.importorskip("matplotlib", reason="the benchmarks draw figures with matplotlib (bench extra)")


@pytest.fixture(scope="module")
def baselines():
    sys.path.insert(0, str(PAPER))
    try:
        import baselines as mod
        yield mod
    finally:
        sys.path.remove(str(PAPER))


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Run every script with --quick at once (they are single-threaded), each into its own folder."""
    if importlib.util.find_spec("cvxpy") is None:
        pytest.skip("the SDP baseline of optimality.py needs cvxpy (bench extra)")
    procs = {}
    for name in SCRIPTS:
        out = tmp_path_factory.mktemp(name)
        cmd = [sys.executable, str(PAPER / f"{name}.py"), "--quick", "--out", str(out)]
        procs[name] = (out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True))
    runs = {}
    for name, (out, proc) in procs.items():
        try:
            _, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        runs[name] = (out, proc.returncode, err)
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_quick(name, quick_runs):
    out, returncode, err = quick_runs[name]
    assert returncode == 0, err[-3000:]
    for fname in SCRIPTS[name]:
        assert (out / fname).stat().st_size > 0, fname
    report = (out / SCRIPTS[name][0]).read_text()
    assert "## Set-up" in report and "root seed" in report and "versions:" in report
    assert " nan" not in report.lower()
    if name == "optimality":  # no method may beat the exact oracle
        assert "more than 1e-9 relative: **0**" in report


def test_pcp_recovers_low_rank_plus_sparse(baselines):
    """Candès et al.'s regime: rank 4, 5% gross sparse errors; PCP recovers L0 to high accuracy."""
    rng = np.random.default_rng(0)
    L0 = rng.standard_normal((100, 4)) @ rng.standard_normal((4, 80))
    S0 = np.where(rng.random(L0.shape) < 0.05, rng.choice([-10.0, 10.0], L0.shape), 0.0)
    L, S, n_iter, converged = baselines.pcp(L0 + S0)
    assert converged
    assert np.linalg.norm(L - L0) <= 1e-5 * np.linalg.norm(L0)
    assert np.linalg.norm(S - S0) <= 1e-5 * np.linalg.norm(S0)


def test_sdp_rounding_is_feasible_and_near_optimal(baselines):
    pytest.importorskip("cvxpy", reason="the SDP baseline needs cvxpy (bench extra)")
    from l1pca.kernels import solve

    rng = np.random.default_rng(1)
    X = rng.standard_normal((10, 3))
    Q = baselines.sdp_l1pca(X, 1, rng)
    assert np.allclose(Q.T @ Q, np.eye(1))
    opt = solve(X, 1, method="exact").objective
    assert 0.9 * opt <= np.abs(X @ Q).sum() <= opt * (1 + 1e-9)
    Q2 = baselines.sdp_l1pca(X, 2, rng)
    assert np.allclose(Q2.T @ Q2, np.eye(2), atol=1e-10)
