"""Solver processes (service/solver_process.py): fits in child processes, answers and failures
as in the server's own process."""
import os
import pickle
import threading
import time

import numpy as np
import pytest

from l1pca.kernels.fitting import fit_many
from l1pca.service.config import ServeConfig, add_serve_arguments
from l1pca.service.executor import FitExecutor, FitKey
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
    with pytest.raises((AttributeError, pickle.PicklingError)):  # cannot be pickled: no call sent
        procs.call("fit_many", Xs[:1], 1, seeds=[0], backend=lambda: "numpy")
    assert procs.call("fit_many", Xs[:1], 1, seeds=[0], backend="numpy")  # still serving


def test_a_dead_child_fails_the_call_it_held_and_is_replaced(procs):
    # Died while idle: the next call never reached it, so it runs on a fresh child.
    child = procs._children[0]
    child.process.kill()
    child.process.join(5)
    res = procs.call("fit_many", [_data(0)], 1, seeds=[0], backend="numpy")[0]
    assert res.components.shape == (1, 6)
    assert procs._children[0] is not child and len(procs._children) == 1
    # Killed during a call (out of memory, say): that call fails, the next one is served.
    child = procs._children[0]
    big = np.random.default_rng(0).standard_normal((4000, 60))  # seconds of NumPy work
    threading.Timer(0.5, child.process.kill).start()
    with pytest.raises(SolverProcessDied, match="ended during the call") as err:
        procs.call("fit_many", [big], 3, n_init=64, seeds=[0], backend="numpy")
    assert err.value.started
    res = procs.call("fit_many", [_data(0)], 1, seeds=[0], backend="numpy")[0]
    assert res.components.shape == (1, 6)
    assert procs._children[0] is not child and len(procs._children) == 1


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
    for _ in range(100):  # until the call is in the child's hands
        if procs._children[0].delivered:
            break
        time.sleep(0.05)
    assert procs.replace_busy() == 1
    t.join(10)
    assert not t.is_alive() and len(errors) == 1
    assert procs.call("fit_many", [_data(1)], 1, seeds=[0], backend="numpy")  # a fresh child serves


def test_two_calls_on_one_child_are_answered_in_order_each_its_own(procs):
    """Pipelining: the second call waits in the child's pipe and starts when the first is answered;
    each caller gets its own answer (the fits differ in size, so a swapped answer would show)."""
    assert procs.depth == 2
    big = np.random.default_rng(1).standard_normal((3000, 40))  # a second or so of NumPy work
    small = _data(3)
    out = {}

    def run(name, X, K):
        out[name] = procs.call_timed("fit_many", [X], K, n_init=16, seeds=[0], backend="numpy")

    first = threading.Thread(target=run, args=("big", big, 3))
    first.start()
    for _ in range(100):  # until the child holds the first call
        if procs._children[0].delivered:
            break
        time.sleep(0.02)
    second = threading.Thread(target=run, args=("small", small, 1))
    second.start()
    for _ in range(100):
        if procs._children[0].inflight == 2:
            break
        time.sleep(0.02)
    assert procs._children[0].inflight == 2  # both on the one child, not waiting for it
    first.join(60)
    second.join(60)
    (big_res, big_started), (small_res, small_started) = out["big"], out["small"]
    assert big_res[0].components.shape == (3, 40) and small_res[0].components.shape == (1, 6)
    want = fit_many([small], 1, n_init=16, seeds=[0], backend="numpy")[0]
    np.testing.assert_array_equal(small_res[0].components, want.components)
    assert small_started > big_started  # it could start only once the first was answered
    assert procs._children[0].inflight == 0


def test_a_call_queued_behind_a_killed_one_runs_on_a_fresh_child(procs):
    """replace_busy kills a child holding a hung call: that call fails, the call waiting behind it
    in the pipe never started there and is run again on the fresh child."""
    big = np.random.default_rng(0).standard_normal((4000, 60))  # seconds of NumPy work
    results = {}

    def run(name, X):
        try:
            results[name] = procs.call("fit_many", [X], 3 if name == "hung" else 1, n_init=64,
                                       seeds=[0], backend="numpy")
        except SolverProcessDied as exc:
            results[name] = exc

    hung = threading.Thread(target=run, args=("hung", big))
    hung.start()
    for _ in range(100):
        if procs._children[0].delivered:
            break
        time.sleep(0.02)
    queued = threading.Thread(target=run, args=("queued", _data(4)))
    queued.start()
    for _ in range(100):
        if procs._children[0].inflight == 2:
            break
        time.sleep(0.02)
    old = procs._children[0]
    assert procs.replace_busy() == 1
    hung.join(30)
    queued.join(60)
    assert isinstance(results["hung"], SolverProcessDied) and results["hung"].started
    want = fit_many([_data(4)], 1, n_init=64, seeds=[0], backend="numpy")[0]
    np.testing.assert_array_equal(results["queued"][0].components, want.components)
    assert procs._children[0] is not old and not old.process.is_alive()


