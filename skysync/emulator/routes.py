"""The SkyHub route table: which path and method reach which handler, under which rate bucket.

Also how a request becomes what a handler sees: the path split into percent-decoded segments,
the query parsed, and the body checked (415 not UTF-8, 400 empty, not JSON or not wrapped in
the key SkyHub expects).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from skysync.emulator.order_statuses import ORDER_ACTIONS
from skysync.emulator.replies import ApiError


@dataclass(frozen=True)
class Route:
    """One SkyHub endpoint: its path template, rate-limit bucket and handler."""

    method: str
    template: str
    bucket: str
    base_limit: int  # requests per second on real SkyHub
    room: str  # "catalog", "orders" or "sync_errors": which room's method handles it
    handler: str  # name of that room's method
    wrapper: str | None = None  # key the JSON body must be wrapped in; None = body ignored
    action: str | None = None  # order action sub-endpoint; the entity type of /sync_errors

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.template.strip("/").split("/"))


@dataclass
class Request:
    """A routed, authenticated, body-checked request as the state handlers see it."""

    params: dict[str, str]
    query: dict[str, list[str]]
    data: Any
    now: float
    action: str | None


@dataclass(frozen=True)
class Target:
    """Where a raw request path points: decoded segments, the path they spell, the query."""

    segments: list[str]
    decoded_path: str
    query: dict[str, list[str]]


def _action_routes() -> list[Route]:
    """One route per order action (``POST /orders/{code}/{action}``), each its own bucket."""
    return [
        Route(
            "POST",
            f"/orders/{{code}}/{name}",
            f"orders/{name}",
            9,
            "orders",
            "order_action",
            "status",
            name,
        )
        for name in ORDER_ACTIONS
    ]


ROUTES: tuple[Route, ...] = (
    Route("GET", "/products", "products", 9, "catalog", "list_products"),
    Route("POST", "/products", "products", 9, "catalog", "create_product", "product"),
    Route("GET", "/products/{sku}", "products", 9, "catalog", "get_product"),
    Route("PUT", "/products/{sku}", "products", 9, "catalog", "update_product", "product"),
    Route("DELETE", "/products/{sku}", "products", 9, "catalog", "delete_product"),
    Route(
        "POST",
        "/products/{sku}/variations",
        "variations",
        9,
        "catalog",
        "create_variation",
        "variation",
    ),
    Route("GET", "/variations/{sku}", "variations", 1, "catalog", "get_variation"),
    Route("PUT", "/variations/{sku}", "variations", 9, "catalog", "update_variation", "variation"),
    Route("DELETE", "/variations/{sku}", "variations", 9, "catalog", "delete_variation"),
    Route("GET", "/orders", "orders/list", 1, "orders", "list_orders"),
    Route("POST", "/orders", "orders/create", 9, "orders", "create_order", "order"),
    Route("GET", "/orders/{code}", "orders/single", 1, "orders", "get_order"),
    *_action_routes(),
    Route("GET", "/queues/orders", "queues/orders", 9, "orders", "queue_read"),
    Route("DELETE", "/queues/orders/{code}", "queues/orders", 9, "orders", "queue_ack"),
    *(
        Route(
            method,
            f"/sync_errors/{entity}",
            f"sync_errors/{entity}",
            1,
            "sync_errors",
            handler,
            wrapper,
            entity,
        )
        for entity in ("products", "orders")
        for method, handler, wrapper in (
            ("GET", "list_errors", None),
            ("PATCH", "ignore", "errors"),
        )
    ),
)


def split_target(raw_path: str) -> Target:
    """Percent-decode the path segments ("/products/" is "/products") and parse the query."""
    split = urlsplit(raw_path)
    raw_segments = split.path.split("/")[1:]
    if len(raw_segments) > 1 and raw_segments[-1] == "":
        raw_segments.pop()
    segments = [unquote(s) for s in raw_segments]
    return Target(
        segments,
        "/" + "/".join(segments),
        parse_qs(split.query, keep_blank_values=True),
    )


def match_route(method: str, segments: list[str]) -> tuple[Route | None, dict[str, str]]:
    """Find the route for decoded path segments; placeholders capture one whole segment."""
    for route in ROUTES:
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


def parse_body(route: Route, body: bytes) -> Any:
    """The body as the route's handler wants it: the object inside the route's wrapper key.

    Order actions keep the whole object (``{"status": ..., "invoice": ...}``); routes without
    a wrapper ignore the body once it is known to be UTF-8.
    """
    text = ""
    if body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(415, "O corpo da requisição deve estar codificado em UTF-8") from None
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
        raise ApiError(400, f"O corpo deve estar envolvido na chave '{key}': {{\"{key}\": ...}}")
    if key == "status":
        if not isinstance(data[key], str):
            raise ApiError(400, "A chave 'status' deve ser o código do status")
        return data
    if key == "errors":
        if not isinstance(data[key], list):
            raise ApiError(400, "A chave 'errors' deve conter uma lista")
        return data[key]
    if not isinstance(data[key], dict):
        raise ApiError(400, f"A chave '{key}' deve conter um objeto JSON")
    return data[key]
