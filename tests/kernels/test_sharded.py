"""The sharded L1-BF on 1, 2, 4 and 8 simulated CPU devices (a subprocess with XLA_FLAGS)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Every test here runs JAX in child processes (simulated devices): 5-50 s each.
pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
FLAGS = "--xla_force_host_platform_device_count=8"


def _run(args, **kw):
    env = dict(os.environ, XLA_FLAGS=FLAGS, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env, **kw)


@pytest.fixture(scope="module")
def report():
    r = _run([HERE / "sharded_worker.py"])
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_eight_simulated_devices(report):
    assert report["n_devices"] == 8


def test_same_end_point_on_1_2_4_8_devices(report):
    assert len(report["cases"]) == 3 * 4
    for case in report["cases"]:
        assert case["backend"] == "jax"
        assert case["same_signs"], case
        assert case["objective_diff"] < 1e-12, case
        assert case["components_diff"] < 1e-9, case
        assert case["flips"][0] == case["flips"][1], case


def test_streamed_and_presharded_inputs(report):
    assert report["memmap_same"] and report["jax_array_same"]
    assert "X must be finite" in report["nan_error"] and "row 700" in report["nan_error"]


def test_three_collectives_per_flip(report):
    # pmax of the best gain, pmin of the lowest tied index, psum of the chosen sample.
    assert report["collectives"] == {"pmax": 1, "pmin": 1, "psum": 1}


def test_refusals(report):
    assert "n_samples >= n_features" in report["wide"]
    assert "method must be 'bitflip'" in report["method"]


def test_cli_devices_all_on_a_memory_mapped_file(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2000, 5)) @ np.diag([4.0, 2.0, 1.0, 0.5, 0.2]) + 1.0
    X[:20] += 30.0
    np.save(tmp_path / "big.npy", X)
    r = _run(["-m", "l1pca.client.cli", "fit", tmp_path / "big.npy", "-k", 2, "--devices", "all",
              "--center", "mean", "-o", tmp_path / "out", "--quiet"])
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["backend"] == "jax" and summary["n_samples"] == 2000
    from l1pca.kernels import L1PCA

    # --devices fits the plain problem (the detector's steps need the matrix in memory).
    est = L1PCA(2, center="mean", random_state=0, support_fraction=None, cell_robust=False).fit(X)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "components.npy"), est.components_, atol=1e-9)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "projections.npy"), est.transform(X), atol=1e-7)
    assert summary["threshold"] == pytest.approx(est.threshold_, rel=1e-9)


def test_two_process_job_on_loopback(tmp_path):
    """Multi-host as a Kubernetes indexed Job runs it: two processes of two devices each, joined by
    jax.distributed over loopback; the answer equals the single-process fit."""
    import socket

    rng = np.random.default_rng(5)
    X = rng.standard_normal((3001, 6))
    X[:30] += 20.0
    np.save(tmp_path / "x.npy", X)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               L1PCA_COORDINATOR=f"127.0.0.1:{port}", L1PCA_NUM_PROCESSES="2")
    cmd = [sys.executable, "-m", "l1pca.client.cli", "fit", str(tmp_path / "x.npy"), "-k", "2",
           "--devices", "all", "--distributed", "--center", "mean", "-o", str(tmp_path / "out"), "--quiet"]
    procs = [subprocess.Popen(cmd, env=dict(env, JOB_COMPLETION_INDEX=str(i)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (1, 0)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    from l1pca.kernels import L1PCA

    est = L1PCA(2, center="mean", random_state=0, support_fraction=None, cell_robust=False).fit(X)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "components.npy"), est.components_, atol=1e-9)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["objective"] == pytest.approx(est.objective_, rel=1e-12)


def test_service_routes_large_fits_to_the_sharded_solver(serve_process):
    """`l1pca serve --sharded-min-rows`: a Fit above the size runs on the device mesh (4 simulated
    devices here), below it on the batched path; both equal a local fit."""
    from l1pca.client import Client
    from l1pca.kernels.fitting import fit_many
    from l1pca.service.testing import scrape, value

    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    srv = serve_process("--backend", "jax", "--sharded-min-rows", "600", env=env, timeout_s=120)
    proc, port, metrics_port = srv.proc, srv.port, srv.metrics_port
    try:
        rng = np.random.default_rng(8)
        big, small = rng.standard_normal((900, 6)), rng.standard_normal((100, 6))
        with Client(f"127.0.0.1:{port}", timeout_s=120) as client:
            got_big = client.fit(big, 2, seed=3)
            got_small = client.fit(small, 2, seed=3)
        assert value(scrape(metrics_port), "l1pca_sharded_fits_total") == 1
        # The sharded solver fits the plain problem (the model says so); the batched path the
        # detector's robust fit.
        assert got_big.support_fraction is None and not got_big.cell_robust
        for X, got, plain in ((big, got_big, True), (small, got_small, False)):
            options = dict(support_fraction=None, cell_robust=False) if plain else {}
            ref = fit_many([X], 2, seeds=[3], backend="numpy", **options)[0]
            np.testing.assert_allclose(got.components, ref.components, atol=1e-9)
            assert got.objective == pytest.approx(ref.objective, rel=1e-12)
    finally:
        proc.terminate()
        assert proc.wait(60) == 0


def test_the_sharded_benchmark_runs_in_quick_mode(tmp_path):
    """bench/sharded.py --quick, so the benchmark never falls behind the solver's internals."""
    out = tmp_path / "sharded.md"
    r = _run([ROOT / "bench" / "sharded.py", "--quick", "--out", out])
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "| 1 | 2 | True |" in text  # same signs on 2 devices as on one
    assert "Collectives per flip step" in text and "memory" in text.lower()
