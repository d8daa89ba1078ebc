"""The ``l1pca`` command line: ``fit`` and ``score`` (local kernels, or a server with ``--server``),
and ``serve`` (the gRPC service).

Data files are ``.npy`` or ``.csv`` with one sample per row (:mod:`l1pca.client.tables`): a CSV
header names the features in every output, ``--columns`` / ``--drop`` choose the feature columns
and ``--index-column`` labels the rows. ``--scale robust`` divides each column, minus its median, by
its robust standard deviation before the fit (the default of ``score``: sensors come in different
units); the scaling is stored beside the model (``scaling.json``) and applied again by
``score --model``. ``fit`` writes to ``-o OUT`` (a folder, created if needed):

* ``components.npy``  (n_components, n_features), the L1 principal axes;
* ``projections.npy`` (n_samples, n_components), ``(X - center) @ components.T``;
* ``model.npz``       everything needed to transform and score later (``score --model``);
* ``scaling.json``    the per-column scaling the model's data went through;
* ``summary.json``    shapes, method, backend, objective, flips, cutoffs, time.

``score`` writes ``sample_scores.csv`` (row label, outlier score, SD, OD, group, outlier flag,
worst feature and its z), ``cells.csv`` (the flagged cells), ``entry_scores.npy`` (|z|,
n_samples x n_features), ``summary.json`` and, when it fitted, ``model.npz`` and ``scaling.json``;
``--plot DIR`` adds the outlier map and a cell heat map as PNG (:mod:`l1pca.client.plots`). On
stdout: the chosen K, the flagged rows, and a table of the most suspicious cells
(:mod:`l1pca.client.report`). The outlier score is higher = more outlying (PyOD's convention).

Exit status (docs/cli.md): 0 success; 2 bad input or usage, locally or refused by the server
(INVALID_ARGUMENT), with the reason on stderr; 1 a server or internal failure, "no server at
HOST:PORT" included. ``l1pca --version`` prints the installed version.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from l1pca.kernels import BACKENDS, CENTERS, DEFAULT_N_INIT, METHODS, InputError, Model
from l1pca.kernels._validation import check_layout
from l1pca.kernels.options import DEFAULT_SUPPORT_FRACTION, check_support_fraction

from . import report
from .tables import SCALES, SCALING_FILE, Scaling, load_matrix, read_table

__all__ = ["ProgressBar", "build_parser", "load_matrix", "main"]


class ProgressBar:
    """A one-line bar on stderr, fed by ``solve(progress=...)``; it redraws its clock while a start
    runs, and appears only for fits longer than ``delay_s``."""

    def __init__(self, label, *, stream=sys.stderr, delay_s=0.5, enabled=True):
        self.label, self.stream, self.delay_s, self.enabled = label, stream, delay_s, enabled
        self.done, self.total = 0, 1
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._drawn = False

    def __enter__(self):
        if self.enabled:
            self._thread.start()
        return self

    def update(self, done, total):
        self.done, self.total = done, max(total, 1)

    def _draw(self):
        frac = self.done / self.total
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        elapsed = time.monotonic() - self.t0
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} starts {elapsed:6.1f}s")
        self.stream.flush()
        self._drawn = True

    def _run(self):
        while not self._stop.wait(0.2):
            if time.monotonic() - self.t0 >= self.delay_s:
                self._draw()

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._drawn:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
        return False


def _n_components(value):
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} must be 'auto' or a positive integer") from None


def _common_arguments(p, *, default_scale):
    p.add_argument("data", metavar="DATA", help=".npy or .csv file, one sample per row (a CSV header "
                   "names the features)")
    p.add_argument("-k", "--n-components", type=_n_components, default=1, metavar="K|auto",
                   help="number of components K, or 'auto': the smallest K whose robust explained "
                        "dispersion reaches 80%% (at most 10), reported (default 1)")
    p.add_argument("--method", default="bitflip", choices=list(METHODS),
                   help="solver (default bitflip): " + "; ".join(f"{k}: {v}" for k, v in METHODS.items()))
    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="where L1-BF runs (default auto)")
    p.add_argument("--center", default="median", choices=list(CENTERS),
                   help="centre subtracted before the fit (default median)")
    p.add_argument("--n-init", type=int, default=None, help=f"L1-BF starts (default {DEFAULT_N_INIT})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--contamination", default="auto",
                   help="outlier rule: 'auto' (outside the outlier map's cutoffs: outlier score > 1) "
                        "or a fraction in (0, 0.5] (that share of the training rows is flagged)")
    p.add_argument("--support-fraction", type=float, default=DEFAULT_SUPPORT_FRACTION, metavar="H",
                   help="share of the rows the robust fit is fitted to, in [0.5, 1]; 1 = the plain "
                        f"L1-BF fit on every row (default {DEFAULT_SUPPORT_FRACTION})")
    p.add_argument("--no-cell-robust", dest="cell_robust", action="store_false",
                   help="fit the cells as given (default: deviating cells are screened before the "
                        "fit, so a sensor wrong in up to ~20%% of rows cannot become an axis)")
    p.add_argument("--scale", default=None, choices=list(SCALES),
                   help=f"per-column scaling before the fit (default {default_scale}): robust = "
                        "minus the column's median, over its robust standard deviation (1.4826 MAD), "
                        "computed on DATA, so that sensors in different units weigh alike; none = "
                        "the data as given. Stored in OUT/scaling.json; score --model applies the "
                        "stored one")
    p.add_argument("--columns", default=None, metavar="A,B,...",
                   help="feature columns to use (CSV header names or 0-based indices; default all)")
    p.add_argument("--drop", default=None, metavar="A,B,...",
                   help="columns to leave out (names or 0-based indices), e.g. --drop timestamp")
    p.add_argument("--index-column", default=None, metavar="NAME|N",
                   help="column whose values label the rows in the outputs (not a feature)")
    p.add_argument("-o", "--out", default="l1pca-out", help="output folder (default ./l1pca-out)")
    p.add_argument("--server", default=None, metavar="HOST:PORT",
                   help="fit on an l1pca server instead of locally (comma-separated list for round-robin)")
    p.add_argument("--timeout-s", type=float, default=60.0, help="deadline of a server call (default 60)")
    p.add_argument("--connect-timeout-s", type=float, default=5.0,
                   help="with --server: how long to wait for the server to answer at all before "
                        "giving up with 'no server at HOST:PORT' (default 5)")
    p.add_argument("--devices", default=None, metavar="all|N",
                   help="shard the samples over JAX devices ('all' or a count) for matrices larger "
                        "than one device; a .npy DATA is memory-mapped and streamed in chunks (the "
                        "plain fit: no scaling, no robust refits)")
    p.add_argument("--distributed", action="store_true",
                   help="with --devices: join a multi-host job first (jax.distributed; reads "
                        "L1PCA_COORDINATOR, L1PCA_NUM_PROCESSES, L1PCA_PROCESS_ID or JOB_COMPLETION_INDEX)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary on stdout")


def build_parser():
    parser = argparse.ArgumentParser(prog="l1pca", description="L1-norm PCA and outlier scores.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit L1 principal components; write components and projections")
    _common_arguments(fit, default_scale="none")
    score = sub.add_parser(
        "score", help="find outlying rows and faulty cells",
        description="Find outlying rows and faulty cells. Each column is robustly scaled first "
                    "(--scale robust, the default: sensors come in different units). The outlier "
                    "score is higher = more outlying (PyOD's convention): max(SD / SD cutoff, "
                    "OD / OD cutoff), above 1 outside the outlier map's cutoffs. A cell's z is its "
                    "residual in robust standard deviations of its feature; |z| > 2.576 flags it.")
    _common_arguments(score, default_scale="robust")
    score.add_argument("--model", default=None,
                       help="model.npz written by 'l1pca fit' or 'l1pca score' (default: fit on DATA "
                            "first); the scaling.json beside it is applied to DATA")
    score.add_argument("--top", type=int, default=10, metavar="N",
                       help="rows of the suspicious-cells table on stdout (default 10; all flagged "
                            "cells go to OUT/cells.csv)")
    score.add_argument("--plot", default=None, metavar="DIR",
                       help="write outlier_map.png (SD against OD, both cutoffs, outliers labelled) "
                            "and cell_heatmap.png (|z| per row and feature) to DIR; needs matplotlib "
                            "(pip install 'l1pca[plot]')")
    # `serve` parses its own flags (l1pca.service.config): the service is imported only when it runs.
    sub.add_parser("serve", add_help=False, help="run the gRPC service ('l1pca serve --help' lists "
                   "its flags)")
    return parser


def _version():
    """The installed distribution's version (what pip installed), or 'unknown' outside one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("l1pca")
    except PackageNotFoundError:
        return "unknown"


