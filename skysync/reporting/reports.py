"""Read-only views for the command line (and anything else that shows state to a person):
plain dicts built from one session, and the lines that show some of them on a terminal, so
the CLI only parses input, calls and prints. One SKU or order is the session's account's
(db.account_of); lists take ``account`` (None: every account's)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.domain.kinds import RowState
from skysync.domain.reconcile import AcceptedRow, value_in
from skysync.domain.reservation import Reserving, reserve
from skysync.domain.selection import RowSelection
from skysync.store import orders as order_store
from skysync.store import outbox_reads, sync_errors
from skysync.store.db import account_of
from skysync.store.models import Item, Order, OrderInbox, OutboxRow, SyncError


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def row_dict(row: OutboxRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "account": row.account,
        "kind": row.kind,
        "ref": row.ref,
        "state": row.state,
        "attempts": row.attempts,
        "created_at": _iso(row.created_at),
        "available_at": _iso(row.available_at),
        "finished_at": _iso(row.finished_at),
        "reason": row.reason,
        "superseded_by": row.superseded_by,
        "last_status": row.last_status,
        "origin": row.origin,
    }


def outbox_rows(
    session: Session,
    *,
    state: RowState | None = None,
    kind: str | None = None,
    ref: str | None = None,
    limit: int = 50,
    account: str | None = None,
) -> list[dict[str, Any]]:
    """Outbox rows, newest first."""
    rows = outbox_reads.recent_rows(
        session, state=state, kind=kind, ref=ref, limit=limit, account=account
    )
    return [row_dict(r) for r in rows]


def rows_in_trouble(
    session: Session,
    selection: RowSelection,
    *,
    before: int | None = None,
    after: int | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """One page of the rows ``selection`` holds (newest first, by keyset: ``before``/``after``
    an id), how many it holds in all, and whether there are newer and older pages."""
    page = outbox_reads.selected_page(session, selection, before=before, after=after, limit=limit)
    return {
        "rows": [row_dict(r) for r in page.rows],
        "total": outbox_reads.count_selected(session, selection),
        "newer": page.newer,
        "older": page.older,
    }


def open_sync_errors(
    session: Session, *, account: str, entity_id: str | None = None, limit: int = 100
) -> dict[str, Any]:
    """SkyHub's open errors of ``account`` (of one SKU or order: ``entity_id``), newest first:
    the first ``limit``, and how many there are."""
    found = sync_errors.listed(session, entity_id=entity_id, limit=limit, account=account)
    return {
        "errors": [sync_errors.as_dict(e) for e in found],
        "total": sync_errors.count_open(session, account=account, entity_id=entity_id),
    }


def accounts_of_rows(session: Session, ids: list[int]) -> dict[int, str]:
    """The account of each outbox row of ``ids`` that exists."""
    query = sa.select(OutboxRow.id, OutboxRow.account).where(OutboxRow.id.in_(ids))
    return {row_id: account for row_id, account in session.execute(query)}


def accounts_of_errors(session: Session, ids: list[int]) -> dict[int, str]:
    """The account of each of SkyHub's errors of ``ids`` that is stored."""
    query = sa.select(SyncError.id, SyncError.account).where(SyncError.id.in_(ids))
    return {error_id: account for error_id, account in session.execute(query)}


def item_report(
    session: Session, sku: str, *, recent: int = 10, reserving: Reserving | None = None
) -> dict[str, Any]:
    """What SkyHub acknowledged for a SKU, its linked/frozen state, and its recent rows; with
    ``reserving`` (SKYSYNC_RESERVE_OPEN_ORDERS), the quantity's arithmetic: the ERP's less the
    units of the orders it has not consumed, less the stock buffer."""
    account = account_of(session)
    found = session.get(Item, (account, sku))
    data: dict[str, Any] = {"account": account, "sku": sku, "known": found is not None}
    if found is not None:
        data.update(
            in_skyhub=found.in_skyhub,
            parent_sku=found.parent_sku,
            acknowledged=found.acknowledged,
            linked=found.linked,
            linked_since=_iso(found.linked_since),
            frozen=found.frozen,
            frozen_since=_iso(found.frozen_since),
            unfrozen_at=_iso(found.unfrozen_at),
            last_applied=found.last_applied,
            # sent without a recorded answer: SkyHub's value is unknown until the next answer
            unknown=sorted(found.attempt or {}),
            # the quantity the ERP wrote, when SkyHub got less (SKYSYNC_STOCK_BUFFER)
            erp_values=_erp_values(session, sku, found),
            reservation=(
                None if reserving is None else _reservation(session, sku, found, reserving)
            ),
        )
    data["recent_rows"] = outbox_rows(session, ref=sku, limit=recent, account=account)
    data["sync_errors"] = [
        sync_errors.as_dict(e)
        for e in sync_errors.listed(
            session,
            entity_id=sku,
            entity_type="products",
            include_closed=True,
            limit=recent,
            account=account,
        )
    ]
    return data


