"""Settling claimed rows: a delivery's outcome (``finish``: sent, withheld, rejected, dead;
``release``: back to pending to retry), guarded by the claim token so a task whose lease ran out
cannot overwrite what a later claim decided, and the lease renewed the same way; the rows the
price guard holds; and an operator's release and requeue."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.domain.kinds import SKU_KINDS, RowState
from skysync.domain.planner import Row
from skysync.domain.selection import REQUEUEABLE, RowSelection
from skysync.store.db import account_of
from skysync.store.models import OutboxRow
from skysync.store.outbox_reads import selection_clauses
from skysync.store.slices import in_slices

_OUTBOX = cast(sa.Table, OutboxRow.__table__)  # a mapped class's table, typed FromClause
_HELD = sa.and_(
    _OUTBOX.c.claim_token == sa.bindparam("token"), _OUTBOX.c.state == RowState.IN_FLIGHT
)
_BY_IDS = _OUTBOX.c.id.in_(sa.bindparam("ids", expanding=True))
_CLAIMED_UPDATES: dict[tuple[tuple[str, ...], bool], sa.Update] = {}


def _claimed_update(names: tuple[str, ...], *, count_attempt: bool) -> sa.Update:
    """The UPDATE of rows held by a claim that sets ``names`` (bound as ``v_<name>``), by ids.
    Built once per shape and reused: the relay runs it for every key it settles, and building
    a statement, and its cache key, costs more Python time than PostgreSQL takes to run it. A
    Core statement (on the table, not the mapped class), so no ORM session state is evaluated
    or synchronized: none is loaded where these run, and each call's rows are read again by
    the next transaction that needs them."""
    key = (names, count_attempt)
    statement = _CLAIMED_UPDATES.get(key)
    if statement is None:
        values: dict[str, Any] = {n: sa.bindparam(f"v_{n}", type_=_OUTBOX.c[n].type) for n in names}
        if count_attempt:
            values["attempts"] = _OUTBOX.c.attempts + 1
        statement = sa.update(_OUTBOX).where(_HELD, _BY_IDS).values(**values)
        _CLAIMED_UPDATES[key] = statement
    return statement


def _update_claimed(
    session: Session,
    ids: list[int],
    token: str,
    values: dict[str, Any],
    *,
    count_attempt: bool = False,
) -> int:
    """Update rows of ``ids`` only while ``token`` still holds them in flight, so a task whose
    lease was reclaimed cannot overwrite what a later claim decided. ``count_attempt`` adds one
    to ``attempts``. Returns how many of ``ids`` were updated."""
    names = tuple(sorted(values))
    params = {f"v_{n}": v for n, v in values.items()}
    params["token"] = token
    updated = 0
    if ids:
        by_ids = _claimed_update(names, count_attempt=count_attempt)
        for part in in_slices(ids):
            result = session.execute(by_ids, {**params, "ids": part})
            updated += cast(sa.CursorResult[Any], result).rowcount or 0
    return updated


def _outcome_values(**values: Any) -> dict[str, Any]:
    """The optional columns that were given."""
    return {k: v for k, v in values.items() if v is not None}


def finish(
    session: Session,
    ids: list[int],
    token: str,
    *,
    state: RowState,
    now: datetime,
    reason: str | None = None,
    superseded_by: int | None = None,
    last_error: str | None = None,
    last_status: int | None = None,
    count_attempt: bool = False,
) -> int:
    """Move claimed rows to a final state."""
    values: dict[str, Any] = {"state": state, "reason": reason, "finished_at": now}
    values.update(updated_at=now, lease_until=None)
    values.update(
        _outcome_values(superseded_by=superseded_by, last_error=last_error, last_status=last_status)
    )
    return _update_claimed(session, ids, token, values, count_attempt=count_attempt)


def release(
    session: Session,
    ids: list[int],
    token: str,
    *,
    now: datetime,
    available_at: datetime,
    reason: str,
    count_attempt: bool,
    last_error: str | None = None,
    last_status: int | None = None,
) -> int:
    """Give claimed rows back (pending, due at ``available_at``), with the reason shown to
    ops."""
    values: dict[str, Any] = {
        "state": RowState.PENDING,
        "claim_token": None,
        "lease_until": None,
        "available_at": available_at,
        "reason": reason,
        "updated_at": now,
    }
    values.update(_outcome_values(last_error=last_error, last_status=last_status))
    return _update_claimed(session, ids, token, values, count_attempt=count_attempt)


def renew_lease(session: Session, ids: list[int], token: str, lease_until: datetime) -> int:
    """Extend the lease of rows still held by ``token``; returns how many are still held."""
    return _update_claimed(session, ids, token, {"lease_until": lease_until})


def held_rows(session: Session, ref: str) -> list[Row]:
    """The rows of SKU ``ref`` the price guard holds, oldest first."""
    query = (
        sa.select(
            OutboxRow.id, OutboxRow.kind, OutboxRow.ref, OutboxRow.payload, OutboxRow.claim_epoch
        )
        .where(OutboxRow.account == account_of(session), OutboxRow.ref == ref)
        .where(OutboxRow.state == RowState.HELD)
        .where(OutboxRow.kind.in_(SKU_KINDS))
        .order_by(OutboxRow.id)
    )
    return [
        Row(i, kind, r, payload, epoch=epoch or 0)
        for i, kind, r, payload, epoch in session.execute(query)
    ]


def supersede_held(session: Session, row_id: int, by: int, now: datetime) -> None:
    """A held row replaced by a newer value of its prices (row ``by``)."""
    session.execute(
        sa.update(OutboxRow)
        .where(OutboxRow.id == row_id, OutboxRow.state == RowState.HELD)
        .values(
            state=RowState.SUPERSEDED,
            superseded_by=by,
            reason=f"held by the price guard, then replaced by the newer row {by}",
            finished_at=now,
            updated_at=now,
        )
    )


def release_held(session: Session, ids: Sequence[int], now: datetime) -> dict[int, str]:
    """An operator's release of held rows: back to pending, due now, marked so that the price
    guard lets them through. Returns, for each id that was not released, why."""
    found: dict[int, str] = {}
    for part in in_slices(list(ids)):
        query = sa.select(OutboxRow.id, OutboxRow.state).where(OutboxRow.id.in_(part))
        found.update({row_id: state for row_id, state in session.execute(query)})
    refused = {
        i: ("no such row" if i not in found else f"is {found[i]}, not held")
        for i in ids
        if found.get(i) != RowState.HELD
    }
    held = [i for i in ids if i not in refused]
    for part in in_slices(held):
        session.execute(
            sa.update(OutboxRow)
            .where(OutboxRow.id.in_(part), OutboxRow.state == RowState.HELD)
            .values(
                state=RowState.PENDING,
                available_at=now,
                released_at=now,
                claim_token=None,
                finished_at=None,
                reason="released by an operator: the price guard lets it through",
                updated_at=now,
            )
        )
    return refused


def requeue(
    session: Session,
    *,
    ids: list[int] | None = None,
    state: RowState | None = None,
    now: datetime,
    account: str | None = None,
    selection: RowSelection | None = None,
) -> int:
    """An operator's requeue: dead, rejected or withheld rows back to pending, attempts reset.
    Only the rows of ``ids`` when given (an empty list: none), only those in ``state`` when
    given, only ``account``'s when given, only those ``selection`` holds when given (the
    console's filter); none of them: every such row."""
    if ids is not None and not ids:
        return 0
    query = sa.update(OutboxRow).where(OutboxRow.state.in_(REQUEUEABLE))
    if selection is not None:
        query = query.where(*selection_clauses(selection))
    if ids is not None:
        query = query.where(OutboxRow.id.in_(ids))
    if state:
        query = query.where(OutboxRow.state == state)
    if account is not None:
        query = query.where(OutboxRow.account == account)
    result = session.execute(
        query.values(
            state=RowState.PENDING,
            attempts=0,
            available_at=now,
            claim_token=None,
            finished_at=None,
            reason="requeued by an operator",
            updated_at=now,
            # a claim read it before (planner.newness): it is no newer than what came after
            claim_epoch=sa.func.coalesce(OutboxRow.claim_epoch, 0),
        ),
        execution_options={"synchronize_session": False},
    )
    return cast(sa.CursorResult[Any], result).rowcount or 0


def reject_unconfigured(session: Session, configured: Sequence[str], now: datetime) -> int:
    """Pending rows naming an account that is not configured: ``rejected``, the reason naming
    the account and the configured ones (an operator requeues them once the account is in the
    accounts file). Down the (state, account, id) index."""
    known = ", ".join(configured)
    reason = (
        sa.literal('account: "')
        + OutboxRow.account
        + sa.literal(f'" is not a configured SkyHub account (configured: {known})')
    )
    result = session.execute(
        sa.update(OutboxRow)
        .where(OutboxRow.state == RowState.PENDING, OutboxRow.account.not_in(list(configured)))
        .values(state=RowState.REJECTED, reason=reason, finished_at=now, updated_at=now),
        execution_options={"synchronize_session": False},
    )
    return cast(sa.CursorResult[Any], result).rowcount or 0
