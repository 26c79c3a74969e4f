"""The ``/_sandbox`` admin API: test and demo controls over the Sandbox's own methods.

No auth, never rate-limited, never faulted, not in the request log.  Every call but the
``accounts`` ones acts on one account: ``?account=NAME`` (``default`` when absent; an unknown
name is a 404 naming it).  ``config`` is emulator-wide (the name is still checked); ``reset``
without ``?account=`` resets every account.

====  =========================  ==============================================================
POST  /_sandbox/orders           an order (realistic defaults), or ``{"raw": {...}}`` as given
POST  /_sandbox/orders/{code}/dates  ``{"expedition_limit_date": "2026-12-08T10:00:00-03:00",
                             ...}``: the order's dates moved (``estimated_delivery``,
                             ``approved_date``, ``placed_at`` too; null clears one), its
                             ``updated_at`` with them, and the order queued again (200 + the
                             order; 404 unknown code; 422 naming the bad field)
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
POST  /_sandbox/reset            forget everything but the config (every account, dropping
                                 those added at runtime; or only ``?account=``'s)
GET   /_sandbox/config           the config, credentials masked
POST  /_sandbox/config           change fields; answers the new config
POST  /_sandbox/faults           ``{"method", "path_prefix", "fault", "count"}``
====  =========================  ==============================================================

Accounts (:mod:`~skysync.emulator.admin_accounts`): ``POST /_sandbox/accounts``
``{"name", "email", "api_key"}`` (201; 409 taken; 422 naming the bad field), ``GET
/_sandbox/accounts``, ``POST /_sandbox/accounts/{name}/revoke`` and ``.../restore``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from skysync.emulator.accounts import UnknownAccountError
from skysync.emulator.admin_accounts import answer_accounts
from skysync.emulator.config import DEFAULT_ACCOUNT, masked_config
from skysync.emulator.replies import ApiError, Reply, error_reply, json_reply

if TYPE_CHECKING:
    from skysync.emulator.sandbox import Sandbox

#: An admin call on one account: (sandbox, body, account name) -> reply
AdminCall = Callable[["Sandbox", Any, str], Reply]


def answer_admin(
    sandbox: Sandbox, method: str, segments: list[str], query: dict[str, list[str]], body: bytes
) -> Reply:
    """The reply to one admin call; `segments` are the decoded path after ``_sandbox``."""
    try:
        data = _admin_body(body)
        if segments[:1] == ["accounts"]:
            return answer_accounts(sandbox, method, segments[1:], data)
        named = query.get("account", [None])[0]
        account = named if named is not None else DEFAULT_ACCOUNT
        if account not in {held["name"] for held in sandbox.accounts()}:
            raise UnknownAccountError(account)  # before anything else, config calls included
        if (method, *segments) == ("POST", "reset"):
            sandbox.reset(account=named)
            return Reply(204)
        return _route_admin(sandbox, (method, *segments), data, account)
    except UnknownAccountError as exc:
        return error_reply(404, f"Conta '{exc.name}' não encontrada (unknown sandbox account)")
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


def _route_admin(sandbox: Sandbox, route: tuple[str, ...], data: Any, account: str) -> Reply:
    """Run the admin call `route` ((method, *segments)) on `account`; 404 for an unknown one."""
    call = _CALLS.get(route)
    if route == ("POST", "products") and isinstance(data, dict) and "products" in data:
        call = _seed_products
    if call is not None:
        return call(sandbox, data, account)
    if len(route) == 4 and route[:2] == ("POST", "products") and route[3] == "link":
        try:
            sandbox.link_product(route[2], account=account)
        except KeyError:
            raise ApiError(404, f"Produto com SKU '{route[2]}' não encontrado") from None
        return Reply(204)
    if len(route) == 3 and route[0] in ("PATCH", "DELETE") and route[1] == "products":
        return _behind_the_back(sandbox, route[0], route[2], data, account)
    if len(route) == 4 and route[:2] == ("POST", "orders") and route[3] == "dates":
        return _move_order_dates(sandbox, route[2], data, account)
    method, *segments = route
    raise ApiError(
        404,
        f"Endpoint de administração desconhecido: {method} /_sandbox/{'/'.join(segments)}",
    )


def _seed_product(sandbox: Sandbox, data: Any, account: str) -> Reply:
    """POST /_sandbox/products with one product (an orphan SkyHub has)."""
    if not isinstance(data, dict) or not isinstance(data.get("product"), dict):
        raise ApiError(400, 'Envie {"product": {...}, "linked": false}')
    try:
        sandbox.seed_product(
            data["product"], linked=bool(data.get("linked", False)), account=account
        )
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    return Reply(201)


def _add_sync_error(sandbox: Sandbox, data: Any, account: str) -> Reply:
    """POST /_sandbox/sync_errors: 400 for a non-object, 422 for a bad error."""
    if not isinstance(data, dict):
        raise ApiError(400, 'Envie {"entity_type": "products", "entity_id", ...}')
    try:
        added = sandbox.add_sync_error(str(data.get("entity_type", "")), data, account=account)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    return json_reply(201, added)


def _configure(sandbox: Sandbox, data: Any, account: str) -> Reply:
    """POST /_sandbox/config: the emulator-wide config, whichever account is named."""
    if not isinstance(data, dict):
        raise ApiError(400, "Envie um objeto com os campos a alterar")
    try:
        sandbox.configure(**data)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return json_reply(200, masked_config(sandbox.config))


def _state(sandbox: Sandbox, data: Any, account: str) -> Reply:
    return json_reply(200, sandbox.state(account=account))


def _config(sandbox: Sandbox, data: Any, account: str) -> Reply:
    return json_reply(200, masked_config(sandbox.config))


def _requests(sandbox: Sandbox, data: Any, account: str) -> Reply:
    counts = sandbox.request_counts(account=account)
    return json_reply(200, {"counts": counts, "log": sandbox.request_log(account=account)})


def _behind_the_back(sandbox: Sandbox, method: str, sku: str, data: Any, account: str) -> Reply:
    """PATCH (change fields) or DELETE a product or variation behind skysync's back."""
    try:
        if method == "DELETE":
            sandbox.remove_product(sku, account=account)
        elif not isinstance(data, dict) or not data:
            raise ApiError(400, 'Envie os campos a alterar: {"price": 12.5, ...}')
        else:
            sandbox.change_product(sku, data, account=account)
    except KeyError:
        raise ApiError(404, f"Produto ou variação com SKU '{sku}' não encontrado") from None
    return Reply(204)


