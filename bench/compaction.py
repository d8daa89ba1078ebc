"""Lane compaction in the batched JAX search: CPU per ``solve_bucket`` call for each
``COMPACT_FACTOR`` (how much smaller each lane array is than the last, as searches end).

The batched search (``l1pca.kernels.bitflip_jax._flip_loop``) steps every start of every problem
while more than ``lanes / COMPACT_FACTOR`` of them run, then gathers the running ones into an array
that many times smaller, and so on down. A small factor keeps fewer finished searches in the arrays
but adds levels (each a gather, a loop and a scatter). The factor is read when the search is traced,
so each measurement runs in a fresh interpreter with it set; the factors alternate, ``--rounds``
times, so that their ratios are side by side on a noisy machine. Two kinds of data, 64 x 16, K = 2,
8 starts: Gaussian matrices (long searches) and the matrices ``bench/service_load.py`` sends (rank 2
plus noise plus outliers, median-centred as the service centres them: shorter searches).

    python bench/compaction.py            # writes bench/results/compaction.{md,json}
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _bucket_cpu import compare_variants
from _report import machine, machine_sentence, write_results

ROOT = Path(__file__).resolve().parents[1]

FACTORS = (8, 4, 2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=60, help="timed calls per measurement (a third of "
                                                          "that for batches of 64)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "compaction"))
    args = p.parse_args(argv)
    rows = compare_variants({f: f"bitflip_jax.COMPACT_FACTOR = {f}" for f in FACTORS}, args.rounds,
                            args.calls, label=lambda f: f"factor {f}")
    info = machine()
    result = {"machine": info, "rounds": args.rounds, "calls": args.calls, "rows": rows}
    base = FACTORS[0]
    lines = [
        "# Lane compaction in the batched JAX search: `bench/compaction.py`", "",
        machine_sentence(info) +
        "CPU time per `solve_bucket` call (64 x 16, K=2, 8 starts; JAX's CPU pool at one thread, as "
        f"the service runs it), median of {args.calls} calls ({max(2, args.calls // 3)} for 64 "
        f"matrices) after the compile, in a fresh interpreter per measurement; the factors take turns, "
        f"{args.rounds} rounds; medians of the rounds. `gaussian`: standard normal matrices; "
        "`service`: the matrices `bench/service_load.py` sends, median-centred.", "",
        "| data | matrices per call | " + " | ".join(f"factor {f}: CPU ms" for f in FACTORS) + " | "
        + " | ".join(f"{f} / {base}" for f in FACTORS[1:]) + " |",
        "|---|---:|" + "---:|" * (2 * len(FACTORS) - 1),
    ]
    for row in rows:
        med = row["median_cpu_ms"]
        lines.append(f"| {row['data']} | {row['batch']} | "
                     + " | ".join(f"{med[f]:.2f}" for f in FACTORS) + " | "
                     + " | ".join(f"{med[f] / med[base]:.2f}" for f in FACTORS[1:]) + " |")
    lines += ["", "Ratios below 1: cheaper than a factor of 8 (the setting before 2026-12-02). "
              "`l1pca.kernels.bitflip_jax.COMPACT_FACTOR` is 4.", ""]
    write_results(args.out, result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
