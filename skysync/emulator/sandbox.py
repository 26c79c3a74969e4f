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
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from skysync.emulator.config import (
    SandboxConfig,
    check_setting_names,
    is_number,
    masked_config,
    validate_config_changes,
)
from skysync.emulator.fixtures import demo_order, now_iso
from skysync.emulator.paging import check_depth, decode_cursor, encode_cursor, first, page_window
from skysync.emulator.replies import ApiError, Reply, error_reply, json_reply
from skysync.emulator.server import Listener

#: SkyHub's answer to deleting an associated item (skyhub-api.md section 6), word for word.
LINKED_DELETE_ERROR = "Variação possui alguma associação. Remova as associações e tente novamente."

#: Order status code -> (label, type), skyhub-api.md section 4.
ORDER_STATUSES: dict[str, tuple[str, str]] = {
    "book_product": ("Pagamento Pendente", "NEW"),
    "payment_received": ("Aprovado", "APPROVED"),
    "order_invoiced": ("Faturado", "INVOICED"),
    "order_shipped": ("Pedido Enviado", "SHIPPED"),
    "complete": ("Completo (entregue)", "DELIVERED"),
    "order_canceled": ("Cancelado", "CANCELED"),
    "shipment_exception": ("Exceção de Entrega", "SHIPMENT_EXCEPTION"),
}

#: Allowed status moves; anything not listed (a repeat included) is a 422, as on SkyHub.
ORDER_TRANSITIONS: dict[str, frozenset[str]] = {
    "book_product": frozenset({"payment_received", "order_canceled"}),
    "payment_received": frozenset({"order_invoiced", "order_canceled"}),
    "order_invoiced": frozenset({"order_shipped", "order_canceled", "shipment_exception"}),
    "order_shipped": frozenset({"complete", "shipment_exception"}),
    "shipment_exception": frozenset({"complete", "order_shipped"}),
    "complete": frozenset(),
    "order_canceled": frozenset(),
}

#: Order action sub-endpoint -> the status its body must carry and the order moves to.
ORDER_ACTIONS: dict[str, str] = {
    "approval": "payment_received",
    "invoice": "order_invoiced",
    "shipments": "order_shipped",
    "delivery": "complete",
    "cancel": "order_canceled",
    "shipment_exception": "shipment_exception",
}

FAULTS = frozenset({"500", "502", "503", "timeout", "lost", "429", "drop", "applied_hang"})
_FLOWING = frozenset({"sku", "qty", "price", "promotional_price"})

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_AUTH_HEADERS = (
    ("X-User-Email", "email"),
    ("X-Api-Key", "api_key"),
    ("X-Accountmanager-Key", "account_key"),
)
_LOG_CAPACITY = 100_000  # keeps a long-running CLI emulator from growing without bound
_NFE_KEY = re.compile(r"\d{44}")

_BAD_GATEWAY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@dataclass(frozen=True)
class _Route:
    """One SkyHub endpoint: its path template, rate-limit bucket and handler."""

    method: str
    template: str
    bucket: str
    base_limit: int  # requests per second on real SkyHub
    handler: str  # name of a Sandbox method
    wrapper: str | None = None  # key the JSON body must be wrapped in; None = body ignored
    action: str | None = None  # order action sub-endpoint

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.template.strip("/").split("/"))


@dataclass
class _Request:
    """A routed, authenticated, body-checked request as the state handlers see it."""

    params: dict[str, str]
    query: dict[str, list[str]]
    data: Any
    now: float
    action: str | None


def _action_routes() -> list[_Route]:
    return [
        _Route(
            "POST",
            f"/orders/{{code}}/{name}",
            f"orders/{name}",
            9,
            "_h_order_action",
            "status",
            name,
        )
        for name in ORDER_ACTIONS
    ]


