"""The one error tree for everything that can go wrong talking to SkyHub.

Callers catch these, never an httpx exception: the client translates at the wire
(``raise ... from exc``). The class decides what the relay does with a row::

    SkyHubError                     anything from the SkyHub client
    ├── RateLimited                 429: wait for the next window (or Retry-After, at most
    │                               SKYSYNC_SKYHUB_RETRY_AFTER_MAX), try again; not a failed
    │                               attempt
    ├── RetryableError              worth trying again later; counts as a failed attempt
    │   ├── ServerError             5xx (HTML gateway pages included)
    │   └── TransportError          no usable answer: timeout, refused or dropped connection,
    │       │                       an answer that is not the JSON promised. The request may
    │       │                       have been applied ("applied but the answer was lost").
    │       └── DeadlineExceeded    the exchange as a whole outlasted its overall deadline
    │                               (SKYSYNC_SKYHUB_REQUEST_DEADLINE): an answer trickling in
    │                               a byte at a time, which no per-read timeout ends
    ├── PermanentError              4xx other than 401/403/429: SkyHub refuses this request as it
    │   │                           is; retrying the same request cannot help
    │   ├── NotFound                404
    │   └── Unprocessable           422: a business rule (duplicate SKU, invalid status step...)
    └── AuthenticationError         401/403: every request would fail; stop and tell the operator

Messages carry the method, the path, the status and SkyHub's own ``error`` text, never a header.
"""

from __future__ import annotations


class SkyHubError(Exception):
    """Base of every SkyHub client error."""

    def __init__(
        self, message: str, *, method: str = "", path: str = "", status: int | None = None
    ):
        self.method = method
        self.path = path
        self.status = status
        self.message = message
        where = f"{method} {path}".strip()
        prefix = f"{where} -> {status}" if status is not None else where
        super().__init__(f"{prefix}: {message}" if prefix else message)


class RateLimited(SkyHubError):
    """429. ``retry_after`` is the Retry-After header in seconds, when SkyHub sent one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object):
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class RetryableError(SkyHubError):
    """A failure that may pass on its own: try again with backoff."""


class ServerError(RetryableError):
    """SkyHub answered 5xx."""


class TransportError(RetryableError):
    """No usable answer (timeout, connection refused or dropped, garbled body)."""


class DeadlineExceeded(TransportError):
    """The whole exchange (connect, send, every byte of the answer) did not finish within the
    client's overall deadline; the connection is dropped. Retryable like any lost answer (the
    values are absolute, so a resend of an applied write is harmless), but not on the spot:
    a SkyHub that trickled one answer is likely to trickle the next."""


class PermanentError(SkyHubError):
    """SkyHub refused the request (4xx); the same request will be refused again."""


class NotFound(PermanentError):
    """404: SkyHub does not have this SKU or order."""


class Unprocessable(PermanentError):
    """422: a business rule refused the request."""


class AuthenticationError(SkyHubError):
    """401/403: the credentials are wrong or lack the right; nothing will work until fixed."""