def _erp_values(session: Session, sku: str, item: Item) -> dict[str, Any]:
    """What the ERP wrote, where SkyHub acknowledged another value: the quantity less the
    stock buffer (SKYSYNC_STOCK_BUFFER), a promotional price capped at the price
    (skysync/domain/promotions.py). Read from the row SkyHub's value came from (the SKU's own
    row, or its parent's product row), as reconciliation reads it."""
    found: dict[str, Any] = {}
    for name in ("qty", "promotional_price"):
        row_id = (item.last_applied or {}).get(name)
        row = session.get(OutboxRow, int(row_id)) if row_id is not None else None
        if row is None:
            continue
        accepted = AcceptedRow(row.id, row.ref, row.payload, row.finished_at)
        present, value = value_in(accepted, sku, name)
        if present and value != (item.acknowledged or {}).get(name):
            found[name] = value
    return found


def _reservation(
    session: Session, sku: str, item: Item, reserving: Reserving
) -> dict[str, Any] | None:
    """The quantity SkyHub should hold now: the ERP's newest (the row that wrote it), the
    orders that hold units back from it, the stock buffer; None when the ERP wrote none."""
    erp = outbox_reads.latest_erp_qty(session, sku, item.parent_sku)
    if erp is None:
        return None
    reservation = reserve(sku, order_store.open_lines(session, [sku]), erp.written_at)
    qty = reserving.offered(erp.qty, reservation)
    explained = f"qty {qty} = ERP {erp.qty}"
    if reservation.units:
        explained += f" − {reservation.explain()}"
    if reserving.stock_buffer:
        explained += f" − {reserving.stock_buffer} stock buffer"
    return {
        "qty": qty,
        "erp_qty": erp.qty,
        "erp_row": erp.row_id,
        "reserved": reservation.units,
        "orders": [{"code": code, "units": units} for code, units in reservation.orders],
        "stock_buffer": reserving.stock_buffer,
        "explained": explained,
    }


def orders(
    session: Session,
    *,
    status: str | None = None,
    unconsumed: bool = False,
    limit: int = 50,
    account: str | None = None,
) -> list[dict[str, Any]]:
    """Orders skysync knows, most recently changed first, with their unread inbox rows."""
    waiting = (
        sa.select(sa.func.count())
        .where(OrderInbox.account == Order.account, OrderInbox.code == Order.code)
        .where(OrderInbox.consumed_at.is_(None))
        .scalar_subquery()
    )
    query = sa.select(Order, waiting).order_by(Order.updated_at.desc()).limit(limit)
    if account is not None:
        query = query.where(Order.account == account)
    if status:
        query = query.where(Order.status == status)
    if unconsumed:
        query = query.where(waiting > 0)
    return [
        {
            "account": order.account,
            "code": order.code,
            "status": order.status,
            "status_source": order.status_source,
            "unconsumed_inbox_rows": n,
            "parse_error": order.parse_error,
            "updated_at": _iso(order.updated_at),
        }
        for order, n in session.execute(query)
    ]


def order_flow(session: Session, *, account: str, limit: int = 50) -> dict[str, Any]:
    """The account's orders at a glance: how many per status, the inbox rows the ERP has not
    consumed (the oldest first: what it should pick up next) and the orders changed last."""
    waiting = order_store.inbox_counts(session, account=account)
    return {
        "by_status": order_store.count_by_status(session, account=account),
        "unconsumed": {
            "total": waiting.unconsumed,
            "flagged": waiting.flagged,
            "rows": [
                {
                    "id": r.id,
                    "code": r.code,
                    "status": r.status,
                    "received_at": _iso(r.received_at),
                    "parse_error": r.parse_error,
                }
                for r in order_store.unconsumed_inbox(session, account=account, limit=limit)
            ],
        },
        "recent": orders(session, limit=limit, account=account),
    }


