"""The l1pca command line, run as a real subprocess on real data (scikit-learn's breast cancer set)."""
import csv
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
from l1pca.client.cli import ProgressBar, load_matrix, main
from l1pca.kernels import L1PCA, InputError


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
    # `fit` does not scale by default, and `score --model` applies the model's (stored) scaling.
    assert json.loads((tmp_path / "fit" / "scaling.json").read_text())["method"] == "none"
    with open(tmp_path / "sc" / "sample_scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["row", "outlier_score", "sd", "od", "group", "outlier",
                             "worst_feature", "worst_z"] and len(rows) == 569
    scores = np.array([float(row["outlier_score"]) for row in rows])
    np.testing.assert_allclose(scores, model.outlier_scores(X), rtol=1e-8)
    np.testing.assert_allclose([float(row["od"]) for row in rows], model.score_samples(X), rtol=1e-8)
    entries = np.load(tmp_path / "sc" / "entry_scores.npy")
    np.testing.assert_allclose(entries, model.score_entries(X), rtol=1e-12)
    flags = np.array([int(row["outlier"]) for row in rows])
    np.testing.assert_array_equal(flags == 1, model.predict(X) == -1)
    # The CSV's header names the features (the model came from a .npy: matched by position).
    names = list(load_breast_cancer().feature_names)
    assert [row["worst_feature"] for row in rows] == [names[j] for j in entries.argmax(axis=1)]
    summary = json.loads((tmp_path / "sc" / "summary.json").read_text())
    assert summary["n_outliers"] == int(flags.sum()) and summary["method"] == "non-greedy"
    assert summary["scaling"] == "none" and summary["features"] == names


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


# -- one error story: the argument, the place, what was expected -----------------------------------
def test_a_1d_npy_exits_2_naming_the_shape(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(5.0))
    r = run_cli("fit", tmp_path / "v.npy", "-o", tmp_path / "o")
    assert r.returncode == 2, r.stderr
    assert "l1pca fit: error: DATA must be 2-D (n_samples, n_features); got 1-D array of shape (5,)" \
        in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("make,expected", [
    (lambda X: X, "DATA must be finite; found nan at row 5, column 3"),
    (lambda X: X.astype(np.float32), "DATA must be finite; found nan at row 5, column 3"),
])
def test_nan_in_data_is_located(tmp_path, capsys, make, expected):
    X = np.random.default_rng(0).normal(size=(20, 4))
    X[5, 3] = np.nan
    np.save(tmp_path / "x.npy", make(X))
    assert main(["fit", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    assert expected in capsys.readouterr().err
    with pytest.raises(InputError, match="DATA must be finite; found nan at row 5, column 3"):
        load_matrix(tmp_path / "x.npy")


def test_a_text_cell_in_a_csv_is_located(tmp_path, capsys):
    (tmp_path / "x.csv").write_text("a,b,c\n1,2,3\n4,5,6\n7,oops,9\n")
    assert main(["score", str(tmp_path / "x.csv"), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"l1pca score: error: DATA must hold numbers; found 'oops' at row 2, column 1 (line 4 of " \
           f"{tmp_path / 'x.csv'})" in err
    (tmp_path / "r.csv").write_text("1,2,3\n4,5\n")
    with pytest.raises(ValueError, match=r"same number of columns in every row; row 1 \(line 2 of"):
        load_matrix(tmp_path / "r.csv")
    (tmp_path / "h.csv").write_text("a,b\n")  # a header and no data
    with pytest.raises(ValueError, match="DATA must have at least one sample and one feature"):
        load_matrix(tmp_path / "h.csv")


def test_a_npy_that_is_not_an_array_exits_2(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match=r"DATA=.*x.npy': cannot read it as .npy"):
        load_matrix(tmp_path / "x.npy")
    np.save(tmp_path / "s.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(TypeError, match="DATA must hold real numbers"):
        load_matrix(tmp_path / "s.npy")


def test_model_that_is_not_a_model_file_exits_2(cancer, tmp_path):
    d, X = cancer
    r = run_cli("fit", d / "cancer.npy", "-k", 1, "-o", tmp_path / "out", "--quiet")
    assert r.returncode == 0, r.stderr
    comps = tmp_path / "out" / "components.npy"
    r = run_cli("score", d / "cancer.npy", "--model", comps, "-o", tmp_path / "s")
    assert r.returncode == 2
    assert (f"l1pca score: error: --model={str(comps)!r} is not a model file written by `l1pca fit` "
            "(model.npz): it is a .npy array") in r.stderr
    assert "Traceback" not in r.stderr and "context manager" not in r.stderr


def _bad_model_files(tmp_path):
    good = tmp_path / "model.npz"
    Model(components=np.eye(2, 3), center=np.zeros(3), threshold=1.0).save(good)
    meta = json.dumps({"threshold": 1.0, "method": "bitflip", "objective": 1.0, "n_samples": 4,
                       "backend": "numpy", "n_flips": 0, "converged": True})
    files = {
        "other.npz": (dict(a=np.eye(2)), "it lacks components, center, meta (it holds a)"),
        "json.npz": (dict(components=np.eye(2, 3), center=np.zeros(3), meta=np.array("{oops")),
                     "its contents are not valid (Expecting property name"),
        "keys.npz": (dict(components=np.eye(2, 3), center=np.zeros(3),
                          meta=np.array(json.dumps({"threshold": 1.0}))),
                     "its meta header lacks 'method'"),
        "shape.npz": (dict(components=np.eye(2, 3), center=np.zeros(2), meta=np.array(meta)),
                      "components must be (n_components, n_features) and center (n_features,)"),
    }
    for name, (arrays, _) in files.items():
        np.savez(tmp_path / name, **arrays)
    (tmp_path / "junk.npz").write_bytes(b"junk" * 10)
    cases = {name: reason for name, (_, reason) in files.items()}
    cases.update({"junk.npz": "it is not an .npz archive", "missing.npz": "no such file"})
    return good, cases


def test_model_load_refuses_what_fit_did_not_write(tmp_path, capsys):
    good, cases = _bad_model_files(tmp_path)
    assert Model.load(good).threshold == 1.0
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(10, 3)))
    for name, reason in cases.items():
        path = tmp_path / name
        with pytest.raises(InputError) as err:
            Model.load(path)
        assert str(err.value).startswith(f"path={str(path)!r} is not a model file written by "
                                         "`l1pca fit` (model.npz): "), err.value
        assert reason in str(err.value)
        assert main(["score", str(tmp_path / "x.npy"), "--model", str(path), "-o",
                     str(tmp_path / "o"), "--quiet"]) == 2
        assert f"--model={str(path)!r} is not a model file" in capsys.readouterr().err


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"l1pca {version('l1pca')}"
