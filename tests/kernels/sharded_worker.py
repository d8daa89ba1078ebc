"""Runs in a subprocess with 8 simulated CPU devices (XLA_FLAGS set by tests/kernels/test_sharded.py) and
prints JSON measurements of the sharded solver for the test to check."""
import json
import sys
import tempfile

import jax
import numpy as np

from l1pca.kernels import sharded, solve


def main():
    out = {"n_devices": len(jax.devices()), "cases": []}
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1003, 7)) + rng.standard_t(2, (1003, 7))  # 1003: not a multiple of 2, 4, 8
    for K, warm in ((1, True), (2, False), (3, True)):  # each a compile per mesh: keep them few
        ref = solve(X, K, random_state=1, n_init=3, backend="numpy", warm_start=warm)
        for nd in (1, 2, 4, 8):
            res = solve(X, K, random_state=1, n_init=3, devices=nd, warm_start=warm)
            out["cases"].append({
                "K": K, "warm": warm, "devices": nd, "backend": res.backend,
                "same_signs": bool(np.array_equal(res.signs, ref.signs)),
                "objective_diff": abs(res.objective - ref.objective) / ref.objective,
                "components_diff": float(np.abs(res.components - ref.components).max()),
                "flips": [res.n_flips, ref.n_flips],
            })
    with tempfile.TemporaryDirectory() as d:
        np.save(f"{d}/x.npy", X)
        mm = np.load(f"{d}/x.npy", mmap_mode="r")
        a = solve(mm, 2, random_state=1, devices="all")
        b = solve(X, 2, random_state=1, backend="numpy")
        out["memmap_same"] = bool(np.array_equal(a.signs, b.signs))
        bad = X.copy()
        bad[700, 3] = np.nan
        np.save(f"{d}/bad.npy", bad)
        try:
            solve(np.load(f"{d}/bad.npy", mmap_mode="r"), 1, devices=4)
            out["nan_error"] = None
        except ValueError as exc:
            out["nan_error"] = str(exc)
    mesh = sharded.make_mesh(8)
    Xs, _ = sharded.shard_rows(X[:1000], mesh)  # an input that arrives as a sharded jax.Array
    c = solve(Xs, 1, random_state=1, mesh=mesh)
    out["jax_array_same"] = bool(np.array_equal(c.signs, solve(X[:1000], 1, random_state=1).signs))
    out["collectives"] = sharded.collectives_per_flip(mesh, 1000, 7, 2)
    for kwargs, key in [(dict(X=rng.standard_normal((4, 9)), n_components=1, devices=2), "wide"),
                        (dict(X=X, n_components=1, devices=2, method="exact"), "method")]:
        try:
            solve(**kwargs)
            out[key] = None
        except ValueError as exc:
            out[key] = str(exc)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