def _client(args):
    """A :class:`l1pca.client.Client` on ``--server`` that has seen the server answer: waits at most
    ``--connect-timeout-s`` (UNAVAILABLE "no server at HOST:PORT ..." after that) instead of
    retrying until ``--timeout-s``."""
    from l1pca.client import Client

    for flag, value in (("--timeout-s", args.timeout_s), ("--connect-timeout-s", args.connect_timeout_s)):
        if not value > 0:  # also NaN
            raise ValueError(f"{flag}={value!r} must be a positive number of seconds")
    client = Client(args.server, timeout_s=args.timeout_s)
    try:
        client.wait_for_server(min(args.connect_timeout_s, args.timeout_s))
    except BaseException:
        client.close()
        raise
    return client


def _keyword_or(value, keyword, flag, convert, expected):
    """``value`` when it is ``keyword``, else ``convert(value)``; a message naming the flag."""
    if value == keyword:
        return value
    try:
        return convert(value)
    except ValueError:
        raise ValueError(f"{flag}={value!r} must be {expected}") from None


def _contamination(value):
    return _keyword_or(value, "auto", "--contamination", float, "'auto' or a number in (0, 0.5]")


def _fit_options(args):
    """The fit's options, shared by the local estimator and the server calls."""
    try:
        support = check_support_fraction(args.support_fraction)
    except InputError:
        raise InputError(f"--support-fraction={args.support_fraction!r} must be a number in "
                         "[0.5, 1] (1: the plain fit on every row)") from None
    return dict(method=args.method, n_init=args.n_init, center=args.center, seed=args.seed,
                contamination=_contamination(args.contamination),
                support_fraction=support, cell_robust=args.cell_robust)


