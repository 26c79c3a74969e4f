"""Reservation rows: when an order changes what a SKU may offer (pulled, cancelled), a ``stock``
row with ``origin = 'reservation'`` through the outbox, so the corrected quantity goes out like
any row: claimed, coalesced, under the shared limiter, with the fast lane when it is on
(docs/orders.md). Written in the transaction that stored the order's change.

The row carries the ERP's own latest quantity (``basis_id``: the ERP row that wrote it); the
relay takes the reservation off again when it sends it (relay/reserve.py), counting the orders
as they stand then, not as they stood now."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.domain.kinds import Kind, Origin, RowState
from skysync.domain.reservation import Reserving, reserve
from skysync.store import items as item_store
from skysync.store import orders as order_store
from skysync.store import outbox_reads
from skysync.store.db import account_of
from skysync.store.models import OutboxRow


def enqueue_corrections(session: Session, skus: Iterable[str], reserving: Reserving) -> list[int]:
    """A reservation row for each of ``skus`` whose quantity SkyHub should hold, given the
    orders as they stand, differs from what SkyHub last acknowledged; the new rows' ids.

    Left alone: a SKU SkyHub does not have yet, or whose quantity the ERP never wrote (its
    first row goes out reserved); one with a row of its own still waiting (it goes out
    reserved). A SKU with a request in flight always gets one: that request may have counted
    the orders before this change; if it did not, the relay withholds the row as unchanged."""
    wanted = sorted(set(skus))
    if not wanted:
        return []
    lines = order_store.open_lines(session, wanted)
    waiting, in_flight = _open_refs(session, wanted)
    made: list[int] = []
    for sku in wanted:
        item = item_store.read(session, sku)
        if not item.in_skyhub:
            continue
        family = {sku, item.parent_sku} if item.parent_sku else {sku}
        if family & waiting:
            continue
        erp = outbox_reads.latest_erp_qty(session, sku, item.parent_sku)
        if erp is None:
            continue
        offered = reserving.offered(erp.qty, reserve(sku, lines, erp.written_at))
        if item.acknowledged.get("qty") == offered and not family & in_flight:
            continue
        row = OutboxRow(
            account=account_of(session),
            kind=Kind.STOCK,
            ref=sku,
            payload={"qty": erp.qty},
            origin=Origin.RESERVATION,
            basis_id=erp.row_id,
        )
        session.add(row)
        session.flush()
        made.append(row.id)
    return made


def _open_refs(session: Session, skus: list[str]) -> tuple[set[str], set[str]]:
    """Of ``skus`` and their parents: the refs with a stock or product row waiting, and those
    with one in flight."""
    parents, _in_skyhub = item_store.family_links(session, skus)
    refs = sorted(set(skus) | {p for p in parents.values() if p})
    query = (
        sa.select(OutboxRow.ref, OutboxRow.state)
        .where(
            OutboxRow.account == account_of(session),
            OutboxRow.ref.in_(refs),
            OutboxRow.kind.in_((Kind.STOCK, Kind.PRODUCT)),
            OutboxRow.state.in_((RowState.PENDING, RowState.IN_FLIGHT)),
        )
        .distinct()
    )
    waiting: set[str] = set()
    in_flight: set[str] = set()
    for ref, state in session.execute(query):
        (waiting if state == RowState.PENDING else in_flight).add(ref)
    return waiting, in_flight
