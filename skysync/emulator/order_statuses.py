"""Which order statuses exist, which moves between them SkyHub allows, and which action makes each.

Pure data and functions (skyhub-api.md section 4): no state, no I/O.  The table is SkyHub's,
written down apart from skysync's own (``skysync/domain/order_flow.py``) on purpose: the emulator is
the referee the relay's order steps are tested against, so it must not borrow their table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


def normalize_status(value: Any) -> dict[str, str]:
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


def status_code(order: Mapping[str, Any]) -> str | None:
    """The order's status code, or None when its status is malformed."""
    status = order.get("status")
    code = status.get("code") if isinstance(status, Mapping) else None
    return code if isinstance(code, str) else None
