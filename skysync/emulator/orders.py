"""Orders: storing and seeding them, status actions along the transition table, and the queue.

The queue holds one entry per order code.  A read hides the oldest visible entry for
``visibility_timeout`` seconds (redelivered unless acknowledged); any new status of a queued
order makes it visible at once.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from skysync.emulator.fixtures import demo_order, now_iso
from skysync.emulator.order_statuses import (
    ORDER_ACTIONS,
    ORDER_STATUSES,
    ORDER_TRANSITIONS,
    normalize_status,
    status_code,
)
from skysync.emulator.paging import check_depth, page_window
from skysync.emulator.replies import ApiError
from skysync.emulator.routes import Request
from skysync.emulator.state import EmulatorState

_NFE_KEY = re.compile(r"\d{44}")

#: The dates of an order a test may move (POST /_sandbox/orders/{code}/dates): SkyHub's fields.
ORDER_DATE_FIELDS = ("placed_at", "approved_date", "expedition_limit_date", "estimated_delivery")

Answer = tuple[int, Any]


class Orders:
    """Orders and their queue on the shared state; handlers run with the state's lock held."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    # ----------------------------------------------------------------- storing

    def store_locked(
        self, order: Mapping[str, Any], *, raw: bool, allow_existing: bool
    ) -> dict[str, Any]:
        """Store (or merge over an existing code) and enqueue an order; see Sandbox.seed_order."""
        st = self.state
        code = order.get("code")
        if raw:
            stored = copy.deepcopy(dict(order))
            key = code if isinstance(code, str) and code else self._new_code_locked()
            st.orders[key] = stored
            self._enqueue_locked(key)
            return stored
        if code is not None and (not isinstance(code, str) or not code.strip()):
            raise ValueError("order code must be a non-empty string")
        if code in st.orders:
            if not allow_existing:
                raise ApiError(422, f"Pedido com código '{code}' já existe")
            stored = st.orders[code]
            changes = copy.deepcopy(dict(order))
            if "status" in changes:
                changes["status"] = normalize_status(changes["status"])
            stored.update(changes)
            # a seeded updated_at is kept (tests replay the same event); otherwise it is now
            stored["updated_at"] = changes.get("updated_at") or now_iso()
        else:
            given = copy.deepcopy(dict(order))
            status = normalize_status(given.pop("status", "book_product"))
            stored = demo_order(
                given, code if code is not None else self._new_code_locked(), status
            )
            st.orders[stored["code"]] = stored
        self._enqueue_locked(stored["code"])
        return stored

    def move_dates_locked(self, code: str, dates: Mapping[str, Any]) -> dict[str, Any]:
        """Set some of an order's dates (:data:`ORDER_DATE_FIELDS`: an ISO-8601 date or date
        and time, as SkyHub writes them, or None to clear one), as the marketplace does when it
        reschedules an order; the order's ``updated_at`` moves and it is queued again, so the
        next read of the queue delivers the new dates. KeyError for an unknown code;
        ValueError naming the first bad field, before anything changes."""
        order = self.state.orders.get(code)
        if order is None:
            raise KeyError(code)
        unknown = sorted(str(name) for name in dates if name not in ORDER_DATE_FIELDS)
        if unknown:
            raise ValueError(
                f"{unknown[0]}: not a date that can be moved "
                f"(one of {', '.join(ORDER_DATE_FIELDS)})"
            )
        for name, value in dates.items():
            check_order_date(name, value)
        order.update(copy.deepcopy(dict(dates)))
        order["updated_at"] = _after(order.get("updated_at"))
        self._enqueue_locked(code)
        return order

    def _new_code_locked(self) -> str:
        """A fresh marketplace-style order code."""
        st = self.state
        while True:
            st.order_serial += 1
            code = f"Lojas Americanas-{1700000000000 + st.order_serial}-01"
            if code not in st.orders:
                return code

    def _enqueue_locked(self, code: str) -> None:
        # One entry per code: a new status of an already queued order just makes it visible now.
        self.state.queue[code] = time.monotonic()

    def snapshot_locked(self, now: float) -> dict[str, Any]:
        """Orders, the queued codes in delivery order, and each entry's visibility."""
        st = self.state
        return {
            "orders": copy.deepcopy(st.orders),
            "queue": list(st.queue),
            "queue_detail": [
                {
                    "code": code,
                    "visible": visible_at <= now,
                    "visible_in": max(0.0, visible_at - now),
                }
                for code, visible_at in st.queue.items()
            ],
        }

    def _get_locked(self, code: str) -> dict[str, Any]:
        """The stored order; 404 when unknown."""
        order = self.state.orders.get(code)
        if order is None:
            raise ApiError(404, f"Pedido '{code}' não encontrado")
        return order

    # ----------------------------------------------------------------- handlers

    def get_order(self, req: Request) -> Answer:
        """GET /orders/{code}."""
        return 200, copy.deepcopy(self._get_locked(req.params["code"]))

    def list_orders(self, req: Request) -> Answer:
        """GET /orders: a page, optionally only the given ``filters[statuses][]``."""
        offset, per_page = page_window(req.query, 100)
        check_depth(offset)
        statuses = set(req.query.get("filters[statuses][]", []))
        statuses |= set(req.query.get("filters[statuses]", []))
        matching = [
            order
            for order in self.state.orders.values()
            if not statuses or status_code(order) in statuses
        ]
        return 200, {
            "total": len(matching),
            "orders": copy.deepcopy(matching[offset : offset + per_page]),
        }

    def create_order(self, req: Request) -> Answer:
        """POST /orders (sandbox only): a new order with realistic defaults, queued."""
        try:
            stored = self.store_locked(req.data, raw=False, allow_existing=False)
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        return 201, copy.deepcopy(stored)

    def order_action(self, req: Request) -> Answer:
        """POST /orders/{code}/{action}: move the order along the transition table, requeue it."""
        code = req.params["code"]
        order = self._get_locked(code)
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
        current = status_code(order)
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
        _APPLY[action](order, data, stamp)  # validates first, then mutates
        order["status"] = normalize_status(target)
        order["updated_at"] = stamp
        self._enqueue_locked(code)
        return 201, None

    def queue_read(self, req: Request) -> Answer:
        """Oldest visible entry, hidden for the visibility window until acknowledged."""
        st = self.state
        for code, visible_at in st.queue.items():
            if visible_at <= req.now and code in st.orders:
                st.queue[code] = req.now + st.config.visibility_timeout
                return 200, copy.deepcopy(st.orders[code])
        return 204, None

    def queue_ack(self, req: Request) -> Answer:
        """DELETE /queues/orders/{code}: 404 when not queued."""
        code = req.params["code"]
        if code not in self.state.queue:
            raise ApiError(404, f"Pedido '{code}' não está na fila")
        del self.state.queue[code]
        return 204, None


