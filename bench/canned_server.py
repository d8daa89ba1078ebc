"""The transport floor for ``bench/service_load.py``: a grpc.aio server of the ``l1pca.v1.L1PCA``
service that answers every ``Fit`` with one canned answer, computed once at start.

No batching, no solver, no checks, no metrics: what is left is what any Python gRPC server and the
load generator spend per call on this machine (connection, HTTP/2 framing, protobuf, asyncio). Its
throughput is the ceiling of every real configuration measured beside it, and the CPU it uses per
request is the part batching cannot share.

    python bench/canned_server.py --port-file ports.json --shape 64x16 -k 2

``--await-ms T``: each ``Fit`` instead awaits a future, and the waiting ones are answered together
every T ms, as a batcher answers a batch: what waiting for a batch costs gRPC and asyncio, with no
work done (T = 45 holds 64 clients to about the batched server's request rate on the 2-core box).

Writes ``{"port": P, "metrics_port": null}`` to ``--port-file`` once listening; stops on SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

import grpc

from l1pca.kernels.fitting import fit_many
from l1pca.proto import wire
from l1pca.v1 import l1pca_pb2 as pb
from l1pca.v1 import l1pca_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_load import make_pool  # noqa: E402 - the benchmark's own data, for a real-sized answer


class CannedServicer(pb_grpc.L1PCAServicer):
    """``Fit`` answers ``response`` whatever the request (after ``await_s``, in groups, if given);
    ``GetServerInfo`` says what this is."""

    def __init__(self, response, info, await_s=None):
        self._response, self._info, self._await_s = response, info, await_s
        self._waiting = []

    async def Fit(self, request, context):
        if self._await_s is None:
            return self._response
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if len(self._waiting) == 1:  # the first of a group sets its timer
            asyncio.get_running_loop().call_later(self._await_s, self._answer_group)
        await future
        return self._response

    def _answer_group(self):
        group, self._waiting = self._waiting, []
        for future in group:
            if not future.done():
                future.set_result(None)

    async def GetServerInfo(self, request, context):
        return self._info


async def serve(port_file, rows, cols, K, await_s=None):
    X = make_pool(rows, cols, K, size=1)[0]
    res = fit_many([X], K, seeds=[0], backend="numpy")[0]
    response = pb.FitResponse(model=wire.encode_model(res))
    info = pb.ServerInfo(version="canned", backend="none (canned answer)", device="cpu")
    server = grpc.aio.server()
    pb_grpc.add_L1PCAServicer_to_server(CannedServicer(response, info, await_s), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    Path(port_file).write_text(json.dumps({"port": port, "metrics_port": None}))
    await stop.wait()
    await server.stop(1.0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port-file", required=True)
    p.add_argument("--shape", default="64x16", help="ROWSxCOLS of the fit whose answer is canned")
    p.add_argument("-k", "--n-components", type=int, default=2)
    p.add_argument("--await-ms", type=float, default=None,
                   help="answer each Fit after waiting, in groups, every this many ms")
    args = p.parse_args(argv)
    rows, cols = (int(v) for v in args.shape.lower().split("x"))
    await_s = None if args.await_ms is None else args.await_ms / 1000.0
    asyncio.run(serve(args.port_file, rows, cols, args.n_components, await_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