@pytest.mark.slow
def test_auto_fits_a_lone_request_here_and_batches_in_the_child():
    """``--solver-process auto``: a batch goes to the child, and so does a lone request while
    another call computes (next test) or others wait in the server's queue; a lone request with
    nothing else to do runs in this process. Warm-up compiles every batch size in the child and
    batch size 1 here too; each child holds a standby batch."""
    from l1pca.kernels.compile_queue import compiled_buckets

    runner = FitExecutor("jax", solver_process="auto", max_batch_size=4)
    try:
        assert "in 1 solver process(es) (smaller batches than 2 in the solver thread" \
            in runner.describe()
        assert runner.standby_batches == 1 and runner.pool._max_workers == 2
        runner.warm_up([(16, 4)], [1], n_init=3)
        here = {k for k in compiled_buckets() if k[1:] == (16, 8, 1, 3, True, True)}
        assert {k[0] for k in here} == {1}  # only the lone request's program, here
        assert {(b, 16, 8, 1, 3, True, True) for b in (1, 2, 4)} <= runner.compiled_buckets()
        assert (1, 16, 8, 1, 3, True, True) in runner._procs.broadcast("compiled")[0]
        key = FitKey("bitflip", 1, 3, "median", "auto", (16, 8))
        Xs = [_data(5 + i, n=16, d=4) for i in range(3)]
        calls = runner._procs.calls
        got = runner.fit_batch(key, [(X, 7 + i) for i, X in enumerate(Xs)])
        assert runner._procs.calls == calls + 1  # the batch of 3 went to the child
        got_one = runner.fit_batch(key, [(Xs[0], 7)])[0]
        assert runner._procs.calls == calls + 1  # the lone one, alone, did not
        queued_one = runner.fit_batch(key, [(Xs[0], 7)], None, True)[0]
        assert runner._procs.calls == calls + 2  # with requests queued behind it, it did
        want = fit_many(Xs, 1, n_init=3, seeds=[7, 8, 9], backend="jax")
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.components, w.components)
        np.testing.assert_array_equal(got_one.components, want[0].components)
        np.testing.assert_array_equal(queued_one.components, want[0].components)
    finally:
        runner.shutdown()


@pytest.mark.slow
def test_auto_sends_a_lone_request_to_the_child_while_another_call_computes():
    runner = FitExecutor("numpy", solver_process="auto", max_batch_size=1)
    try:
        assert runner._procs is not None and runner.standby_batches == 1
        big = np.random.default_rng(0).standard_normal((3000, 40))  # a second or so of NumPy work
        key_big = FitKey("bitflip", 3, 32, "median", "auto", (4096, 64))
        key = FitKey("bitflip", 1, 8, "median", "auto", (64, 8))
        long_call = runner.submit(runner.fit_batch, key_big, [(big, 0)])  # alone: in the thread
        for _ in range(100):  # until it runs
            if runner._active:
                break
            time.sleep(0.01)
        calls = runner._procs.calls
        got = runner.submit(runner.fit_batch, key, [(_data(2), 3)]).result(60)[0]
        assert runner._procs.calls == calls + 1  # not alone: in the child
        assert not long_call.done()  # it overlapped with the long one
        assert long_call.result(60)[0].components.shape == (3, 40)
        want = fit_many([_data(2)], 1, n_init=8, seeds=[3], backend="numpy")[0]
        np.testing.assert_array_equal(got.components, want.components)
    finally:
        runner.shutdown()


@pytest.mark.slow
def test_the_runner_fits_in_its_process_and_warms_it_up():
    runner = FitExecutor("jax", solver_process="on")
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


def _threads_of(pid):
    """``(names, affinity masks)`` of every thread of process ``pid``."""
    names, masks = [], []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
            masks.append(os.sched_getaffinity(int(tid)))
        except OSError:  # the thread ended meanwhile
            pass
    return names, masks


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux-only")
def test_solver_processes_size_jax_cpu_pool_and_pin_no_thread():
    """--solver-threads reaches the child: 1 (the default) gives XLA's CPU backend one compute
    thread instead of one per CPU, and every thread of the child may still run on every CPU."""
    mask = os.sched_getaffinity(0)
    if len(mask) < 2:
        pytest.skip("one CPU here: a one-thread pool is XLA's default too")
    pools = {}
    for threads in (1, 0):
        runner = FitExecutor("jax", solver_process="on", solver_threads=threads)
        try:
            key = FitKey("bitflip", 1, 3, "median", "auto", (16, 8))
            got = runner.fit_batch(key, [(_data(5, n=16, d=4), 7)])[0]  # JAX ran in the child
            want = fit_many([_data(5, n=16, d=4)], 1, n_init=3, seeds=[7], backend="jax")[0]
            np.testing.assert_array_equal(got.components, want.components)
            names, masks = _threads_of(runner._procs._children[0].process.pid)
        finally:
            runner.shutdown()
        pools[threads] = sum("XLAEigen" in n for n in names)
        assert all(m == mask for m in masks), "a thread of the solver process stayed pinned"
    if pools[0] == 0:
        pytest.skip("no thread named tf_XLAEigen: this jaxlib names its CPU pool threads otherwise")
    assert pools == {1: 1, 0: len(mask)}


