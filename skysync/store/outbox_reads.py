"""Read-only queries on the outbox: counts and rows for ``skysync status``, the metrics and the
reports, what a drain left and whose it is, and what the relay and reconciliation look up (rows
still open, rows that got through).

What operators read (counts, lists) takes ``account``: one account's rows, or every account's
(None). What the relay and reconciliation look up keeps to the session's account
(db.account_of)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.domain.kinds import ORDER_KINDS, Kind, Origin, RowState
from skysync.domain.reconcile import AcceptedRow, value_in
from skysync.domain.selection import RowSelection
from skysync.store.db import account_of
from skysync.store.models import OutboxRow, utcnow
from skysync.store.slices import in_slices


def _of(account: str | None) -> sa.ColumnElement[bool]:
    """Rows of ``account``; every row when None."""
    return sa.true() if account is None else OutboxRow.account == account


def count_by_state(session: Session, *, account: str | None = None) -> dict[str, int]:
    """Rows per state, every state present (0 when none)."""
    counts: dict[str, int] = dict.fromkeys(RowState, 0)
    query = sa.select(OutboxRow.state, sa.func.count()).where(_of(account))
    rows = session.execute(query.group_by(OutboxRow.state))
    for state, n in rows:
        counts[state] = n
    return counts


def count_by_account_state_and_kind(session: Session) -> dict[tuple[str, str, str], int]:
    """Rows per (account, state, kind) present: what the metrics export."""
    query = sa.select(OutboxRow.account, OutboxRow.state, OutboxRow.kind, sa.func.count())
    query = query.group_by(OutboxRow.account, OutboxRow.state, OutboxRow.kind)
    return {(a, s, k): n for a, s, k, n in session.execute(query)}


def states_of(
    counts: Mapping[tuple[str, str, str], int], account: str | None = None
) -> dict[str, int]:
    """Rows per state (every state present) out of count_by_account_state_and_kind()'s counts:
    of ``account``, or of every account (None). One scan of the outbox serves every figure
    `skysync status` and the console show."""
    found: dict[str, int] = dict.fromkeys(RowState, 0)
    for (owner, state, _kind), n in counts.items():
        if account is None or owner == account:
            found[state] = found.get(state, 0) + n
    return found


def count_by_account_and_state(session: Session) -> dict[str, dict[str, int]]:
    """Rows per account and state (every state present for each account that has rows)."""
    counts: dict[str, dict[str, int]] = {}
    query = sa.select(OutboxRow.account, OutboxRow.state, sa.func.count())
    for account, state, n in session.execute(query.group_by(OutboxRow.account, OutboxRow.state)):
        counts.setdefault(account, dict.fromkeys(RowState, 0))[state] = n
    return counts


def is_empty(session: Session) -> bool:
    return session.execute(sa.select(sa.literal(1)).select_from(OutboxRow).limit(1)).first() is None


def count_due(session: Session, now: datetime, *, account: str | None = None) -> int:
    """Pending rows due by ``now`` (what another batch would find to claim)."""
    return session.execute(
        sa.select(sa.func.count())
        .select_from(OutboxRow)
        .where(OutboxRow.state == RowState.PENDING, OutboxRow.available_at <= now)
        .where(_of(account))
    ).scalar_one()


def oldest_pending(
    session: Session, *, due_only: bool, now: datetime | None = None, account: str | None = None
) -> datetime | None:
    """created_at of the oldest pending row (only rows due now when ``due_only``): the first
    written, by id, found at the head of the ``(state, id)`` index. (``min(created_at)`` read
    every pending row, 95 ms a call on 666,667 of them; ids follow the order of the INSERTs,
    and a row keeps its id and created_at when it goes back to pending.)"""
    query = sa.select(OutboxRow.created_at).where(OutboxRow.state == RowState.PENDING)
    query = query.where(_of(account))
    if due_only:
        query = query.where(OutboxRow.available_at <= (now or utcnow()))
    return session.execute(query.order_by(OutboxRow.id).limit(1)).scalar()


def parked_by_skyhub(
    session: Session, now: datetime, *, account: str | None = None
) -> tuple[int, datetime | None]:
    """Pending rows that a 429 from SkyHub put off and that are not due yet: how many, and
    the furthest due time among them (down the ``(available_at, id)`` index of pending rows)."""
    query = sa.select(sa.func.count(), sa.func.max(OutboxRow.available_at)).where(
        OutboxRow.state == RowState.PENDING,
        OutboxRow.available_at > now,
        OutboxRow.last_status == 429,
        _of(account),
    )
    count, until = session.execute(query).one()
    return int(count or 0), until


def recent_rows(
    session: Session,
    *,
    state: RowState | None = None,
    kind: str | None = None,
    ref: str | None = None,
    limit: int = 50,
    account: str | None = None,
) -> list[OutboxRow]:
    """Rows newest first, filtered (what `skysync outbox list` and `item show` print)."""
    query = sa.select(OutboxRow).where(_of(account)).order_by(OutboxRow.id.desc()).limit(limit)
    if state:
        query = query.where(OutboxRow.state == state)
    if kind:
        query = query.where(OutboxRow.kind == kind)
    if ref:
        query = query.where(OutboxRow.ref == ref)
    return list(session.scalars(query))


# -- an operator's selection of rows in trouble (the console) ---------------------------------
def _fixed_in(column: Any, values: Iterable[str]) -> sa.ColumnElement[bool]:
    """``column IN (values)`` with the values written into the SQL: fixed names (states), so
    that PostgreSQL sees them when it plans and picks the partial indexes they match (a bound
    parameter would hide them from a generic plan)."""
    fixed: sa.BindParameter[list[str]] = sa.bindparam(
        None, list(values), expanding=True, literal_execute=True
    )
    found: sa.ColumnElement[bool] = column.in_(fixed)
    return found


def _selected(selection: RowSelection) -> list[sa.ColumnElement[bool]]:
    """The WHERE clauses of ``selection``: down ``ix_skysync_outbox_trouble`` (account, id,
    rows in trouble only: migration 0014), or ``(account, ref, state, id)`` with a ref."""
    clauses = [
        OutboxRow.account == selection.account,
        _fixed_in(OutboxRow.state, selection.states),
    ]
    if selection.kind:
        clauses.append(OutboxRow.kind == selection.kind)
    if selection.ref:
        clauses.append(OutboxRow.ref == selection.ref)
    if selection.since is not None:
        clauses.append(OutboxRow.finished_at >= selection.since)
    if selection.until is not None:
        clauses.append(OutboxRow.finished_at < selection.until)
    if selection.ids is not None:
        clauses.append(OutboxRow.id.in_(list(selection.ids)))
    if selection.upto is not None:
        clauses.append(OutboxRow.id <= selection.upto)
    return clauses


@dataclass(frozen=True)
class RowsPage:
    """One page of selected rows, newest first, and whether there are newer and older ones."""

    rows: list[OutboxRow]
    newer: bool
    older: bool


def selected_page(
    session: Session,
    selection: RowSelection,
    *,
    before: int | None = None,
    after: int | None = None,
    limit: int = 50,
) -> RowsPage:
    """The selected rows by keyset, newest first: those with an id below ``before`` (the next
    older page), or the ``limit`` just above ``after`` (the next newer page), or the newest.
    Never OFFSET: each page is one walk down an index from its key, however deep it is."""
    where = _selected(selection)
    if after is not None:
        query = sa.select(OutboxRow).where(*where, OutboxRow.id > after)
        found = list(session.scalars(query.order_by(OutboxRow.id).limit(limit + 1)))
        newer = len(found) > limit
        rows = list(reversed(found[:limit]))
    else:
        query = sa.select(OutboxRow).where(*where)
        if before is not None:
            query = query.where(OutboxRow.id < before)
        rows = list(session.scalars(query.order_by(OutboxRow.id.desc()).limit(limit + 1)))
        newer = False
        older = len(rows) > limit
        rows = rows[:limit]
    if rows:
        if after is None:
            newer = _any(session, where, OutboxRow.id > rows[0].id)
        else:
            older = _any(session, where, OutboxRow.id < rows[-1].id)
    else:
        older = after is not None and _any(session, where, OutboxRow.id <= after)
        newer = newer or (before is not None and _any(session, where, OutboxRow.id >= before))
    return RowsPage(rows, newer=newer, older=older)


def _any(session: Session, where: list[sa.ColumnElement[bool]], *more: Any) -> bool:
    query = sa.select(sa.literal(1)).select_from(OutboxRow).where(*where, *more).limit(1)
    return session.execute(query).first() is not None


def count_selected(session: Session, selection: RowSelection) -> int:
    """How many rows ``selection`` holds (what an action on it would touch)."""
    query = sa.select(sa.func.count()).select_from(OutboxRow).where(*_selected(selection))
    return int(session.execute(query).scalar_one())


def newest_selected(session: Session, selection: RowSelection) -> int | None:
    """The highest id ``selection`` holds (None: it holds none): an action confirmed now goes
    no further (RowSelection.upto)."""
    query = sa.select(sa.func.max(OutboxRow.id)).where(*_selected(selection))
    return session.execute(query).scalar()


def selected_ids(session: Session, selection: RowSelection) -> list[int]:
    """The ids ``selection`` holds, oldest first."""
    query = sa.select(OutboxRow.id).where(*_selected(selection)).order_by(OutboxRow.id)
    return list(session.scalars(query))


def selection_clauses(selection: RowSelection) -> list[sa.ColumnElement[bool]]:
    """``selection`` as WHERE clauses, for an operator's UPDATE (store/settle.py)."""
    return _selected(selection)