def order_report(session: Session, code: str) -> dict[str, Any] | None:
    """One order's inbox history and the status steps sent back; None when unknown."""
    account = account_of(session)
    order = session.get(Order, (account, code))
    inbox = session.scalars(
        sa.select(OrderInbox)
        .where(OrderInbox.account == account, OrderInbox.code == code)
        .order_by(OrderInbox.id)
    ).all()
    steps = outbox_reads.order_rows(session, code)
    if order is None and not inbox and not steps:
        return None
    return {
        "account": account,
        "code": code,
        "status": order.status if order else None,
        "status_source": order.status_source if order else None,
        "inbox": [
            {
                "id": r.id,
                "status": r.status,
                "received_at": _iso(r.received_at),
                "consumed_at": _iso(r.consumed_at),
                "parse_error": r.parse_error,
            }
            for r in inbox
        ],
        "steps": [row_dict(r) for r in steps],
    }


# -- for the terminal ----------------------------------------------------------------------------

# why SkyHub holds another value than the ERP wrote (skysync item show)
_ERP_VALUE_WHY = {
    "qty": "; the stock buffer kept back the rest",
    "promotional_price": "; capped at the price: never a promotion above the price",
}


def item_lines(data: dict[str, Any]) -> list[str]:
    """`skysync item show SKU`: an item_report() in words."""
    sku = data["sku"]
    if not data["known"]:
        lines = [f"{sku}: skysync has not delivered anything for this SKU yet"]
    else:
        lines = _item_state_lines(data)
    lines.append("  recent rows:")
    for r in data["recent_rows"]:
        origin = f"[{r['origin']}] " if r["origin"] != "erp" else ""
        lines.append(
            f"    {r['id']:>8} {r['state']:<10} {r['kind']:<8} {origin}{r['reason'] or ''}"
        )
    if data["sync_errors"]:
        lines.append("  SkyHub's own errors about it:")
        lines.extend("    " + error_line(e) for e in data["sync_errors"])
    return lines


def _item_state_lines(data: dict[str, Any]) -> list[str]:
    """A known SKU: in SkyHub or not, frozen or not, and what SkyHub acknowledged."""
    state = "frozen" if data["frozen"] else "not frozen"
    if data["frozen"]:
        state += f" since {data['frozen_since']} (linked to the marketplace)"
    where = "in SkyHub" if data["in_skyhub"] else "not in SkyHub yet"
    lines = [f"{data['sku']}: {where}, {state}"]
    if data["parent_sku"]:
        lines.append(f"  variation of {data['parent_sku']}")
    lines.append("  acknowledged by SkyHub:")
    for name, value in sorted(data["acknowledged"].items()):
        line = f"    {name} = {json.dumps(value, ensure_ascii=False)[:100]}"
        if name in data["erp_values"]:
            why = _ERP_VALUE_WHY.get(name, "")
            if name == "qty" and (data.get("reservation") or {}).get("reserved"):
                why = "; open orders hold units back, below"
            line += f"  (the ERP wrote {data['erp_values'][name]}{why})"
        lines.append(line)
    reservation = data.get("reservation")
    if reservation and reservation["reserved"]:
        lines.append(f"  held for orders: {reservation['explained']}")
    if data["unknown"]:
        names = ", ".join(data["unknown"])
        lines.append(f"  unknown (sent, no answer recorded; resent with the next value): {names}")
    return lines


def error_line(e: dict[str, Any]) -> str:
    """One of SkyHub's own errors (a sync_errors.as_dict()) on one line."""
    state = "open"
    if e["ignored_at"]:
        state = "ignored"
    elif e["resolved_at"]:
        state = "resolved"
    what = "SKU" if e["entity_type"] == "products" else "order"
    return (
        f"{e['id']:>6} {state:<8} {what} {e['entity_id']}: "
        f"{e['error_category_code']}/{e['error_code']}: {e['message'] or ''} "
        f"(last {e['last_occurrence'] or '?'})"
    )
