"""The ``/_sandbox`` admin API: test and demo controls over the Sandbox's own methods.

No auth, never rate-limited, never faulted, not in the request log:

====  =========================  ==============================================================
POST  /_sandbox/orders           an order (realistic defaults), or ``{"raw": {...}}`` as given
POST  /_sandbox/products/{sku}/link  the product (or a variation's parent) is linked now
POST  /_sandbox/products     ``{"product": {...}, "linked": false}``: SkyHub has it, made
                             outside skysync (an orphan); or ``{"products": [...]}``: a
                             catalogue stored as if created through the API (all or nothing)
PATCH /_sandbox/products/{sku}  ``{"price": 12.5, ...}``: a product or variation changed
                             behind skysync's back (``null`` removes a field)
DELETE /_sandbox/products/{sku}  a product or variation deleted behind skysync's back
POST  /_sandbox/sync_errors  ``{"entity_type": "products"|"orders", "entity_id",
                             "error_category_code", "error_code", "message"}``: SkyHub's own error
GET   /_sandbox/state            :meth:`Sandbox.state`
GET   /_sandbox/requests         ``{"counts", "log"}``
POST  /_sandbox/reset            forget everything but the config
GET   /_sandbox/config           the config, credentials masked
POST  /_sandbox/config           change fields; answers the new config
POST  /_sandbox/faults           ``{"method", "path_prefix", "fault", "count"}``
====  =========================  ==============================================================
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from skysync.emulator.config import masked_config
from skysync.emulator.replies import ApiError, Reply, error_reply, json_reply

if TYPE_CHECKING:
    from skysync.emulator.sandbox import Sandbox


def answer_admin(sandbox: Sandbox, method: str, segments: list[str], body: bytes) -> Reply:
    """The reply to one admin call; `segments` are the decoded path after ``_sandbox``."""
    try:
        return _route_admin(sandbox, (method, *segments), _admin_body(body))
    except ApiError as exc:
        return error_reply(exc.status, exc.message)


def _admin_body(body: bytes) -> Any:
    """The JSON body, None when empty; 400 when not JSON in UTF-8."""
    if not body:
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "O corpo deve ser JSON em UTF-8") from None


def _route_admin(sandbox: Sandbox, route: tuple[str, ...], data: Any) -> Reply:
    """Run the admin call `route` ((method, *segments)); 404 for an unknown one."""
    if route == ("POST", "orders"):
        return _seed_order(sandbox, data)
    if route == ("POST", "products") and isinstance(data, dict) and "products" in data:
        return _seed_products(sandbox, data)
    if len(route) == 4 and route[:2] == ("POST", "products") and route[3] == "link":
        try:
            sandbox.link_product(route[2])
        except KeyError:
            raise ApiError(404, f"Produto com SKU '{route[2]}' não encontrado") from None
        return Reply(204)
    if route == ("POST", "products"):
        if not isinstance(data, dict) or not isinstance(data.get("product"), dict):
            raise ApiError(400, 'Envie {"product": {...}, "linked": false}')
        try:
            sandbox.seed_product(data["product"], linked=bool(data.get("linked", False)))
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        return Reply(201)
    if len(route) == 3 and route[0] in ("PATCH", "DELETE") and route[1] == "products":
        return _behind_the_back(sandbox, route[0], route[2], data)
    if route == ("POST", "sync_errors"):
        if not isinstance(data, dict):
            raise ApiError(400, 'Envie {"entity_type": "products", "entity_id", ...}')
        try:
            added = sandbox.add_sync_error(str(data.get("entity_type", "")), data)
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        return json_reply(201, added)
    if route == ("GET", "state"):
        return json_reply(200, sandbox.state())
    if route == ("GET", "requests"):
        return json_reply(200, {"counts": sandbox.request_counts(), "log": sandbox.request_log()})
    if route == ("POST", "reset"):
        sandbox.reset()
        return Reply(204)
    if route == ("GET", "config"):
        return json_reply(200, masked_config(sandbox.config))
    if route == ("POST", "config"):
        if not isinstance(data, dict):
            raise ApiError(400, "Envie um objeto com os campos a alterar")
        try:
            sandbox.configure(**data)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return json_reply(200, masked_config(sandbox.config))
    if route == ("POST", "faults"):
        return _script_fault(sandbox, data)
    method, *segments = route
    raise ApiError(
        404,
        f"Endpoint de administração desconhecido: {method} /_sandbox/{'/'.join(segments)}",
    )


def _behind_the_back(sandbox: Sandbox, method: str, sku: str, data: Any) -> Reply:
    """PATCH (change fields) or DELETE a product or variation behind skysync's back."""
    try:
        if method == "DELETE":
            sandbox.remove_product(sku)
        elif not isinstance(data, dict) or not data:
            raise ApiError(400, 'Envie os campos a alterar: {"price": 12.5, ...}')
        else:
            sandbox.change_product(sku, data)
    except KeyError:
        raise ApiError(404, f"Produto ou variação com SKU '{sku}' não encontrado") from None
    return Reply(204)


def _seed_order(sandbox: Sandbox, data: Any) -> Reply:
    """POST /_sandbox/orders: 400 for a non-object, 422 for an unusable order."""
    if not isinstance(data, dict):
        raise ApiError(400, 'Envie um pedido ou {"raw": {...}}')
    try:
        if set(data) == {"raw"} and isinstance(data["raw"], dict):
            order = sandbox.seed_order(data["raw"], raw=True)
        else:
            order = sandbox.seed_order(data)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    return json_reply(201, order)


def _seed_products(sandbox: Sandbox, data: Any) -> Reply:
    """POST /_sandbox/products: 400 unless ``{"products": [...]}``, 422 for a bad product."""
    if not isinstance(data, dict) or not isinstance(data.get("products"), list):
        raise ApiError(400, 'Envie {"products": [{"sku": ...}, ...]}')
    try:
        seeded = sandbox.seed_products(data["products"])
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    return json_reply(201, {"seeded": seeded})


def _script_fault(sandbox: Sandbox, data: Any) -> Reply:
    """POST /_sandbox/faults: 400 for a non-object or an invalid fault."""
    if not isinstance(data, dict):
        raise ApiError(400, 'Envie {"method", "path_prefix", "fault", "count"}')
    try:
        sandbox.script_fault(
            data.get("method", "*"),
            data.get("path_prefix", "/"),
            data.get("fault", ""),
            data.get("count", 1),
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return Reply(204)
