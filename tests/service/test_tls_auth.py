"""TLS, mutual TLS, bearer tokens and reflection switched off, against a real server.

The tests make their own CA and certificates with the ``cryptography`` package (a trusted CA that
signs the server's and a client's certificate, and a rogue CA that signs an impostor client's).
"""
import datetime
import ipaddress
import signal
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from l1pca.client import Client, ClientError, tls_credentials
from l1pca.service.auth import TokenFile, read_tokens
from l1pca.service.config import ServeConfig
from l1pca.service.testing import ServerThread, value, wait_until

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

X = np.random.default_rng(0).normal(size=(20, 4))
TOKENS = ("tok-alpha-7f3a9c", "tok-beta-0b1d2e")


# -- certificates ---------------------------------------------------------------------------------
def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject_cn, key, issuer_cn, issuer_key, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject_cn)).issuer_name(_name(issuer_cn))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path, cert=None, key=None):
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    files = {}
    ca_key, rogue_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("l1pca test CA", ca_key, "l1pca test CA", ca_key, ca=True)
    rogue = _cert("rogue CA", rogue_key, "rogue CA", rogue_key, ca=True)
    files["ca"] = _write(d / "ca.pem", cert=ca)
    files["rogue_ca"] = _write(d / "rogue-ca.pem", cert=rogue)
    for name, _issuer, issuer_key, issuer_cn, server in (
            ("server", ca, ca_key, "l1pca test CA", True),
            ("client", ca, ca_key, "l1pca test CA", False),
            ("impostor", rogue, rogue_key, "rogue CA", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        files[name + "_cert"] = _write(d / f"{name}.pem", cert=_cert(name, key, issuer_cn, issuer_key,
                                                                      server=server))
        files[name + "_key"] = _write(d / f"{name}-key.pem", key=key)
    return files


def _health(target, credentials=None, metadata=None, timeout=5):
    channel = (grpc.insecure_channel(target) if credentials is None
               else grpc.secure_channel(target, credentials))
    with channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=timeout, metadata=metadata)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def _refused(target, **client_kwargs):
    with pytest.raises(ClientError) as err, \
            Client(target, timeout_s=3, retry=None, **client_kwargs) as client:
        client.fit(X, 1, seed=0)
    return err.value


# -- TLS ------------------------------------------------------------------------------------------
def test_tls_serves_a_client_that_trusts_the_ca_and_refuses_plaintext_and_wrong_ca(pki):
    with ServerThread(tls_cert=pki["server_cert"], tls_key=pki["server_key"]) as srv:
        with Client(srv.target, timeout_s=10, credentials=tls_credentials(pki["ca"])) as client:
            assert client.fit(X, 2, seed=0).components.shape == (2, 4)
        assert _health(srv.target, grpc.ssl_channel_credentials(open(pki["ca"], "rb").read())) \
            == "SERVING"
        assert _refused(srv.target).code == grpc.StatusCode.UNAVAILABLE  # plaintext client
        err = _refused(srv.target, credentials=tls_credentials(pki["rogue_ca"]))  # does not trust it
        assert err.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_clients_without_a_certificate_signed_by_the_client_ca(pki):
    with ServerThread(tls_cert=pki["server_cert"], tls_key=pki["server_key"],
                      tls_client_ca=pki["ca"]) as srv:
        good = tls_credentials(pki["ca"], cert_file=pki["client_cert"], key_file=pki["client_key"])
        with Client(srv.target, timeout_s=10, credentials=good) as client:
            assert client.fit(X, 1, seed=0).n_features == 4
        for kwargs in ({}, {"credentials": tls_credentials(pki["ca"])},  # plaintext; no certificate
                       {"credentials": tls_credentials(pki["ca"], cert_file=pki["impostor_cert"],
                                                       key_file=pki["impostor_key"])}):
            assert _refused(srv.target, **kwargs).code == grpc.StatusCode.UNAVAILABLE
        with Client(srv.target, timeout_s=10, credentials=good) as client:  # still serving
            assert client.server_info().backend == "numpy"
        assert value(srv.metrics(), "l1pca_requests_total", method="Fit", code="OK") == 1


def test_tls_flags_are_checked_and_messages_name_the_flag_not_the_content(pki, tmp_path):
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        ServeConfig(tls_cert=pki["server_cert"])
    with pytest.raises(ValueError, match="--tls-client-ca .* needs --tls-cert"):
        ServeConfig(tls_client_ca=pki["ca"])
    not_pem = tmp_path / "key.txt"
    not_pem.write_text("secret-material-42")
    srv = ServerThread(tls_cert=pki["server_cert"], tls_key=str(not_pem))
    srv._thread.start()
    try:
        with pytest.raises(ValueError) as err:
            srv.run(srv.server.start())
        assert "--tls-key=" in str(err.value) and "secret-material-42" not in str(err.value)
    finally:
        srv.loop.call_soon_threadsafe(srv.loop.stop)
        srv._thread.join(10)
    with pytest.raises(ValueError, match="give both"):
        tls_credentials(pki["ca"], cert_file=pki["client_cert"])


# -- tokens ---------------------------------------------------------------------------------------
@pytest.fixture()
def token_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# accepted tokens\n{TOKENS[0]}\n\n  {TOKENS[1]}  \n")
    return path


def test_tokens_unauthenticated_without_permission_denied_wrong_health_open(token_file):
    with ServerThread(auth_token_file=str(token_file)) as srv:
        for token in TOKENS:
            with Client(srv.target, timeout_s=10, token=token) as client:
                assert client.fit(X, 1, seed=0).n_features == 4
        err = _refused(srv.target)
        assert err.code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in err.details
        err = _refused(srv.target, token="tok-alpha-7f3a9d")  # one character off
        assert err.code == grpc.StatusCode.PERMISSION_DENIED
        assert "tok-alpha" not in err.details  # never echoed
        with grpc.insecure_channel(srv.target) as channel:  # not "Bearer <token>"
            call = channel.unary_unary("/l1pca.v1.L1PCA/GetServerInfo")
            for header in (f"Basic {TOKENS[0]}", "Bearer", TOKENS[0]):
                with pytest.raises(grpc.RpcError) as rpc_err:
                    call(b"", timeout=5, metadata=(("authorization", header),))
                assert rpc_err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health answers probes without a token.
        assert _health(srv.target) == "SERVING"
        # Reflection is behind the token too.
        with grpc.insecure_channel(srv.target) as channel:
            with pytest.raises(grpc.RpcError) as rpc_err:
                list(ProtoReflectionDescriptorDatabase(channel).get_services())
            assert rpc_err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        m = srv.metrics()
        assert value(m, "l1pca_requests_total", method="Fit", code="UNAUTHENTICATED") == 1
        assert value(m, "l1pca_requests_total", method="Fit", code="PERMISSION_DENIED") == 1
        assert value(m, "l1pca_requests_total", method="Fit", code="OK") == 2


def test_token_file_reloads_on_change(token_file):
    with ServerThread(auth_token_file=str(token_file)) as srv:
        with Client(srv.target, timeout_s=10, token=TOKENS[0]) as client:
            assert client.server_info().backend == "numpy"
        token_file.write_text("tok-rotated-91ab\n")

        def rotated():
            try:
                with Client(srv.target, timeout_s=5, retry=None, token="tok-rotated-91ab") as c:
                    c.server_info()
                return True
            except ClientError:
                return False

        assert wait_until(rotated, timeout=10, interval=0.2)  # picked up within the 1 s recheck
        assert _refused(srv.target, token=TOKENS[0]).code == grpc.StatusCode.PERMISSION_DENIED
        token_file.unlink()  # a Secret update in progress: the loaded tokens stay
        time.sleep(1.2)
        assert rotated()


def test_sighup_reloads_the_token_file_and_reflection_can_be_off(serve_process, token_file):
    srv = serve_process("--auth-token-file", str(token_file), "--reflection", "off")
    proc, target = srv.proc, srv.target
    try:
        with Client(target, timeout_s=10, token=TOKENS[1]) as client:
            assert client.server_info().backend == "numpy"
        with grpc.insecure_channel(target) as channel:
            with pytest.raises(grpc.RpcError) as rpc_err:  # with a valid token: not served at all
                stub = channel.stream_stream(
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
                list(stub(iter([b""]), timeout=5, metadata=(("authorization", f"Bearer {TOKENS[1]}"),)))
            assert rpc_err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # Same size and mtime second are no obstacle: SIGHUP re-reads unconditionally.
        token_file.write_text("tok-hup-00000000\n")
        proc.send_signal(signal.SIGHUP)

        def reloaded():
            try:
                with Client(target, timeout_s=5, retry=None, token="tok-hup-00000000") as c:
                    c.server_info()
                return True
            except ClientError:
                return False

        assert wait_until(reloaded, timeout=10, interval=0.2)
        assert _refused(target, token=TOKENS[1]).code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        srv.stop(signal.SIGTERM, timeout_s=30)  # SIGKILL when still running after 30 s
    out = srv.output()
    assert "reloaded 1 tokens" in out
    assert "tok-hup" not in out and TOKENS[1] not in out  # the log never holds a token


def test_token_store_compares_digests_and_parses_the_file(tmp_path):
    path = tmp_path / "t"
    path.write_text("a1\n#b2\n  c3 \n")
    assert read_tokens(path) == [b"a1", b"c3"]
    store = TokenFile(path)
    assert len(store) == 2 and store.accepts(b"a1") and store.accepts(b"c3")
    assert not store.accepts(b"b2") and not store.accepts(b"") and not store.accepts(b"a1 ")
    path.write_text("two words\n")
    with pytest.raises(ValueError, match="line 1 is not one token"):
        TokenFile(path)
    path.write_text("")
    assert not TokenFile(path).accepts(b"")  # an empty file accepts nothing
    with pytest.raises(ValueError, match="one non-empty word"):
        Client("127.0.0.1:1", token="Bearer x")