# -- rows SkyHub accepted, per minute (the console's chart) ------------------------------------
def sent_per_minute(
    session: Session, account: str, since: datetime, minutes: int = 24 * 60
) -> list[int]:
    """Rows of ``account`` that ended ``sent`` in each minute from ``since`` on (``minutes``
    of them, the first counting from ``since``). Down ``ix_skysync_outbox_sent_at``
    (account, finished_at, sent rows only: migration 0014), reading only the period's entries,
    never the whole outbox: 15,000 sent rows in a day take 9 ms of 1,000,000."""
    until = since + timedelta(minutes=minutes)
    if session.get_bind().dialect.name == "postgresql":
        offset = sa.func.extract("epoch", OutboxRow.finished_at - since) / 60
        minute: Any = sa.cast(sa.func.floor(offset), sa.Integer)
    else:  # SQLite stores naive UTC text, which julianday() reads
        start = sa.func.julianday(sa.literal(_sqlite_text(since)))
        minute = sa.cast((sa.func.julianday(OutboxRow.finished_at) - start) * 1440, sa.Integer)
    query = (
        sa.select(minute.label("minute"), sa.func.count())
        .where(
            OutboxRow.account == account,
            _fixed_in(OutboxRow.state, [RowState.SENT]),
            OutboxRow.finished_at >= since,
            OutboxRow.finished_at < until,
        )
        .group_by(minute)
    )
    counts = [0] * minutes
    for at, n in session.execute(query):
        if at is not None and 0 <= int(at) < minutes:
            counts[int(at)] += n
    return counts