def _fit_model(X, args):
    """A fitted model (local estimator or the server's answer), as a :class:`l1pca.kernels.Model`."""
    opts = _fit_options(args)
    if args.server:
        with _client(args) as client:
            return client.fit(X, args.n_components, **opts)
    from l1pca.kernels import L1PCA

    n_init, seed = opts.pop("n_init"), opts.pop("seed")
    est = L1PCA(args.n_components, backend=args.backend, random_state=seed,
                **({} if n_init is None else {"n_init": n_init}), **opts)
    with ProgressBar(f"fit {X.shape[0]}x{X.shape[1]} K={args.n_components}",
                     enabled=not args.quiet) as bar:
        est.fit(X, progress=bar.update)
    return est.to_model()


def _devices(value):
    return _keyword_or(value, "all", "--devices", int, "'all' or a device count")


def _robust_center(X, center, *, max_rows=1_000_000):
    """Centre of a possibly memory-mapped matrix, read in chunks. The median is taken over at most
    ``max_rows`` evenly spaced rows (exact below that), so it never loads a huge matrix."""
    from l1pca.kernels.sharded import iter_rows

    N, D = X.shape
    if center == "none":
        return np.zeros(D)
    if center == "mean":
        return sum(block.sum(axis=0) for _, block in iter_rows(X)) / N
    step = max(1, N // max_rows)
    return np.median(np.asarray(X[::step], dtype=np.float64), axis=0)


def _fit_sharded(path, args, out):
    """``fit --devices``: the sharded solver on a streamed matrix; scores and projections chunk-wise."""
    from l1pca.kernels import scoring, solve
    from l1pca.kernels.sharded import RowChunks, iter_rows

    X = np.load(path, mmap_mode="r", allow_pickle=False) if str(path).endswith(".npy") else load_matrix(path)
    check_layout(X, name="DATA")
    center = _robust_center(X, args.center)
    kwargs = {} if args.n_init is None else {"n_init": args.n_init}
    with ProgressBar(f"fit {X.shape[0]}x{X.shape[1]} K={args.n_components} (sharded)",
                     enabled=not args.quiet) as bar:
        res = solve(RowChunks(X, center), args.n_components, random_state=args.seed,
                    devices=_devices(args.devices), progress=bar.update, **kwargs)
    Q = res.components
    proj = np.lib.format.open_memmap(out / "projections.npy", mode="w+", shape=(X.shape[0], Q.shape[1]))
    scores = np.empty(X.shape[0])
    for a, block in iter_rows(X):
        Xc = block - center
        proj[a:a + len(block)] = Xc @ Q
        scores[a:a + len(block)] = scoring.sample_scores(scoring.residuals(block, center, Q))
    proj.flush()
    # The plain fit's model, as fit_many(devices=...) makes it: the outlier map from the streamed
    # scores and distances (no cell scales: the detector's steps need the matrix in memory).
    scales = scoring.map_scales(proj, scores)
    score_cutoff, contamination = 1.0, _contamination(args.contamination)
    if contamination != "auto":
        ranked = np.maximum(np.sqrt(((proj / scales.score_scales) ** 2).sum(axis=1)) / scales.sd_cutoff,
                            scores / scales.od_cutoff)
        score_cutoff = float(np.quantile(ranked, 1.0 - contamination))
    return Model(components=Q.T, center=center, threshold=scales.od_cutoff, method="bitflip",
                 objective=res.objective, n_samples=X.shape[0], backend=res.backend,
                 n_flips=res.n_flips, converged=res.converged, score_scales=scales.score_scales,
                 sd_cutoff=scales.sd_cutoff, od_cutoff=scales.od_cutoff, score_cutoff=score_cutoff)


def _write_json(path, obj):
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _read(args, prefer=None):
    return read_table(args.data, columns=args.columns, drop=args.drop,
                      index_column=args.index_column, prefer=prefer)


def _generic(names):
    return all(name == f"x{j}" for j, name in enumerate(names))


def _summary(model, args, scaling, features, **extra):
    return dict(model.summary(), data=str(args.data), n_components_requested=args.n_components,
                scaling=scaling.method, features=list(features), **extra)


def cmd_fit(args):
    out = Path(args.out)
    t0 = time.perf_counter()
    if args.devices is not None:
        if args.server or args.method != "bitflip":
            raise ValueError("--devices runs the sharded L1-BF locally: it takes no --server and "
                             "only --method bitflip")
        if args.scale == "robust" or args.n_components == "auto":
            raise ValueError("--devices fits the data as given with a fixed K: it takes no "
                             "--scale robust and no -k auto")
        if not Path(args.data).exists():
            raise ValueError(f"DATA={args.data!r}: no such file")
        primary = True
        if args.distributed:
            from l1pca.kernels.sharded import initialize_distributed

            primary = initialize_distributed() == 0
        if not primary:  # every process takes part in the fit; process 0 alone writes the outputs
            import tempfile

            args.quiet = True
            with tempfile.TemporaryDirectory() as scratch:
                _fit_sharded(args.data, args, Path(scratch))
            return 0
        out.mkdir(parents=True, exist_ok=True)
        model = _fit_sharded(args.data, args, out)
        d = model.n_features
        scaling = Scaling("none", [f"x{j}" for j in range(d)], np.zeros(d), np.ones(d))
    else:
        table = _read(args)
        scaling = Scaling.fit(args.scale or "none", table)
        Xs = scaling.apply(table.values)
        model = _fit_model(Xs, args)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "projections.npy", model.transform(Xs))
    elapsed = time.perf_counter() - t0
    np.save(out / "components.npy", model.components)
    model.save(out / "model.npz")
    scaling.save(out)
    summary = _summary(model, args, scaling, scaling.features, fit_seconds=round(elapsed, 4),
                       outputs=["components.npy", "projections.npy", "model.npz", SCALING_FILE,
                                "summary.json"])
    _write_json(out / "summary.json", summary)
    if not args.quiet:
        print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def _stored_scaling(args):
    """The scaling stored beside ``--model`` (None when there is none: a model fitted on raw data
    by an older version), checked against ``--scale``."""
    path = Path(args.model).with_name(SCALING_FILE)
    if not path.is_file():
        if args.scale == "robust":
            raise InputError(f"--scale robust: the model {args.model!r} has no {SCALING_FILE} beside "
                             "it, so it was fitted on unscaled data; score with --scale none")
        return None
    scaling = Scaling.load(path)
    if args.scale is not None and args.scale != scaling.method:
        raise InputError(f"--scale {args.scale}: the model {args.model!r} was fitted with --scale "
                         f"{scaling.method} ({path}); the stored scaling is applied to DATA")
    return scaling


