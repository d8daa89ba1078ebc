"""Configuration of ``l1pca serve``: one argparse parser, every flag mirrored by an environment variable.

Each flag ``--some-flag`` has a type, a default and a help line, and reads its default from
``L1PCA_SOME_FLAG`` when that is set (the command line wins). Nothing is parsed at import time: the
environment is read when the parser is built.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields

ENV_PREFIX = "L1PCA_"


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 0")
    return value


def _port(text):
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} must be a port in [0, 65535] (0 picks a free one)")
    return value


def _metrics_port(text):
    value = int(text)
    if not -1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} must be a port in [0, 65535], or -1 to disable")
    return value


def _non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number >= 0")
    return value


def _on_off(text):
    value = str(text).strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} must be on or off")


def _auto_on_off(text):
    value = str(text).strip().lower()
    if value == "auto":
        return value
    try:
        return "on" if _on_off(value) else "off"
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} must be auto, on or off") from None


def _shapes(text):
    """``"64x16,256x32"`` -> ``((64, 16), (256, 32))``; empty -> no warm-up shapes."""
    shapes = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        rows, sep, cols = part.lower().partition("x")
        if not sep or not rows.isdigit() or not cols.isdigit() or int(rows) < 1 or int(cols) < 1:
            raise argparse.ArgumentTypeError(f"{part!r} is not ROWSxCOLS (e.g. 64x16)")
        shapes.append((int(rows), int(cols)))
    return tuple(shapes)


def _int_list(text):
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= 1")
    return values


# (flag, type, default, help). The order is the order of `l1pca serve --help`.
FLAGS = (
    ("--host", str, "127.0.0.1", "address the gRPC server binds (0.0.0.0 for every interface)"),
    ("--port", _port, "50051", "gRPC port (0 picks a free one)"),
    ("--metrics-host", str, "127.0.0.1", "address of the Prometheus /metrics endpoint"),
    ("--metrics-port", _metrics_port, "9464", "Prometheus port (0 picks a free one, -1 disables)"),
    ("--max-batch-size", _positive_int, "16",
     "most Fit requests in one solver call (1 disables batching; raise it on a GPU or for "
     "hundreds of concurrent calls)"),
    ("--max-delay-ms", _non_negative_float, "2",
     "longest the oldest queued request waits for a batch to fill, in milliseconds"),
    ("--flush-when-idle", _on_off, "on",
     "send a partial batch at once while no batch is computing, unless recent batches showed that "
     "waiting gathers batch-mates (on or off; off: every batch waits to fill or for --max-delay-ms)"),
    ("--split-batches", _on_off, "off",
     "with a solver process, split a partial batch for an idle solver in two and send the second "
     "half ahead to its pipe, then send ahead any batch as large as the one computing, so that "
     "a few clients calling in step keep the solver busy (on or off; off: only full batches go "
     "ahead; see docs/decisions/0005-split-batches-off.md)"),
    ("--max-queue", _positive_int, "1024",
     "most requests waiting; beyond it RESOURCE_EXHAUSTED at once"),
    ("--workers", _positive_int, "1", "solver threads (batches computing at once)"),
    ("--solver-process", _auto_on_off, "auto",
     "run each solver thread's fits in a child process with its own interpreter lock: more batched "
     "throughput under concurrency on the CPU, a round trip more per call (on: every fit; auto: "
     "on the CPU only, and a lone request with nothing else computing or queued stays in the solver "
     "thread; off: none)"),
    ("--solver-threads", _non_negative_int, "1",
     "threads of JAX's CPU backend in the server and in each solver process (0 = one per CPU, "
     "XLA's default): 1 suits batches of small matrices; more shortens a lone fit of a large "
     "matrix on a many-core node"),
    ("--max-concurrent-rpcs", _non_negative_int, "0",
     "most calls handled at once; gRPC refuses more with RESOURCE_EXHAUSTED before reading them "
     "(0 = max-queue + workers x max-batch-size + 64, twice the workers with solver processes: each "
     "holds a batch ahead)"),
    ("--max-rows", _positive_int, "200000", "most rows (samples) per matrix"),
    ("--max-cols", _positive_int, "4096", "most columns (features) per matrix"),
    ("--max-request-bytes", _positive_int, str(64 * 1024 * 1024),
     "largest request message in bytes; a larger one answers RESOURCE_EXHAUSTED saying what to do "
     "(gRPC itself refuses messages over twice this). With the defaults it binds before --max-rows "
     "and --max-cols: 64 MiB holds 8,388,608 float64 entries (200,000 rows of 41 columns), twice as "
     "many in float32"),
    ("--max-n-init", _positive_int, "64", "most L1-BF starts a request may ask for"),
    ("--backend", str, "auto",
     "solver backend: auto (GPU if usable, else JAX on the CPU), jax, numpy or cupy"),
    ("--sharded-min-rows", _non_negative_int, "0",
     "Fit matrices with at least this many rows on the sharded solver over every JAX device "
     "(0 = never; pays off with several GPUs)"),
    ("--warmup-shapes", _shapes, "64x16",
     "ROWSxCOLS,... whose shape buckets are compiled first (in the background, or before SERVING "
     "with --warmup-wait on)"),
    ("--warmup-components", _int_list, "1,2", "values of K compiled for each warm-up shape"),
    ("--warmup-wait", _on_off, "off",
     "on: report SERVING only once the warm-up programs are compiled; off: SERVING as soon as the "
     "port and the solver processes are up, the programs compiling in the background while fits of "
     "their shapes run on the host path (NumPy) with the same answers"),
    ("--grace-s", _non_negative_float, "30",
     "on SIGTERM/SIGINT, seconds to finish queued and running work"),
    ("--log-level", str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    ("--port-file", str, "", "write the bound ports as JSON to this file once listening (for scripts)"),
    ("--solve-timeout-s", _non_negative_float, "600",
     "a solver call running longer than this (from when it could start) is taken as a hung worker: "
     "its batch fails UNAVAILABLE and the worker is replaced (0 = never)"),
    ("--tls-cert", str, "", "PEM certificate chain of the gRPC port; with --tls-key turns TLS on"),
    ("--tls-key", str, "", "PEM private key of --tls-cert"),
    ("--tls-client-ca", str, "",
     "PEM CA bundle: clients must present a certificate it signed (mutual TLS)"),
    ("--auth-token-file", str, "",
     "file of accepted bearer tokens, one per line, re-read on change and on SIGHUP; every call "
     "but health then needs `authorization: Bearer <token>` (empty: no token check)"),
    ("--reflection", _on_off, "on", "serve gRPC reflection (on or off)"),
    ("--compile-cache-dir", str, "~/.cache/l1pca/jax",
     "directory where JAX keeps the compiled solver programs, so that a restart's warm-up loads "
     "them instead of compiling; machine code for this CPU: one directory per node or CPU model, "
     "never one shared across CPU models (empty: off)"),
    ("--compile-cache-max-mb", _positive_int, "256",
     "size bound of --compile-cache-dir; the least recently used programs are deleted beyond it"),
)
CHOICES = {"--backend": ("auto", "jax", "numpy", "cupy"),
           "--log-level": ("DEBUG", "INFO", "WARNING", "ERROR")}


def env_name(flag: str) -> str:
    """``--max-delay-ms`` -> ``L1PCA_MAX_DELAY_MS``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


