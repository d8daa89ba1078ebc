"""Python client of the l1pca service: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

>>> from l1pca.client import Client
>>> with Client("127.0.0.1:50051", timeout_s=30) as client:          # doctest: +SKIP
...     model = client.fit(X, n_components=2, seed=0)
...     Z = client.transform(model, X)
...     result = client.score_outliers(X, model=model)

NumPy in, NumPy out; the fitted :class:`~l1pca.client.Model` is kept by the caller (the service is
stateless) and also works locally (``model.transform(X)``, ``model.score_samples(X)``).

* Errors: one type, :class:`ClientError`, raised ``from`` the gRPC error, with the status code kept in
  ``err.code`` (a :class:`grpc.StatusCode`) and the server's message in ``err.details``. Input that
  would be refused is refused here, before sending, with ``INVALID_ARGUMENT``.
* Deadlines: ``timeout_s`` bounds a whole call, retries included; each attempt gets what is left.
  A call retries into a server that is not up yet; ``client.wait_for_server(5)`` fails fast instead
  (UNAVAILABLE, "no server at HOST:PORT (nothing answered within 5 s)").
* Size limits: a request over the server's ``--max-request-bytes`` fails with RESOURCE_EXHAUSTED and
  a message that says what to do (float32, fewer rows per call, a larger limit, a local fit). After
  ``client.server_info()`` the client knows the limits (``client.limits``) and refuses such a request
  before sending it.
* Retries: :class:`Retry`, full-jitter exponential backoff, only for transient codes (UNAVAILABLE,
  CANCELLED from the server's side, RESOURCE_EXHAUSTED except a message over the size limit, which no
  retry can fix).
* Security: ``credentials=tls_credentials(ca_file=..., cert_file=..., key_file=...)`` for TLS (the
  certificate pair for mutual TLS), ``token=...`` sends ``authorization: Bearer <token>`` with every
  call (over TLS, or plaintext on loopback). The token never appears in an error message.
* Targets: ``"host:port"``; any gRPC URI (``"dns:///l1pca.ns.svc:50051"``, the Kubernetes headless
  service pattern, balances over every address the name resolves to); or ``"h1:p1,h2:p2"``, resolved
  once to an ``ipv4:`` / ``ipv6:`` address list. The channel balances calls round-robin.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import grpc
import numpy as np

from l1pca.kernels import Model
from l1pca.kernels._validation import check_layout, nonfinite_error
from l1pca.kernels.options import DEFAULT_SUPPORT_FRACTION
from l1pca.proto import wire
from l1pca.v1 import l1pca_pb2 as pb
from l1pca.v1 import l1pca_pb2_grpc as pb_grpc

# CANCELLED is transient here: a gRPC server that shuts down (a drained replica, a rollout) ends the
# calls it has received but not yet handed to a handler with CANCELLED, not UNAVAILABLE
# (grpc/grpc#41785). This client never cancels a call itself (its own deadline ends as
# DEADLINE_EXCEEDED, and an asyncio cancellation raises CancelledError, not an RpcError), so a
# CANCELLED status always comes from the far side; and every l1pca RPC is stateless and
# idempotent, so sending it again, most likely to another replica, is safe.
TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                             grpc.StatusCode.RESOURCE_EXHAUSTED})

_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


GROUPS = tuple(name[len("OUTLIER_GROUP_"):].lower().replace("_", " ")
               for name in pb.OutlierGroup.keys())
"""Names of the outlier map's groups, indexed by ``OutlierScores.group``: "regular", "good
leverage", "orthogonal outlier", "bad leverage" (the kernels' ``scoring.GROUPS``)."""


class ClientError(Exception):
    """An error of a call to the l1pca service.

    Attributes
    ----------
    code : grpc.StatusCode
    details : str
        The server's message (what was wrong and what to do).
    """

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, err: grpc.RpcError, note: str = ""):
        code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
        details = err.details() if callable(getattr(err, "details", None)) else str(err)
        return cls(code, f"{details or ''}{note}")


