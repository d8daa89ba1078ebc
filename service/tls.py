"""TLS of the gRPC port: ``--tls-cert`` / ``--tls-key``, and ``--tls-client-ca`` for mutual TLS.

The files are PEM, read once at start (a restart, or a new pod, picks up renewed certificates).
With ``--tls-client-ca`` every client must present a certificate signed by that CA; the handshake
refuses the others before any RPC runs. Error messages name the flag and the path, never the
content.
"""
from __future__ import annotations

from pathlib import Path

import grpc


def _read(path, flag):
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag}={path}: cannot read it ({exc.strerror or exc})") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"{flag}={path} is not a PEM file (no -----BEGIN line)")
    return data


def check_tls_flags(cert, key, client_ca):
    """Refuse inconsistent flag combinations with a message naming the flags."""
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together (the certificate chain and its "
                         f"private key); got --tls-cert={cert!r}, --tls-key={key!r}")
    if client_ca and not cert:
        raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key too")


def server_credentials(cert, key, client_ca=""):
    """``grpc.ServerCredentials`` for the flags, or None when TLS is off (no ``--tls-cert``)."""
    check_tls_flags(cert, key, client_ca)
    if not cert:
        return None
    pair = (_read(key, "--tls-key"), _read(cert, "--tls-cert"))
    if client_ca:
        return grpc.ssl_server_credentials([pair], root_certificates=_read(client_ca, "--tls-client-ca"),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials([pair])