def _check_features(table, scaling, args):
    if len(table.features) != len(scaling.features):
        raise InputError(f"DATA has {len(table.features)} feature columns "
                         f"({', '.join(table.features)}); the model was fitted on "
                         f"{len(scaling.features)} ({', '.join(scaling.features)}): choose them "
                         "with --columns / --drop")
    # Generic names (x0, x1, ...: a file without a header) match by position.
    if not (_generic(table.features) or _generic(scaling.features)) \
            and table.features != scaling.features:
        raise InputError(f"DATA's feature columns ({', '.join(table.features)}) are not the model's "
                         f"({', '.join(scaling.features)}): choose them with --columns")


def cmd_score(args):
    t0 = time.perf_counter()
    if args.plot is not None:
        from . import plots

        plots.require_matplotlib()  # before the fit: a missing extra costs nothing
    model = Model.load(args.model, name="--model") if args.model else None
    scaling = _stored_scaling(args) if model is not None else None
    table = _read(args, prefer=scaling.features if scaling is not None else None)
    if scaling is None:
        scaling = Scaling.fit(args.scale or ("none" if model is not None else "robust"), table)
    _check_features(table, scaling, args)
    X = table.values
    Xs = scaling.apply(X)
    fitted_here = model is None
    if args.server:
        # One call: the server scores against the given model, or fits on DATA and scores.
        with _client(args) as client:
            res = client.score_outliers(Xs, model=model, n_components=args.n_components,
                                        return_entry_scores=True, **_fit_options(args))
        model = res.model
        det = report.detect(model, Xs, res)
    else:
        if model is None:
            model = _fit_model(Xs, args)
        det = report.detect(model, Xs)
    expected = scaling.undo(det.expected)
    cells = report.suspicious_cells(det, X, expected, rows=table.rows, features=table.features)
    elapsed = time.perf_counter() - t0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    outputs = ["sample_scores.csv", "cells.csv", "entry_scores.npy", "summary.json"]
    report.write_sample_scores(out / "sample_scores.csv", det, rows=table.rows,
                               features=table.features)
    report.write_cells(out / "cells.csv", cells)
    np.save(out / "entry_scores.npy", np.abs(det.z))
    if fitted_here:
        model.save(out / "model.npz")
        scaling.save(out)
        outputs += ["model.npz", SCALING_FILE]
    flagged = np.flatnonzero(det.flagged)
    if args.plot is not None:
        outputs += _plots(Path(args.plot), det, model, table)
    summary = _summary(model, args, scaling, table.features, seconds=round(elapsed, 4),
                       n_outliers=len(flagged), outliers=[table.rows[i] for i in flagged[:1000]],
                       n_flagged_cells=len(cells),
                       outlier_score="higher = more outlying: max(SD / sd_cutoff, OD / od_cutoff); "
                                     "a row is an outlier above score_cutoff",
                       outputs=outputs)
    _write_json(out / "summary.json", summary)
    if not args.quiet:
        chosen = " (chosen by -k auto)" if args.n_components == "auto" else ""
        names = ", ".join(table.rows[i] for i in flagged[:20]) + (", ..." if len(flagged) > 20 else "")
        print(f"K = {model.n_components}{chosen}; scaling: {scaling.method}")
        print(f"{len(flagged)} of {X.shape[0]} rows flagged (outlier score > {model.score_cutoff:.3g}; "
              f"higher = more outlying){': ' + names if len(flagged) else ''}")
        print(report.format_cells(cells[:args.top], total=len(cells)))
    return 0