@dataclass(frozen=True)
class ServeConfig:
    """Parsed settings of ``l1pca serve`` (defaults as in :data:`FLAGS`)."""

    host: str = "127.0.0.1"
    port: int = 50051
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    max_batch_size: int = 16
    max_delay_ms: float = 2.0
    flush_when_idle: bool = True
    split_batches: bool = False
    max_queue: int = 1024
    workers: int = 1
    solver_process: str = "auto"
    solver_threads: int = 1
    max_concurrent_rpcs: int = 0
    max_rows: int = 200000
    max_cols: int = 4096
    max_request_bytes: int = 64 * 1024 * 1024
    max_n_init: int = 64
    backend: str = "auto"
    sharded_min_rows: int = 0
    warmup_shapes: tuple = ((64, 16),)
    warmup_components: tuple = (1, 2)
    warmup_wait: bool = False
    grace_s: float = 30.0
    log_level: str = "INFO"
    port_file: str = ""
    solve_timeout_s: float = 600.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    auth_token_file: str = ""
    reflection: bool = True
    compile_cache_dir: str = "~/.cache/l1pca/jax"
    compile_cache_max_mb: int = 256

    def __post_init__(self):
        # argparse checks `choices` on the command line only; a default from the environment is
        # checked here.
        for name in ("backend", "log_level"):
            allowed = CHOICES["--" + name.replace("_", "-")]
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} (flag --{name.replace('_', '-')} or "
                                 f"{env_name('--' + name)}) is not one of {', '.join(allowed)}")
        from .tls import check_tls_flags

        check_tls_flags(self.tls_cert, self.tls_key, self.tls_client_ca)

    @classmethod
    def from_args(cls, args):
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def add_serve_arguments(parser, environ=None):
    """Add every flag of :data:`FLAGS` to ``parser``, defaults taken from the environment if set."""
    environ = os.environ if environ is None else environ
    for flag, typ, default, help_text in FLAGS:
        env = env_name(flag)
        parser.add_argument(
            flag, type=typ, default=environ.get(env, default), choices=CHOICES.get(flag),
            metavar=None if flag in CHOICES else flag.lstrip("-").replace("-", "_").upper(),
            help=f"{help_text} (default: {default}; env {env})",
        )
    return parser


def build_parser(prog="l1pca serve", environ=None):
    """The parser of ``l1pca serve``: every flag of :data:`FLAGS`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the l1pca gRPC service (L1PCA, health, reflection) with dynamic batching "
                    "and Prometheus metrics. Every flag can also be set with the environment "
                    "variable named in its help.")
    return add_serve_arguments(parser, environ)


def flags_markdown() -> str:
    """The flags as a Markdown table (docs/service.md holds it; ``make docs`` rewrites it and a
    test checks that it is current)."""
    rows = ["| flag | environment | default | what it does |", "|---|---|---|---|"]
    for flag, _, default, help_text in FLAGS:
        choices = CHOICES.get(flag)
        text = (help_text + (f" (one of {', '.join(choices)})" if choices else "")).replace("|", "\\|")
        rows.append(f"| `{flag}` | `{env_name(flag)}` | `{default}` | {text} |")
    return "\n".join(rows) + "\n"


FLAGS_BEGIN = "<!-- flags:begin"
FLAGS_END = "<!-- flags:end -->"


def write_flags_doc(path) -> bool:
    """Put :func:`flags_markdown` between the flags markers of the Markdown file at ``path``;
    True when the file changed (``make docs``)."""
    from pathlib import Path

    path = Path(path)
    text = path.read_text()
    start = text.index(FLAGS_BEGIN)
    head_end = text.index("\n", start) + 1
    end = text.index(FLAGS_END, head_end)
    new = text[:head_end] + flags_markdown() + text[end:]
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":  # python -m l1pca.service.config docs/service.md
    import sys

    for target in sys.argv[1:]:
        print(f"{target}: {'rewritten' if write_flags_doc(target) else 'already current'}")
