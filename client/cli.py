"""The ``l1pca`` command line: ``fit`` and ``score`` (local kernels, or a server with ``--server``),
and ``serve`` (the gRPC service).

Data files are ``.npy`` or ``.csv`` with one sample per row (a CSV header line is detected and
skipped). ``fit`` writes to ``-o OUT`` (a folder, created if needed):

* ``components.npy``  (n_components, n_features), the L1 principal axes;
* ``projections.npy`` (n_samples, n_components), ``(X - center) @ components.T``;
* ``model.npz``       everything needed to transform and score later (``score --model``);
* ``summary.json``    shapes, method, backend, objective, flips, threshold, time.

``score`` writes ``sample_scores.csv`` (index, score, outlier flag, most suspicious feature),
``entry_scores.npy`` (n_samples, n_features) and ``summary.json``. Exit status 2 on bad input, with
the reason on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from l1pca.kernels import BACKENDS, CENTERS, DEFAULT_N_INIT, METHODS, Model


def load_matrix(path):
    """Read a 2-D matrix from ``.npy`` or ``.csv`` (rows = samples); ``ValueError`` on anything else."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"DATA={str(path)!r}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        X = np.load(path, allow_pickle=False)
    elif suffix in (".csv", ".txt"):
        with path.open() as fh:
            first = fh.readline()
        try:
            [float(tok) for tok in first.strip().split(",") if tok.strip() != ""]
            skip = 0
        except ValueError:
            skip = 1  # a header line
        X = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    else:
        raise ValueError(f"DATA={str(path)!r}: expected a .npy or .csv file")
    return X


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
    p.add_argument("--devices", default=None, metavar="all|N",
                   help="shard the samples over JAX devices ('all' or a count) for matrices larger "
                        "than one device; a .npy DATA is memory-mapped and streamed in chunks")
    p.add_argument("--distributed", action="store_true",
                   help="with --devices: join a multi-host job first (jax.distributed; reads "
                        "L1PCA_COORDINATOR, L1PCA_NUM_PROCESSES, L1PCA_PROCESS_ID or JOB_COMPLETION_INDEX)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary on stdout")


def build_parser():
    parser = argparse.ArgumentParser(prog="l1pca", description="L1-norm PCA and outlier scores.")
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
        from l1pca.client import Client

        with Client(args.server, timeout_s=args.timeout_s) as client:
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
    if X.ndim != 2:
        raise ValueError(f"DATA must be 2-D (n_samples, n_features); got shape {X.shape}")
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
    model = Model.load(args.model) if args.model else None
    if args.server:
        # One call: the server scores against the given model, or fits on DATA and scores.
        from l1pca.client import Client

        with Client(args.server, timeout_s=args.timeout_s) as client:
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
    except Exception as exc:  # the client's error type carries the gRPC status; keep the message short
        code = getattr(exc, "code", None)
        if code is not None:
            print(f"l1pca {args.command}: server error {code}: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