def _after(previous: Any) -> str:
    """Now as SkyHub stamps it, or a second after ``previous`` when that is not earlier: an
    update always carries a later ``updated_at`` (whole seconds), which is how a client tells
    it from a redelivery of the state before."""
    stamp = now_iso()
    try:
        last = datetime.fromisoformat(previous)
        if datetime.fromisoformat(stamp) <= last:
            stamp = (last + timedelta(seconds=1)).isoformat(timespec="seconds")
    except (TypeError, ValueError):  # none before, or not a date and time with an offset
        pass
    return stamp


def check_order_date(name: str, value: Any) -> None:
    """ValueError naming ``name`` unless ``value`` is None or an ISO-8601 date
    (``2026-12-08``) or date and time (``2026-12-08T10:00:00-03:00``; without an offset it is
    Brasília time, as on SkyHub)."""
    if value is None:
        return
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    if isinstance(value, str) and value.strip():
        try:
            datetime.fromisoformat(value.strip())
            return
        except ValueError:
            pass
    raise ValueError(
        f"{name}: must be an ISO-8601 date (2026-12-08) or date and time "
        f"(2026-12-08T10:00:00-03:00), or null; got {shown}"
    )


# --------------------------------------------------------------------- what each action records


def _apply_approval(order: dict[str, Any], data: dict[str, Any], stamp: str) -> None:
    order["approved_date"] = stamp


def _apply_invoice(order: dict[str, Any], data: dict[str, Any], stamp: str) -> None:
    """Record the invoice; 422 without a 44-digit NF-e key.  Série and number come from it."""
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


def _apply_shipments(order: dict[str, Any], data: dict[str, Any], stamp: str) -> None:
    """Record the shipment; 422 unless its items are ``{"sku", "qty"}`` and track an object."""
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


def _apply_delivery(order: dict[str, Any], data: dict[str, Any], stamp: str) -> None:
    order["delivered_date"] = data.get("delivered_date") or stamp


def _apply_cancel(order: dict[str, Any], data: dict[str, Any], stamp: str) -> None:
    order["canceled_date"] = stamp


def _apply_shipment_exception(order: dict[str, Any], data: dict[str, Any], stamp: str) -> None:
    """Record the exception; 422 without a ``shipment_exception`` object."""
    exception = data.get("shipment_exception")
    if not isinstance(exception, dict):
        raise ApiError(422, 'shipment_exception é obrigatório: {"shipment_exception": {...}}')
    order.setdefault("shipment_exceptions", []).append(copy.deepcopy(exception))


#: Order action -> what it records on the order (validating its body first).
_APPLY: dict[str, Callable[[dict[str, Any], dict[str, Any], str], None]] = {
    "approval": _apply_approval,
    "invoice": _apply_invoice,
    "shipments": _apply_shipments,
    "delivery": _apply_delivery,
    "cancel": _apply_cancel,
    "shipment_exception": _apply_shipment_exception,
}
