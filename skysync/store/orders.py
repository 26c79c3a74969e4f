"""The SQL on the orders: what the order pull stores (``skysync_order_inbox`` for the ERP, and each
order's current state in ``skysync_order``), and what the relay consults before sending a step:
the order's last known status, and the earlier steps still open in the outbox."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVarTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.domain.kinds import RowState
from skysync.domain.order_flow import order_dates
from skysync.domain.reservation import CANCELLED, OpenLine, order_lines
from skysync.store import outbox_reads
from skysync.store.db import account_of
from skysync.store.models import Order, OrderInbox, OrderLine


@dataclass(frozen=True)
class InboxCounts:
    """Orders waiting for the ERP: inbox rows not consumed yet, and those of them SkyHub sent
    malformed (flagged). One definition for `skysync status` and the metrics."""

    unconsumed: int
    flagged: int


def inbox_counts(session: Session, *, account: str | None = None) -> InboxCounts:
    """Of ``account`` (None: of every account)."""
    waiting = (
        sa.select(sa.func.count()).select_from(OrderInbox).where(OrderInbox.consumed_at.is_(None))
    )
    if account is not None:
        waiting = waiting.where(OrderInbox.account == account)
    return InboxCounts(
        unconsumed=session.execute(waiting).scalar_one(),
        flagged=session.execute(waiting.where(OrderInbox.parse_error.is_not(None))).scalar_one(),
    )


def inbox_id(session: Session, dedupe_key: str) -> int | None:
    """The inbox row of the order state ``dedupe_key``, if it is stored."""
    query = sa.select(OrderInbox.id).where(
        OrderInbox.account == account_of(session), OrderInbox.dedupe_key == dedupe_key
    )
    return session.execute(query).scalar()


def store_received(
    session: Session,
    *,
    dedupe_key: str,
    code: str | None,
    status: str | None,
    raw: Any,
    problem: str | None,
    now: datetime,
) -> bool:
    """Store one order state SkyHub delivered: its inbox row, raw (flagged with ``problem`` when
    it could not be parsed), and, when it has a code, the order's current state. False when
    this order state (``dedupe_key``) was stored already."""
    if inbox_id(session, dedupe_key) is not None:
        return False
    account = account_of(session)
    row = OrderInbox(
        account=account,
        code=code or "?",
        status=status,
        dedupe_key=dedupe_key,
        raw=raw if raw is not None else {},
        parse_error=problem,
        received_at=now,
    )
    session.add(row)
    session.flush()
    if code:
        order = session.get(Order, (account, code))
        if order is None:
            order = Order(account=account, code=code)
            session.add(order)
        if status:
            order.status = status
            order.status_source = "skyhub"
        order.parse_error = problem
        order.last_inbox_id = row.id
        order.updated_at = now
        if problem is None:
            for column, value in order_dates(raw).items():
                if value is not None:
                    setattr(order, column, value)
            items = raw.get("items") if isinstance(raw, dict) else None
            if items is not None:
                _store_lines(session, account, code, order_lines(items))
    return True


def _store_lines(session: Session, account: str, code: str, lines: dict[str, int]) -> None:
    """The order's units per SKU, as its latest parsed state lists them."""
    session.execute(
        sa.delete(OrderLine).where(OrderLine.account == account, OrderLine.code == code)
    )
    for sku, qty in lines.items():
        session.add(OrderLine(account=account, code=code, sku=sku, qty=qty))


@dataclass(frozen=True)
class Step:
    id: int
    kind: str
    state: str


def current_status(session: Session, code: str) -> str | None:
    query = sa.select(Order.status).where(Order.account == account_of(session), Order.code == code)
    return session.execute(query).scalar()


def record_status(session: Session, code: str, status: str, now: datetime) -> None:
    """A step of ours went out: the order now has ``status``."""
    account = account_of(session)
    order = session.get(Order, (account, code))
    if order is None:
        order = Order(account=account, code=code)
        session.add(order)
    order.status = status
    order.status_source = "skysync"
    order.updated_at = now


def unresolved_steps(session: Session, code: str, *, exclude: set[int]) -> list[Step]:
    """Earlier steps of this order that later ones must not overtake: rows still waiting (not
    claimed now), and rows SkyHub refused or that died, unless a newer row of the same kind has
    been sent since. Rows skysync refused locally (impossible steps) block nothing."""
    seen = tuple(s for s in RowState if s not in (RowState.SUPERSEDED, RowState.WITHHELD))
    rows = [
        (r.id, r.kind, r.state, r.last_status)
        for r in outbox_reads.order_rows(session, code, states=seen)
    ]
    sent_after: dict[str, int] = {}
    for row_id, kind, state, _status in rows:
        if state == RowState.SENT:
            sent_after[kind] = max(sent_after.get(kind, 0), row_id)
    steps = []
    for row_id, kind, state, last_status in rows:
        if row_id in exclude or state == RowState.SENT:
            continue
        if state == RowState.REJECTED and last_status is None:
            continue  # refused locally or invalid input: not a step that SkyHub saw
        if state in (RowState.REJECTED, RowState.DEAD) and sent_after.get(kind, 0) > row_id:
            continue  # a newer row of the same kind went out: resolved
        steps.append(Step(row_id, kind, state))
    return steps


