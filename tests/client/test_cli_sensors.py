"""The CLI's sensor workflow (issue 28) on a real CSV: a header, a timestamp column, an id column, 8
sensors in different units and 6 planted faults. Every faulty row is flagged and its sensor named by
its header name, the suspicious cells are listed in the data's units, the plots are written, the
scaling is stored and applied again to new data, locally and over a loopback server."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from l1pca.client import Model
from l1pca.client.cli import main
from l1pca.client.tables import Scaling, read_table, select_columns
from l1pca.kernels import InputError

SENSORS = ["temperature", "pressure", "humidity", "flow", "vibration", "voltage", "current", "rpm"]
BASE = np.array([20.0, 1013.0, 50.0, 100.0, 0.5, 230.0, 10.0, 1500.0])
SPREAD = np.array([2.0, 5.0, 10.0, 20.0, 0.1, 2.0, 1.0, 50.0])
PLANTED = {40: "pressure", 85: "humidity", 130: "temperature", 170: "rpm", 210: "voltage",
           260: "flow"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sensor_rows(n, seed, *, faults=True):
    """Readings from two latent drivers in each sensor's own units, plus the planted faults: a
    pressure of 9999, humidity and rpm stuck at zero, offsets of 6-8 spreads on three others."""
    rng = np.random.default_rng(seed)
    L = np.random.default_rng(42).normal(size=(2, 8))  # the plant: the same in every file
    L /= np.linalg.norm(L, axis=0)
    X = BASE + SPREAD * (rng.normal(size=(n, 2)) @ L + 0.15 * rng.normal(size=(n, 8)))
    if faults:
        X[40, 1] = 9999.0
        X[85, 2] = 0.0
        X[130, 0] += 8 * SPREAD[0]
        X[170, 7] = 0.0
        X[210, 5] -= 8 * SPREAD[5]
        X[260, 3] += 6 * SPREAD[3]
    return X


def write_csv(path, X, *, order=None, first=0):
    order = list(range(8)) if order is None else order
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["timestamp", "unit_id", *[SENSORS[j] for j in order]])
        for i, row in enumerate(X):
            k = first + i
            out.writerow([f"2024-03-01T{k // 60:02d}:{k % 60:02d}:00", f"u{k:04d}",
                          *[f"{row[j]:.6g}" for j in order]])
    return path


@pytest.fixture(scope="module")
def sensors(tmp_path_factory):
    d = tmp_path_factory.mktemp("sensors")
    X = sensor_rows(300, 0)
    return write_csv(d / "sensors.csv", X), np.array([[float(f"{v:.6g}") for v in r] for r in X])


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "l1pca.client.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def read_scores(folder):
    with open(folder / "sample_scores.csv", newline="") as fh:
        return list(csv.DictReader(fh))


FLAGS = ("--drop", "timestamp", "--index-column", "unit_id", "--seed", "0")


@pytest.fixture(scope="module")
def scored(sensors, tmp_path_factory):
    path, _ = sensors
    out = tmp_path_factory.mktemp("scored")
    r = run_cli("score", path, *FLAGS, "-k", "auto", "-o", out / "out", "--plot", out / "plots")
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_every_planted_row_is_flagged_and_its_sensor_named(scored):
    out, _ = scored
    rows = {row["row"]: row for row in read_scores(out / "out")}
    assert len(rows) == 300 and "u0000" in rows  # labelled by the index column
    for i, sensor in PLANTED.items():
        row = rows[f"u{i:04d}"]
        assert row["outlier"] == "1", row
        assert row["worst_feature"] == sensor, row
        assert abs(float(row["worst_z"])) > 2.576
        assert float(row["outlier_score"]) > 1.0 and row["group"] != "regular"
    # Higher = more outlying: the 9999 reading tops the ranking.
    top = max(rows.values(), key=lambda row: float(row["outlier_score"]))
    assert top["row"] == "u0040"
    assert sum(row["outlier"] == "1" for row in rows.values()) < 0.15 * 300


def test_stdout_reports_k_and_the_suspicious_cells_in_raw_units(scored, sensors):
    out, stdout = scored
    summary = json.loads((out / "out" / "summary.json").read_text())
    K = summary["n_components"]
    assert f"K = {K} (chosen by -k auto)" in stdout and summary["n_components_requested"] == "auto"
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("row "))
    assert lines[head].split() == ["row", "feature", "value", "expected", "z", "row", "flagged"]
    table = [line.split() for line in lines[head + 1:head + 11]]
    assert len(table) == 10
    named = {(cells[0], cells[1]) for cells in table}
    assert {(f"u{i:04d}", s) for i, s in PLANTED.items()} <= named
    pressure = next(cells for cells in table if cells[:2] == ["u0040", "pressure"])
    assert float(pressure[2]) == 9999.0  # the raw value, not the scaled one
    assert 1000 < float(pressure[3]) < 1030  # expected: a normal pressure, in hPa
    rpm = next(cells for cells in table if cells[:2] == ["u0170", "rpm"])
    assert float(rpm[2]) == 0.0 and 1300 < float(rpm[3]) < 1700 and float(rpm[4]) < 0
    with open(out / "out" / "cells.csv", newline="") as fh:
        cells = list(csv.DictReader(fh))
    assert {(c["row"], c["feature"]) for c in cells} >= named


def test_summary_and_outputs_carry_the_new_model_fields(scored):
    out, _ = scored
    summary = json.loads((out / "out" / "summary.json").read_text())
    for key in ("sd_cutoff", "od_cutoff", "score_cutoff", "support_fraction", "cell_robust",
                "n_csteps"):
        assert key in summary, key
    assert summary["scaling"] == "robust" and summary["features"] == SENSORS
    assert summary["support_fraction"] == 0.75 and summary["cell_robust"] is True
    assert set(f"u{i:04d}" for i in PLANTED) <= set(summary["outliers"])
    assert "higher = more outlying" in summary["outlier_score"]
    scaling = json.loads((out / "out" / "scaling.json").read_text())
    assert scaling["method"] == "robust" and scaling["features"] == SENSORS
    assert np.load(out / "out" / "entry_scores.npy").shape == (300, 8)


def test_plots_are_written(scored):
    out, _ = scored
    for name in ("outlier_map.png", "cell_heatmap.png"):
        data = (out / "plots" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name


def test_plot_without_matplotlib_exits_2(sensors, tmp_path):
    path, _ = sensors
    fake = tmp_path / "site" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    import os

    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    r = run_cli("score", path, *FLAGS, "-o", tmp_path / "o", "--plot", tmp_path / "p", env=env)
    assert r.returncode == 2
    assert "l1pca score: error: --plot needs matplotlib: pip install 'l1pca[plot]'" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_a_text_column_stops_the_run_naming_it(sensors, tmp_path, capsys):
    path, _ = sensors
    assert main(["score", str(path), "--index-column", "unit_id", "-o", str(tmp_path / "o"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "DATA column 'timestamp' (column 0) holds text, e.g. '2024-03-01T00:00:00' at row 0 " \
           f"(line 2 of {path}); drop it with --drop timestamp or label the rows with it with " \
           "--index-column timestamp" in err
    assert main(["score", str(path), "--drop", "timestamp", "-o", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "DATA column 'unit_id' (column 1) holds text" in capsys.readouterr().err
    assert main(["score", str(path), *FLAGS, "--support-fraction", "0.2", "-o", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "--support-fraction=0.2 must be a number in [0.5, 1]" in capsys.readouterr().err


def test_score_model_applies_the_stored_scaling_to_new_data(scored, tmp_path):
    out, _ = scored
    # New readings from another shift, columns in another order: the model's columns are found by
    # name, and the stored scaling (not one computed on the new rows) is applied.
    Xnew = sensor_rows(50, 7, faults=False) + SPREAD * 1.5
    Xnew[5, 1] = 9999.0
    order = [7, 6, 5, 4, 3, 2, 1, 0]
    path = write_csv(tmp_path / "new.csv", Xnew, order=order, first=1000)
    r = run_cli("score", path, "--model", out / "out" / "model.npz", "--index-column", "unit_id",
                "-o", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    model = Model.load(out / "out" / "model.npz")
    stored = Scaling.load(out / "out" / "scaling.json")
    X = np.array([[float(f"{v:.6g}") for v in r] for r in Xnew])
    rows = read_scores(tmp_path / "s")
    np.testing.assert_allclose([float(row["outlier_score"]) for row in rows],
                               model.outlier_scores(stored.apply(X)), rtol=1e-8)
    assert rows[5]["row"] == "u1005" and rows[5]["outlier"] == "1"
    assert rows[5]["worst_feature"] == "pressure"
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["scaling"] == "robust" and summary["features"] == SENSORS
    assert not (tmp_path / "s" / "model.npz").exists()  # nothing was fitted
    r = run_cli("score", path, "--model", out / "out" / "model.npz", "--index-column", "unit_id",
                "--scale", "none", "-o", tmp_path / "s2")
    assert r.returncode == 2 and "was fitted with --scale robust" in r.stderr


def test_fit_reports_auto_k_and_stores_its_scaling(sensors, tmp_path):
    path, X = sensors
    assert main(["fit", str(path), *FLAGS, "-k", "auto", "--scale", "robust", "--support-fraction",
                 "1", "--no-cell-robust", "-o", str(tmp_path / "f"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["n_components_requested"] == "auto" and summary["n_components"] >= 1
    assert summary["support_fraction"] is None and summary["cell_robust"] is False
    scaling = Scaling.load(tmp_path / "f" / "scaling.json")
    np.testing.assert_allclose(scaling.center, np.median(X, axis=0))
    proj = np.load(tmp_path / "f" / "projections.npy")
    model = Model.load(tmp_path / "f" / "model.npz")
    np.testing.assert_allclose(proj, model.transform(scaling.apply(X)), atol=1e-10)


def test_the_sensor_workflow_over_a_loopback_server(server, sensors, tmp_path, capsys):
    path, _ = sensors
    common = [*FLAGS, "-k", "2", "--backend", "numpy", "--quiet"]
    assert main(["score", str(path), *common, "-o", str(tmp_path / "local")]) == 0
    assert main(["score", str(path), *common, "-o", str(tmp_path / "remote"),
                 "--server", server.target]) == 0
    assert (tmp_path / "local" / "sample_scores.csv").read_text() == \
        (tmp_path / "remote" / "sample_scores.csv").read_text()
    assert (tmp_path / "local" / "cells.csv").read_text() == \
        (tmp_path / "remote" / "cells.csv").read_text()
    rows = {row["row"]: row for row in read_scores(tmp_path / "remote")}
    for i, sensor in PLANTED.items():
        assert rows[f"u{i:04d}"]["outlier"] == "1" and rows[f"u{i:04d}"]["worst_feature"] == sensor
    # -k auto over the server, and the stored model scored over the server.
    assert main(["score", str(path), *FLAGS, "-k", "auto", "--server", server.target,
                 "-o", str(tmp_path / "auto")]) == 0
    K = json.loads((tmp_path / "auto" / "summary.json").read_text())["n_components"]
    assert f"K = {K} (chosen by -k auto)" in capsys.readouterr().out
    assert main(["score", str(path), "--index-column", "unit_id", "--server", server.target,
                 "--model", str(tmp_path / "local" / "model.npz"), "-o", str(tmp_path / "m"),
                 "--quiet"]) == 0
    assert (tmp_path / "m" / "sample_scores.csv").read_text() == \
        (tmp_path / "local" / "sample_scores.csv").read_text()


# -- the table reader ------------------------------------------------------------------------------
def test_columns_drop_and_index_by_name_or_position(sensors, tmp_path):
    path, X = sensors
    t = read_table(path, columns="pressure,4,rpm", index_column=1)  # 4: the file's 5th column
    assert t.features == ["pressure", "humidity", "rpm"] and t.rows[:2] == ["u0000", "u0001"]
    np.testing.assert_array_equal(t.values, X[:, [1, 2, 7]])
    t = read_table(path, drop="0,vibration", index_column="unit_id")
    assert t.features == [s for s in SENSORS if s != "vibration"]
    assert select_columns(["a", "b", "c"], drop="b") == ([0, 2], None)
    with pytest.raises(InputError, match="--columns='speed' is not a column of DATA; its columns are "
                                         "timestamp, unit_id, temperature"):
        read_table(path, columns="speed")
    with pytest.raises(InputError, match="--drop='12': DATA has columns 0 to 9"):
        read_table(path, drop="12", index_column="unit_id")


def test_a_headerless_csv_and_a_npy_get_generic_names(tmp_path):
    X = np.random.default_rng(0).normal(size=(30, 3))
    np.savetxt(tmp_path / "h.csv", X, delimiter=",")
    t = read_table(tmp_path / "h.csv")
    assert t.features == ["x0", "x1", "x2"] and t.rows[:3] == ["0", "1", "2"]
    np.save(tmp_path / "a.npy", np.column_stack([np.arange(30) + 100, X]))
    t = read_table(tmp_path / "a.npy", index_column=0)
    assert t.features == ["x1", "x2", "x3"] and t.rows[0] == "100"
    np.testing.assert_array_equal(t.values, X)
    assert main(["score", str(tmp_path / "h.csv"), "-o", str(tmp_path / "o"), "--quiet"]) == 0
    assert {row["worst_feature"] for row in read_scores(tmp_path / "o")} <= {"x0", "x1", "x2"}


def test_robust_scaling_survives_a_constant_column():
    from l1pca.client.tables import Table

    X = np.column_stack([np.r_[np.zeros(20), 1.0, 2.0], np.linspace(0, 1, 22), np.full(22, 3.0)])
    s = Scaling.fit("robust", Table(X, ["a", "b", "c"], [str(i) for i in range(22)]))
    assert (s.scale > 0).all() and s.scale[2] == 1.0
    np.testing.assert_allclose(s.undo(s.apply(X)), X)


def test_quotes_comments_and_ragged_rows(tmp_path):
    (tmp_path / "q.csv").write_text('# exported by the plant\nid,"a",b\n\n"r1",1.5,2\n"r2", 3,4 # note\n')
    t = read_table(tmp_path / "q.csv", index_column="id")
    assert t.features == ["a", "b"] and t.rows == ["r1", "r2"]
    np.testing.assert_array_equal(t.values, [[1.5, 2.0], [3.0, 4.0]])
    (tmp_path / "r.csv").write_text("a,b\n1,2\n3,4,5\n")  # a row longer than the header
    with pytest.raises(InputError, match=r"row 1 \(line 3 of .*\) has 3, the header has 2"):
        read_table(tmp_path / "r.csv")
