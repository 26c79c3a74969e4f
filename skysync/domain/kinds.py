"""The outbox's vocabulary: what a row asks for (:class:`Kind`), where it stands
(:class:`RowState`), and a payload the database could not read (:class:`UnreadableJSON`). One
``StrEnum`` each, used everywhere: validation, the relay, the CLI, the database's CHECK
constraints. Members are strings, so they compare equal to the values the ERP
writes and the database holds."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# The account of the single-account settings (SKYSYNC_SKYHUB_EMAIL, ...), and of every row that
# names none (migration 0011).
DEFAULT_ACCOUNT = "default"


class Kind(StrEnum):
    """The ``kind`` column: what the ERP asks skysync to send."""

    PRODUCT = "product"
    PRICE = "price"
    STOCK = "stock"
    ORDER_INVOICE = "order_invoice"
    ORDER_SHIPMENT = "order_shipment"
    ORDER_DELIVERY = "order_delivery"
    ORDER_CANCEL = "order_cancel"
    ORDER_SHIPMENT_EXCEPTION = "order_shipment_exception"


# A row's ref is a SKU for these (folded per SKU), an order code for the others (sent one by
# one in id order).
SKU_KINDS: tuple[Kind, ...] = (Kind.PRODUCT, Kind.PRICE, Kind.STOCK)
ORDER_KINDS: tuple[Kind, ...] = tuple(k for k in Kind if k not in SKU_KINDS)


class RowState(StrEnum):
    """The ``state`` column: pending -> in_flight -> one of the final states (sent, superseded,
    withheld, rejected, dead), or ``held`` (a guard held its value back until an operator
    releases it or a newer row replaces it); every state after in_flight but sent carries a
    reason (a CHECK holds it)."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SENT = "sent"
    SUPERSEDED = "superseded"
    WITHHELD = "withheld"
    REJECTED = "rejected"
    DEAD = "dead"
    HELD = "held"


class Origin(StrEnum):
    """The ``origin`` column: who wrote the row. The ERP's rows get the default; skysync writes
    the others, a reconciliation's correction or an order's reservation (the ERP's role cannot
    set the column)."""

    ERP = "erp"
    RECONCILE = "reconcile"
    RESERVATION = "reservation"  # an order changed what a SKU may offer (docs/orders.md)


@dataclass(frozen=True)
class UnreadableJSON:
    """A payload column whose text is not JSON at all (possible on SQLite, where the ERP can
    INSERT any text). Kept so that validation can reject the row with a reason instead of the
    relay crashing on it."""

    raw: str
    problem: str = "is not valid JSON"


def values(enum: type[StrEnum]) -> list[str]:
    """The plain string values, in definition order (for click choices and SQL lists)."""
    return [member.value for member in enum]
