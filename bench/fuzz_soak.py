"""Fuzz soak: 10,000+ random bad-input cases against one ``l1pca serve`` process, counted.

The generators of ``tests/service/fuzz_strategies.py`` (malformed protobuf bytes to every RPC,
garbage Matrix / FitOptions fields with claimed shapes up to 2**64 - 1, adversarial matrices from
denormal to 1e308, zeros, constant / duplicated columns, rank 1, N=1, D=1, K=D, float32 overflow,
relabelled dtypes) run randomised (not the derandomised set of ``make test``). Every case must end
OK (with finite, orthonormal components) or INVALID_ARGUMENT, within the deadline, and the server
must answer the next request; the server's RSS is sampled throughout. A case that breaks the
service's contract (a status other than OK / INVALID_ARGUMENT / DEADLINE_EXCEEDED, an answer later
than the deadline, a server that stops answering) stops the run; a request answered
DEADLINE_EXCEEDED at its deadline (an input the solver is slow on) is counted and saved; a fit whose
answer breaks a solver property (non-orthonormal or non-finite components) is counted and its
request saved (base64) in the results, and the run goes on.

    python bench/fuzz_soak.py                 # 10,000 cases
    python bench/fuzz_soak.py --cases 20000

Writes ``bench/results/fuzz_soak.json``.
"""
from __future__ import annotations

import argparse
import base64
import collections
import sys
import tempfile
import time
from pathlib import Path

from _reliability import ROOT, machine, rss_mib, start_server, stop_server, write_json

sys.path.insert(0, str(ROOT / "tests" / "service"))

import grpc  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_strategies import (  # noqa: E402
    RPCS,
    adversarial_fit,
    check_answer,
    garbage_matrix_request,
    model_msg,
    raw_call,
    timed_raw_call,
)

MAX_ROWS, MAX_COLS = 1_000_000, 100_000
SERVER_FLAGS = ["--backend", "numpy", "--max-rows", str(MAX_ROWS), "--max-cols", str(MAX_COLS),
                "--max-n-init", "16", "--max-delay-ms", "0.5"]
TIMEOUT_S = 10.0

CASES = st.one_of(
    st.tuples(st.just("malformed bytes"), st.sampled_from(RPCS), st.binary(max_size=1024)),
    st.tuples(st.just("garbage fields"), garbage_matrix_request(max_rows=MAX_ROWS, max_cols=MAX_COLS)),
    st.tuples(st.just("adversarial fit"), adversarial_fit()),
    st.tuples(st.just("adversarial fit"), adversarial_fit()),
    st.tuples(st.just("adversarial vs model"),
              adversarial_fit(rpc="Transform") | adversarial_fit(rpc="ScoreOutliers")),
)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--name", default="fuzz_soak")
    args = p.parse_args(argv)
    log_path = Path(tempfile.gettempdir()) / "l1pca-fuzz-soak.log"
    proc, target, _mport = start_server(SERVER_FLAGS, (64, 16), 1, log_path)
    counts = collections.Counter()
    by_kind = collections.defaultdict(collections.Counter)
    worst = {"s": 0.0}
    rss = [rss_mib(proc.pid)]
    failure = None
    violations = []
    slow = []  # requests the solver could not finish within the deadline
    t_start = time.perf_counter()
    try:
        with grpc.insecure_channel(target) as channel:
            import numpy as np

            from l1pca.proto import wire
            from l1pca.v1 import l1pca_pb2 as pb

            X = np.random.default_rng(1).normal(size=(30, 4))
            fit_req = pb.FitRequest(x=wire.encode_matrix(X), options=pb.FitOptions(n_components=2))
            good = pb.FitResponse.FromString(
                raw_call(channel, "Fit")(fit_req.SerializeToString(), timeout=30)).model
            info = raw_call(channel, "GetServerInfo")

            @settings(max_examples=args.cases, deadline=None, database=None, derandomize=False,
                      suppress_health_check=list(HealthCheck), print_blob=True)
            @given(case=CASES)
            def run(case):
                kind = case[0]
                if kind == "malformed bytes":
                    method, payload, request = case[1], case[2], None
                else:
                    method, request = case[1]
                    if method in ("Transform", "ScoreOutliers") and request.HasField("model"):
                        request.model.CopyFrom(model_msg(request.model, good))
                    payload = request.SerializeToString()
                code, details, out, elapsed = timed_raw_call(channel, method, payload, TIMEOUT_S)
                worst["s"] = max(worst["s"], elapsed)
                counts["sent"] += 1
                counts[code.name] += 1
                by_kind[kind][code.name] += 1
                assert elapsed < TIMEOUT_S + 1.0, f"{method} answered {elapsed:.1f} s after a " \
                    f"{TIMEOUT_S:g} s deadline"
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:  # answered at the deadline: slow input
                    if len(slow) < 5:
                        slow.append({"rpc": method, "elapsed_s": elapsed,
                                     "request_b64": base64.b64encode(payload).decode()})
                elif request is not None:
                    try:
                        check_answer(method, request, code, details, out)
                    except AssertionError as exc:
                        if code != grpc.StatusCode.OK:
                            raise
                        counts["solver property violated"] += 1
                        if len(violations) < 5:
                            violations.append({"rpc": method, "error": str(exc)[:300],
                                               "request_b64": base64.b64encode(payload).decode()})
                else:
                    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), code
                pb.ServerInfo.FromString(info(b"", timeout=5))  # the next request is served
                counts["next request served"] += 1
                if counts["sent"] % 1000 == 0:
                    rss.append(rss_mib(proc.pid))
                    print(f"{counts['sent']} cases, {dict(counts)}, server RSS {rss[-1]:.0f} MiB",
                          flush=True)

            try:
                run()
            except Exception as exc:  # noqa: BLE001 - recorded and reported
                failure = "\n".join([f"{type(exc).__name__}: {exc}", *getattr(exc, "__notes__", [])])
    finally:
        alive = proc.poll() is None
        rss.append(rss_mib(proc.pid))
        exit_code = stop_server(proc)
    wall = time.perf_counter() - t_start
    result = {
        "machine": machine(), "server_flags": SERVER_FLAGS, "cases_requested": args.cases,
        "cases_sent": counts["sent"],
        "codes": {k: v for k, v in counts.items()
                  if k not in ("sent", "next request served", "solver property violated")},
        "solver_property_violations": counts["solver property violated"],
        "violation_examples": violations,
        "deadline_exceeded_examples": slow,
        "next_request_served": counts["next request served"],
        "by_kind": {k: dict(v) for k, v in by_kind.items()}, "worst_latency_s": worst["s"],
        "server_alive_at_end": alive, "server_exit_code": exit_code,
        "server_rss_mib": {"start": rss[0], "end": rss[-1], "max": max(rss)}, "wall_s": wall,
        "failure": failure,
    }
    path = write_json(args.name, result)
    print(f"wrote {path}: {counts['sent']} cases in {wall:.0f} s, codes {result['codes']}, "
          f"worst {worst['s'] * 1e3:.0f} ms, RSS {rss[0]:.0f} -> {rss[-1]:.0f} MiB, failure: {failure}")
    return 0 if failure is None and alive and counts["sent"] >= args.cases else 1


if __name__ == "__main__":
    sys.exit(main())
