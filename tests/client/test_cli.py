"""The l1pca command line, run as a real subprocess on real data (scikit-learn's breast cancer set)."""
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from l1pca.client import Model
from l1pca.client.cli import ProgressBar, load_matrix
from l1pca.kernels import L1PCA


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "l1pca.client.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def cancer(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    X = load_breast_cancer().data
    np.save(d / "cancer.npy", X)
    header = ",".join(load_breast_cancer().feature_names)
    np.savetxt(d / "cancer.csv", X, delimiter=",", header=header, comments="")
    return d, X


@pytest.mark.slow
def test_fit_writes_components_projections_and_summary(cancer, tmp_path):
    d, X = cancer
    r = run_cli("fit", d / "cancer.npy", "-k", 2, "--seed", 3, "-o", tmp_path / "out", "--quiet")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    comps = np.load(out / "components.npy")
    proj = np.load(out / "projections.npy")
    summary = json.loads((out / "summary.json").read_text())
    est = L1PCA(2, random_state=3).fit(X)
    np.testing.assert_allclose(comps, est.components_, atol=1e-10)
    np.testing.assert_allclose(proj, est.transform(X), atol=1e-8)
    assert summary["n_samples"] == 569 and summary["n_features"] == 30 and summary["n_components"] == 2
    assert summary["objective"] == pytest.approx(est.objective_)
    assert summary["method"] == "bitflip" and summary["backend"] in ("numpy", "jax", "cupy")


def test_score_csv_with_header_and_saved_model(cancer, tmp_path):
    d, X = cancer
    r = run_cli("fit", d / "cancer.npy", "-k", 2, "--method", "non-greedy", "--center", "mean",
                "-o", tmp_path / "fit", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("score", d / "cancer.csv", "--model", tmp_path / "fit" / "model.npz", "-o", tmp_path / "sc")
    assert r.returncode == 0, r.stderr
    model = Model.load(tmp_path / "fit" / "model.npz")
    rows = (tmp_path / "sc" / "sample_scores.csv").read_text().splitlines()
    assert rows[0] == "index,score,outlier,worst_feature" and len(rows) == 570
    scores = np.array([float(row.split(",")[1]) for row in rows[1:]])
    np.testing.assert_allclose(scores, model.score_samples(X), rtol=1e-8)
    entries = np.load(tmp_path / "sc" / "entry_scores.npy")
    assert entries.shape == X.shape
    flags = np.array([int(row.split(",")[2]) for row in rows[1:]])
    np.testing.assert_array_equal(flags == 1, model.predict(X) == -1)
    summary = json.loads((tmp_path / "sc" / "summary.json").read_text())
    assert summary["n_outliers"] == int(flags.sum()) and summary["method"] == "non-greedy"


@pytest.mark.slow
def test_score_fits_when_no_model_given(cancer, tmp_path):
    d, X = cancer
    r = run_cli("score", d / "cancer.npy", "-k", 1, "--contamination", "0.05", "-o", tmp_path / "s",
                "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert abs(summary["n_outliers"] - 0.05 * 569) <= 2


@pytest.mark.parametrize("args,match", [
    (["fit", "missing.npy"], "no such file"),
    (["fit", "{d}/cancer.npy", "-k", "99"], "n_components=99"),
    (["score", "{d}/cancer.npy", "--contamination", "lots"], "--contamination='lots'"),
    (["fit", "{d}/cancer.npy", "--n-init", "0"], "n_init=0"),
])
def test_bad_input_exits_2_with_reason(cancer, tmp_path, args, match):
    d, _ = cancer
    r = run_cli(*[a.format(d=d) for a in args], "-o", tmp_path / "o")
    assert r.returncode == 2
    assert match in r.stderr and "Traceback" not in r.stderr


def test_unsupported_extension(tmp_path):
    p = tmp_path / "data.parquet"
    p.write_bytes(b"x")
    with pytest.raises(ValueError, match="expected a .npy or .csv"):
        load_matrix(p)


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("l1pca")
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "fit" in r.stdout and "score" in r.stdout


def test_progress_bar_draws_on_stderr():
    buf = io.StringIO()
    with ProgressBar("fit 10x3 K=1", stream=buf, delay_s=0.0) as bar:
        bar.update(1, 4)
        time.sleep(0.5)
        bar.update(4, 4)
    text = buf.getvalue()
    assert "fit 10x3 K=1 [" in text and "4/4 starts" in text and text.endswith("\n")
    quiet = io.StringIO()
    with ProgressBar("x", stream=quiet, delay_s=10.0) as bar:
        bar.update(1, 1)
    assert quiet.getvalue() == ""  # short fits draw nothing
