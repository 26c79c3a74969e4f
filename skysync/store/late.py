"""The SQL of ``skysync orders late``: the orders and inbox rows that may be late, filtered in
SQL with the cutoffs of domain/late.py (which has the last word on each), and their counts per
account for `skysync status` and the metrics. Operator reads: of ``account``, or of every
account (None).

The orders to ship or invoice are reached through ``ix_skysync_order_status_limit`` (migration
0013: by status, never through the shipped and cancelled history); the inbox rows through its
partial index of unconsumed rows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.domain.late import (
    TO_INVOICE,
    TO_SHIP,
    Lateness,
    LateRules,
    judge_inbox,
    judge_invoice,
    judge_ship,
)
from skysync.store.models import Order, OrderInbox


@dataclass(frozen=True)
class LateItem:
    """One late order (``ship``, ``invoice``) or inbox row (``inbox``, with its id)."""

    account: str
    code: str
    status: str | None
    lateness: Lateness
    inbox_id: int | None = None


@dataclass
class LateCounts:
    """An account's late things by reason, and the arrival of its oldest inbox row the ERP
    has not consumed (late or not yet)."""

    ship: int = 0
    ship_past_limit: int = 0  # of ``ship``: the expedition limit has passed
    invoice: int = 0
    inbox: int = 0
    oldest_unconsumed_at: datetime | None = None

    @property
    def total(self) -> int:
        return self.ship + self.invoice + self.inbox


def _of(query: Any, column: Any, account: str | None) -> Any:
    return query if account is None else query.where(column == account)


def _ship_filter(now: datetime, rules: LateRules) -> list[sa.ColumnElement[bool]]:
    return [
        Order.status.in_(sorted(TO_SHIP)),
        Order.expedition_limit_at <= rules.ship_cutoff(now),
    ]


def _invoice_filter(now: datetime, rules: LateRules) -> list[sa.ColumnElement[bool]]:
    return [Order.status.in_(sorted(TO_INVOICE)), Order.approved_at <= rules.invoice_cutoff(now)]


def _inbox_filter(now: datetime, rules: LateRules) -> list[sa.ColumnElement[bool]]:
    return [OrderInbox.consumed_at.is_(None), OrderInbox.received_at <= rules.inbox_cutoff(now)]


def late_items(
    session: Session,
    now: datetime,
    rules: LateRules,
    *,
    account: str | None = None,
    limit: int | None = None,
) -> list[LateItem]:
    """The late orders to ship (nearest limit first: the most overdue), to invoice (oldest
    approval first), then the late inbox rows (oldest first); at most ``limit`` of each."""
    ship = (
        sa.select(Order.account, Order.code, Order.status, Order.expedition_limit_at)
        .where(*_ship_filter(now, rules))
        .order_by(Order.expedition_limit_at, Order.account, Order.code)
        .limit(limit)
    )
    invoice = (
        sa.select(Order.account, Order.code, Order.status, Order.approved_at)
        .where(*_invoice_filter(now, rules))
        .order_by(Order.approved_at, Order.account, Order.code)
        .limit(limit)
    )
    inbox = (
        sa.select(OrderInbox.account, OrderInbox.code, OrderInbox.status)
        .add_columns(OrderInbox.received_at, OrderInbox.id)
        .where(*_inbox_filter(now, rules))
        .order_by(OrderInbox.id)
        .limit(limit)
    )
    found: list[LateItem] = []
    for acc, code, status, limit_at in session.execute(_of(ship, Order.account, account)):
        judged = judge_ship(now, rules, status=status, expedition_limit=limit_at)
        if judged is not None:
            found.append(LateItem(acc, code, status, judged))
    for acc, code, status, approved in session.execute(_of(invoice, Order.account, account)):
        judged = judge_invoice(now, rules, status=status, approved_at=approved)
        if judged is not None:
            found.append(LateItem(acc, code, status, judged))
    for acc, code, status, received, row_id in session.execute(
        _of(inbox, OrderInbox.account, account)
    ):
        judged = judge_inbox(now, rules, received_at=received, consumed_at=None)
        if judged is not None:
            found.append(LateItem(acc, code, status, judged, inbox_id=row_id))
    return found


def late_counts(
    session: Session, now: datetime, rules: LateRules, *, account: str | None = None
) -> dict[str, LateCounts]:
    """Per account that has any: its late things by reason and its oldest unconsumed inbox
    row (four grouped queries, whatever the number of accounts)."""
    counts: dict[str, LateCounts] = {}

    def of(name: str) -> LateCounts:
        return counts.setdefault(name, LateCounts())

    past = sa.func.sum(sa.case((Order.expedition_limit_at <= now, 1), else_=0))
    ship = sa.select(Order.account, sa.func.count(), past).where(*_ship_filter(now, rules))
    for name, n, n_past in _grouped(session, ship, Order.account, account):
        of(name).ship, of(name).ship_past_limit = n, int(n_past or 0)
    invoice = sa.select(Order.account, sa.func.count()).where(*_invoice_filter(now, rules))
    for name, n in _grouped(session, invoice, Order.account, account):
        of(name).invoice = n
    inbox = sa.select(OrderInbox.account, sa.func.count()).where(*_inbox_filter(now, rules))
    for name, n in _grouped(session, inbox, OrderInbox.account, account):
        of(name).inbox = n
    # min() keeps its argument's type: an aware datetime on both databases
    oldest = sa.select(OrderInbox.account, sa.func.min(OrderInbox.received_at)).where(
        OrderInbox.consumed_at.is_(None)
    )
    for name, first in _grouped(session, oldest, OrderInbox.account, account):
        of(name).oldest_unconsumed_at = first
    return counts


def _grouped(session: Session, query: Any, column: Any, account: str | None) -> Iterable[Any]:
    return session.execute(_of(query, column, account).group_by(column))


def total(counts: Iterable[LateCounts]) -> LateCounts:
    """Several accounts' counts together (the oldest unconsumed row of any of them)."""
    summed = LateCounts()
    for part in counts:
        summed.ship += part.ship
        summed.ship_past_limit += part.ship_past_limit
        summed.invoice += part.invoice
        summed.inbox += part.inbox
        if part.oldest_unconsumed_at is not None and (
            summed.oldest_unconsumed_at is None
            or part.oldest_unconsumed_at < summed.oldest_unconsumed_at
        ):
            summed.oldest_unconsumed_at = part.oldest_unconsumed_at
    return summed