_ROUTES: tuple[_Route, ...] = (
    _Route("GET", "/products", "products", 9, "_h_list_products"),
    _Route("POST", "/products", "products", 9, "_h_create_product", "product"),
    _Route("GET", "/products/{sku}", "products", 9, "_h_get_product"),
    _Route("PUT", "/products/{sku}", "products", 9, "_h_update_product", "product"),
    _Route("DELETE", "/products/{sku}", "products", 9, "_h_delete_product"),
    _Route(
        "POST", "/products/{sku}/variations", "variations", 9, "_h_create_variation", "variation"
    ),
    _Route("GET", "/variations/{sku}", "variations", 1, "_h_get_variation"),
    _Route("PUT", "/variations/{sku}", "variations", 9, "_h_update_variation", "variation"),
    _Route("DELETE", "/variations/{sku}", "variations", 9, "_h_delete_variation"),
    _Route("GET", "/orders", "orders/list", 1, "_h_list_orders"),
    _Route("POST", "/orders", "orders/create", 9, "_h_create_order", "order"),
    _Route("GET", "/orders/{code}", "orders/single", 1, "_h_get_order"),
    *_action_routes(),
    _Route("GET", "/queues/orders", "queues/orders", 9, "_h_queue_read"),
    _Route("DELETE", "/queues/orders/{code}", "queues/orders", 9, "_h_queue_ack"),
    _Route("GET", "/sync_errors/products", "sync_errors/products", 1, "_h_sync_errors"),
)


def _match_route(method: str, segments: list[str]) -> tuple[_Route | None, dict[str, str]]:
    """Find the route for decoded path segments; placeholders capture one whole segment."""
    for route in _ROUTES:
        parts = route.parts
        if route.method != method or len(parts) != len(segments):
            continue
        params: dict[str, str] = {}
        for part, segment in zip(parts, segments, strict=True):
            if part.startswith("{"):
                if not segment:
                    break
                params[part[1:-1]] = segment
            elif part != segment:
                break
        else:
            return route, params
    return None, {}


def _json_or_none(body: bytes) -> Any:
    """The request body as JSON for the request log; None when it is empty or not JSON."""
    if not body:
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _validate_item_fields(item: Mapping[str, Any], what: str) -> None:
    """Business checks SkyHub applies to product and variation fields that are present.

    Since March 2025 SkyHub refuses a zero or null price; stock must be a whole number.
    """
    for key in ("price", "promotional_price"):
        if key in item:
            value = item[key]
            if not is_number(value) or value <= 0:
                raise ApiError(
                    422,
                    f"{what}.{key} inválido: deve ser um número maior que zero "
                    "(preço zero ou nulo não é aceito)",
                )
    if "qty" in item:
        qty = item["qty"]
        if not isinstance(qty, int) or isinstance(qty, bool) or qty < 0:
            raise ApiError(422, f"{what}.qty inválido: deve ser um inteiro maior ou igual a zero")
    if "status" in item and item["status"] not in ("enabled", "disabled"):
        raise ApiError(422, f"{what}.status inválido: use 'enabled' ou 'disabled'")


def _require_sku(item: Mapping[str, Any], what: str) -> str:
    sku = item.get("sku")
    if not isinstance(sku, str) or not sku.strip():
        raise ApiError(422, f"{what}.sku é obrigatório")
    return sku


def _normalize_status(value: Any) -> dict[str, str]:
    """Turn a status code or partial status dict into SkyHub's full `{code, label, type}`.

    A dict with an unknown code is kept when it brings its own label and type, so tests can
    seed the newer statuses SkyHub announced in 2025.
    """
    if isinstance(value, str):
        if value not in ORDER_STATUSES:
            raise ValueError(f"unknown order status {value!r}")
        label, type_ = ORDER_STATUSES[value]
        return {"code": value, "label": label, "type": type_}
    if isinstance(value, Mapping) and isinstance(value.get("code"), str):
        code = value["code"]
        if code in ORDER_STATUSES:
            label, type_ = ORDER_STATUSES[code]
            return {
                "code": code,
                "label": value.get("label", label),
                "type": value.get("type", type_),
            }
        if isinstance(value.get("label"), str) and isinstance(value.get("type"), str):
            return {"code": code, "label": value["label"], "type": value["type"]}
        raise ValueError(f"unknown order status {code!r} (give label and type to seed it)")
    raise ValueError("order status must be a status code or a {code, label, type} object")