def _sqlite_text(when: datetime) -> str:
    """``when`` as SQLite holds a UTC time (naive text)."""
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def order_rows(
    session: Session,
    code: str,
    *,
    states: tuple[RowState, ...] | None = None,
    account: str | None = None,
) -> list[OutboxRow]:
    """The status-step rows of one order, oldest first (``states``: only those; ``account``:
    of that account, else the session's)."""
    query = sa.select(OutboxRow).where(OutboxRow.ref == code, OutboxRow.kind.in_(ORDER_KINDS))
    query = query.where(OutboxRow.account == (account or account_of(session)))
    if states is not None:
        query = query.where(OutboxRow.state.in_(states))
    return list(session.scalars(query.order_by(OutboxRow.id)))


@dataclass(frozen=True)
class DrainAccount:
    """What is left after a drain, and whose it is (``skysync drain``'s exit code)."""

    dead: list[int]  # rows this drain handled that died (its attempts used up)
    retrying: list[int]  # rows this drain handled that are back to pending, not sent
    still_claimed: list[int]  # rows still in flight under this drain's own claims
    rejected: int  # rows this drain rejected (bad input, or SkyHub refused them for good)
    in_other_hands: int  # rows in flight under other claims (other workers')
    not_due: int  # other pending rows not due yet (backing off from earlier attempts)

    @property
    def failed(self) -> list[int]:
        return sorted({*self.dead, *self.retrying, *self.still_claimed})


