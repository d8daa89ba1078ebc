"""``l1pca score --plot DIR``: the outlier map and the cell heat map as PNG files.

matplotlib is an optional extra (``pip install 'l1pca[plot]'``); :func:`require_matplotlib` says so
in the CLI's words when it is missing, before any work is done. Figures are drawn with the Agg
backend (files only, no display needed).
"""
from __future__ import annotations

import numpy as np

from l1pca.kernels import InputError

MISSING = "--plot needs matplotlib: pip install 'l1pca[plot]'"
MAX_LABELS = 30
"""Outliers labelled by name on the outlier map (the most outlying first); more would overlap."""
HEATMAP_ROWS = 40
"""Rows shown in the heat map: the highest outlier scores (a figure of every row of a long file
would show nothing)."""
Z_CLIP = 10.0
"""The heat map's colour scale ends at this |z| (a 9999 reading would wash out the rest)."""


def require_matplotlib():
    """matplotlib's pyplot on the Agg backend; :class:`InputError` with :data:`MISSING` if absent."""
    try:
        import matplotlib
    except ImportError:
        raise InputError(MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axis_scale(ax_set, values, cutoff):
    """Log axis when the values span far beyond the cutoff, so that the bulk stays visible."""
    top = float(np.max(values)) if len(values) else 0.0
    if cutoff > 0 and top > 30 * cutoff and (values > 0).any():
        ax_set("log")


def outlier_map(path, sd, od, *, sd_cutoff, od_cutoff, flagged, scores, labels, title=""):
    """SD (x) against OD (y), both cutoffs as dashed lines, flagged rows in red and labelled with
    their row label (the :data:`MAX_LABELS` highest outlier scores)."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=110)
    ok = ~flagged
    ax.scatter(sd[ok], od[ok], s=14, c="#4C72B0", alpha=0.7, label="regular")
    ax.scatter(sd[flagged], od[flagged], s=22, c="#C44E52", label="flagged")
    ax.axvline(sd_cutoff, ls="--", c="0.4", lw=1)
    ax.axhline(od_cutoff, ls="--", c="0.4", lw=1)
    _axis_scale(ax.set_xscale, sd, sd_cutoff)
    _axis_scale(ax.set_yscale, od, od_cutoff)
    ax.text(sd_cutoff, 1.0, f" SD cutoff {sd_cutoff:.3g}", transform=ax.get_xaxis_transform(),
            va="top", fontsize=8, color="0.3")
    ax.text(1.0, od_cutoff, f"OD cutoff {od_cutoff:.3g} ", transform=ax.get_yaxis_transform(),
            ha="right", va="bottom", fontsize=8, color="0.3")
    order = np.flatnonzero(flagged)
    order = order[np.argsort(-scores[order], kind="stable")][:MAX_LABELS]
    for i in order:
        ax.annotate(str(labels[i]), (sd[i], od[i]), xytext=(3, 3), textcoords="offset points",
                    fontsize=7)
    ax.set_xlabel("score distance SD (within the subspace, robust units)")
    ax.set_ylabel("orthogonal distance OD (from the subspace)")
    ax.set_title(title or "outlier map")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cell_heatmap(path, absz, flags, *, scores, labels, features, cutoff, title=""):
    """|z| per row and feature for the :data:`HEATMAP_ROWS` rows with the highest outlier scores
    (top to bottom), colour clipped at :data:`Z_CLIP`; flagged cells (``flags``) get an x."""
    plt = require_matplotlib()
    rows = np.argsort(-scores, kind="stable")[:HEATMAP_ROWS]
    Z = np.minimum(absz[rows], Z_CLIP)
    height = 1.6 + 0.22 * len(rows)
    width = 2.6 + 0.55 * len(features)
    fig, ax = plt.subplots(figsize=(min(max(width, 5.0), 18.0), min(height, 14.0)), dpi=110)
    im = ax.imshow(Z, aspect="auto", cmap="magma_r", vmin=0.0, vmax=Z_CLIP, interpolation="nearest")
    if flags is not None:
        fi, fj = np.nonzero(flags[rows])
        ax.scatter(fj, fi, marker="x", s=30, c="#1f77b4", linewidths=1.2, label=f"|z| > {cutoff:.3g}")
        if len(fi):
            ax.legend(loc="upper right", bbox_to_anchor=(1.0, 1.08), fontsize=8, frameon=False)
    ax.set_xticks(range(len(features)))
    ax.set_xticklabels(features, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([str(labels[i]) for i in rows], fontsize=7)
    ax.set_xlabel("feature")
    ax.set_ylabel("row (highest outlier score first)")
    fig.colorbar(im, ax=ax, label=f"|z|, standardised cell residual (clipped at {Z_CLIP:g})")
    ax.set_title(title or "cell residuals")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