@dataclass(frozen=True)
class Retry:
    """Retry policy: full-jitter exponential backoff on transient status codes.

    The n-th retry sleeps a uniform random time in ``[0, min(maximum_s, initial_s * multiplier**n)]``
    (AWS "full jitter": concurrent clients spread out). Retrying stops at the call's deadline, after
    ``deadline_s`` seconds if that is shorter, or after ``max_attempts`` attempts.
    """

    initial_s: float = 0.05
    maximum_s: float = 2.0
    multiplier: float = 2.0
    deadline_s: float | None = None
    max_attempts: int = 1000
    codes: frozenset = TRANSIENT_CODES

    def retryable(self, code, details):
        if code not in self.codes:
            return False
        # RESOURCE_EXHAUSTED also reports a message over the size limit: retrying cannot help.
        return not (code == grpc.StatusCode.RESOURCE_EXHAUSTED and _oversized(details))

    def sleep_s(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.maximum_s, self.initial_s * self.multiplier ** attempt))


DEFAULT_RETRY = Retry()


class OutlierScores(NamedTuple):
    """Answer of ``score_outliers``. Every score is higher = more outlying (PyOD's sign).

    scores : ndarray (n_samples,)
        The orthogonal distance OD, each sample's distance from the model's subspace (also ``od``).
    is_outlier : ndarray (n_samples,) of bool
        The rows the detector flags: ``outlier_score > model.score_cutoff`` (``model.predict == -1``);
        ``scores > model.threshold`` for a model without the outlier map.
    entry_scores : ndarray (n_samples, n_features) or None
        Standardised cell residuals ``|z|`` (comparable across features), when asked for.
    model : Model
        The model used (the fitted one when no model was given).
    sd : ndarray (n_samples,) or None
        The score distance SD (None for a model without the outlier map).
    group : ndarray (n_samples,) of int8 or None
        The outlier map's group of each row, an index into :data:`GROUPS` ("regular",
        "good leverage", "orthogonal outlier", "bad leverage").
    outlier_score : ndarray (n_samples,) or None
        ``max(SD / sd_cutoff, OD / od_cutoff)``, the combined score for ranking.
    cell_flags : ndarray (n_samples, n_features) of bool or None
        Deviating cells (``entry_scores > cell_cutoff``), when entry scores were asked for.
    cell_cutoff : float
        The cutoff of ``cell_flags`` on ``|z|``.
    """

    scores: np.ndarray
    is_outlier: np.ndarray
    entry_scores: np.ndarray | None
    model: Model
    sd: np.ndarray | None = None
    group: np.ndarray | None = None
    outlier_score: np.ndarray | None = None
    cell_flags: np.ndarray | None = None
    cell_cutoff: float = float("nan")

    @property
    def od(self):
        """The orthogonal distance (``scores``)."""
        return self.scores

    @property
    def outlier_rows(self):
        """Indices of the flagged rows, ascending."""
        return np.flatnonzero(self.is_outlier)

    @property
    def group_names(self):
        """The group of each row by name (None without the outlier map)."""
        return None if self.group is None else np.asarray(GROUPS, dtype=object)[self.group]


