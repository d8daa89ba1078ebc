"""l1pca.client: the Python client of the l1pca service, the ``Model`` it returns, and the CLI."""
from l1pca.kernels.model import Model

__all__ = ["Model", "Client", "AsyncClient", "ClientError", "GROUPS", "Retry", "OutlierScores",
           "tls_credentials"]

_GRPC_NAMES = ("Client", "AsyncClient", "ClientError", "GROUPS", "Retry", "OutlierScores",
               "tls_credentials")


def __getattr__(name):
    # The gRPC client pulls in grpcio; import it on first use so Model works without it.
    if name in _GRPC_NAMES:
        from . import grpc_client

        return getattr(grpc_client, name)
    raise AttributeError(f"module 'l1pca.client' has no attribute {name!r}")
