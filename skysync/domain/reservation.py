"""Stock held back for orders the ERP has not reflected yet (``SKYSYNC_RESERVE_OPEN_ORDERS``).
Pure: no I/O; docs/orders.md states the rule and its edges.

The marketplace counts a unit as sold the moment the customer buys it; the ERP learns of the
order only when it reads skysync's inbox. Until then every stock row the ERP writes for that SKU
still counts the sold unit. So the quantity sent is the ERP's less the units of the orders that
quantity cannot know of, never below 0:

* an order counts against a stock row unless the ERP consumed one of the order's inbox rows no
  later than the transaction that wrote the stock row (``consumed_at <= written_at``, both the
  database's own timestamps: on PostgreSQL ``now()`` is the transaction's start, so a consume in
  the stock row's own transaction is equal and counts as reflected);
* a cancelled order never counts;
* an order's units of a SKU are the sum of its items of that SKU (a variation's SKU is its own).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from skysync.domain.validation import is_number

#: Order statuses whose units no longer count: the sale is off.
CANCELLED = frozenset({"order_canceled"})


@dataclass(frozen=True)
class OpenLine:
    """Units of one SKU in one order, with what decides whether they still count."""

    code: str
    sku: str
    qty: int
    status: str | None
    consumed_at: datetime | None  # the earliest consumed_at of the order's inbox rows


@dataclass(frozen=True)
class Reservation:
    """The units held back from one SKU's quantity, and the orders that hold them."""

    sku: str
    units: int = 0
    orders: tuple[tuple[str, int], ...] = ()  # (order code, units), in code order

    def explain(self) -> str:
        """``2 reserved by orders A-1, A-2 (not yet consumed by the ERP)``."""
        codes = ", ".join(code for code, _units in self.orders)
        noun = "order" if len(self.orders) == 1 else "orders"
        return f"{self.units} reserved by {noun} {codes} (not yet consumed by the ERP)"


def counts(line: OpenLine, written_at: datetime | None) -> bool:
    """Does ``line`` still hold units back from a quantity the ERP wrote at ``written_at``?
    (None: a quantity of unknown age, such as one never written: every open order counts.)"""
    if line.status in CANCELLED or line.qty <= 0:
        return False
    if line.consumed_at is None:
        return True
    return written_at is None or line.consumed_at > written_at


def reserve(sku: str, lines: Iterable[OpenLine], written_at: datetime | None) -> Reservation:
    """The reservation of ``sku`` against a quantity the ERP wrote at ``written_at``."""
    by_order: dict[str, int] = {}
    for line in lines:
        if line.sku == sku and counts(line, written_at):
            by_order[line.code] = by_order.get(line.code, 0) + line.qty
    orders = tuple(sorted(by_order.items()))
    return Reservation(sku=sku, units=sum(by_order.values()), orders=orders)


def reserved_qty(qty: Any, reservation: Reservation | None) -> Any:
    """``qty`` less the reservation, never below 0 (a value that is not a number is left as it
    is: validation refuses it elsewhere)."""
    if reservation is None or not reservation.units or not is_number(qty):
        return qty
    return max(int(qty) - reservation.units, 0)


def order_lines(items: Any) -> dict[str, int]:
    """SKU -> units of an order's ``items`` (SkyHub: ``id`` is the SKU sold, a variation's own
    SKU; ``qty`` defaults to 1). Items without a usable SKU or quantity are left out."""
    lines: dict[str, int] = {}
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        return lines
    for item in items:
        if not isinstance(item, Mapping):
            continue
        sku = item.get("id") if item.get("id") not in (None, "") else item.get("sku")
        if isinstance(sku, int) and not isinstance(sku, bool):
            sku = str(sku)
        if not isinstance(sku, str) or not sku.strip():
            continue
        qty = item.get("qty", 1)
        if isinstance(qty, bool) or not is_number(qty) or qty < 0 or int(qty) != qty:
            continue
        lines[sku] = lines.get(sku, 0) + int(qty)
    return lines


@dataclass(frozen=True)
class Reserving:
    """The reservation is on (SKYSYNC_RESERVE_OPEN_ORDERS), with the account's stock buffer:
    what the order pull needs to tell whether an order changed what SkyHub should offer."""

    stock_buffer: int = 0

    def offered(self, qty: Any, reservation: Reservation | None) -> Any:
        """What SkyHub should hold for the ERP's ``qty``: less the reservation, less the stock
        buffer, never below 0 (the relay's order: relay/reserve.py, then guards.buffer_stock)."""
        lowered = reserved_qty(qty, reservation)
        if not is_number(lowered):
            return lowered
        return max(int(lowered) - self.stock_buffer, 0)
