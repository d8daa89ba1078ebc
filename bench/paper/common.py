"""Shared set-up for the paper-reproduction scripts in ``bench/paper/``.

Every script there has the same command line (``--quick``, ``--out``, ``--seed``), runs single-threaded
BLAS (so that timings measured side by side on a shared machine compare methods, not thread
contention), derives every random stream from ``(seed, labels...)`` so a cell's data do not depend on
which other cells ran, and writes ``<out>/paper_<name>.md`` plus PNG figures. The helpers here build
the set-up header every table carries (sizes, repeats, seed, versions) and the Markdown tables.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
DEFAULT_SEED = 2017
"""Root seed of every script (the year of the L1-BF paper); recorded in every table."""

PACKAGES = ("numpy", "scipy", "scikit-learn", "matplotlib", "jax", "cvxpy", "scs", "pyod", "l1pca")


def parse_args(description, argv=None):
    """The one command line of every ``bench/paper`` script."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and repeats (seconds); for the test that keeps scripts alive")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help=f"folder for paper_<name>.md and PNGs (default: {RESULTS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"root seed; every random stream is derived from it (default: {DEFAULT_SEED})")
    return parser.parse_args(argv)


def setup(args):
    """Single-threaded BLAS, headless matplotlib, the output folder. Returns the start time (s)."""
    import matplotlib
    from threadpoolctl import threadpool_limits

    matplotlib.use("Agg")
    threadpool_limits(1)
    args.out.mkdir(parents=True, exist_ok=True)
    args.git_revision = git_revision()  # at the start: others may commit while a long run goes on
    return time.perf_counter()


def rng_for(seed, *labels):
    """Independent generator for one cell / repeat: ``labels`` are ints or strings."""
    keys = [int(seed)]
    for lab in labels:
        keys.append(lab if isinstance(lab, (int, np.integer)) and lab >= 0
                    else zlib.crc32(str(lab).encode()))
    return np.random.default_rng(keys)


def versions():
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kernels"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{rev}{' (kernels/ modified)' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_description():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} logical cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"


def setup_lines(args, items, elapsed_s=None):
    """The set-up block every table starts with: the experiment's own items, then the environment."""
    lines = [f"- {key}: {value}" for key, value in items]
    lines.append(f"- mode: {'quick (tiny sizes; not for conclusions)' if args.quick else 'full'}; "
                 f"root seed {args.seed}")
    lines.append(f"- run: {datetime.date.today().isoformat()}, git "
                 f"{getattr(args, 'git_revision', None) or git_revision()}, "
                 f"{cpu_description()}, BLAS limited to 1 thread")
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    if elapsed_s is not None:
        lines.append(f"- wall time of this script: {elapsed_s:.0f} s")
    return lines


def md_table(headers, rows):
    """GitHub Markdown table; cells are formatted already (strings)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_report(args, name, title, intro, setup, sections, figures=()):
    """Write ``<out>/paper_<name>.md`` and print it. ``sections`` are (heading, markdown) pairs."""
    parts = [f"# {title}", "", intro.strip(), "", "## Set-up", "", "\n".join(setup), ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.strip(), ""]
    if figures:
        parts += ["## Figures", ""] + [f"![{cap}]({fname})" for fname, cap in figures] + [""]
    text = "\n".join(parts)
    path = args.out / f"paper_{name}.md"
    path.write_text(text)
    print(text)
    print(f"wrote {path}", file=sys.stderr)
    return path


def save_figure(fig, args, fname):
    path = args.out / fname
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)
    return fname


def wilson(hits, n, z=1.96):
    """95% Wilson score interval of a binomial proportion: (low, high)."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return mid - half, mid + half


def mean_std(values, fmt="{:.3f}"):
    v = np.asarray(values, dtype=float)
    return f"{fmt.format(v.mean())} ± {fmt.format(v.std(ddof=1) if v.size > 1 else 0.0)}"


class Stopwatch:
    """``with sw("name"): ...`` accumulates per-name wall times (seconds) measured side by side."""

    def __init__(self):
        self.times: dict[str, list[float]] = {}

    def __call__(self, name):
        return _Lap(self, name)

    def median_ms(self, name):
        return 1e3 * float(np.median(self.times[name]))


class _Lap:
    def __init__(self, sw, name):
        self.sw, self.name = sw, name

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.sw.times.setdefault(self.name, []).append(time.perf_counter() - self.t0)
        return False


# One colour and marker per method across all figures, so a method looks the same everywhere.
STYLE = {
    "L1-BF (n_init=1)": dict(color="#9ecae1", marker="v"),
    "L1-BF": dict(color="#08519c", marker="o", linewidth=2.2),
    "L1PCA": dict(color="#08519c", marker="o", linewidth=2.2),
    "fixed-point (Kwak)": dict(color="#e6550d", marker="s"),
    "non-greedy (Nie)": dict(color="#fdae6b", marker="D"),
    "L2-PCA": dict(color="#636363", marker="x"),
    "L2-PCA (median centre)": dict(color="#bdbdbd", marker="+"),
    "SDP + rounding": dict(color="#31a354", marker="^"),
    "PCP (inexact ALM)": dict(color="#756bb1", marker="P"),
    "PyOD PCA": dict(color="#a6761d", marker="*"),
    "EllipticEnvelope": dict(color="#e7298a", marker="h"),
    "IsolationForest": dict(color="#66a61e", marker="<"),
    "LocalOutlierFactor": dict(color="#1b9e77", marker=">"),
    "robust z-score (no model)": dict(color="#d95f02", marker="1"),
}


def style(name):
    """Plot style of a method; labels with a suffix (``"L1-BF (n_init=8, default)"``) match a prefix."""
    if name in STYLE:
        return STYLE[name]
    for key in sorted(STYLE, key=len, reverse=True):
        if name.startswith(key):
            return STYLE[key]
    return {}
