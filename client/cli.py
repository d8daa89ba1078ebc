"""The ``l1pca`` command line: ``fit`` and ``score`` (local kernels, or a server with ``--server``),
and ``serve`` (the gRPC service).

Data files are ``.npy`` or ``.csv`` with one sample per row (a CSV header line is detected and
skipped). ``fit`` writes to ``-o OUT`` (a folder, created if needed):

* ``components.npy``  (n_components, n_features), the L1 principal axes;
* ``projections.npy`` (n_samples, n_components), ``(X - center) @ components.T``;
* ``model.npz``       everything needed to transform and score later (``score --model``);
* ``summary.json``    shapes, method, backend, objective, flips, threshold, time.

``score`` writes ``sample_scores.csv`` (index, score, outlier flag, most suspicious feature),
``entry_scores.npy`` (n_samples, n_features) and ``summary.json``.

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
import warnings
from pathlib import Path

import numpy as np

from l1pca.kernels import BACKENDS, CENTERS, DEFAULT_N_INIT, METHODS, Model
from l1pca.kernels._validation import check_layout, nonfinite_error


def load_matrix(path):
    """Read a 2-D matrix from ``.npy`` or ``.csv`` (rows = samples).

    Anything else raises ``ValueError`` (an :class:`~l1pca.kernels.InputError`) in the library's
    words, with ``DATA`` as the argument's name: "DATA must be 2-D (n_samples, n_features); got 1-D
    array of shape (5,)", "DATA must be finite; found nan at row 5, column 3 ...", "DATA must hold
    numbers; found 'abc' at row 2, column 1 (line 4 of x.csv)". Rows and columns count from 0, as
    in the array; a CSV's line counts from 1, as in an editor.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"DATA={str(path)!r}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            X = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"DATA={str(path)!r}: cannot read it as .npy ({exc})") from None
    elif suffix in (".csv", ".txt"):
        X = _load_csv(path)
    else:
        raise ValueError(f"DATA={str(path)!r}: expected a .npy or .csv file")
    check_layout(X, name="DATA")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise nonfinite_error(X, name="DATA")
    return X


def _load_csv(path):
    try:
        with path.open() as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"DATA={str(path)!r}: cannot read it as text ({exc})") from None
    try:
        [float(tok) for tok in first.strip().split(",") if tok.strip() != ""]
        skip = 0
    except ValueError:
        skip = 1  # a header line
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": refused below
            return np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _csv_problem(path, skip) or ValueError(
            f"DATA={str(path)!r}: cannot read it as CSV ({exc})") from None


def _csv_problem(path, skip):
    """The first cell or row that ``np.loadtxt`` refused, as a ValueError naming it (None if not
    found). Blank lines and ``#`` comments are skipped, as ``np.loadtxt`` skips them."""
    row, width = 0, None
    with path.open(errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.split("#", 1)[0].strip()
            if lineno <= skip or not line:
                continue
            cells = line.split(",")
            for col, cell in enumerate(cells):
                try:
                    float(cell)
                except ValueError:
                    return ValueError(f"DATA must hold numbers; found {cell.strip()!r} at row {row}, "
                                      f"column {col} (line {lineno} of {path})")
            if width is not None and len(cells) != width:
                return ValueError(f"DATA must have the same number of columns in every row; row "
                                  f"{row} (line {lineno} of {path}) has {len(cells)}, row 0 has "
                                  f"{width}")
            width = len(cells) if width is None else width
            row += 1
    return None


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


def _common_arguments(p):
    p.add_argument("data", metavar="DATA", help=".npy or .csv file, one sample per row")
    p.add_argument("-k", "--n-components", type=int, default=1, help="number of components K (default 1)")
    p.add_argument("--method", default="bitflip", choices=list(METHODS),
                   help="solver (default bitflip): " + "; ".join(f"{k}: {v}" for k, v in METHODS.items()))
    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="where L1-BF runs (default auto)")
    p.add_argument("--center", default="median", choices=list(CENTERS),
                   help="centre subtracted before the fit (default median)")
    p.add_argument("--n-init", type=int, default=None, help=f"L1-BF starts (default {DEFAULT_N_INIT})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--contamination", default="auto",
                   help="outlier threshold rule: 'auto' (median + 3 MAD) or a fraction in (0, 0.5]")
    p.add_argument("-o", "--out", default="l1pca-out", help="output folder (default ./l1pca-out)")
    p.add_argument("--server", default=None, metavar="HOST:PORT",
                   help="fit on an l1pca server instead of locally (comma-separated list for round-robin)")
    p.add_argument("--timeout-s", type=float, default=60.0, help="deadline of a server call (default 60)")
    p.add_argument("--connect-timeout-s", type=float, default=5.0,
                   help="with --server: how long to wait for the server to answer at all before "
                        "giving up with 'no server at HOST:PORT' (default 5)")
    p.add_argument("--devices", default=None, metavar="all|N",
                   help="shard the samples over JAX devices ('all' or a count) for matrices larger "
                        "than one device; a .npy DATA is memory-mapped and streamed in chunks")
    p.add_argument("--distributed", action="store_true",
                   help="with --devices: join a multi-host job first (jax.distributed; reads "
                        "L1PCA_COORDINATOR, L1PCA_NUM_PROCESSES, L1PCA_PROCESS_ID or JOB_COMPLETION_INDEX)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary on stdout")


