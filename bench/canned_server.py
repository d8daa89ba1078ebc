"""The transport floor for ``bench/service_load.py``: a grpc.aio server of the ``l1pca.v1.L1PCA``
service that answers every ``Fit`` with one canned answer, computed once at start.

No batching, no solver, no checks, no metrics: what is left is what any Python gRPC server and the
load generator spend per call on this machine (connection, HTTP/2 framing, protobuf, asyncio). Its
throughput is the ceiling of every real configuration measured beside it, and the CPU it uses per
request is the part batching cannot share.

    python bench/canned_server.py --port-file ports.json --shape 64x16 -k 2

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

from l1pca.client import wire
from l1pca.kernels.fitting import fit_many
from l1pca.v1 import l1pca_pb2 as pb
from l1pca.v1 import l1pca_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_load import make_pool  # noqa: E402 - the benchmark's own data, for a real-sized answer


class CannedServicer(pb_grpc.L1PCAServicer):
    """``Fit`` answers ``response`` whatever the request; ``GetServerInfo`` says what this is."""

    def __init__(self, response, info):
        self._response, self._info = response, info

    async def Fit(self, request, context):
        return self._response

    async def GetServerInfo(self, request, context):
        return self._info


async def serve(port_file, rows, cols, K):
    X = make_pool(rows, cols, K, size=1)[0]
    res = fit_many([X], K, seeds=[0], backend="numpy")[0]
    response = pb.FitResponse(model=wire.encode_fit_result(res, seed=0))
    info = pb.ServerInfo(version="canned", backend="none (canned answer)", device="cpu")
    server = grpc.aio.server()
    pb_grpc.add_L1PCAServicer_to_server(CannedServicer(response, info), server)
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
    args = p.parse_args(argv)
    rows, cols = (int(v) for v in args.shape.lower().split("x"))
    asyncio.run(serve(args.port_file, rows, cols, args.n_components))
    return 0


if __name__ == "__main__":
    sys.exit(main())
