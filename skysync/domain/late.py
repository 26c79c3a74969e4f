"""What is late, pure: from an order's last known status, its dates and the thresholds
(``SKYSYNC_LATE_*``), whether it is late and since when. No I/O; the store filters the
candidates in SQL with the same cutoffs (:meth:`LateRules.ship_cutoff` and the others) and this
module has the last word on each. docs/orders.md, "What is late", states the rules.

Three reasons, each costing the seller something different:

* ``ship``: the order is paid and not shipped, and its expedition limit (SkyHub's
  ``expedition_limit_date``, the date by which the seller must ship) has passed or is within
  ``ship_margin``. The marketplace penalises late shipping; the margin is the time left to act.
* ``invoice``: the order was approved (``payment_received``) more than ``invoice_after`` ago
  and is still not invoiced: the first step towards shipping has not started.
* ``inbox``: skysync stored an order state in the inbox more than ``inbox_after`` ago and the
  ERP has not consumed it. An ERP that stopped reading orders is the costliest silent failure:
  nothing else complains while sales go unhandled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Reason(StrEnum):
    """Why an order (or an inbox row) is late: the ``reason`` of ``skysync orders late``'s
    lines and of the ``skysync_orders_late`` metric."""

    SHIP = "ship"
    INVOICE = "invoice"
    INBOX = "inbox"


#: Paid and not shipped yet: the seller must ship these by the expedition limit. SkyHub's
#: table (skyhub-api.md section 4) and the statuses it announced in 2025 that come between
#: payment and shipping (a marketplace asking the store to confirm its stock, the store
#: processing the order).
TO_SHIP = frozenset(
    {"payment_received", "order_invoiced", "confirm_stock", "confirmed_stock", "processing_store"}
)

#: Approved and not invoiced: the order waits for the ERP's invoice.
TO_INVOICE = frozenset({"payment_received"})

#: Never late to ship, whatever their dates (documentation; the rule is :data:`TO_SHIP`):
#: shipped or past it (in the carrier's hands, delivered, a delivery problem, returned),
#: cancelled, or not paid yet (the seller cannot ship an order the customer has not paid; the
#: marketplace cancels it).
NOT_TO_SHIP = frozenset(
    {
        "order_shipped",
        "complete",
        "shipment_exception",
        "returned",
        "order_canceled",
        "book_product",
        "waiting_payment",
        "payment_overdue",
    }
)


@dataclass(frozen=True)
class LateRules:
    """The thresholds: how long before its expedition limit an order not shipped counts as
    late, and how long an approved order may wait for its invoice and an inbox row for the
    ERP (``SKYSYNC_LATE_SHIP_MARGIN_HOURS``, ``_INVOICE_HOURS``, ``_INBOX_MINUTES``)."""

    ship_margin: timedelta = timedelta(hours=4)
    invoice_after: timedelta = timedelta(hours=24)
    inbox_after: timedelta = timedelta(minutes=30)

    def ship_cutoff(self, now: datetime) -> datetime:
        """An order to ship whose expedition limit is at or before this is late."""
        return now + self.ship_margin

    def invoice_cutoff(self, now: datetime) -> datetime:
        """An order to invoice approved at or before this is late."""
        return now - self.invoice_after

    def inbox_cutoff(self, now: datetime) -> datetime:
        """An unconsumed inbox row received at or before this is late."""
        return now - self.inbox_after


@dataclass(frozen=True)
class Lateness:
    """One late thing: ``since`` is the fact it counts from (the expedition limit, the
    approval, the inbox row's arrival) and ``deadline`` the moment it was due: the
    expedition limit itself, or ``since`` plus the threshold."""

    reason: Reason
    since: datetime
    deadline: datetime

    def late_by(self, now: datetime) -> timedelta:
        """How far past its deadline; negative for an order to ship that is due within the
        margin but not past its limit yet."""
        return now - self.deadline

    def overdue(self, now: datetime) -> bool:
        """Past its deadline (for ``ship``: the expedition limit has passed); False only for
        an order to ship within the margin of a limit still ahead."""
        return now >= self.deadline


def judge_ship(
    now: datetime, rules: LateRules, *, status: str | None, expedition_limit: datetime | None
) -> Lateness | None:
    """Late to ship: paid and not shipped (:data:`TO_SHIP`), with an expedition limit at or
    before ``now`` plus the margin. An order without a limit, or whose status skysync does
    not know, is not judged."""
    if status not in TO_SHIP or expedition_limit is None:
        return None
    if expedition_limit > rules.ship_cutoff(now):
        return None
    return Lateness(Reason.SHIP, since=expedition_limit, deadline=expedition_limit)


def judge_invoice(
    now: datetime, rules: LateRules, *, status: str | None, approved_at: datetime | None
) -> Lateness | None:
    """Late to invoice: approved (:data:`TO_INVOICE`) at or before ``now`` less the
    threshold. Without SkyHub's approval date it is not judged."""
    if status not in TO_INVOICE or approved_at is None:
        return None
    if approved_at > rules.invoice_cutoff(now):
        return None
    return Lateness(Reason.INVOICE, since=approved_at, deadline=approved_at + rules.invoice_after)


def judge_inbox(
    now: datetime, rules: LateRules, *, received_at: datetime, consumed_at: datetime | None
) -> Lateness | None:
    """An inbox row the ERP has not consumed, received at or before ``now`` less the
    threshold."""
    if consumed_at is not None or received_at > rules.inbox_cutoff(now):
        return None
    return Lateness(Reason.INBOX, since=received_at, deadline=received_at + rules.inbox_after)
