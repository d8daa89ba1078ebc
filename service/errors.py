"""Domain errors of the service and the one place that maps them to gRPC status codes.

Handlers and the batcher raise :class:`ServiceError` subclasses, and the kernels'
:class:`l1pca.kernels.InputError` means bad input; :class:`StatusInterceptor` turns them into the
call's status (INVALID_ARGUMENT for bad input) and records the call's code and latency. Anything else
(a ``ValueError`` from a solver included) is a bug: it becomes
``INTERNAL`` with a short reference, the traceback goes to the log (never to the caller), and the
server goes on serving. The interceptor also deserialises the request itself, so that bytes that
are not a valid message answer ``INVALID_ARGUMENT`` (gRPC's own deserialiser answers ``INTERNAL``).
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

import grpc

from l1pca.kernels import InputError
from l1pca.proto.wire import oversized_message

log = logging.getLogger("l1pca.service")


class ServiceError(Exception):
    """An error with a gRPC status code; its message is sent to the caller."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(ServiceError):
    """Bad input: the message names the field, the value and what is expected."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(ServiceError):
    """The queue is full; retry with backoff."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """Not ready (warming up) or draining; retry, possibly on another replica."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    """The deadline passed while the request waited; it was not computed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


def _message_name(deserializer):
    cls = getattr(deserializer, "__self__", None)
    return getattr(getattr(cls, "DESCRIPTOR", None), "full_name", "request")


class Oversized(ServiceError):
    """The request message is larger than ``--max-request-bytes``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions of unary-unary handlers to status codes and reports every call.

    Parameters
    ----------
    observe : callable(method: str, code: grpc.StatusCode, seconds: float)
        Called once per call when it ends (metrics).
    inflight : prometheus Gauge or None
        Incremented while a call runs.
    prefix : str
        Only methods of this service (``/l1pca.v1.L1PCA/``) are wrapped; health and reflection are not.
    max_request_bytes : int, optional
        Larger requests answer RESOURCE_EXHAUSTED with what to do instead (``--max-request-bytes``);
        ``on_oversized()`` is called for each (a counter).
    """

    def __init__(self, observe, *, inflight=None, prefix="/l1pca.v1.L1PCA/", max_request_bytes=None,
                 on_oversized=None):
        self._observe = observe
        self._max_bytes = max_request_bytes
        self._on_oversized = on_oversized
        self._inflight = inflight
        self._prefix = prefix
        # gRPC asks for the handler on every call; the wrapped one is built once per method (and
        # per handler object found for it), not per call (docs/decisions/0008-request-path-per-call-work.md).
        self._wrapped = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        name = handler_call_details.method
        if handler is None or handler.unary_unary is None or not name.startswith(self._prefix):
            return handler
        cached = self._wrapped.get(name)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._wrap(name[len(self._prefix):], handler.unary_unary, handler.request_deserializer),
            request_deserializer=None,  # raw bytes: decoded in `wrapped`, a failure is the caller's
            response_serializer=handler.response_serializer,
        )
        self._wrapped[name] = (handler, wrapped)
        return wrapped

    def _oversized(self, method, size):
        log.warning("refused a %s request of %d bytes (--max-request-bytes=%d)", method, size,
                    self._max_bytes)
        if self._on_oversized is not None:
            self._on_oversized()
        return Oversized(oversized_message(size, self._max_bytes))

    def _wrap(self, method, behavior, deserialize=None):
        message = _message_name(deserialize)

        async def wrapped(request, context):
            start = time.perf_counter()
            code, details = grpc.StatusCode.OK, None
            if self._inflight is not None:
                self._inflight.inc()
            try:
                if self._max_bytes is not None and len(request) > self._max_bytes:
                    raise self._oversized(method, len(request))
                if deserialize is not None:
                    try:
                        request = deserialize(request)
                    except Exception:  # noqa: BLE001 - DecodeError and kin: not a valid message
                        raise InvalidArgument(
                            f"the request ({len(request)} bytes) is not a valid {message} message "
                            "(protobuf decoding failed)") from None
                return await behavior(request, context)
            except ServiceError as exc:
                code, details = exc.code, str(exc)
            except InputError as exc:  # the caller's input, refused by a check
                code, details = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            except asyncio.CancelledError:
                remaining = context.time_remaining()
                code = (grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0
                        else grpc.StatusCode.CANCELLED)
                raise
            except Exception:  # a bug: log it, answer INTERNAL, keep serving
                ref = uuid.uuid4().hex[:12]
                log.exception("internal error in %s (ref %s)", method, ref)
                code = grpc.StatusCode.INTERNAL
                details = f"internal server error (ref {ref}); the server log has the details"
            finally:
                if self._inflight is not None:
                    self._inflight.dec()
                self._observe(method, code, time.perf_counter() - start)
            await context.abort(code, details)

        return wrapped