def drain_account(
    session: Session, tokens: Sequence[str], unsettled: Iterable[int], now: datetime
) -> DrainAccount:
    """Account for a drain that claimed under ``tokens``, whose deliveries left ``unsettled``
    rows undelivered at some point: where those rows are now (sent by a later batch of the
    drain, back to pending, dead, or taken by another claim meanwhile), what else its claims
    still hold or rejected, and what is in other hands."""
    states: dict[int, str] = {}
    retrying_not_due = 0
    ids = sorted(set(unsettled))
    for part in in_slices(ids):
        query = sa.select(OutboxRow.id, OutboxRow.state, OutboxRow.available_at).where(
            OutboxRow.id.in_(part)
        )
        for i, state, available_at in session.execute(query):
            states[i] = state
            retrying_not_due += state == RowState.PENDING and available_at > now
    # By state first (its index; rows in flight, dead or rejected are few next to the sent
    # ones), then the drain's claim tokens in Python: never a scan of the table by token.
    mine = set(tokens)
    by_state: dict[str, list[int]] = {}
    account = account_of(session)
    held = sa.select(OutboxRow.state, OutboxRow.id, OutboxRow.claim_token).where(
        OutboxRow.account == account,
        OutboxRow.state.in_([RowState.IN_FLIGHT, RowState.DEAD, RowState.REJECTED]),
    )
    in_flight = 0
    for state, i, token in session.execute(held):
        in_flight += state == RowState.IN_FLIGHT
        if token in mine:
            by_state.setdefault(state, []).append(i)
    ours_in_flight = by_state.get(RowState.IN_FLIGHT, [])
    rejected = len(by_state.get(RowState.REJECTED, []))
    dead = {i for i, state in states.items() if state == RowState.DEAD}
    dead.update(by_state.get(RowState.DEAD, []))
    retrying = sorted(i for i, state in states.items() if state == RowState.PENDING)
    not_due = session.execute(
        sa.select(sa.func.count()).where(
            OutboxRow.account == account,
            OutboxRow.state == RowState.PENDING,
            OutboxRow.available_at > now,
        )
    ).scalar_one()
    return DrainAccount(
        dead=sorted(dead),
        retrying=retrying,
        still_claimed=sorted(ours_in_flight),
        rejected=rejected,
        in_other_hands=in_flight - len(ours_in_flight),
        not_due=not_due - retrying_not_due,
    )


def has_open_rows(session: Session, ref: str, kinds: tuple[str, ...]) -> bool:
    """Whether ``ref`` still has rows of ``kinds`` waiting or in flight."""
    query = sa.select(sa.literal(1)).where(
        OutboxRow.account == account_of(session),
        OutboxRow.ref == ref,
        OutboxRow.kind.in_(kinds),
        OutboxRow.state.in_((RowState.PENDING, RowState.IN_FLIGHT)),
    )
    return session.execute(query.limit(1)).first() is not None


# -- reconciliation -----------------------------------------------------------------------
ACCEPTED_STATES = (RowState.SENT, RowState.SUPERSEDED, RowState.WITHHELD)


def accepted_rows(session: Session, ids: Iterable[int]) -> dict[int, AcceptedRow]:
    """These rows (the ones ``skysync_item.last_applied`` names), by id."""
    found: dict[int, AcceptedRow] = {}
    columns = (OutboxRow.id, OutboxRow.ref, OutboxRow.payload, OutboxRow.finished_at)
    for part in in_slices(sorted(set(ids))):
        for row in session.execute(sa.select(*columns).where(OutboxRow.id.in_(part))):
            found[row.id] = AcceptedRow(row.id, row.ref, row.payload, row.finished_at)
    return found


