"""Order status rules, pure: which step an outbox row asks for, and whether the order's last known
status allows it. skysync refuses an impossible step itself instead of spending a request that
SkyHub would answer with 422 (skyhub-api.md §4)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from skysync.domain.kinds import Kind

# The status each outbox kind moves an order to.
TARGET_STATUS: dict[str, str] = {
    Kind.ORDER_INVOICE: "order_invoiced",
    Kind.ORDER_SHIPMENT: "order_shipped",
    Kind.ORDER_DELIVERY: "complete",
    Kind.ORDER_CANCEL: "order_canceled",
    Kind.ORDER_SHIPMENT_EXCEPTION: "shipment_exception",
}

# Where an order may go from each status (the status table of SkyHub's order guide).
NEXT_STATUSES: dict[str, frozenset[str]] = {
    "book_product": frozenset({"payment_received", "order_canceled"}),
    "payment_received": frozenset({"order_invoiced", "order_canceled"}),
    "order_invoiced": frozenset({"order_shipped", "order_canceled", "shipment_exception"}),
    "order_shipped": frozenset({"complete", "shipment_exception"}),
    "shipment_exception": frozenset({"complete", "order_shipped"}),
    "complete": frozenset(),
    "order_canceled": frozenset(),
}


@dataclass(frozen=True)
class StepCheck:
    """``go``: send it. ``done``: the order already has that status (counts as done).
    ``refuse``: impossible from the current status; ``reason`` says why."""

    verdict: str
    reason: str | None = None


def check_step(kind: str, current: str | None) -> StepCheck:
    """May an order whose last known status is ``current`` take the step of ``kind``?

    An unknown order, or a status outside the table (SkyHub adds some: waiting_payment,
    processing_store...), is not guarded: SkyHub decides.
    """
    target = TARGET_STATUS[kind]
    if current is None or current not in NEXT_STATUSES:
        return StepCheck("go")
    if current == target:
        return StepCheck("done", f"order is already {target}; nothing sent")
    allowed = NEXT_STATUSES[current]
    if target in allowed:
        return StepCheck("go")
    nexts = ", ".join(sorted(allowed)) or "none: the order is final"
    return StepCheck(
        "refuse",
        f"order is {current}; cannot move it to {target} ({kind}); possible next: {nexts}",
    )


#: SkyHub's dates are Brasília time; one without an offset is read as such.
BRASILIA = timezone(timedelta(hours=-3))

#: The order's dates skysync keeps (skysync_order's columns <- SkyHub's fields).
ORDER_DATES = {
    "placed_at": "placed_at",
    "approved_at": "approved_date",
    "expedition_limit_at": "expedition_limit_date",
    "estimated_delivery_at": "estimated_delivery",
}


def parse_when(value: Any) -> datetime | None:
    """One of SkyHub's order dates as an aware datetime: ISO-8601 with or without an offset
    (without: Brasília time), or a bare date (its midnight in Brasília). None when absent or
    unreadable: a date skysync cannot read never stops an order from being stored."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        try:
            stamp = datetime.combine(date.fromisoformat(text[:10]), time())
        except ValueError:
            return None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=BRASILIA)


def order_dates(raw: Any) -> dict[str, datetime | None]:
    """skysync_order's date columns from an order as SkyHub sent it."""
    data = raw if isinstance(raw, dict) else {}
    return {column: parse_when(data.get(name)) for column, name in ORDER_DATES.items()}
