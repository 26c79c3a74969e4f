"""The SkyHub API client: one typed method per endpoint skysync uses, on one pooled httpx client.

* Auth headers come from Settings and never leave this module: not in a log line, a repr, an
  exception. Only method, path, status and SkyHub's ``error`` text are reported.
* SKUs and order codes are percent-encoded as one path segment (order codes contain spaces).
* Timeouts are explicit; TLS verification stays on. Besides httpx's per-operation timeouts,
  every exchange has an overall ``deadline`` (SKYSYNC_SKYHUB_REQUEST_DEADLINE, 30 s): an
  answer still incomplete then (one trickling in a byte at a time passes every read timeout)
  is dropped and raised as :class:`DeadlineExceeded` (:mod:`skysync.skyhub.deadline`).
* Every failure is one of the classes in :mod:`skysync.skyhub.errors`; no httpx exception
  escapes. A 429 is waited out here (Retry-After when present, else the next one-second window)
  up to ``max_rate_limit_waits`` times, then raised as :class:`RateLimited`. The waits of one
  request together never pass ``max_retry_after`` (60 s): a longer one is not slept, it is
  raised at once, carrying SkyHub's wait. That wait is never above ``retry_after_max``
  (SKYSYNC_SKYHUB_RETRY_AFTER_MAX, an hour): an absurd or unreadable Retry-After counts as
  that maximum (:mod:`skysync.skyhub.retry_after`).
* With a :class:`~skysync.skyhub.ratelimit.RateLimiter`, each request first takes a slot from
  the bucket of its endpoint and method (:mod:`skysync.skyhub.buckets` says which, and at what
  pace), so all workers together stay under SkyHub's limits.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

import httpx

from skysync import __version__
from skysync.skyhub import payloads
from skysync.skyhub.buckets import RequestCounter, bucket_for
from skysync.skyhub.deadline import BoundedTransport, deadline
from skysync.skyhub.errors import (
    AuthenticationError,
    DeadlineExceeded,
    NotFound,
    PermanentError,
    RateLimited,
    ServerError,
    SkyHubError,
    TransportError,
    Unprocessable,
)
from skysync.skyhub.payloads import QueuedOrder, parse_order
from skysync.skyhub.ratelimit import RateLimiterUnavailable, RateLimitTimeout
from skysync.skyhub.retry_after import RetryAfter, retry_after_seconds

if TYPE_CHECKING:
    from skysync.config import Settings
    from skysync.skyhub.ratelimit import RateLimiter

log = logging.getLogger("skysync.skyhub")

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=20.0, write=20.0, pool=30.0)
DEFAULT_DEADLINE = 30.0  # seconds for one whole exchange (SKYSYNC_SKYHUB_REQUEST_DEADLINE)
DEFAULT_RETRY_AFTER_MAX = 3600.0  # the longest wait a 429 may ask (SKYSYNC_SKYHUB_RETRY_AFTER_MAX)
_TAGS = re.compile(r"<[^>]+>")


def segment(value: str) -> str:
    """One URL path segment: spaces, slashes and every reserved character percent-encoded.
    A value of only dots is encoded too, or "." and ".." would be read as a path step."""
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if set(value) == {"."} else encoded


@dataclass(frozen=True)
class ProductPage:
    products: list[dict[str, Any]]
    total: int | None
    next_cursor: str | None


def _error_text(response: httpx.Response) -> str:
    """SkyHub's own explanation: ``{"error": ...}`` (or ``message``), else a short plain text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "message", "errors"):
            if body.get(key):
                value = body[key]
                return value if isinstance(value, str) else str(value)[:300]
    text = response.text.strip()
    if "<html" in text[:500].lower():
        title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        summary = title.group(1).strip() if title else _TAGS.sub(" ", text)[:120].strip()
        return f"HTML page: {' '.join(summary.split())}"
    return text[:300] or response.reason_phrase or "no explanation given"


def _within_deadline(timeout: httpx.Timeout, seconds: float | None) -> httpx.Timeout:
    """``timeout`` with its wait for a pooled connection no longer than the deadline (that wait
    is not on a socket, so the deadline's transport cannot cut it short)."""
    if seconds is None or (timeout.pool is not None and timeout.pool <= seconds):
        return timeout
    return httpx.Timeout(
        connect=timeout.connect, read=timeout.read, write=timeout.write, pool=seconds
    )