def _plots(folder, det, model, table):
    from . import plots

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if det.sd is not None:
        plots.outlier_map(folder / "outlier_map.png", det.sd, det.od, sd_cutoff=model.sd_cutoff,
                          od_cutoff=model.od_cutoff, flagged=det.flagged, scores=det.score,
                          labels=table.rows, title=f"outlier map (K = {model.n_components})")
        written.append(str(folder / "outlier_map.png"))
    plots.cell_heatmap(folder / "cell_heatmap.png", np.abs(det.z), det.cell_flags, scores=det.score,
                       labels=table.rows, features=table.features, cutoff=report.CELL_CUTOFF)
    return written + [str(folder / "cell_heatmap.png")]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:
        from l1pca.service.server import main as serve_main

        return serve_main(argv[1:], prog="l1pca serve")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "fit":
            return cmd_fit(args)
        return cmd_score(args)
    except (ValueError, TypeError) as exc:
        print(f"l1pca {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output folder or file that cannot be written
        print(f"l1pca {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # l1pca.client.ClientError (imported only with --server) carries the gRPC status in
        # ``code`` and prints as "CODE: message". Input the server refuses is bad input, as locally.
        code = getattr(getattr(exc, "code", None), "name", None)
        if code == "INVALID_ARGUMENT":
            print(f"l1pca {args.command}: error: {exc}", file=sys.stderr)
            return 2
        if code is not None:
            print(f"l1pca {args.command}: server error {exc}", file=sys.stderr)
            return 1
        raise

if __name__ == "__main__":
    sys.exit(main())