Columns = TypeVarTuple("Columns")


def _of_orders_not_cancelled(query: sa.Select[*Columns]) -> sa.Select[*Columns]:
    """``query`` over order lines, joined to their orders, kept to the orders that are not
    cancelled (an order of unknown status counts): the lines a reservation may count."""
    return query.join(
        Order, sa.and_(Order.account == OrderLine.account, Order.code == OrderLine.code)
    ).where(sa.or_(Order.status.is_(None), Order.status.not_in(sorted(CANCELLED))))


def open_lines(
    session: Session, skus: Iterable[str], *, since: datetime | None = None
) -> list[OpenLine]:
    """The lines of ``skus`` in the session account's orders that are not cancelled, each with
    the earliest time the ERP consumed one of its order's inbox rows (None: not yet). What the
    reservation decides from (domain/reservation.py). With ``since`` (the earliest time the
    quantities in question were written), orders the ERP consumed by then are left out: they
    count against none of them, and a SKU's long history of booked orders is not read."""
    wanted = sorted(set(skus))
    if not wanted:
        return []
    account = account_of(session)
    consumed = (
        sa.select(sa.func.min(OrderInbox.consumed_at))
        .where(OrderInbox.account == OrderLine.account, OrderInbox.code == OrderLine.code)
        .scalar_subquery()
    )
    query = _of_orders_not_cancelled(
        sa.select(OrderLine.code, OrderLine.sku, OrderLine.qty, Order.status, consumed)
    ).where(OrderLine.account == account, OrderLine.sku.in_(wanted))
    if since is not None:
        query = query.where(sa.or_(consumed.is_(None), consumed > since))
    # min() keeps its argument's type: the consumed time comes back aware, on both databases
    return [
        OpenLine(code=code, sku=sku, qty=qty, status=status, consumed_at=when)
        for code, sku, qty, status, when in session.execute(query)
    ]


def line_skus(session: Session, code: str) -> list[str]:
    """The SKUs the order ``code`` of the session's account holds units of."""
    query = sa.select(OrderLine.sku).where(
        OrderLine.account == account_of(session), OrderLine.code == code
    )
    return sorted(session.scalars(query))


@dataclass(frozen=True)
class ReservedTotals:
    """Units held back for orders the ERP has not consumed yet (none of their inbox rows),
    cancelled orders aside, and how many SKUs and orders hold them: what the metrics show of
    the stock reservation (domain/reservation.py)."""

    units: int
    skus: int
    orders: int


def reserved_totals(session: Session, *, account: str) -> ReservedTotals:
    consumed = (
        sa.select(sa.literal(1))
        .where(
            OrderInbox.account == OrderLine.account,
            OrderInbox.code == OrderLine.code,
            OrderInbox.consumed_at.is_not(None),
        )
        .exists()
    )
    query = _of_orders_not_cancelled(
        sa.select(
            sa.func.coalesce(sa.func.sum(OrderLine.qty), 0),
            sa.func.count(sa.distinct(OrderLine.sku)),
            sa.func.count(sa.distinct(OrderLine.code)),
        )
    ).where(OrderLine.account == account, OrderLine.qty > 0, ~consumed)
    units, skus, orders = session.execute(query).one()
    return ReservedTotals(units=int(units), skus=int(skus), orders=int(orders))


def count_by_status(session: Session, *, account: str) -> dict[str | None, int]:
    """The account's orders per current status (None: not known yet), most first."""
    query = (
        sa.select(Order.status, sa.func.count())
        .where(Order.account == account)
        .group_by(Order.status)
        .order_by(sa.func.count().desc())
    )
    return {status: n for status, n in session.execute(query)}


def unconsumed_inbox(session: Session, *, account: str, limit: int = 50) -> list[OrderInbox]:
    """The account's inbox rows the ERP has not consumed yet, oldest first (down the partial
    index of unconsumed rows): what the ERP should pick up next."""
    query = (
        sa.select(OrderInbox)
        .where(OrderInbox.consumed_at.is_(None), OrderInbox.account == account)
        .order_by(OrderInbox.id)
        .limit(limit)
    )
    return list(session.scalars(query))
