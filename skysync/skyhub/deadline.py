"""An overall deadline for one HTTP exchange with SkyHub, which httpx does not have.

httpx's timeouts are per operation: ``read=20`` bounds each wait for the next bytes, so an
answer that trickles in a byte every 5 s passes it for ever (issue 19: `skysync relay` hung,
its row in flight with no reason). Streaming the body and checking a clock between chunks
would not do either: a trickle of *headers* never reaches the body.

So the bound sits under httpcore, on the socket: :class:`BoundedTransport` is httpx's own
transport whose connections come from a network backend that gives every socket operation
(connect, TLS handshake, each write, each read) at most the time left before the deadline of
the exchange under way, and refuses any operation once it has passed. The exchange then fails
with httpx's own timeout exception; httpcore drops the connection (it is not reused), and the
client, seeing its deadline passed, raises :class:`~skysync.skyhub.errors.DeadlineExceeded`.

The deadline is per thread of execution (a context variable set by :func:`deadline` around
one exchange), so the one pooled client serves every relay thread, each with its own clock.
Not covered: the DNS lookup inside ``connect`` (the resolver has its own timeouts) and the wait
for a free pooled connection, which the client bounds by its ``pool`` timeout (never above the
deadline).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "skysync_skyhub_deadline", default=None
)


@contextmanager
def deadline(seconds: float | None) -> Iterator[float | None]:
    """Bound the exchanges in this block to end ``seconds`` from now (None: no bound); yields
    the deadline as a ``time.monotonic()`` value."""
    until = None if seconds is None else time.monotonic() + seconds
    token = _DEADLINE.set(until)
    try:
        yield until
    finally:
        _DEADLINE.reset(token)


def _time_left(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` cut to the time left before the current deadline; ``expired`` once none is."""
    until = _DEADLINE.get()
    if until is None:
        return timeout
    left = until - time.monotonic()
    if left <= 0:
        raise expired("the exchange's overall deadline has passed")
    return left if timeout is None else min(timeout, left)


class _BoundedStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _BoundedStream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _BoundedBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend):
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, left, local_address, socket_options)
        return _BoundedStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _BoundedStream(self._backend.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class BoundedTransport(httpx.HTTPTransport):
    """httpx's HTTP transport (TLS verification, pooling, its exception mapping, all as
    httpx builds them), with every socket of its pool held to the current :func:`deadline`."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # httpx keeps its httpcore pool in ``_pool`` and the pool its backend in
        # ``_network_backend`` (no public hook for either). Should a release rename them,
        # refuse to build a client without a deadline rather than run one silently.
        pool = getattr(self, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(pool, httpcore.ConnectionPool) or backend is None:
            raise RuntimeError(
                "this httpx/httpcore keeps its connection pool elsewhere: SkyHub requests "
                "would have no overall deadline (skysync/skyhub/deadline.py)"
            )
        pool._network_backend = _BoundedBackend(backend)