def build_parser():
    parser = argparse.ArgumentParser(prog="l1pca", description="L1-norm PCA and outlier scores.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit L1 principal components; write components and projections")
    _common_arguments(fit)
    score = sub.add_parser("score", help="score samples and entries as outliers")
    _common_arguments(score)
    score.add_argument("--model", default=None,
                       help="model.npz written by 'l1pca fit' (default: fit on DATA first)")
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


def _fit_model(X, args):
    """A fitted model (local estimator or the server's answer), as a :class:`l1pca.kernels.Model`."""
    center = args.center
    n_init = args.n_init
    if args.server:
        with _client(args) as client:
            return client.fit(X, args.n_components, method=args.method, n_init=n_init,
                              center=center, seed=args.seed,
                              contamination=_contamination(args.contamination))
    from l1pca.kernels import L1PCA

    kwargs = {} if n_init is None else {"n_init": n_init}
    est = L1PCA(args.n_components, method=args.method, center=center, backend=args.backend,
                random_state=args.seed, contamination=_contamination(args.contamination), **kwargs)
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
    threshold = scoring.robust_threshold(scores, contamination=_contamination(args.contamination))
    return Model(components=Q.T, center=center, threshold=threshold, method="bitflip",
                 objective=res.objective, n_samples=X.shape[0], backend=res.backend,
                 n_flips=res.n_flips, converged=res.converged)


def _write_json(path, obj):
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def cmd_fit(args):
    out = Path(args.out)
    t0 = time.perf_counter()
    if args.devices is not None:
        if args.server or args.method != "bitflip":
            raise ValueError("--devices runs the sharded L1-BF locally: it takes no --server and "
                             "only --method bitflip")
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
    else:
        X = load_matrix(args.data)
        model = _fit_model(X, args)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "projections.npy", model.transform(X))
    elapsed = time.perf_counter() - t0
    np.save(out / "components.npy", model.components)
    model.save(out / "model.npz")
    summary = dict(model.summary(), data=str(args.data), fit_seconds=round(elapsed, 4),
                   outputs=["components.npy", "projections.npy", "model.npz", "summary.json"])
    _write_json(out / "summary.json", summary)
    if not args.quiet:
        print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def cmd_score(args):
    X = load_matrix(args.data)
    t0 = time.perf_counter()
    model = Model.load(args.model, name="--model") if args.model else None
    if args.server:
        # One call: the server scores against the given model, or fits on DATA and scores.
        with _client(args) as client:
            res = client.score_outliers(
                X, model=model, n_components=args.n_components, method=args.method,
                n_init=args.n_init, center=args.center,
                seed=args.seed, contamination=_contamination(args.contamination),
                return_entry_scores=True)
        model, entries, scores = res.model, res.entry_scores, res.scores
    else:
        if model is None:
            model = _fit_model(X, args)
        entries = model.score_entries(X)
        scores = np.sqrt((entries * entries).sum(axis=1))
    flags = scores > model.threshold
    worst = entries.argmax(axis=1)
    elapsed = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = ["index,score,outlier,worst_feature"]
    rows += [f"{i},{s:.10g},{int(f)},{w}" for i, (s, f, w) in enumerate(zip(scores, flags, worst))]
    (out / "sample_scores.csv").write_text("\n".join(rows) + "\n")
    np.save(out / "entry_scores.npy", entries)
    summary = dict(model.summary(), data=str(args.data), seconds=round(elapsed, 4),
                   n_outliers=int(flags.sum()), outliers=np.flatnonzero(flags).tolist()[:1000],
                   outputs=["sample_scores.csv", "entry_scores.npy", "summary.json"])
    _write_json(out / "summary.json", summary)
    if not args.quiet:
        print(json.dumps({k: summary[k] for k in ("n_samples", "n_features", "n_outliers",
                                                   "threshold", "method")}, sort_keys=True))
    return 0


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
