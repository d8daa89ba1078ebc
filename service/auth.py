"""Bearer-token authentication of the gRPC service (``--auth-token-file``).

* :class:`TokenFile` holds the accepted tokens: one per line of a file (blank lines and ``#``
  comments skipped), re-read when the file changes (checked at most once a second, on the request
  path: a ``stat``) and on SIGHUP (:meth:`TokenFile.reload`). Kubernetes updates a mounted Secret by
  swapping a symlink; ``stat`` follows it, so a rotated Secret is picked up within a second. A
  reload that fails (the file gone for a moment, unreadable) keeps the previous tokens and logs it;
  an empty file accepts no token (fail closed).
* :class:`AuthInterceptor` checks ``authorization: Bearer <token>`` on every call except the health
  service (probes carry no token): no or malformed header -> ``UNAUTHENTICATED``, a token not in the
  file -> ``PERMISSION_DENIED``. Only SHA-256 digests of the tokens are kept, and the presented
  token's digest is compared with every one of them with :func:`hmac.compare_digest` (equal lengths,
  no early exit), so the time taken does not depend on how much of a token matched, nor on which
  token it was. A refused call's request is never deserialised, and no message echoes a token.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time

import grpc

log = logging.getLogger("l1pca.service")

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
"""Methods answered without a token: Kubernetes and load-balancer probes."""

RECHECK_S = 1.0
"""The token file is stat-ed at most this often (seconds) on the request path."""


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def read_tokens(path) -> list[bytes]:
    """The tokens of a token file: one per line, surrounding whitespace, blank lines and ``#``
    comments ignored. Raises OSError when it cannot be read, ValueError when a line holds a space."""
    tokens = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            if any(c in line for c in b" \t") or not line.isascii():
                raise ValueError(f"{path}: line {lineno} is not one token (no spaces, ASCII only)")
            tokens.append(line)
    return tokens


class TokenFile:
    """The accepted tokens, kept as SHA-256 digests, from a file that may change.

    Parameters
    ----------
    path : str
        The token file; read now (an error here is a startup error).
    recheck_s : float
        Least time between two ``stat`` calls on the request path.
    """

    def __init__(self, path, *, recheck_s=RECHECK_S):
        self.path = str(path)
        self.recheck_s = float(recheck_s)
        self._lock = threading.Lock()
        self._digests: tuple[bytes, ...] = ()
        self._stamp = None
        self._checked = 0.0
        self.reloads = 0
        self._load(self._stat(), startup=True)

    def _stat(self):
        st = os.stat(self.path)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self, stamp, *, startup=False):
        try:
            tokens = read_tokens(self.path)
        except (OSError, ValueError) as exc:
            if startup:
                raise
            log.error("auth: cannot re-read the token file %s (%s); keeping the %d tokens loaded "
                      "before", self.path, exc, len(self._digests))
            return
        with self._lock:
            self._digests = tuple(_digest(t) for t in tokens)
            self._stamp = stamp
            self.reloads += 0 if startup else 1
        if not tokens:
            log.warning("auth: the token file %s holds no token; every call but health is refused",
                        self.path)
        log.info("auth: %s %d tokens from %s", "loaded" if startup else "reloaded", len(tokens),
                 self.path)

    def reload(self):
        """Re-read the file now (SIGHUP)."""
        try:
            stamp = self._stat()
        except OSError as exc:
            log.error("auth: cannot stat the token file %s (%s); keeping the tokens loaded before",
                      self.path, exc)
            return
        self._load(stamp)

    def maybe_reload(self, now=None):
        """Re-read the file if it changed; stat-s it at most once per ``recheck_s``."""
        now = time.monotonic() if now is None else now
        if now - self._checked < self.recheck_s:
            return
        self._checked = now
        try:
            stamp = self._stat()
        except OSError:
            return  # a Secret update in progress; the next check sees the new file
        if stamp != self._stamp:
            self._load(stamp)

    def __len__(self):
        return len(self._digests)

    def accepts(self, token: bytes) -> bool:
        """Constant-time membership: every stored digest is compared, with no early exit."""
        presented = _digest(token)
        found = 0
        for digest in self._digests:
            found |= hmac.compare_digest(presented, digest)
        return bool(found)


def _bearer(metadata):
    """The token of an ``authorization: Bearer <token>`` header, or None when there is none."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        if isinstance(value, str):
            value = value.encode("latin-1", "replace")
        scheme, _, token = value.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return b""  # present but malformed: refused as unauthenticated
        return token.strip()
    return None


def _terminator(handler, code, details):
    """A handler of the same kind as ``handler`` that ends the call with ``code``; the request is not
    deserialised."""
    async def unary(request, context):
        await context.abort(code, details)

    async def stream(request_iterator, context):
        await context.abort(code, details)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(unary)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(stream)
    return grpc.stream_stream_rpc_method_handler(stream)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid bearer token (see the module docstring).

    Parameters
    ----------
    tokens : TokenFile
    observe : callable(method, code, seconds), optional
        Called for each refused call of ``prefix`` (the request metrics).
    prefix : str
        Methods whose refusals are reported to ``observe`` under their short name.
    open_prefixes : tuple of str
        Methods answered without a token.
    """

    def __init__(self, tokens: TokenFile, *, observe=None, prefix="/l1pca.v1.L1PCA/",
                 open_prefixes=OPEN_PREFIXES):
        self._tokens = tokens
        self._observe = observe
        self._prefix = prefix
        self._open = tuple(open_prefixes)

    async def intercept_service(self, continuation, handler_call_details):
        name = handler_call_details.method
        if name.startswith(self._open):
            return await continuation(handler_call_details)
        self._tokens.maybe_reload()
        token = _bearer(handler_call_details.invocation_metadata)
        if token is None:
            code, details = (grpc.StatusCode.UNAUTHENTICATED,
                             "this server needs `authorization: Bearer <token>` metadata")
        elif not token:
            code, details = (grpc.StatusCode.UNAUTHENTICATED,
                             "the authorization metadata is not `Bearer <token>`")
        elif not self._tokens.accepts(token):
            code, details = grpc.StatusCode.PERMISSION_DENIED, "the bearer token is not accepted"
        else:
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: UNIMPLEMENTED, as without auth
        if self._observe is not None and name.startswith(self._prefix):
            self._observe(name[len(self._prefix):], code, 0.0)
        return _terminator(handler, code, details)
