"""What goes on the wire: the wrapped request bodies SkyHub expects, and the lenient parsing of
orders read from its queue. Pure functions and pydantic models; no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


def product_body(fields: dict[str, Any]) -> dict[str, Any]:
    return {"product": fields}


def variation_body(fields: dict[str, Any]) -> dict[str, Any]:
    return {"variation": fields}


def invoice_body(key: str, issue_date: str | None = None) -> dict[str, Any]:
    invoice: dict[str, Any] = {"key": key}
    if issue_date:
        invoice["issue_date"] = issue_date
    return {"status": "order_invoiced", "invoice": invoice}


def shipment_body(shipment: dict[str, Any]) -> dict[str, Any]:
    return {"status": "order_shipped", "shipment": shipment}


def delivery_body(delivered_date: str) -> dict[str, Any]:
    return {"status": "complete", "delivered_date": delivered_date}


def cancel_body() -> dict[str, Any]:
    return {"status": "order_canceled"}


def shipment_exception_body(occurrence_date: str, observation: str) -> dict[str, Any]:
    return {
        "status": "shipment_exception",
        "shipment_exception": {"occurrence_date": occurrence_date, "observation": observation},
    }


class OrderStatus(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str
    label: str | None = None
    type: str | None = None


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    product_id: str | None = None
    name: str | None = None
    qty: int | None = None
    original_price: float | None = None
    special_price: float | None = None


class Order(BaseModel):
    """An order as SkyHub sends it. Unknown fields are kept (extra="allow"); only the fields the
    daemon branches on are typed, so a new SkyHub field never makes an order unreadable."""

    model_config = ConfigDict(extra="allow")

    code: str
    status: OrderStatus
    channel: str | None = None
    placed_at: str | None = None
    updated_at: str | None = None
    items: list[OrderItem] = []


#: SkyHub's queue hides a read, unacknowledged order for this long, then delivers it again
#: (skyhub-api.md, "Queue").
QUEUE_VISIBILITY_SECONDS = 300.0


@dataclass(frozen=True)
class QueuedOrder:
    """One answer of ``GET /queues/orders``: the raw JSON always, the parsed order when it parses,
    and the parse problem when it does not (the daemon stores those raw and flags them)."""

    raw: Any
    order: Order | None
    problem: str | None

    @property
    def code(self) -> str | None:
        if self.order is not None:
            return self.order.code
        if isinstance(self.raw, dict) and isinstance(self.raw.get("code"), str | int):
            return str(self.raw["code"])
        return None

    @property
    def status_code(self) -> str | None:
        if self.order is not None:
            return self.order.status.code
        status = self.raw.get("status") if isinstance(self.raw, dict) else None
        code = status.get("code") if isinstance(status, dict) else None
        if isinstance(code, str):
            return code
        return status if isinstance(status, str) else None


def parse_order(raw: Any) -> QueuedOrder:
    """Parse leniently: never raises; a malformed order comes back raw with its problem."""
    if not isinstance(raw, dict):
        return QueuedOrder(raw=raw, order=None, problem=f"order is not a JSON object: {raw!r:.80}")
    data = raw
    if isinstance(raw.get("status"), str):  # some answers carry the bare status code
        data = {**raw, "status": {"code": raw["status"]}}
    try:
        return QueuedOrder(raw=raw, order=Order.model_validate(data), problem=None)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'order'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        return QueuedOrder(raw=raw, order=None, problem=problems)
