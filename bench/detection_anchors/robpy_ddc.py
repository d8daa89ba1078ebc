"""Anchor for ``bench/detection.py``: robpy's DDC (Rousseeuw & Van den Bossche 2018, Detecting
Deviating Cells), run in robpy's own virtual environment (robpy pins scikit-learn < 1.7, older than
the project's).

    <venv>/bin/python robpy_ddc.py MANIFEST OUTDIR

MANIFEST: one line per matrix, ``id<TAB>path to a .npy file (n, d)``. For each, writes
``OUTDIR/<id>.npz`` with ``residuals`` (n, d; DDC's standardised cell residuals, NaN where DDC
gives none), ``cell_flags`` (n, d; bool), ``row_score`` (n; DDC's standardised row statistic,
higher = more outlying), ``row_flags`` (n; bool) and ``time_s`` (the fit's wall time), or
``error`` (a message) when the fit fails. DDC runs with its defaults (chi2 quantile 0.99, minimum
correlation 0.5).
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from robpy.outliers import DDC
from scipy.stats import chi2


def row_statistic(ddc, residuals):
    """DDC's row statistic before its cutoff: the mean over a row's cells of chi2_1's CDF at the
    squared standardised residual, standardised by a robust location and scale over the rows (the
    quantity ``DDC._rowwise_outliers`` compares with its cutoff)."""
    raw = np.nanmean(chi2.cdf(residuals ** 2, df=1), axis=1)
    return (raw - ddc.t_scale_est.location) / ddc.t_scale_est.scale


def main(argv):
    manifest, out = Path(argv[1]), Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        case_id, path = line.split("\t")
        X = np.load(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                ddc = DDC().fit(pd.DataFrame(X))
                elapsed = time.perf_counter() - t0
            res = np.asarray(ddc.standardized_residuals_, dtype=np.float64)
            np.savez(out / f"{case_id}.npz", residuals=res,
                     cell_flags=np.asarray(ddc.cellwise_outliers_, dtype=bool),
                     row_score=row_statistic(ddc, res),
                     row_flags=np.asarray(ddc.row_outliers_, dtype=bool), time_s=elapsed)
        except Exception as exc:  # one failed fit must not lose the others' results
            np.savez(out / f"{case_id}.npz", error=f"{type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
