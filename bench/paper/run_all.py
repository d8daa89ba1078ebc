"""Regenerate every table and figure of ``bench/paper/`` (``make bench-paper``).

Runs each script in its own process, one after another (they are single-threaded and time methods
side by side, so running them concurrently would only add noise), passes ``--quick``, ``--out`` and
``--seed`` through, and (when all scripts ran) writes ``paper_runtime.md`` with the wall time of each.

    python bench/paper/run_all.py [--quick] [--out DIR] [--seed S] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

SCRIPTS = ("optimality", "subspace_recovery", "classification", "fault_detection")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds per script)")
    parser.add_argument("--out", type=Path, default=common.RESULTS, help="output folder")
    parser.add_argument("--seed", type=int, default=common.DEFAULT_SEED, help="root seed")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS),
                        help="run only these scripts")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    times, failed = [], []
    t_all = time.perf_counter()
    for name in args.only:
        cmd = [sys.executable, str(HERE / f"{name}.py"), "--out", str(args.out), "--seed", str(args.seed)]
        if args.quick:
            cmd.append("--quick")
        print(f"== {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        times.append((name, time.perf_counter() - t0, rc))
        if rc != 0:
            failed.append(name)
    total = time.perf_counter() - t_all
    rows = [[f"`bench/paper/{n}.py`", f"{t:.0f}", "ok" if rc == 0 else f"failed (exit {rc})"]
            for n, t, rc in times]
    rows.append(["total", f"{total:.0f}", "ok" if not failed else f"{len(failed)} failed"])
    lines = [f"# Wall time of `bench/paper/run_all.py`{' --quick' if args.quick else ''}", "",
             f"Machine: {common.cpu_description()}; git {common.git_revision()}; other jobs were "
             "running on the machine at the same time, so these are upper bounds.", "",
             common.md_table(["script", "wall time (s)", "status"], rows), ""]
    if set(args.only) == set(SCRIPTS):  # a partial run must not replace the full run's record
        (args.out / "paper_runtime.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
