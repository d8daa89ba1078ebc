"""``bench/detection.py`` keeps running: its ``--quick`` configuration end to end into a temporary
folder (the committed results are not touched), once with whatever anchors this machine has (R's
rrcov, robpy's venv) and once with both skipped as on a machine without them; and its PASS/MISS rule
on rows made by hand."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPT = BENCH / "detection.py"

pytest.importorskip("matplotlib", reason="the benchmark draws figures with matplotlib (bench extra)")


@pytest.fixture(scope="module")
def detection():
    sys.path.insert(0, str(BENCH))
    try:
        import detection as mod
        yield mod
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Both runs at once (each is single-threaded): "present" with the anchors this machine has,
    never creating robpy's venv; "skipped" with R off the PATH and robpy turned off."""
    runs = {}
    no_r_path = tmp_path_factory.mktemp("empty-path")
    for name, flags, env in (("present", ["--no-install"], None),
                             ("skipped", ["--no-robpy"], {**os.environ, "PATH": str(no_r_path)})):
        out = tmp_path_factory.mktemp(name)
        proc = subprocess.Popen([sys.executable, str(SCRIPT), "--quick", "--out", str(out), *flags],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        runs[name] = (out, proc)
    results = {}
    for name, (out, proc) in runs.items():
        try:
            stdout, stderr = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        results[name] = (out, proc.returncode, stdout, stderr)
    return results


def detection_table(report):
    """Header and rows of the report's detection table."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## Detection table"))
    first = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("|"))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append(line)
    header = [c.strip() for c in table[0].strip("|").split("|")]
    return header, [[c.strip() for c in row.strip("|").split("|")] for row in table[2:]]


@pytest.mark.slow
@pytest.mark.parametrize("run", ["present", "skipped"])
def test_quick_run_writes_the_report(run, quick_runs, detection):
    out, returncode, stdout, stderr = quick_runs[run]
    assert returncode == 0, stderr[-3000:]
    for fname in ("detection.md", "detection.json", "detection_auc.png"):
        assert (out / fname).stat().st_size > 0, fname
    report = (out / "detection.md").read_text()
    assert "## Set-up" in report and "root seed" in report and "## Verdict" in report
    header, rows = detection_table(report)
    must = ["data", "fault", detection.OURS, detection.PLAIN, detection.EE, detection.LOF,
            detection.IFOREST, detection.L2, "best anchor", "target"]
    assert all(col in header for col in must), header
    assert rows and all(len(r) == len(header) for r in rows)
    assert all(r[-1] == "PASS" or r[-1].startswith("MISS: ") for r in rows)
    ours = [float(r[header.index(detection.OURS)].strip("*")) for r in rows]
    assert all(0.0 <= a <= 1.0 for a in ours)
    data = json.loads((out / "detection.json").read_text())
    assert {r["fault"] for r in data["rows"]} >= {"clean", "cell offset"}
    if run == "skipped":
        assert "R anchors skipped: Rscript not found" in stderr
        assert "DDC skipped" in stderr
        assert detection.ROBPCA not in header and detection.DDC not in header
    elif "R anchors: rrcov" in stderr:  # this machine has R and rrcov
        assert detection.ROBPCA in header and detection.GRID in header
        assert any(r[0].startswith("starsCYG") for r in rows)


def _row(auc, *, n_outliers=5, recall=None, fpr=None, locate=None, ratio=1.0, ours="L1PCA (default)"):
    metrics = {"auc": auc, "recall": recall or {}, "fpr": fpr or {}, "locate": locate or {}}
    return {"metrics": metrics, "n_outliers": n_outliers, "robust_over_plain": ratio}


def test_verdict_applies_each_target(detection):
    d = detection
    assert d.verdict(_row({d.OURS: 0.95, d.ROBPCA: 0.955})) == "PASS"  # within 0.01
    miss = d.verdict(_row({d.OURS: 0.95, d.ROBPCA: 0.97, d.LOF: 0.90}))
    assert miss.startswith("MISS: AUC 0.950 < ROBPCA")
    assert "cell named" in d.verdict(_row({}, locate={d.OURS: 90.0, d.DDC: 93.0}))
    assert d.verdict(_row({}, locate={d.OURS: 91.5, d.DDC: 93.0})) == "PASS"
    assert "recall 0.80" in d.verdict(_row({}, recall={d.OURS: 0.8, d.GRID: 0.95}))
    assert d.verdict(_row({}, recall={d.OURS: 0.8, d.GRID: 0.85})) == "PASS"  # no anchor reaches 0.9
    assert "clean FPR 6.0%" in d.verdict(_row({}, n_outliers=0, fpr={d.OURS: 0.06}))
    assert d.verdict(_row({}, n_outliers=3, fpr={d.OURS: 0.06})) == "PASS"  # only clean rows count
    assert "fit 6.0x plain" in d.verdict(_row({}, ratio=6.0))


def test_combined_score_matches_our_outlier_map(detection):
    """rrcov's fits are ranked by the score our outlier map uses; an exact fit (OD cutoff 0) ranks by SD."""
    import numpy as np

    sd, od = np.array([1.0, 3.0, 0.5]), np.array([0.2, 0.1, 2.0])
    assert np.allclose(detection.combined_score(sd, od, 2.0, 1.0), [0.5, 1.5, 2.0])
    assert np.allclose(detection.combined_score(sd, od, 2.0, 0.0), sd / 2.0)