# -- targets and channels ---------------------------------------------------------------------
def tls_credentials(ca_file=None, cert_file=None, key_file=None) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files.

    Parameters
    ----------
    ca_file : str, optional
        CA bundle that signed the server's certificate; default: the system's roots.
    cert_file, key_file : str, optional
        This client's certificate chain and private key, for servers with ``--tls-client-ca``
        (mutual TLS); both or neither.
    """
    if bool(cert_file) != bool(key_file):
        raise ValueError(f"cert_file={cert_file!r} and key_file={key_file!r}: give both (mutual TLS) "
                         "or neither")

    def read(path, name):
        if not path:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"{name}={str(path)!r}: cannot read it ({exc.strerror or exc})") from None

    return grpc.ssl_channel_credentials(root_certificates=read(ca_file, "ca_file"),
                                        private_key=read(key_file, "key_file"),
                                        certificate_chain=read(cert_file, "cert_file"))


def _auth_metadata(token):
    if token is None:
        return None
    token = str(token).strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError("token must be one non-empty word (the bearer token, without 'Bearer ')")
    return (("authorization", f"Bearer {token}"),)



def _split_host_port(part):
    if part.startswith("["):
        host, _, rest = part[1:].partition("]")
        return host, rest.lstrip(":")
    host, _, port = part.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"target entry {part!r} is not HOST:PORT")
    return host, port


def resolve_target(target: str) -> str:
    """The gRPC target for ``target`` (see the module docstring for the accepted forms)."""
    parts = [p.strip() for p in target.split(",") if p.strip()]
    if not parts:
        raise ValueError("target is empty; give HOST:PORT")
    if len(parts) == 1:
        return parts[0]
    v4, v6 = [], []
    for part in parts:
        host, port = _split_host_port(part)
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:
            ips = [ipaddress.ip_address(info[4][0]) for info in
                   socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)]
        if any(ip.version == 4 for ip in ips):
            v4 += [f"{ip}:{port}" for ip in dict.fromkeys(ips) if ip.version == 4]
        else:
            v6 += [f"[{ip}]:{port}" for ip in dict.fromkeys(ips)]
    if v4 and v6:
        raise ValueError(f"target {target!r} mixes IPv4 and IPv6 addresses; gRPC needs one family")
    return "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)


def _channel_options(options):
    base = {
        "grpc.max_send_message_length": -1,
        "grpc.max_receive_message_length": -1,
        "grpc.service_config": _SERVICE_CONFIG,
        # Reconnect soon after a server (re)starts; the retry policy paces the calls.
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.min_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 2000,
    }
    base.update(dict(options or ()))
    return list(base.items())


# -- requests and answers (shared by both clients) ----------------------------------------------
def _check_x(X, name="X"):
    """``X`` as a ``Matrix`` message, refused with the library's words (:mod:`l1pca.kernels`) before
    anything is sent. float32 stays float32 (half the bytes on the wire)."""
    try:
        arr = check_layout(np.asarray(X), name=name)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise nonfinite_error(arr, name=name)
        return wire.encode_matrix(arr, name=name)
    except (TypeError, ValueError) as exc:
        raise ClientError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def _options(X_msg, n_components, **kwargs):
    limit = min(X_msg.rows, X_msg.cols)
    if n_components != "auto" and (
            isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer))
            or not 1 <= n_components <= limit):
        raise ClientError(grpc.StatusCode.INVALID_ARGUMENT,
                          f"n_components={n_components!r} must be 'auto' or an int in "
                          f"[1, min(n_samples, n_features)={limit}]")
    try:
        return wire.encode_options(n_components, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ClientError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def _fit_request(X, n_components, kwargs):
    x = _check_x(X)
    return pb.FitRequest(x=x, options=_options(x, n_components, **kwargs))


def _transform_request(model, X):
    if not isinstance(model, Model):
        raise ClientError(grpc.StatusCode.INVALID_ARGUMENT,
                          f"model must be an l1pca.client.Model; got {type(model).__name__}")
    x = _check_x(X)
    if x.cols != model.n_features:
        raise ClientError(grpc.StatusCode.INVALID_ARGUMENT,
                          f"X has {x.cols} features; the model was fitted on {model.n_features}")
    return pb.TransformRequest(model=wire.encode_model(model), x=x)


def _score_request(X, model, n_components, return_entry_scores, kwargs):
    if model is not None:
        req = _transform_request(model, X)
        return pb.ScoreOutliersRequest(model=req.model, x=req.x,
                                       return_entry_scores=return_entry_scores)
    x = _check_x(X)
    return pb.ScoreOutliersRequest(fit=_options(x, n_components, **kwargs), x=x,
                                   return_entry_scores=return_entry_scores)


def _array(msg):
    return np.array(wire.decode_matrix(msg, name="answer"))  # a writable copy


def _score_answer(resp):
    model = wire.decode_model(resp.model)
    scores = _array(resp.sample_scores)[:, 0]
    n = scores.shape[0]
    entries = _array(resp.entry_scores) if resp.HasField("entry_scores") else None
    flags = np.zeros(n, dtype=bool)
    flags[np.asarray(resp.outlier_rows, dtype=np.int64)] = True
    extra = {"cell_cutoff": resp.cell_cutoff}
    if not resp.map_missing:
        extra.update(sd=_array(resp.score_distances)[:, 0],
                     outlier_score=_array(resp.outlier_scores)[:, 0],
                     group=np.frombuffer(resp.groups, dtype=np.uint8).astype(np.int8))
    if entries is not None and resp.cell_flags:
        extra["cell_flags"] = np.frombuffer(resp.cell_flags, dtype=np.uint8).reshape(entries.shape) > 0
    return OutlierScores(scores, flags, entries, model, **extra)


# -- the server's size limits ---------------------------------------------------------------------
# gRPC's words when a message is over the receiver's grpc.max_receive_message_length:
# "Received message larger than max (N vs. M)". Below that, an l1pca server answers a request over
# its --max-request-bytes itself, in the words of wire.oversized_message.
_LARGER_THAN_MAX = re.compile(r"larger than max \((\d+) vs\. (\d+)\)")


def _oversized(details):
    """Whether a RESOURCE_EXHAUSTED status says the request was too large (no retry can fix it),
    rather than that the server was busy."""
    details = details or ""
    return "larger than max" in details or "--max-request-bytes" in details


class _Limits(NamedTuple):
    """The request limits a server reported in ``GetServerInfo`` (0: none)."""

    max_rows: int
    max_cols: int
    max_request_bytes: int

    def check(self, request):
        """Refuse, before sending, a request this server would refuse for its size."""
        if "x" in request.DESCRIPTOR.fields_by_name and request.HasField("x"):
            try:
                wire.check_limits(request.x.rows, request.x.cols, name="X", max_rows=self.max_rows,
                                  max_cols=self.max_cols)
            except ValueError as exc:
                raise ClientError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        size = request.ByteSize()
        if self.max_request_bytes and size > self.max_request_bytes:
            raise ClientError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              wire.oversized_message(size, self.max_request_bytes))


class _Base:
    def __init__(self, target, *, timeout_s, retry, credentials, options, token=None):
        if not (timeout_s is None or timeout_s > 0):
            raise ValueError(f"timeout_s={timeout_s!r} must be a positive number of seconds or None")
        self._metadata = _auth_metadata(token)
        self.target = target
        self.timeout_s = timeout_s
        self.retry = retry
        self._grpc_target = resolve_target(target)
        self._options = _channel_options(options)
        self._credentials = credentials
        self._rng = random.Random()
        # The limits of the server, once server_info() has asked for them: requests over them are
        # refused here, before they are sent.
        self.limits: _Limits | None = None

    def _check_limits(self, request):
        if self.limits is not None:
            self.limits.check(request)

    def _remember(self, info):
        self.limits = _Limits(int(info.max_rows), int(info.max_cols), int(info.max_request_bytes))
        return info

    def _no_server(self, timeout_s):
        return ClientError(grpc.StatusCode.UNAVAILABLE,
                           f"no server at {self.target} (nothing answered within {timeout_s:g} s)")

    def _deadline(self, timeout_s):
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        now = time.monotonic()
        end = float("inf") if timeout_s is None else now + timeout_s
        retry_end = end
        if self.retry is not None and self.retry.deadline_s is not None:
            retry_end = min(end, now + self.retry.deadline_s)
        return end, retry_end

    def _attempts(self, timeout_s):
        """The tries the retry policy allows within the deadline, each an :class:`_Attempt`; past
        the deadline, DEADLINE_EXCEEDED (the sync and async clients share this loop)."""
        end, retry_end = self._deadline(timeout_s)
        for number in range(self.retry.max_attempts if self.retry else 1):
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise ClientError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"no answer within the deadline after {number} attempts")
            yield _Attempt(number, None if remaining == float("inf") else remaining, end, retry_end)

    def _after_failure(self, err, attempt):
        """Seconds to wait before the next try after ``err``; raises :class:`ClientError` to give up."""
        sleep = self._next_sleep(err, attempt.number, attempt.end, attempt.retry_end)
        if sleep is None:
            raise self._translate(
                err, f" (after {attempt.number + 1} attempts)" if attempt.number else "") from err
        return sleep

    def _translate(self, err, note):
        """The :class:`ClientError` of a failed call. gRPC's own refusal of a message over the
        server's limit becomes what to do about it (wire.oversized_message)."""
        error = ClientError.from_rpc(err, note)
        found = _LARGER_THAN_MAX.search(error.details)
        if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and found:
            limit = self.limits.max_request_bytes if self.limits is not None else None
            return ClientError(error.code, f"{wire.oversized_message(int(found.group(1)), limit)} "
                                           f"[{error.details}]")
        return error

    def _next_sleep(self, err, attempt, end, retry_end):
        """Seconds to sleep before the next attempt, or None to give up on ``err``."""
        code, details = err.code(), err.details()
        if self.retry is None or not self.retry.retryable(code, details) \
                or attempt + 1 >= self.retry.max_attempts:
            return None
        sleep = self.retry.sleep_s(attempt, self._rng)
        if time.monotonic() + sleep >= min(end, retry_end):
            return None
        return sleep


