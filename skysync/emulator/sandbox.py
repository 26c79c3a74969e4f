"""SkyHub emulator: a real HTTP server that behaves like SkyHub for the endpoints skysync uses.

Tests, benchmarks and demos (``skysync sandbox``) talk to it over real sockets, so the client's
retry, rate-limit and error handling meet the same wire-level surprises SkyHub produces: wrapped
bodies, 401/404/415/422/429 answers, 5xx pages, hung requests, and answers lost after the change
was applied.  The facts it follows are in ``skyhub-api.md`` (sections 2-6); where SkyHub's
documentation is silent it follows that file's section 9.

It is standard library only (``ThreadingHTTPServer``) on purpose: the "lost answer" fault must
close the socket without writing a single byte, which a framework would not let us do.

SkyHub endpoints (headers ``X-User-Email``, ``X-Api-Key``, ``X-Accountmanager-Key`` required;
SKUs and order codes are percent-decoded path segments, order codes may hold spaces):

=======  ===================================  =====================================================
POST     /products                            ``{"product":{...}}`` -> 201; 422 duplicate/invalid
GET      /products                            ``page``, ``per_page`` (25, max 100), ``cursor``,
                                              ``filters[status|name|qty_from|qty_to]``
                                              -> ``{"products","total","next"}``
GET      /products/{sku}                      200 with ``associations`` and ``variations``; 404
PUT      /products/{sku}                      ``{"product":{partial}}`` -> 204; 404
DELETE   /products/{sku}                      204; 422 when linked; 404
POST     /products/{sku}/variations           ``{"variation":{...}}`` -> 201; 404 unknown parent
GET      /variations/{sku}                    200; 404
PUT      /variations/{sku}                    ``{"variation":{partial}}`` -> 204; 404
DELETE   /variations/{sku}                    204; 422 when the parent is linked; 404
GET      /orders                              ``page``, ``per_page`` (100), ``filters[statuses][]``
                                              -> ``{"total","orders"}``
POST     /orders                              sandbox only: ``{"order":{...}}`` -> 201 + order
GET      /orders/{code}                       200; 404
POST     /orders/{code}/approval              sandbox only: ``{"status":"payment_received"}``
POST     /orders/{code}/invoice               ``{"status":"order_invoiced","invoice":{"key"}}``
POST     /orders/{code}/shipments             ``{"status":"order_shipped","shipment":{...}}``
POST     /orders/{code}/delivery              ``{"status":"complete","delivered_date"}``
POST     /orders/{code}/cancel                ``{"status":"order_canceled"}``
POST     /orders/{code}/shipment_exception    ``{"status":"shipment_exception",...}``
GET      /queues/orders                       200 + ONE order, or 204 when nothing is visible
DELETE   /queues/orders/{code}                204; 404 when not queued
GET      /sync_errors/products                ``{"errors": []}``
=======  ===================================  =====================================================

Order actions answer 201 with no body, move the order along the transition table (anything else,
including a repeat of the current status, is 422) and re-enqueue the order.

Admin endpoints (no auth, never rate-limited, never faulted, not in the request log):
``POST /_sandbox/orders`` (an order, or ``{"raw": {...}}`` stored unvalidated),
``POST /_sandbox/products/{sku}/link``, ``GET /_sandbox/state``, ``GET /_sandbox/requests``,
``POST /_sandbox/reset``, ``GET|POST /_sandbox/config``, ``POST /_sandbox/faults``.

Fault model, applied to SkyHub endpoints in this order:

1. ``latency_ms`` is slept before anything else.
2. Auth (401), then routing (404), then the per (bucket, method) sliding one-second rate limit
   (429; a refused request does not use up the window).
3. A scripted fault (:meth:`Sandbox.script_fault`), else random ones drawn from ``Random(seed)``:
   ``fail_rate`` (500, 502 with an HTML page, or 503; not applied), ``timeout_rate`` (hang
   ``hang_seconds`` then close without answering; not applied), ``lost_answer_rate`` (writes only:
   applied, then the connection is closed without a byte).  Scripted faults also offer ``429``,
   ``drop`` (close at once, not applied) and ``applied_hang`` (applied, then hang
   ``hang_seconds`` and close: the answer never comes, as when the caller is killed meanwhile).
   ``refused_categories`` makes a product write naming one of those category codes or names
   a 422 "Categoria não encontrada" (nothing applied).

``state()["frozen_writes"]`` lists every accepted write that changed an attribute other than
price, promotional price or stock of a linked product or of its variations (SkyHub accepts it
and the marketplace ignores it: skysync must never send one).
4. The body is checked (415 not UTF-8, 400 empty/invalid/unwrapped) and the request is handled.

The credential header values are never logged, stored or echoed.
"""