def _seed_order(sandbox: Sandbox, data: Any, account: str) -> Reply:
    """POST /_sandbox/orders: 400 for a non-object, 422 for an unusable order."""
    if not isinstance(data, dict):
        raise ApiError(400, 'Envie um pedido ou {"raw": {...}}')
    try:
        if set(data) == {"raw"} and isinstance(data["raw"], dict):
            order = sandbox.seed_order(data["raw"], raw=True, account=account)
        else:
            order = sandbox.seed_order(data, account=account)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    return json_reply(201, order)


def _move_order_dates(sandbox: Sandbox, code: str, data: Any, account: str) -> Reply:
    """POST /_sandbox/orders/{code}/dates: 400 unless a non-empty object, 404 for an unknown
    order, 422 naming a bad field."""
    if not isinstance(data, dict) or not data:
        raise ApiError(400, 'Envie as datas a mudar: {"expedition_limit_date": "...", ...}')
    try:
        order = sandbox.move_order_dates(code, data, account=account)
    except KeyError:
        raise ApiError(404, f"Pedido '{code}' não encontrado") from None
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    return json_reply(200, order)


def _seed_products(sandbox: Sandbox, data: Any, account: str) -> Reply:
    """POST /_sandbox/products: 400 unless ``{"products": [...]}``, 422 for a bad product."""
    if not isinstance(data, dict) or not isinstance(data.get("products"), list):
        raise ApiError(400, 'Envie {"products": [{"sku": ...}, ...]}')
    try:
        seeded = sandbox.seed_products(data["products"], account=account)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    return json_reply(201, {"seeded": seeded})


def _script_fault(sandbox: Sandbox, data: Any, account: str) -> Reply:
    """POST /_sandbox/faults: 400 for a non-object or an invalid fault."""
    if not isinstance(data, dict):
        raise ApiError(400, 'Envie {"method", "path_prefix", "fault", "count"}')
    try:
        sandbox.script_fault(
            data.get("method", "*"),
            data.get("path_prefix", "/"),
            data.get("fault", ""),
            data.get("count", 1),
            account=account,
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return Reply(204)


_CALLS: dict[tuple[str, ...], AdminCall] = {
    ("POST", "orders"): _seed_order,
    ("POST", "products"): _seed_product,
    ("POST", "sync_errors"): _add_sync_error,
    ("GET", "state"): _state,
    ("GET", "requests"): _requests,
    ("GET", "config"): _config,
    ("POST", "config"): _configure,
    ("POST", "faults"): _script_fault,
}