def _status_code(order: Mapping[str, Any]) -> str | None:
    status = order.get("status")
    if isinstance(status, Mapping) and isinstance(status.get("code"), str):
        return status["code"]
    return None


class Sandbox:
    """The emulator: SkyHub state, rate limits and faults behind a ThreadingHTTPServer.

    One lock guards every piece of state; it is never held while sleeping (latency, hangs), so
    a slow request never stalls the others.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = copy.copy(config) if config is not None else SandboxConfig()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = Listener(self._handle_http, self._stopping)
        self._clear_state()

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
        with self._lock:
            stored = self._store_order_locked(order, raw=raw, allow_existing=True)
            return copy.deepcopy(stored)

    def link_product(self, sku: str) -> None:
        """Make a product (or a variation's parent) linked now; KeyError when unknown."""
        with self._lock:
            parent = self._variation_parent.get(sku, sku)
            if parent not in self._products:
                raise KeyError(sku)
            self._linked_at[parent] = time.monotonic()

    def state(self) -> dict[str, Any]:
        """A snapshot of everything the emulator holds, as plain JSON-ready data.

        `queue` lists the queued order codes in delivery order; `queue_detail` adds whether each
        is visible now and, if not, in how many seconds it will be.
        """
        with self._lock:
            now = time.monotonic()
            variations = {}
            for sku, variation in self._variations.items():
                view = copy.deepcopy(variation)
                view["parent_sku"] = self._variation_parent[sku]
                variations[sku] = view
            return {
                "products": {sku: self._product_view_locked(sku, now) for sku in self._products},
                "variations": variations,
                "orders": copy.deepcopy(self._orders),
                "queue": list(self._queue),
                "frozen_writes": copy.deepcopy(self._frozen_writes),
                "queue_detail": [
                    {
                        "code": code,
                        "visible": visible_at <= now,
                        "visible_in": max(0.0, visible_at - now),
                    }
                    for code, visible_at in self._queue.items()
                ],
            }

    def request_counts(self) -> dict[str, int]:
        """Requests seen per "METHOD /route STATUS" (STATUS is None when no answer was sent)."""
        with self._lock:
            return dict(self._counts)

    def request_log(self) -> list[dict[str, Any]]:
        """Every SkyHub request in arrival order (admin calls excluded); see the module doc."""
        with self._lock:
            return copy.deepcopy(list(self._log))

    def reset(self) -> None:
        """Forget all state, counters, rate-limit windows and scripted faults (config stays)."""
        with self._lock:
            self._clear_state()

    def configure(self, **changes: Any) -> None:
        """Change SandboxConfig fields at runtime; ValueError for unknown or invalid values."""
        check_setting_names(changes)
        if self._listener.serving and ({"host", "port"} & set(changes)):
            raise ValueError("host and port cannot change while serving")
        validate_config_changes(changes)
        with self._lock:
            for name, value in changes.items():
                setattr(self.config, name, value)
            if "seed" in changes:
                self._rng = random.Random(self.config.seed)

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
        with self._lock:
            self._scripted.append([method.upper(), path_prefix, fault, count])

    # ----------------------------------------------------------------- state

    def _clear_state(self) -> None:
        self._products: dict[str, dict[str, Any]] = {}
        self._linked_at: dict[str, float | None] = {}
        self._variations: dict[str, dict[str, Any]] = {}
        self._variation_parent: dict[str, str] = {}
        self._orders: dict[str, dict[str, Any]] = {}
        self._queue: OrderedDict[str, float] = OrderedDict()  # code -> visible from (monotonic)
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._scripted: list[list[Any]] = []
        self._log: deque[dict[str, Any]] = deque(maxlen=_LOG_CAPACITY)
        self._counts: dict[str, int] = {}
        self._rng = random.Random(self.config.seed)
        self._order_serial = 0
        self._frozen_writes: list[dict[str, Any]] = []

    def _check_write_locked(self, sku: str, changes: Mapping[str, Any], now: float) -> None:
        """422 for a refused category; remember attribute writes to a linked product."""
        refused = set(self.config.refused_categories)
        for category in changes.get("categories") or []:
            if isinstance(category, dict):
                names = {category.get("code"), category.get("name")}
            else:
                names = {category}
            for name in sorted(n for n in names & refused if isinstance(n, str)):
                raise ApiError(422, f"Categoria não encontrada: {name}")
        parent = self._variation_parent.get(sku, sku)
        attributes = sorted(set(changes) - _FLOWING)
        if attributes and self._is_linked_locked(parent, now):
            self._frozen_writes.append({"sku": sku, "fields": attributes})

    def _is_linked_locked(self, sku: str, now: float) -> bool:
        linked_at = self._linked_at.get(sku)
        return linked_at is not None and now >= linked_at

    def _product_view_locked(self, sku: str, now: float) -> dict[str, Any]:
        view = copy.deepcopy(self._products[sku])
        view.setdefault("removed", False)
        view.setdefault("condition_type", "new")
        status = "linked" if self._is_linked_locked(sku, now) else "pending"
        view["associations"] = [{"platform": "B2W", "status": status}]
        view["variations"] = [
            copy.deepcopy(variation)
            for vsku, variation in self._variations.items()
            if self._variation_parent[vsku] == sku
        ]
        return view

    def _sku_taken_locked(self, sku: str) -> bool:
        return sku in self._products or sku in self._variations

    def _enqueue_locked(self, code: str) -> None:
        # One entry per code: a new status of an already queued order just makes it visible now.
        self._queue[code] = time.monotonic()

    def _store_order_locked(
        self, order: Mapping[str, Any], *, raw: bool, allow_existing: bool
    ) -> dict[str, Any]:
        code = order.get("code")
        if raw:
            stored = copy.deepcopy(dict(order))
            key = code if isinstance(code, str) and code else self._new_order_code_locked()
            self._orders[key] = stored
            self._enqueue_locked(key)
            return stored
        if code is not None and (not isinstance(code, str) or not code.strip()):
            raise ValueError("order code must be a non-empty string")
        if code in self._orders:
            if not allow_existing:
                raise ApiError(422, f"Pedido com código '{code}' já existe")
            stored = self._orders[code]
            changes = copy.deepcopy(dict(order))
            if "status" in changes:
                changes["status"] = _normalize_status(changes["status"])
            stored.update(changes)
            # a seeded updated_at is kept (tests replay the same event); otherwise it is now
            stored["updated_at"] = changes.get("updated_at") or now_iso()
        else:
            stored = self._new_order_locked(order, code)
            self._orders[stored["code"]] = stored
        self._enqueue_locked(stored["code"])
        return stored

    def _new_order_code_locked(self) -> str:
        while True:
            self._order_serial += 1
            code = f"Lojas Americanas-{1700000000000 + self._order_serial}-01"
            if code not in self._orders:
                return code

    def _new_order_locked(self, order: Mapping[str, Any], code: str | None) -> dict[str, Any]:
        """A complete order in SkyHub's shape (skyhub-api.md section 4), given fields winning."""
        given = copy.deepcopy(dict(order))
        status = _normalize_status(given.pop("status", "book_product"))
        if code is None:
            code = self._new_order_code_locked()
        return demo_order(given, code, status)

    # ----------------------------------------------------------------- HTTP entry

    def _handle_http(self, method: str, raw_path: str, headers: Message, body: bytes) -> Reply:
        """Decide the answer to one request (runs in the connection's thread)."""
        split = urlsplit(raw_path)
        raw_segments = split.path.split("/")[1:]
        if len(raw_segments) > 1 and raw_segments[-1] == "":
            raw_segments.pop()  # "/products/" is "/products"
        segments = [unquote(s) for s in raw_segments]
        decoded_path = "/" + "/".join(segments)
        if segments and segments[0] == "_sandbox":
            return self._handle_admin(method, segments[1:], body)

        latency = self.config.latency_ms
        if latency > 0:
            self._stopping.wait(latency / 1000.0)

        query = parse_qs(split.query, keep_blank_values=True)
        now = time.monotonic()
        route, params = _match_route(method, segments)
        route_name = route.template if route is not None else decoded_path
        fault: str | None = None
        try:
            self._check_auth(headers)
            if route is None:
                raise ApiError(404, f"Recurso não encontrado: {method} {decoded_path}")
            with self._lock:
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

    def _admit_locked(self, route: _Route, now: float) -> bool:
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
        accepted = self._windows.setdefault((route.bucket, route.method), deque())
        while accepted and accepted[0] <= now - window:
            accepted.popleft()
        if len(accepted) >= capacity:
            return False
        accepted.append(now)
        return True

    def _pick_fault_locked(self, method: str, decoded_path: str) -> str | None:
        for entry in self._scripted:
            wanted_method, prefix, fault, _count = entry
            if wanted_method in ("*", method) and decoded_path.startswith(prefix):
                entry[3] -= 1
                if entry[3] <= 0:
                    self._scripted.remove(entry)
                return fault
        cfg = self.config
        # Draw only for rates in use, so a seed reproduces the same faults for the same traffic.
        if cfg.fail_rate > 0 and self._rng.random() < cfg.fail_rate:
            return self._rng.choice(("500", "502", "503"))
        if cfg.timeout_rate > 0 and self._rng.random() < cfg.timeout_rate:
            return "timeout"
        if (
            method in _WRITE_METHODS
            and cfg.lost_answer_rate > 0
            and self._rng.random() < cfg.lost_answer_rate
        ):
            return "lost"
        return None

    def _run(
        self,
        route: _Route,
        params: dict[str, str],
        query: dict[str, list[str]],
        body: bytes,
        now: float,
    ) -> Reply:
        data = self._parse_body(route, body)
        handler: Callable[[_Request], tuple[int, Any]] = getattr(self, route.handler)
        with self._lock:
            status, payload = handler(_Request(params, query, data, now, route.action))
        return json_reply(status, payload)

    @staticmethod
    def _parse_body(route: _Route, body: bytes) -> Any:
        text = ""
        if body:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(
                    415, "O corpo da requisição deve estar codificado em UTF-8"
                ) from None
        if route.wrapper is None:
            return None
        if not text.strip():
            raise ApiError(400, "O corpo da requisição é obrigatório (JSON)")
        try:
            data = json.loads(text)
        except ValueError:
            raise ApiError(400, "O corpo da requisição não é um JSON válido") from None
        key = route.wrapper
        if not isinstance(data, dict) or key not in data:
            raise ApiError(
                400, f"O corpo deve estar envolvido na chave '{key}': {{\"{key}\": ...}}"
            )
        if key == "status":
            if not isinstance(data[key], str):
                raise ApiError(400, "A chave 'status' deve ser o código do status")
            return data
        if not isinstance(data[key], dict):
            raise ApiError(400, f"A chave '{key}' deve conter um objeto JSON")
        return data[key]

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
        with self._lock:
            self._log.append(entry)
            self._counts[key] = self._counts.get(key, 0) + 1

    # ----------------------------------------------------------------- products

    def _h_list_products(self, req: _Request) -> tuple[int, Any]:
        cursor = first(req.query, "cursor")
        if cursor:
            state = decode_cursor(cursor)
            offset, per_page, filters = state["o"], state["n"], state["f"]
        else:
            offset, per_page = page_window(req.query, 25)
            filters = {}
            for name in ("status", "name", "qty_from", "qty_to"):
                value = first(req.query, f"filters[{name}]")
                if value:
                    filters[name] = value
        check_depth(offset)
        matching = [sku for sku in self._products if self._product_matches(sku, filters)]
        page_skus = matching[offset : offset + per_page]
        next_offset = offset + per_page
        next_url = None
        if next_offset < len(matching):
            next_url = "/products?cursor=" + encode_cursor(
                {"o": next_offset, "n": per_page, "f": filters}
            )
        return 200, {
            "products": [self._product_view_locked(sku, req.now) for sku in page_skus],
            "total": len(matching),
            "next": next_url,
        }

    def _product_matches(self, sku: str, filters: Mapping[str, str]) -> bool:
        product = self._products[sku]
        if "status" in filters and product.get("status") != filters["status"]:
            return False
        name_filter = filters.get("name", "").lower()
        if name_filter and name_filter not in str(product.get("name", "")).lower():
            return False
        qty = product.get("qty")
        for name, keep in (("qty_from", lambda q, b: q >= b), ("qty_to", lambda q, b: q <= b)):
            if name in filters:
                try:
                    bound = int(filters[name])
                except ValueError:
                    raise ApiError(400, f"Filtro '{name}' inválido") from None
                if not is_number(qty) or not keep(qty, bound):
                    return False
        return True

    def _h_create_product(self, req: _Request) -> tuple[int, Any]:
        product: dict[str, Any] = req.data
        sku = _require_sku(product, "product")
        if self._sku_taken_locked(sku):
            raise ApiError(422, f"Produto com SKU '{sku}' já existe")
        _validate_item_fields(product, "product")
        self._check_write_locked(sku, product, req.now)
        new_variations = self._check_new_variations_locked(sku, product.get("variations", []))
        stored = {
            k: copy.deepcopy(v)
            for k, v in product.items()
            if k not in ("variations", "associations")
        }
        self._products[sku] = stored
        delay = self.config.link_delay
        self._linked_at[sku] = None if delay is None else req.now + delay
        for variation in new_variations:
            self._variations[variation["sku"]] = variation
            self._variation_parent[variation["sku"]] = sku
        return 201, None

    def _check_new_variations_locked(self, parent: str, variations: Any) -> list[dict[str, Any]]:
        """Validate variations sent inside a product before anything is stored (all or none)."""
        if variations is None:
            return []
        if not isinstance(variations, list):
            raise ApiError(422, "product.variations deve ser uma lista")
        result = []
        seen: set[str] = set()
        for variation in variations:
            if not isinstance(variation, dict):
                raise ApiError(422, "Cada variação deve ser um objeto JSON")
            vsku = _require_sku(variation, "variation")
            if vsku == parent or vsku in seen or self._sku_taken_locked(vsku):
                raise ApiError(422, f"Variação com SKU '{vsku}' já existe")
            _validate_item_fields(variation, "variation")
            seen.add(vsku)
            result.append(copy.deepcopy(variation))
        return result

    def _get_product_locked(self, sku: str) -> dict[str, Any]:
        product = self._products.get(sku)
        if product is None:
            raise ApiError(404, f"Produto com SKU '{sku}' não encontrado")
        return product

    def _h_get_product(self, req: _Request) -> tuple[int, Any]:
        self._get_product_locked(req.params["sku"])
        return 200, self._product_view_locked(req.params["sku"], req.now)

    def _h_update_product(self, req: _Request) -> tuple[int, Any]:
        sku = req.params["sku"]
        product = self._get_product_locked(sku)
        changes: dict[str, Any] = req.data
        if "sku" in changes and changes["sku"] != sku:
            raise ApiError(422, "O SKU de um produto não pode ser alterado")
        _validate_item_fields(changes, "product")
        self._check_write_locked(sku, changes, req.now)
        creates: list[dict[str, Any]] = []
        updates: list[tuple[str, dict[str, Any]]] = []
        if "variations" in changes:
            variations = changes["variations"]
            if not isinstance(variations, list):
                raise ApiError(422, "product.variations deve ser uma lista")
            for variation in variations:
                if not isinstance(variation, dict):
                    raise ApiError(422, "Cada variação deve ser um objeto JSON")
                vsku = _require_sku(variation, "variation")
                _validate_item_fields(variation, "variation")
                self._check_write_locked(sku, variation, req.now)
                if self._variation_parent.get(vsku) == sku:
                    updates.append((vsku, variation))
                elif self._sku_taken_locked(vsku):
                    raise ApiError(422, f"Variação com SKU '{vsku}' pertence a outro produto")
                else:
                    creates.append(copy.deepcopy(variation))
        for key, value in changes.items():
            if key not in ("sku", "variations", "associations"):
                product[key] = copy.deepcopy(value)
        for vsku, variation in updates:
            self._variations[vsku].update(copy.deepcopy(variation))
        for variation in creates:
            self._variations[variation["sku"]] = variation
            self._variation_parent[variation["sku"]] = sku
        return 204, None

    def _h_delete_product(self, req: _Request) -> tuple[int, Any]:
        sku = req.params["sku"]
        self._get_product_locked(sku)
        if self._is_linked_locked(sku, req.now):
            raise ApiError(422, LINKED_DELETE_ERROR)
        del self._products[sku]
        self._linked_at.pop(sku, None)
        for vsku in [v for v, parent in self._variation_parent.items() if parent == sku]:
            del self._variations[vsku]
            del self._variation_parent[vsku]
        return 204, None

    # ----------------------------------------------------------------- variations

    def _h_create_variation(self, req: _Request) -> tuple[int, Any]:
        parent = req.params["sku"]
        self._get_product_locked(parent)
        variation: dict[str, Any] = req.data
        vsku = _require_sku(variation, "variation")
        if self._sku_taken_locked(vsku):
            raise ApiError(422, f"Variação com SKU '{vsku}' já existe")
        _validate_item_fields(variation, "variation")
        self._check_write_locked(parent, variation, req.now)
        self._variations[vsku] = copy.deepcopy(variation)
        self._variation_parent[vsku] = parent
        return 201, None

    def _get_variation_locked(self, sku: str) -> dict[str, Any]:
        variation = self._variations.get(sku)
        if variation is None:
            raise ApiError(404, f"Variação com SKU '{sku}' não encontrada")
        return variation

    def _h_get_variation(self, req: _Request) -> tuple[int, Any]:
        return 200, copy.deepcopy(self._get_variation_locked(req.params["sku"]))

    def _h_update_variation(self, req: _Request) -> tuple[int, Any]:
        sku = req.params["sku"]
        variation = self._get_variation_locked(sku)
        changes: dict[str, Any] = req.data
        if "sku" in changes and changes["sku"] != sku:
            raise ApiError(422, "O SKU de uma variação não pode ser alterado")
        _validate_item_fields(changes, "variation")
        self._check_write_locked(sku, changes, req.now)
        for key, value in changes.items():
            if key != "sku":
                variation[key] = copy.deepcopy(value)
        return 204, None

    def _h_delete_variation(self, req: _Request) -> tuple[int, Any]:
        sku = req.params["sku"]
        self._get_variation_locked(sku)
        if self._is_linked_locked(self._variation_parent[sku], req.now):
            raise ApiError(422, LINKED_DELETE_ERROR)
        del self._variations[sku]
        del self._variation_parent[sku]
        return 204, None

    # ----------------------------------------------------------------- orders

    def _get_order_locked(self, code: str) -> dict[str, Any]:
        order = self._orders.get(code)
        if order is None:
            raise ApiError(404, f"Pedido '{code}' não encontrado")
        return order

    def _h_get_order(self, req: _Request) -> tuple[int, Any]:
        return 200, copy.deepcopy(self._get_order_locked(req.params["code"]))

    def _h_list_orders(self, req: _Request) -> tuple[int, Any]:
        offset, per_page = page_window(req.query, 100)
        check_depth(offset)
        statuses = set(req.query.get("filters[statuses][]", []))
        statuses |= set(req.query.get("filters[statuses]", []))
        matching = [
            order
            for order in self._orders.values()
            if not statuses or _status_code(order) in statuses
        ]
        return 200, {
            "total": len(matching),
            "orders": copy.deepcopy(matching[offset : offset + per_page]),
        }

    def _h_create_order(self, req: _Request) -> tuple[int, Any]:
        try:
            stored = self._store_order_locked(req.data, raw=False, allow_existing=False)
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        return 201, copy.deepcopy(stored)

    def _h_order_action(self, req: _Request) -> tuple[int, Any]:
        code = req.params["code"]
        order = self._get_order_locked(code)
        action = req.action or ""
        target = ORDER_ACTIONS[action]
        data: dict[str, Any] = req.data
        given = data["status"]
        if given not in ORDER_STATUSES:
            raise ApiError(422, f"Status desconhecido: '{given}'")
        if given != target:
            raise ApiError(
                422, f"O status '{given}' não é aceito em /{action} (esperado '{target}')"
            )
        current = _status_code(order)
        if current is None:
            raise ApiError(422, f"O pedido '{code}' não tem um status válido")
        if current == target:
            raise ApiError(
                422,
                f"Transição de status inválida para o pedido '{code}': o pedido já está em "
                f"'{current}' (atual '{current}', solicitado '{target}')",
            )
        if target not in ORDER_TRANSITIONS.get(current, frozenset()):
            raise ApiError(
                422,
                f"Transição de status inválida para o pedido '{code}': "
                f"de '{current}' para '{target}'",
            )
        stamp = now_iso()
        apply = getattr(self, f"_apply_{action}")
        apply(order, data, stamp)  # validates first, then mutates
        order["status"] = _normalize_status(target)
        order["updated_at"] = stamp
        self._enqueue_locked(code)
        return 201, None

    @staticmethod
    def _apply_approval(order: dict[str, Any], data: dict[str, Any], stamp: str) -> None:
        order["approved_date"] = stamp

    @staticmethod
    def _apply_invoice(order: dict[str, Any], data: dict[str, Any], stamp: str) -> None:
        invoice = data.get("invoice")
        if not isinstance(invoice, dict):
            raise ApiError(422, 'invoice é obrigatório: {"invoice": {"key": ...}}')
        key = invoice.get("key")
        if not isinstance(key, str) or not _NFE_KEY.fullmatch(key):
            raise ApiError(422, "invoice.key inválida: a chave da NF-e tem 44 dígitos")
        record = copy.deepcopy(invoice)
        record.setdefault("line", key[22:25])  # série, from the NF-e key layout
        record.setdefault("number", key[25:34])
        if not record.get("issue_date"):
            record["issue_date"] = stamp
        order.setdefault("invoices", []).append(record)

    @staticmethod
    def _apply_shipments(order: dict[str, Any], data: dict[str, Any], stamp: str) -> None:
        shipment = data.get("shipment")
        if not isinstance(shipment, dict):
            raise ApiError(422, 'shipment é obrigatório: {"shipment": {...}}')
        record = copy.deepcopy(shipment)
        if "items" not in record and "items" in data:
            record["items"] = copy.deepcopy(data["items"])  # php SDK puts items at the top level
        items = record.get("items", [])
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("sku"), str) for i in items
        ):
            raise ApiError(422, 'shipment.items deve ser uma lista de {"sku", "qty"}')
        track = record.get("track")
        if track is not None and not isinstance(track, dict):
            raise ApiError(422, "shipment.track deve ser um objeto")
        order.setdefault("shipments", []).append(record)
        order["shipped_date"] = record.get("delivered_carrier_date") or stamp

    @staticmethod
    def _apply_delivery(order: dict[str, Any], data: dict[str, Any], stamp: str) -> None:
        order["delivered_date"] = data.get("delivered_date") or stamp

    @staticmethod
    def _apply_cancel(order: dict[str, Any], data: dict[str, Any], stamp: str) -> None:
        order["canceled_date"] = stamp

    @staticmethod
    def _apply_shipment_exception(order: dict[str, Any], data: dict[str, Any], stamp: str) -> None:
        exception = data.get("shipment_exception")
        if not isinstance(exception, dict):
            raise ApiError(422, 'shipment_exception é obrigatório: {"shipment_exception": {...}}')
        order.setdefault("shipment_exceptions", []).append(copy.deepcopy(exception))

    # ----------------------------------------------------------------- queue and misc

    def _h_queue_read(self, req: _Request) -> tuple[int, Any]:
        """Oldest visible entry, hidden for the visibility window until acknowledged."""
        for code, visible_at in self._queue.items():
            if visible_at <= req.now and code in self._orders:
                self._queue[code] = req.now + self.config.visibility_timeout
                return 200, copy.deepcopy(self._orders[code])
        return 204, None

    def _h_queue_ack(self, req: _Request) -> tuple[int, Any]:
        code = req.params["code"]
        if code not in self._queue:
            raise ApiError(404, f"Pedido '{code}' não está na fila")
        del self._queue[code]
        return 204, None

    def _h_sync_errors(self, req: _Request) -> tuple[int, Any]:
        return 200, {"errors": []}

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
