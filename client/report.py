"""What ``l1pca score`` reports: the detection of every row and cell (:class:`Detection`), written as
``sample_scores.csv`` and ``cells.csv`` and shown on stdout as a short table of the most suspicious
cells, in the data's own units and names.

Every score here is higher = more outlying (PyOD's convention): the outlier score is
``max(SD / sd_cutoff, OD / od_cutoff)``, above the model's ``score_cutoff`` (1.0 by default) for a
flagged row; ``z`` is a cell's standardised residual (its residual over a robust scale of its
feature's training residuals), ``|z|`` above :data:`l1pca.kernels.detection.CELL_CUTOFF` for a
flagged cell.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np

from l1pca.kernels.detection import CELL_CUTOFF
from l1pca.kernels.scoring import GROUPS


@dataclass(frozen=True)
class Detection:
    """Per row: ``od``, ``sd`` and ``group`` (None without the outlier map), ``score`` (the outlier
    score) and ``flagged``; per cell: signed ``z``, ``cell_flags`` (None for a model without
    residual scales) and ``expected`` (in the units the model saw)."""

    od: np.ndarray
    sd: np.ndarray | None
    group: np.ndarray | None
    score: np.ndarray
    flagged: np.ndarray
    z: np.ndarray
    cell_flags: np.ndarray | None
    expected: np.ndarray

    @property
    def worst(self):
        """Each row's feature with the largest |z|."""
        return np.abs(self.z).argmax(axis=1)


def detect(model, Xs, answer=None):
    """The :class:`Detection` of the (scaled) rows ``Xs`` under ``model``. ``answer`` (a server's
    :class:`~l1pca.client.OutlierScores` for the same rows) supplies the row scores and flags;
    the signed residuals and expected values are computed here from the model (the wire carries
    ``|z|``)."""
    cells = model.cells(Xs)
    expected = model.expected(Xs)
    cell_flags = cells.flags if model.residual_scale is not None else None
    if answer is not None:
        score = answer.outlier_score if answer.outlier_score is not None else model.outlier_scores(Xs)
        if answer.cell_flags is not None:
            cell_flags = answer.cell_flags
        return Detection(answer.od, answer.sd, answer.group, score, answer.is_outlier, cells.z,
                         cell_flags, expected)
    if model.has_outlier_map:
        om = model.outlier_map(Xs)
        od, sd, group, score = om.od, om.sd, om.group, om.score
    else:
        od, sd, group, score = model.score_samples(Xs), None, None, model.outlier_scores(Xs)
    return Detection(od, sd, group, score, score > model.score_cutoff, cells.z, cell_flags, expected)


def write_sample_scores(path, det: Detection, *, rows, features):
    """``sample_scores.csv``: row label, outlier score, SD, OD, group, outlier flag (0/1), the worst
    feature's name and its z (empty SD and group for a model without the outlier map)."""
    worst = det.worst
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["row", "outlier_score", "sd", "od", "group", "outlier", "worst_feature",
                      "worst_z"])
        for i in range(len(rows)):
            out.writerow([rows[i], f"{det.score[i]:.10g}",
                          "" if det.sd is None else f"{det.sd[i]:.10g}", f"{det.od[i]:.10g}",
                          "" if det.group is None else GROUPS[det.group[i]], int(det.flagged[i]),
                          features[worst[i]], f"{det.z[i, worst[i]]:.6g}"])


def suspicious_cells(det: Detection, X, expected, *, rows, features, top=None):
    """The flagged cells (``|z|`` over the cutoff; for a model without residual scales, every
    cell), the largest ``|z|`` first: ``(row label, feature, value, expected, z, row flagged)``
    with ``value`` / ``expected`` in the data's own units."""
    mask = det.cell_flags if det.cell_flags is not None else np.ones(det.z.shape, dtype=bool)
    ii, jj = np.nonzero(mask)
    order = np.argsort(-np.abs(det.z[ii, jj]), kind="stable")
    if top is not None:
        order = order[:top]
    return [(rows[ii[k]], features[jj[k]], float(X[ii[k], jj[k]]), float(expected[ii[k], jj[k]]),
             float(det.z[ii[k], jj[k]]), bool(det.flagged[ii[k]])) for k in order]


def write_cells(path, cells):
    """``cells.csv``: every flagged cell (:func:`suspicious_cells`)."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["row", "feature", "value", "expected", "z", "row_outlier"])
        for row, feature, value, expected, z, flagged in cells:
            out.writerow([row, feature, f"{value:.10g}", f"{expected:.10g}", f"{z:.6g}", int(flagged)])


def format_cells(cells, *, total):
    """The stdout table of :func:`suspicious_cells` (``total``: how many cells are flagged)."""
    if not cells:
        return f"no cell has |z| > {CELL_CUTOFF:.3f}"
    head = ("row", "feature", "value", "expected", "z", "row flagged")
    body = [(str(r), str(f), f"{v:.6g}", f"{e:.6g}", f"{z:+.2f}", "yes" if o else "no")
            for r, f, v, e, z, o in cells]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    align = ["<", "<", ">", ">", ">", ">"]

    def line(cols):
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cols, align, widths)).rstrip()

    title = (f"most suspicious cells ({len(cells)} of {total} with |z| > {CELL_CUTOFF:.3f}; z = the "
             "cell's residual in robust SDs of its feature; value and expected in the data's units):")
    return "\n".join([title, line(head), *map(line, body)])
