"""Solver processes (service/solver_process.py): fits in child processes, answers and failures
as in the server's own process."""
import threading
import time

import numpy as np
import pytest

from l1pca.kernels.fitting import fit_many
from l1pca.service.config import ServeConfig, add_serve_arguments
from l1pca.service.runner import FitKey, SolverRunner
from l1pca.service.solver_process import SolverProcessDied, SolverProcesses


def _data(seed, n=40, d=6):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)) @ rng.normal(size=(2, d)) + 0.1 * rng.normal(size=(n, d))
    X[:2] += 8.0
    return X


@pytest.fixture
def procs():
    pool = SolverProcesses(1)
    yield pool
    pool.close()


def test_a_child_fits_what_this_process_fits_and_raises_its_errors(procs):
    Xs = [_data(i) for i in range(3)]
    got = procs.call("fit_many", Xs, 2, seeds=[0, 1, 2], backend="numpy")
    want = fit_many(Xs, 2, seeds=[0, 1, 2], backend="numpy")
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.components, w.components)
        np.testing.assert_array_equal(g.training_scores, w.training_scores)
        assert (g.threshold, g.objective, g.n_flips) == (w.threshold, w.objective, w.n_flips)
    with pytest.raises(ValueError, match="seeds has 1 entries for 2 matrices"):
        procs.call("fit_many", Xs[:2], 1, seeds=[0])
    assert procs.call("fit_many", Xs[:1], 1, seeds=[0], backend="numpy")  # still serving


def test_a_dead_child_fails_its_call_and_is_replaced(procs):
    child = procs._idle.queue[0]
    child.process.kill()
    child.process.join(5)
    with pytest.raises(SolverProcessDied, match="ended during the call"):
        procs.call("fit_many", [_data(0)], 1, seeds=[0], backend="numpy")
    res = procs.call("fit_many", [_data(0)], 1, seeds=[0], backend="numpy")[0]
    assert res.components.shape == (1, 6)
    assert procs._idle.queue[0] is not child


def test_replace_busy_ends_a_call_that_runs_too_long(procs):
    big = np.random.default_rng(0).standard_normal((4000, 60))  # seconds of NumPy work
    errors = []

    def long_call():
        try:
            procs.call("fit_many", [big], 3, n_init=64, seeds=[0], backend="numpy")
        except SolverProcessDied as exc:
            errors.append(exc)

    t = threading.Thread(target=long_call)
    t.start()
    for _ in range(100):  # until the call holds the child
        if procs._busy:
            break
        time.sleep(0.05)
    assert procs.replace_busy() == 1
    t.join(10)
    assert not t.is_alive() and len(errors) == 1
    assert procs.call("fit_many", [_data(1)], 1, seeds=[0], backend="numpy")  # a fresh child serves


def test_the_runner_fits_in_its_process_and_warms_it_up():
    runner = SolverRunner("jax", solver_process="on")
    try:
        assert "solver process" in runner.describe()
        runner.warm_up([(16, 4)], [1], n_init=3)
        assert (1, 16, 8, 1, 3, True, True) in runner.compiled_buckets()
        key = FitKey("bitflip", 1, 3, "median", "auto", (16, 8))
        got = runner.fit_batch(key, [(_data(5, n=16, d=4), 7)])[0]
        want = fit_many([_data(5, n=16, d=4)], 1, n_init=3, seeds=[7], backend="jax")[0]
        np.testing.assert_array_equal(got.components, want.components)
        assert got.threshold == want.threshold
    finally:
        runner.shutdown()


def test_the_flag_takes_auto_on_off(monkeypatch):
    import argparse

    def parse(argv, env=None):
        p = add_serve_arguments(argparse.ArgumentParser(), environ=env or {})
        return ServeConfig.from_args(p.parse_args(argv)).solver_process

    assert parse([]) == "off"
    assert parse(["--solver-process", "auto"]) == "auto"
    assert parse(["--solver-process", "off"]) == "off"
    assert parse([], {"L1PCA_SOLVER_PROCESS": "on"}) == "on"
    with pytest.raises(SystemExit):
        parse(["--solver-process", "sometimes"])
    with pytest.raises(ValueError, match="solver_process='maybe'"):
        SolverRunner("numpy", solver_process="maybe")


def test_a_server_with_solver_processes_answers_as_a_direct_fit():
    """Through gRPC: batches formed in the server, fitted in its solver process, equal the direct
    fits; a bad request fails alone and the server goes on."""
    import asyncio

    from conftest_service import ServerThread

    from l1pca.client import AsyncClient, Client, ClientError

    jobs = [(_data(i, n=20 + i % 3, d=5), i) for i in range(12)]
    with ServerThread(solver_process="on", max_batch_size=8, max_delay_ms=20) as srv:
        assert srv.server.runner.describe().endswith("in 1 solver process(es)")

        async def fit_all():
            async with AsyncClient(srv.target, timeout_s=60) as client:
                return await asyncio.gather(*(client.fit(X, 2, seed=s) for X, s in jobs))

        models = asyncio.run(fit_all())
        for (X, seed), model in zip(jobs, models):
            direct = fit_many([X], 2, seeds=[seed], backend="numpy")[0]
            np.testing.assert_array_equal(model.components, direct.components)
            assert model.threshold == direct.threshold
        with Client(srv.target, timeout_s=30) as client:
            with pytest.raises(ClientError) as err:
                client.fit(_data(0, n=3, d=5), 4, seed=0)  # K > rows
            assert err.value.code.name == "INVALID_ARGUMENT"
            assert client.fit(_data(1), 1, seed=0).components.shape == (1, 6)
