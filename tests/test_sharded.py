"""The sharded L1-BF on 1, 2, 4 and 8 simulated CPU devices (a subprocess with XLA_FLAGS)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
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

    est = L1PCA(2, center="mean", random_state=0).fit(X)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "components.npy"), est.components_, atol=1e-9)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "projections.npy"), est.transform(X), atol=1e-7)
    assert summary["threshold"] == pytest.approx(est.threshold_, rel=1e-9)