class _Attempt(NamedTuple):
    number: int  # from 0
    timeout_s: float | None  # this try's gRPC timeout: what is left of the deadline
    end: float  # the call's deadline (time.monotonic())
    retry_end: float  # no retry starts after this


class Client(_Base):
    """Blocking client; a context manager that closes its channel.

    Parameters
    ----------
    target : str
        ``"host:port"``, a gRPC URI, or ``"h1:p1,h2:p2"`` (round-robin over the list).
    timeout_s : float or None, default=60
        Deadline of each call, retries included (None: no deadline).
    retry : Retry or None, default=Retry()
        None disables retries.
    credentials : grpc.ChannelCredentials, optional
        TLS (:func:`tls_credentials`); default an insecure (plaintext) channel.
    options : sequence of (str, value), optional
        Extra gRPC channel arguments.
    token : str, optional
        Bearer token sent with every call (servers with ``--auth-token-file``).
    """

    def __init__(self, target, *, timeout_s=60.0, retry=DEFAULT_RETRY, credentials=None,
                 options=None, token=None):
        super().__init__(target, timeout_s=timeout_s, retry=retry, credentials=credentials,
                         options=options, token=token)
        if credentials is None:
            self._channel = grpc.insecure_channel(self._grpc_target, options=self._options)
        else:
            self._channel = grpc.secure_channel(self._grpc_target, credentials, options=self._options)
        self._stub = pb_grpc.L1PCAStub(self._channel)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        self._channel.close()

    def wait_for_server(self, timeout_s=5.0):
        """Wait until the channel connects to a server, at most ``timeout_s`` seconds; raises
        :class:`ClientError` (UNAVAILABLE, "no server at HOST:PORT (nothing answered within 5 s)")
        when none does. A call retries until its own deadline; this fails fast instead."""
        ready = grpc.channel_ready_future(self._channel)
        try:
            ready.result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise self._no_server(timeout_s) from None
        finally:
            ready.cancel()

    def _call(self, rpc, request, timeout_s):
        self._check_limits(request)
        for attempt in self._attempts(timeout_s):
            try:
                return rpc(request, timeout=attempt.timeout_s, metadata=self._metadata)
            except grpc.RpcError as err:
                time.sleep(self._after_failure(err, attempt))
        raise AssertionError("unreachable: the last attempt raises")  # pragma: no cover

    def fit(self, X, n_components=1, *, method="bitflip", n_init=None, center="median", seed=None,
            contamination="auto", support_fraction=DEFAULT_SUPPORT_FRACTION, cell_robust=True,
            timeout_s=None) -> Model:
        """Fit on the server; the fitted :class:`Model` (with ``model.seed``, the seed its starts
        used, and ``model.n_components``, the K chosen under ``n_components="auto"``).

        The options are :class:`l1pca.kernels.L1PCA`'s: ``support_fraction`` (None or 1.0: the
        plain fit on every row), ``cell_robust`` (screen deviating cells before the fit)."""
        req = _fit_request(X, n_components, dict(
            method=method, n_init=n_init, center=center, seed=seed, contamination=contamination,
            support_fraction=support_fraction, cell_robust=cell_robust))
        return wire.decode_model(self._call(self._stub.Fit, req, timeout_s).model)

    def transform(self, model, X, *, timeout_s=None) -> np.ndarray:
        """``(X - model.center) @ model.components.T`` computed by the server; (n_samples, K)."""
        resp = self._call(self._stub.Transform, _transform_request(model, X), timeout_s)
        return _array(resp.projections)

    def score_outliers(self, X, model=None, *, n_components=1, method="bitflip", n_init=None,
                       center="median", seed=None, contamination="auto",
                       support_fraction=DEFAULT_SUPPORT_FRACTION, cell_robust=True,
                       return_entry_scores=False, timeout_s=None) -> OutlierScores:
        """The outlier map of X (:class:`OutlierScores`: OD, SD, group, outlier score, flagged rows;
        with ``return_entry_scores``, the standardised cell residuals and cell flags) against
        ``model``, or against a model fitted on X in the same call (the options of :meth:`fit`)."""
        req = _score_request(X, model, n_components, return_entry_scores, dict(
            method=method, n_init=n_init, center=center, seed=seed, contamination=contamination,
            support_fraction=support_fraction, cell_robust=cell_robust))
        return _score_answer(self._call(self._stub.ScoreOutliers, req, timeout_s))

    def server_info(self, *, timeout_s=None) -> pb.ServerInfo:
        """Version, backend, device and request limits of the replica that answers. The limits are
        kept (``self.limits``): later requests over them are refused before they are sent."""
        return self._remember(self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest(),
                                         timeout_s))