def product_rows_finished_since(
    session: Session, refs: Iterable[str], since: datetime
) -> list[AcceptedRow]:
    """Product rows of ``refs`` that got through (sent, superseded, withheld) since ``since``:
    where a frozen product's withheld attributes are."""
    found = []
    columns = (OutboxRow.id, OutboxRow.ref, OutboxRow.payload, OutboxRow.finished_at)
    for part in in_slices(sorted(set(refs))):
        query = sa.select(*columns).where(
            OutboxRow.account == account_of(session),
            OutboxRow.ref.in_(part),
            OutboxRow.kind == Kind.PRODUCT,
            OutboxRow.state.in_(ACCEPTED_STATES),
            OutboxRow.finished_at >= since,
        )
        found += [
            AcceptedRow(r.id, r.ref, r.payload, r.finished_at) for r in session.execute(query)
        ]
    return found


def open_kinds(session: Session, refs: Iterable[str]) -> dict[str, set[str]]:
    """The kinds of rows each ref still has waiting or in flight."""
    found: dict[str, set[str]] = {}
    for part in in_slices(sorted(set(refs))):
        query = (
            sa.select(OutboxRow.ref, OutboxRow.kind)
            .where(
                OutboxRow.account == account_of(session),
                OutboxRow.ref.in_(part),
                OutboxRow.state.in_((RowState.PENDING, RowState.IN_FLIGHT)),
            )
            .distinct()
        )
        for ref, kind in session.execute(query):
            found.setdefault(ref, set()).add(kind)
    return found


def written_refs(session: Session, refs: Iterable[str]) -> set[str]:
    """Which of ``refs`` the outbox has any row for (the ERP wrote something for them)."""
    found: set[str] = set()
    for part in in_slices(sorted(set(refs))):
        query = sa.select(OutboxRow.ref).where(
            OutboxRow.account == account_of(session), OutboxRow.ref.in_(part)
        )
        query = query.distinct()
        found.update(session.scalars(query))
    return found


# -- the ERP's quantity (stock reservation) -----------------------------------------------
#: The states of a row a claim took and did not refuse: its values went out, or were folded
#: into a request that did, or were already SkyHub's (withheld), or are going out now.
TAKEN_STATES = (
    RowState.SENT,
    RowState.SUPERSEDED,
    RowState.WITHHELD,
    RowState.HELD,
    RowState.IN_FLIGHT,
)


@dataclass(frozen=True)
class ErpQuantity:
    """The ERP's latest quantity of a SKU that a claim has taken, and the row that wrote it."""

    row_id: int
    qty: Any
    written_at: datetime


def latest_erp_qty(
    session: Session, sku: str, parent_sku: str | None = None, *, page: int = 50
) -> ErpQuantity | None:
    """The newest row the ERP wrote (``origin = 'erp'``) carrying a quantity of ``sku``, its
    own stock or product row or its parent's product row, that a claim took (TAKEN_STATES): the
    quantity a row skysync writes (a correction, a reservation) repeats. None if there is none.
    Newest as the relay orders a SKU's rows (planner.newness): by claim epoch, then id."""
    refs = [sku] if not parent_sku else [sku, parent_sku]
    epoch = sa.func.coalesce(OutboxRow.claim_epoch, 0)
    columns = (OutboxRow.id, OutboxRow.ref, OutboxRow.payload, OutboxRow.created_at, epoch)
    query = (
        sa.select(*columns)
        .where(
            OutboxRow.account == account_of(session),
            OutboxRow.ref.in_(refs),
            OutboxRow.kind.in_((Kind.STOCK, Kind.PRODUCT)),
            OutboxRow.origin == Origin.ERP,
            OutboxRow.state.in_(TAKEN_STATES),
        )
        .order_by(epoch.desc(), OutboxRow.id.desc())
        .limit(page)
    )
    after: tuple[int, int] | None = None
    while True:
        paged = query if after is None else query.where(sa.tuple_(epoch, OutboxRow.id) < after)
        rows = session.execute(paged).all()
        for row in rows:
            present, qty = value_in(AcceptedRow(row.id, row.ref, row.payload, None), sku, "qty")
            if present:
                return ErpQuantity(row.id, qty, row.created_at)
        if len(rows) < page:
            return None
        after = (rows[-1][4], rows[-1].id)