def test_the_solver_threads_flag():
    import argparse

    def parse(argv, env=None):
        p = add_serve_arguments(argparse.ArgumentParser(), environ=env or {})
        return ServeConfig.from_args(p.parse_args(argv)).solver_threads

    assert parse([]) == 1
    assert parse(["--solver-threads", "0"]) == 0
    assert parse([], {"L1PCA_SOLVER_THREADS": "4"}) == 4
    with pytest.raises(SystemExit):
        parse(["--solver-threads", "-1"])


def test_release_freed_memory_trims_the_allocator_where_it_can():
    """run_warm_up ends with it (the compiles leave scratch memory in glibc's per-thread arenas);
    the test above fits after a warm-up, so the compiled programs survive it."""
    import platform

    from l1pca.service.warmup import release_freed_memory

    assert release_freed_memory() is (platform.libc_ver()[0] == "glibc")


def test_the_flag_takes_auto_on_off(monkeypatch):
    import argparse

    def parse(argv, env=None):
        p = add_serve_arguments(argparse.ArgumentParser(), environ=env or {})
        return ServeConfig.from_args(p.parse_args(argv)).solver_process

    assert parse([]) == "auto"
    assert parse(["--solver-process", "auto"]) == "auto"
    assert parse(["--solver-process", "off"]) == "off"
    assert parse([], {"L1PCA_SOLVER_PROCESS": "on"}) == "on"
    with pytest.raises(SystemExit):
        parse(["--solver-process", "sometimes"])
    with pytest.raises(ValueError, match="solver_process='maybe'"):
        FitExecutor("numpy", solver_process="maybe")


def test_a_server_with_solver_processes_answers_as_a_direct_fit():
    """Through gRPC: batches formed in the server, fitted in its solver process, equal the direct
    fits; a bad request fails alone and the server goes on."""
    import asyncio

    from l1pca.client import AsyncClient, Client, ClientError
    from l1pca.service.testing import ServerThread

    jobs = [(_data(i, n=20 + i % 3, d=5), i) for i in range(12)]
    with ServerThread(solver_process="on", max_batch_size=8, max_delay_ms=20) as srv:
        assert srv.server.executor.describe().endswith("in 1 solver process(es)")

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


@pytest.mark.slow
def test_a_batch_waiting_behind_a_hung_one_is_timed_from_its_own_start():
    """--solve-timeout-s counts from when the solver process could start a batch. A full batch
    handed over while a long one computes waits in the child's pipe; when the long one runs over
    the timeout and its process is killed, the waiting batch runs on the fresh process and is
    answered (timed from the hand-over, it would fail UNAVAILABLE with the hung one)."""
    from l1pca.client import Client, ClientError
    from l1pca.service.testing import ServerThread, value

    big = np.random.default_rng(0).standard_normal((20000, 60))  # far more than 3 s of NumPy work
    small = [_data(5), _data(6)]
    with ServerThread(solver_process="on", max_batch_size=2, max_delay_ms=1,
                      solve_timeout_s=3.0) as srv:
        child = srv.server.executor._procs._children[0]
        results = {}

        def fit(name, X, K, n_init):
            try:
                with Client(srv.target, timeout_s=60, retry=None) as client:
                    results[name] = client.fit(X, K, seed=7, n_init=n_init)
            except ClientError as err:
                results[name] = err

        threads = [threading.Thread(target=fit, args=("big", big, 3, 64))]
        threads[0].start()
        for _ in range(200):  # until the child holds the long call
            if child.inflight == 1:
                break
            time.sleep(0.05)
        assert child.inflight == 1
        threads += [threading.Thread(target=fit, args=(i, X, 2, 8)) for i, X in enumerate(small)]
        for t in threads[1:]:
            t.start()
        for _ in range(200):  # the two small fits: one full batch, in the same child's pipe
            if child.inflight == 2:
                break
            time.sleep(0.02)
        assert child.inflight == 2
        for t in threads:
            t.join(60)
        err = results["big"]
        assert isinstance(err, ClientError) and err.code.name == "UNAVAILABLE", err
        for i, X in enumerate(small):
            want = fit_many([X], 2, n_init=8, seeds=[7], backend="numpy")[0]
            assert not isinstance(results[i], ClientError), results[i]
            np.testing.assert_array_equal(results[i].components, want.components)
        assert srv.server.executor.worker_restarts == 1
        assert value(srv.metrics(), "l1pca_worker_restarts_total") == 1
        assert not child.process.is_alive()