class AsyncClient(_Base):
    """:class:`Client` for asyncio: the same methods, as coroutines; ``async with`` closes it."""

    def __init__(self, target, *, timeout_s=60.0, retry=DEFAULT_RETRY, credentials=None,
                 options=None, token=None):
        super().__init__(target, timeout_s=timeout_s, retry=retry, credentials=credentials,
                         options=options, token=token)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(self._grpc_target, options=self._options)
        else:
            self._channel = grpc.aio.secure_channel(self._grpc_target, credentials,
                                                    options=self._options)
        self._stub = pb_grpc.L1PCAStub(self._channel)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
        return False

    async def close(self):
        await self._channel.close()

    async def wait_for_server(self, timeout_s=5.0):
        """:meth:`Client.wait_for_server`, as a coroutine."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout_s)
        except asyncio.TimeoutError:
            raise self._no_server(timeout_s) from None

    async def _call(self, rpc, request, timeout_s):
        self._check_limits(request)
        for attempt in self._attempts(timeout_s):
            try:
                return await rpc(request, timeout=attempt.timeout_s, metadata=self._metadata)
            except grpc.RpcError as err:
                await asyncio.sleep(self._after_failure(err, attempt))
        raise AssertionError("unreachable: the last attempt raises")  # pragma: no cover

    async def fit(self, X, n_components=1, *, method="bitflip", n_init=None, center="median",
                  seed=None, contamination="auto", support_fraction=DEFAULT_SUPPORT_FRACTION,
                  cell_robust=True, timeout_s=None) -> Model:
        req = _fit_request(X, n_components, dict(
            method=method, n_init=n_init, center=center, seed=seed, contamination=contamination,
            support_fraction=support_fraction, cell_robust=cell_robust))
        return wire.decode_model((await self._call(self._stub.Fit, req, timeout_s)).model)

    async def transform(self, model, X, *, timeout_s=None) -> np.ndarray:
        resp = await self._call(self._stub.Transform, _transform_request(model, X), timeout_s)
        return _array(resp.projections)

    async def score_outliers(self, X, model=None, *, n_components=1, method="bitflip", n_init=None,
                             center="median", seed=None, contamination="auto",
                             support_fraction=DEFAULT_SUPPORT_FRACTION, cell_robust=True,
                             return_entry_scores=False, timeout_s=None) -> OutlierScores:
        req = _score_request(X, model, n_components, return_entry_scores, dict(
            method=method, n_init=n_init, center=center, seed=seed, contamination=contamination,
            support_fraction=support_fraction, cell_robust=cell_robust))
        return _score_answer(await self._call(self._stub.ScoreOutliers, req, timeout_s))

    async def server_info(self, *, timeout_s=None) -> pb.ServerInfo:
        return self._remember(await self._call(self._stub.GetServerInfo,
                                               pb.GetServerInfoRequest(), timeout_s))