from __future__ import annotations

import copy
import hmac
import json
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from email.message import Message
from typing import Any

from skysync.emulator.catalog import LINKED_DELETE_ERROR, Catalog
from skysync.emulator.config import (
    SandboxConfig,
    check_setting_names,
    masked_config,
    validate_config_changes,
)
from skysync.emulator.orders import Orders
from skysync.emulator.replies import ApiError, Reply, error_reply, json_reply
from skysync.emulator.routes import Request, Route, match_route, parse_body, split_target
from skysync.emulator.server import Listener
from skysync.emulator.state import EmulatorState

__all__ = ["LINKED_DELETE_ERROR", "Sandbox", "SandboxConfig", "main_sandbox"]

FAULTS = frozenset({"500", "502", "503", "timeout", "lost", "429", "drop", "applied_hang"})

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_AUTH_HEADERS = (
    ("X-User-Email", "email"),
    ("X-Api-Key", "api_key"),
    ("X-Accountmanager-Key", "account_key"),
)

_BAD_GATEWAY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def _json_or_none(body: bytes) -> Any:
    """The request body as JSON for the request log; None when it is empty or not JSON."""
    if not body:
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


class Sandbox:
    """The emulator: SkyHub state, rate limits and faults behind a ThreadingHTTPServer.

    One lock guards every piece of state; it is never held while sleeping (latency, hangs), so
    a slow request never stalls the others.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = copy.copy(config) if config is not None else SandboxConfig()
        self._state = EmulatorState(self.config)
        self._catalog = Catalog(self._state)
        self._orders = Orders(self._state)
        self._rooms = {"catalog": self._catalog, "orders": self._orders}
        self._listener = Listener(self._handle_http, self._state.stopping)

    # ----------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        """``http://host:port`` once serving; empty before."""
        return self._listener.base_url

    def start(self) -> str:
        """Serve in a daemon thread and return the base URL."""
        return self._listener.start(self.config.host, self.config.port)

    def serve_forever(self, ready: Callable[[str], None] | None = None) -> None:
        """Serve in the calling thread until interrupted; `ready` receives the base URL."""
        self._listener.serve_forever(self.config.host, self.config.port, ready)

    def stop(self) -> None:
        """Stop serving, cut open connections and hung requests, and join the thread."""
        self._listener.stop()

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- direct helpers

    def seed_order(self, order: Mapping[str, Any], raw: bool = False) -> dict[str, Any]:
        """Store an order as the marketplace would and put it in the queue.

        Missing fields get realistic defaults.  Seeding an existing code merges the given fields
        over the stored order (a marketplace-side change such as a cancellation; no transition
        check).  With raw=True the dict is stored exactly as given, so tests can queue
        malformed orders; ValueError for an unusable order.
        """
        if not isinstance(order, Mapping):
            raise ValueError("an order must be a JSON object")
        with self._state.lock:
            stored = self._orders.store_locked(order, raw=raw, allow_existing=True)
            return copy.deepcopy(stored)

    def link_product(self, sku: str) -> None:
        """Make a product (or a variation's parent) linked now; KeyError when unknown."""
        self._catalog.link(sku)

    def state(self) -> dict[str, Any]:
        """A snapshot of everything the emulator holds, as plain JSON-ready data.

        `queue` lists the queued order codes in delivery order; `queue_detail` adds whether each
        is visible now and, if not, in how many seconds it will be.
        """
        with self._state.lock:
            now = time.monotonic()
            catalog = self._catalog.snapshot_locked(now)
            orders = self._orders.snapshot_locked(now)
        return {
            "products": catalog["products"],
            "variations": catalog["variations"],
            "orders": orders["orders"],
            "queue": orders["queue"],
            "frozen_writes": catalog["frozen_writes"],
            "queue_detail": orders["queue_detail"],
        }

    def request_counts(self) -> dict[str, int]:
        """Requests seen per "METHOD /route STATUS" (STATUS is None when no answer was sent)."""
        with self._state.lock:
            return dict(self._state.counts)

    def request_log(self) -> list[dict[str, Any]]:
        """Every SkyHub request in arrival order (admin calls excluded); see the module doc."""
        with self._state.lock:
            return copy.deepcopy(list(self._state.log))

    def reset(self) -> None:
        """Forget all state, counters, rate-limit windows and scripted faults (config stays)."""
        with self._state.lock:
            self._state.clear()

    def configure(self, **changes: Any) -> None:
        """Change SandboxConfig fields at runtime; ValueError for unknown or invalid values."""
        check_setting_names(changes)
        if self._listener.serving and ({"host", "port"} & set(changes)):
            raise ValueError("host and port cannot change while serving")
        validate_config_changes(changes)
        with self._state.lock:
            for name, value in changes.items():
                setattr(self.config, name, value)
            if "seed" in changes:
                self._state.rng = random.Random(self.config.seed)

    def script_fault(self, method: str, path_prefix: str, fault: str, count: int = 1) -> None:
        """Give `fault` to the next `count` requests matching method ("*" = any) and path prefix.

        The prefix is compared with the percent-decoded path, so order codes are written as
        they are (with spaces).
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; use one of {sorted(FAULTS)}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError("count must be a positive integer")
        if not isinstance(method, str) or not isinstance(path_prefix, str):
            raise ValueError("method and path_prefix must be strings")
        with self._state.lock:
            self._state.scripted.append([method.upper(), path_prefix, fault, count])

    # ----------------------------------------------------------------- HTTP entry

    def _handle_http(self, method: str, raw_path: str, headers: Message, body: bytes) -> Reply:
        """Decide the answer to one request (runs in the connection's thread)."""
        target = split_target(raw_path)
        segments, decoded_path = target.segments, target.decoded_path
        if segments and segments[0] == "_sandbox":
            return self._handle_admin(method, segments[1:], body)

        latency = self.config.latency_ms
        if latency > 0:
            self._state.stopping.wait(latency / 1000.0)

        query = target.query
        now = time.monotonic()
        route, params = match_route(method, segments)
        route_name = route.template if route is not None else decoded_path
        fault: str | None = None
        try:
            self._check_auth(headers)
            if route is None:
                raise ApiError(404, f"Recurso não encontrado: {method} {decoded_path}")
            with self._state.lock:
                admitted = self._admit_locked(route, now)
                if admitted:
                    fault = self._pick_fault_locked(method, decoded_path)
            if not admitted:
                reply = self._too_many_requests()
            elif fault in ("500", "503"):
                reply = error_reply(
                    int(fault), "Internal Server Error" if fault == "500" else "Service Unavailable"
                )
            elif fault == "502":
                reply = Reply(502, _BAD_GATEWAY_PAGE, "text/html")
            elif fault == "429":
                reply = self._too_many_requests()
            elif fault == "timeout":
                reply = Reply(0, action="hang", hang_seconds=self.config.hang_seconds)
            elif fault == "drop":
                reply = Reply(0, action="drop")
            else:
                reply = self._run(route, params, query, body, now)
                if fault == "lost":
                    reply = Reply(0, action="drop")
                elif fault == "applied_hang":
                    reply = Reply(0, action="hang", hang_seconds=self.config.hang_seconds)
        except ApiError as exc:
            reply = error_reply(exc.status, exc.message)
        self._record(
            now,
            method,
            raw_path,
            route_name,
            reply.status if reply.action == "send" else None,
            body,
            fault,
        )
        return reply

    def _check_auth(self, headers: Message) -> None:
        """401 naming the missing or wrong header; the value itself is never repeated."""
        cfg = self.config
        enforce = any(getattr(cfg, attr) is not None for _, attr in _AUTH_HEADERS)
        for header, attr in _AUTH_HEADERS:
            value = headers.get(header)
            if value is None or not value.strip():
                raise ApiError(401, f"Header {header} ausente ou vazio (missing credential)")
            expected = getattr(cfg, attr)
            if (
                enforce
                and expected is not None
                and not hmac.compare_digest(value.encode("utf-8"), expected.encode("utf-8"))
            ):
                raise ApiError(401, f"Header {header} inválido (invalid credential)")

    def _too_many_requests(self) -> Reply:
        reply = error_reply(429, "Limite de requisições excedido (too many requests)")
        if self.config.retry_after_header:
            reply.headers["Retry-After"] = f"{self.config.retry_after_seconds:g}"
        return reply

    def _admit_locked(self, route: Route, now: float) -> bool:
        """Sliding one-second window per (bucket, method); refused requests are not counted."""
        cfg = self.config
        if not cfg.rate_limits_enabled:
            return True
        if cfg.rate_limit is None:
            rate = float(route.base_limit)
        elif route.base_limit >= 9:
            rate = float(cfg.rate_limit)
        else:
            rate = cfg.rate_limit * route.base_limit / 9.0
        if rate >= 1:
            capacity, window = math.floor(rate + 1e-9), 1.0
        else:
            # Below one per second: one request per 1/rate seconds.
            capacity, window = 1, 1.0 / rate
        accepted = self._state.windows.setdefault((route.bucket, route.method), deque())
        while accepted and accepted[0] <= now - window:
            accepted.popleft()
        if len(accepted) >= capacity:
            return False
        accepted.append(now)
        return True

    def _pick_fault_locked(self, method: str, decoded_path: str) -> str | None:
        for entry in self._state.scripted:
            wanted_method, prefix, fault, _count = entry
            if wanted_method in ("*", method) and decoded_path.startswith(prefix):
                entry[3] -= 1
                if entry[3] <= 0:
                    self._state.scripted.remove(entry)
                return fault
        cfg = self.config
        # Draw only for rates in use, so a seed reproduces the same faults for the same traffic.
        if cfg.fail_rate > 0 and self._state.rng.random() < cfg.fail_rate:
            return self._state.rng.choice(("500", "502", "503"))
        if cfg.timeout_rate > 0 and self._state.rng.random() < cfg.timeout_rate:
            return "timeout"
        if (
            method in _WRITE_METHODS
            and cfg.lost_answer_rate > 0
            and self._state.rng.random() < cfg.lost_answer_rate
        ):
            return "lost"
        return None

    def _run(
        self,
        route: Route,
        params: dict[str, str],
        query: dict[str, list[str]],
        body: bytes,
        now: float,
    ) -> Reply:
        data = parse_body(route, body)
        handler: Callable[[Request], tuple[int, Any]] = getattr(
            self._rooms[route.room], route.handler
        )
        with self._state.lock:
            status, payload = handler(Request(params, query, data, now, route.action))
        return json_reply(status, payload)

    def _record(
        self,
        now: float,
        method: str,
        raw_path: str,
        route: str,
        status: int | None,
        body: bytes,
        fault: str | None,
    ) -> None:
        entry = {
            "t": now,
            "method": method,
            "path": raw_path,
            "route": route,
            "status": status,
            "body": _json_or_none(body),
            "fault": fault,
        }
        key = f"{method} {route} {status}"
        with self._state.lock:
            self._state.log.append(entry)
            self._state.counts[key] = self._state.counts.get(key, 0) + 1

    # ----------------------------------------------------------------- admin

    def _handle_admin(self, method: str, segments: list[str], body: bytes) -> Reply:
        """Test and demo controls: no auth, no limits, no faults, not in the request log."""
        try:
            data: Any = None
            if body:
                try:
                    data = json.loads(body.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    raise ApiError(400, "O corpo deve ser JSON em UTF-8") from None
            route = (method, *segments)
            if route == ("POST", "orders"):
                if not isinstance(data, dict):
                    raise ApiError(400, 'Envie um pedido ou {"raw": {...}}')
                try:
                    if set(data) == {"raw"} and isinstance(data["raw"], dict):
                        order = self.seed_order(data["raw"], raw=True)
                    else:
                        order = self.seed_order(data)
                except ValueError as exc:
                    raise ApiError(422, str(exc)) from None
                return json_reply(201, order)
            if len(route) == 4 and route[:2] == ("POST", "products") and route[3] == "link":
                try:
                    self.link_product(route[2])
                except KeyError:
                    raise ApiError(404, f"Produto com SKU '{route[2]}' não encontrado") from None
                return Reply(204)
            if route == ("GET", "state"):
                return json_reply(200, self.state())
            if route == ("GET", "requests"):
                return json_reply(200, {"counts": self.request_counts(), "log": self.request_log()})
            if route == ("POST", "reset"):
                self.reset()
                return Reply(204)
            if route == ("GET", "config"):
                return json_reply(200, masked_config(self.config))
            if route == ("POST", "config"):
                if not isinstance(data, dict):
                    raise ApiError(400, "Envie um objeto com os campos a alterar")
                try:
                    self.configure(**data)
                except ValueError as exc:
                    raise ApiError(400, str(exc)) from None
                return json_reply(200, masked_config(self.config))
            if route == ("POST", "faults"):
                if not isinstance(data, dict):
                    raise ApiError(400, 'Envie {"method", "path_prefix", "fault", "count"}')
                try:
                    self.script_fault(
                        data.get("method", "*"),
                        data.get("path_prefix", "/"),
                        data.get("fault", ""),
                        data.get("count", 1),
                    )
                except ValueError as exc:
                    raise ApiError(400, str(exc)) from None
                return Reply(204)
            raise ApiError(
                404,
                f"Endpoint de administração desconhecido: {method} /_sandbox/{'/'.join(segments)}",
            )
        except ApiError as exc:
            return error_reply(exc.status, exc.message)


def main_sandbox(config: SandboxConfig) -> None:
    """Run the emulator in the foreground until Ctrl-C (the `skysync sandbox` command)."""
    sandbox = Sandbox(config)

    def announce(url: str) -> None:
        print(f"SkyHub emulator listening on {url}", flush=True)

    try:
        sandbox.serve_forever(ready=announce)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