class SkyHubTransport:
    """The wire of a client for one SkyHub account: credentials, the shared rate limiter, 429s
    waited out within their bounds, the overall deadline, SkyHub's errors translated into the
    one error tree. :class:`SkyHubClient` adds the endpoints. Thread-safe."""

    def __init__(
        self,
        base_url: str,
        *,
        email: str,
        api_key: str,
        account_key: str,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        limiter: RateLimiter | None = None,
        max_rate_limit_waits: int = 5,
        max_retry_after: float = 60.0,
        retry_after_max: float = DEFAULT_RETRY_AFTER_MAX,
        deadline: float | None = DEFAULT_DEADLINE,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base_url = base_url.rstrip("/")
        self.email = email
        self.limiter = limiter
        self.max_rate_limit_waits = max_rate_limit_waits
        self.max_retry_after = max_retry_after  # the most one request sleeps on 429s, in all
        self.retry_after_max = retry_after_max  # the longest wait a Retry-After may ask
        self.deadline = deadline
        self.counter = RequestCounter()
        self.last_accepted: float | None = None  # time.monotonic() of the last 2xx answer
        self._sleep = sleep
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
        if transport is None:  # a test's own transport is used as it is
            transport = BoundedTransport(verify=True, limits=limits)
        if not isinstance(timeout, httpx.Timeout):
            timeout = httpx.Timeout(timeout)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={
                "X-User-Email": email,
                "X-Api-Key": api_key,
                "X-Accountmanager-Key": account_key,
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": f"skysync/{__version__}",
            },
            timeout=_within_deadline(timeout, deadline),
            limits=limits,
            transport=transport,
            verify=True,
            follow_redirects=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, base_url: str | None = None, **kw: Any) -> Self:
        """A client with the configured credentials (the caller decides emulator or SkyHub)."""
        return cls(
            base_url or settings.skyhub_url,
            email=settings.skyhub_email or "",
            api_key=settings.skyhub_api_key.get_secret_value() if settings.skyhub_api_key else "",
            account_key=(
                settings.skyhub_account_key.get_secret_value()
                if settings.skyhub_account_key
                else ""
            ),
            **kw,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, email={self.email!r})"

    def accepted_within(self, seconds: float) -> bool:
        """Did SkyHub accept a request of this client (a 2xx, so the credentials held) in the
        last ``seconds``?"""
        last = self.last_accepted
        return last is not None and time.monotonic() - last <= seconds

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the wire -------------------------------------------------------------------------
    def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        """Send one request (waiting out 429s); return a 2xx response or raise a SkyHubError."""
        bucket = bucket_for(method, path)
        waits = 0
        slept = 0.0
        while True:
            if self.limiter is not None:
                self._take_slot(method, path, bucket)
            response = self._send(method, path, json=json, params=params)
            if response.status_code != 429:
                break
            retry_after = self._retry_after(response)
            # SkyHub's window slides: a full second after the refusal, the window has moved on.
            delay = retry_after.seconds if retry_after is not None else 1.0
            # Waits that would take this request past max_retry_after in all are not slept
            # here (they would hold a worker thread): the caller puts the rows back, due when
            # SkyHub said (never beyond retry_after_max).
            if waits >= self.max_rate_limit_waits or slept + delay > self.max_retry_after:
                text = _error_text(response)
                raise RateLimited(
                    f"{text} ({retry_after.note})" if retry_after is not None else text,
                    retry_after=None if retry_after is None else retry_after.seconds,
                    method=method,
                    path=path,
                    status=429,
                )
            waits += 1
            slept += delay
            log.info("rate limited on %s %s; waiting %.2f s", method, path, delay)
            self._sleep(delay)
        if response.is_success:
            self.last_accepted = time.monotonic()
            return response
        raise self._error(method, path, response)

    def _retry_after(self, response: httpx.Response) -> RetryAfter | None:
        """SkyHub's Retry-After, as a wait within [0, retry_after_max] (None without one)."""
        return retry_after_seconds(
            response.headers.get("Retry-After"), cap=self.retry_after_max, now=datetime.now(UTC)
        )

    def _take_slot(self, method: str, path: str, bucket: str) -> None:
        """Wait for the shared limiter; its own failures become errors of our tree too."""
        assert self.limiter is not None
        try:
            self.limiter.acquire(bucket)
        except RateLimitTimeout as exc:
            raise RateLimited(str(exc), method=method, path=path) from exc
        except RateLimiterUnavailable as exc:
            raise TransportError(f"not sent: {exc}", method=method, path=path) from exc

    def _send(
        self, method: str, path: str, *, json: Any, params: dict[str, Any] | None
    ) -> httpx.Response:
        """One HTTP exchange, within the deadline; httpx's exceptions become TransportError
        here, at the wire."""
        started = time.monotonic()
        with deadline(self.deadline) as until:
            try:
                response = self._http.request(method, path, json=json, params=params)
            except httpx.HTTPError as exc:
                self.counter.add(method, path, None)
                # (a socket timeout cut to the time left may fire a hair before the clock)
                if until is not None and time.monotonic() >= until - 0.01:
                    raise DeadlineExceeded(
                        f"SkyHub's answer did not complete within {self.deadline:g} s "
                        "(SKYSYNC_SKYHUB_REQUEST_DEADLINE); the connection was dropped and "
                        "the request may have been applied",
                        method=method,
                        path=path,
                    ) from exc
                if isinstance(exc, httpx.TimeoutException):
                    what = f"timed out ({type(exc).__name__})"
                else:
                    what = f"no answer ({type(exc).__name__}: {exc})"
                raise TransportError(
                    f"{what}; the request may have been applied", method=method, path=path
                ) from exc
        self.counter.add(method, path, response.status_code)
        log.debug(
            "%s %s -> %s in %.0f ms",
            method,
            path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return response

    @staticmethod
    def _error(method: str, path: str, response: httpx.Response) -> SkyHubError:
        status = response.status_code
        text = _error_text(response)
        kw: dict[str, Any] = {"method": method, "path": path, "status": status}
        if status in (401, 403):
            return AuthenticationError(text, **kw)
        if status == 404:
            return NotFound(text, **kw)
        if status == 422:
            return Unprocessable(text, **kw)
        if 400 <= status < 500:
            return PermanentError(text, **kw)
        if status >= 500:
            return ServerError(text, **kw)
        return TransportError(f"unexpected status {status}: {text}", **kw)

    @staticmethod
    def _json(response: httpx.Response, method: str, path: str) -> Any:
        if not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise TransportError(
                f"answer is not JSON: {response.text[:80]!r}",
                method=method,
                path=path,
                status=response.status_code,
            ) from exc

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._json(self.request("GET", path, params=params), "GET", path)


class SkyHubClient(SkyHubTransport):
    """A client for one SkyHub account: the endpoints skysync uses. Thread-safe; share one per
    process."""

    # -- products and variations ----------------------------------------------------------
    def create_product(self, product: dict[str, Any]) -> None:
        """POST /products. A SKU SkyHub already has answers 422 (:class:`Unprocessable`)."""
        self.request("POST", "/products", json=payloads.product_body(product))

    def update_product(self, sku: str, fields: dict[str, Any]) -> None:
        """PUT /products/{sku} with only the given fields (price and stock updates too)."""
        self.request("PUT", f"/products/{segment(sku)}", json=payloads.product_body(fields))

    def get_product(self, sku: str) -> dict[str, Any]:
        """GET /products/{sku}, with ``associations`` and ``variations``; 404 -> NotFound."""
        path = f"/products/{segment(sku)}"
        return self._get(path) or {}

    def delete_product(self, sku: str) -> None:
        self.request("DELETE", f"/products/{segment(sku)}")

    def list_products(
        self, *, page: int | None = None, per_page: int | None = None, cursor: str | None = None
    ) -> ProductPage:
        """One page of GET /products; ``next_cursor`` feeds the next call (None at the end)."""
        params: dict[str, Any] = {}
        if cursor:
            params["cursor"] = cursor
        if page:
            params["page"] = page
        if per_page:
            params["per_page"] = per_page
        body = self._get("/products", params) or {}
        next_url = body.get("next")
        next_cursor = None
        if next_url:
            found = re.search(r"[?&]cursor=([^&]+)", next_url)
            next_cursor = httpx.QueryParams(f"cursor={found.group(1)}")["cursor"] if found else None
        return ProductPage(body.get("products") or [], body.get("total"), next_cursor)

    def iter_products(self, *, per_page: int = 100) -> Iterator[dict[str, Any]]:
        """Every product, following the ``next`` cursor."""
        page = self.list_products(per_page=per_page)
        yield from page.products
        while page.next_cursor:
            page = self.list_products(per_page=per_page, cursor=page.next_cursor)
            yield from page.products

    def create_variation(self, parent_sku: str, variation: dict[str, Any]) -> None:
        path = f"/products/{segment(parent_sku)}/variations"
        self.request("POST", path, json=payloads.variation_body(variation))

    def update_variation(self, sku: str, fields: dict[str, Any]) -> None:
        """PUT /variations/{sku}: price and stock of one variation."""
        self.request("PUT", f"/variations/{segment(sku)}", json=payloads.variation_body(fields))

    def get_variation(self, sku: str) -> dict[str, Any]:
        return self._get(f"/variations/{segment(sku)}") or {}

    def product_sync_errors(self, category: str | None = None) -> Any:
        params = {"error_category_code": category} if category else None
        return self._get("/sync_errors/products", params)

    def sync_errors(
        self, entity_type: str, *, page: int = 1, per_page: int = 100
    ) -> tuple[list[dict[str, Any]], int | None]:
        """One page of GET /sync_errors/{products,orders}: (errors, SkyHub's total). The list
        is read from ``errors`` (or ``skus``/``products``/``orders``, or a bare list)."""
        body = self._get(
            f"/sync_errors/{segment(entity_type)}", {"page": page, "per_page": per_page}
        )
        if isinstance(body, list):
            return [e for e in body if isinstance(e, dict)], None
        body = body if isinstance(body, dict) else {}
        found: list[Any] = []
        for key in ("errors", "skus", entity_type, "items"):
            if isinstance(body.get(key), list):
                found = body[key]
                break
        total = body.get("error_qty")
        return [e for e in found if isinstance(e, dict)], total if isinstance(total, int) else None

    def ignore_sync_errors(self, entity_type: str, errors: list[dict[str, str]]) -> None:
        """PATCH /sync_errors/{products,orders}: SkyHub stops listing these errors."""
        self.request("PATCH", f"/sync_errors/{segment(entity_type)}", json={"errors": errors})

    # -- orders ---------------------------------------------------------------------------
    def next_queued_order(self) -> QueuedOrder | None:
        """GET /queues/orders: the next order, or None when the queue is empty (204, or 200 with
        an empty body or ``{}``). The order is parsed leniently (see payloads.parse_order)."""
        response = self.request("GET", "/queues/orders")
        if response.status_code == 204 or not response.content.strip():
            return None
        try:
            raw = response.json()
        except ValueError:
            return QueuedOrder(raw=response.text, order=None, problem="queue answer is not JSON")
        if raw == {} or raw is None:
            return None
        return parse_order(raw)

    def ack_order(self, code: str) -> None:
        """DELETE /queues/orders/{code}: SkyHub stops delivering this order state."""
        self.request("DELETE", f"/queues/orders/{segment(code)}")

    def get_order(self, code: str) -> dict[str, Any]:
        return self._get(f"/orders/{segment(code)}") or {}

    def _order_action(self, code: str, action: str, body: dict[str, Any]) -> None:
        self.request("POST", f"/orders/{segment(code)}/{action}", json=body)

    def invoice_order(self, code: str, key: str, issue_date: str | None = None) -> None:
        self._order_action(code, "invoice", payloads.invoice_body(key, issue_date))

    def ship_order(self, code: str, shipment: dict[str, Any]) -> None:
        self._order_action(code, "shipments", payloads.shipment_body(shipment))

    def deliver_order(self, code: str, delivered_date: str) -> None:
        self._order_action(code, "delivery", payloads.delivery_body(delivered_date))

    def cancel_order(self, code: str) -> None:
        self._order_action(code, "cancel", payloads.cancel_body())

    def shipment_exception(self, code: str, occurrence_date: str, observation: str) -> None:
        body = payloads.shipment_exception_body(occurrence_date, observation)
        self._order_action(code, "shipment_exception", body)
