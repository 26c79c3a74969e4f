"""The only SQL on the outbox table: writing rows, counting them, and (for the relay) claiming
and completing them."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.domain.fast_lane import LaneMode, LaneRule
from skysync.domain.kinds import ORDER_KINDS, SKU_KINDS, Kind, Origin, RowState
from skysync.domain.planner import Row
from skysync.domain.reconcile import AcceptedRow
from skysync.domain.validation import validate
from skysync.store.models import Counter, Item, OutboxRow, UTCDateTime, payload_text, utcnow


def enqueue(session: Session, kind: str, ref: str, payload: Any) -> OutboxRow:
    """Validate one change and write it as a pending outbox row (what ``skysync enqueue`` does).

    The ERP normally INSERTs rows itself; this is the same row, refused up front when bad.
    """
    validate(kind, ref, payload)
    row = OutboxRow(kind=kind, ref=ref, payload=payload)
    session.add(row)
    session.flush()
    return row


def insert_unchecked(session: Session, kind: str, ref: str, payload: Any) -> None:
    """A row exactly as an ERP's plain INSERT writes it, not validated (the demo's bad row)."""
    session.add(OutboxRow(kind=kind, ref=ref, payload=payload))


def count_by_state(session: Session) -> dict[str, int]:
    """Rows per state, every state present (0 when none)."""
    counts = dict.fromkeys(RowState, 0)
    rows = session.execute(sa.select(OutboxRow.state, sa.func.count()).group_by(OutboxRow.state))
    for state, n in rows:
        counts[state] = n
    return counts


def count_by_state_and_kind(session: Session) -> dict[tuple[str, str], int]:
    """Rows per (state, kind), every pair present (0 when none): what the metrics export."""
    counts = {(str(s), str(k)): 0 for s in RowState for k in Kind}
    query = sa.select(OutboxRow.state, OutboxRow.kind, sa.func.count()).group_by(
        OutboxRow.state, OutboxRow.kind
    )
    for state, kind, n in session.execute(query):
        counts[(state, kind)] = n
    return counts


def is_empty(session: Session) -> bool:
    return session.execute(sa.select(sa.literal(1)).select_from(OutboxRow).limit(1)).first() is None


def recent_rows(
    session: Session,
    *,
    state: str | None = None,
    kind: str | None = None,
    ref: str | None = None,
    limit: int = 50,
) -> list[OutboxRow]:
    """Rows newest first, filtered (what `skysync outbox list` and `item show` print)."""
    query = sa.select(OutboxRow).order_by(OutboxRow.id.desc()).limit(limit)
    if state:
        query = query.where(OutboxRow.state == state)
    if kind:
        query = query.where(OutboxRow.kind == kind)
    if ref:
        query = query.where(OutboxRow.ref == ref)
    return list(session.scalars(query))


def order_rows(
    session: Session, code: str, *, states: tuple[RowState, ...] | None = None
) -> list[OutboxRow]:
    """The status-step rows of one order, oldest first (``states``: only those)."""
    query = sa.select(OutboxRow).where(OutboxRow.ref == code, OutboxRow.kind.in_(ORDER_KINDS))
    if states is not None:
        query = query.where(OutboxRow.state.in_(states))
    return list(session.scalars(query.order_by(OutboxRow.id)))


def count_due(session: Session, now: datetime) -> int:
    """Pending rows due by ``now`` (what another batch would find to claim)."""
    return session.execute(
        sa.select(sa.func.count())
        .select_from(OutboxRow)
        .where(OutboxRow.state == RowState.PENDING, OutboxRow.available_at <= now)
    ).scalar_one()


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
    for part in _slices(ids):
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
    query = sa.select(OutboxRow.state, OutboxRow.id, OutboxRow.claim_token).where(
        OutboxRow.state.in_([RowState.IN_FLIGHT, RowState.DEAD, RowState.REJECTED])
    )
    in_flight = 0
    for state, i, token in session.execute(query):
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
            OutboxRow.state == RowState.PENDING, OutboxRow.available_at > now
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


def oldest_pending(
    session: Session, *, due_only: bool, now: datetime | None = None
) -> datetime | None:
    """created_at of the oldest pending row (only rows due now when ``due_only``): the first
    written, by id, found at the head of the ``(state, id)`` index. (``min(created_at)`` read
    every pending row, 95 ms a call on 666,667 of them; ids follow the order of the INSERTs,
    and a row keeps its id and created_at when it goes back to pending.)"""
    query = sa.select(OutboxRow.created_at).where(OutboxRow.state == RowState.PENDING)
    if due_only:
        query = query.where(OutboxRow.available_at <= (now or utcnow()))
    return session.execute(query.order_by(OutboxRow.id).limit(1)).scalar()


def parked_by_skyhub(session: Session, now: datetime) -> tuple[int, datetime | None]:
    """Pending rows that a 429 from SkyHub put off and that are not due yet: how many, and
    the furthest due time among them (down the ``(available_at, id)`` index of pending rows)."""
    query = sa.select(sa.func.count(), sa.func.max(OutboxRow.available_at)).where(
        OutboxRow.state == RowState.PENDING,
        OutboxRow.available_at > now,
        OutboxRow.last_status == 429,
    )
    count, until = session.execute(query).one()
    return int(count or 0), until


# -- the relay's side ---------------------------------------------------------------------
CLAIM_LOCK_ID = 0x5C75_0B0C  # arbitrary, fixed: "skysync claim"
# No statement's size grows with the backlog: lists of ids or refs go in slices of this many
# bound parameters (PostgreSQL allows 65,535 per statement, SQLite 32,766), and claimed rows are
# read in pages of PAGE_ROWS.
IN_CHUNK = 500
PAGE_ROWS = 2000


def _slices(values: Sequence[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), IN_CHUNK):
        yield list(values[start : start + IN_CHUNK])


def _lock_claimers(session: Session) -> None:
    """Serialize claimers: a transaction-scoped advisory lock on PostgreSQL. On SQLite the
    transaction began with ``BEGIN IMMEDIATE`` (see db.session_scope) and holds the write lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": CLAIM_LOCK_ID})


def try_lock_claimers(session: Session) -> bool:
    """:func:`_lock_claimers` if no other claim holds it now; False (at once) if one does. On
    SQLite the transaction already holds the write lock."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    query = sa.text("SELECT pg_try_advisory_xact_lock(:k)")
    return bool(session.execute(query, {"k": CLAIM_LOCK_ID}).scalar_one())


def reclaim_expired(session: Session, now: datetime) -> int:
    """in_flight rows whose lease ran out (their worker died) go back to pending."""
    result = session.execute(
        sa.update(OutboxRow)
        .where(OutboxRow.state == RowState.IN_FLIGHT, OutboxRow.lease_until < now)
        .values(
            state=RowState.PENDING,
            claim_token=None,
            lease_until=None,
            reason="lease expired: the worker handling it stopped; retrying",
            updated_at=now,
        )
    )
    return result.rowcount or 0


def _family(row: type[OutboxRow]) -> sa.ColumnElement[str]:
    """The key a row is claimed under: a variation's SKU rows belong to their parent product's
    family (the parent's product row carries the variation's values too); anything else is its
    own ref."""
    parent = (
        sa.select(Item.parent_sku)
        .where(Item.sku == row.ref, row.kind.in_(SKU_KINDS))
        .correlate_except(Item)
        .scalar_subquery()
    )
    return sa.func.coalesce(parent, row.ref)


def _busy() -> sa.Select[tuple[str]]:
    """The families with a row in flight: one uncorrelated subquery (evaluated once), not a
    scan of the in-flight rows per row."""
    in_flight = sa.orm.aliased(OutboxRow, name="f")
    return sa.select(_family(in_flight)).where(in_flight.state == RowState.IN_FLIGHT)


def lane_filter(row: type[OutboxRow], rule: LaneRule, dialect: str) -> sa.ColumnElement[bool]:
    """The SQL form of :meth:`LaneRule.picks` over ``row``: never raises on a payload that is
    not JSON or whose qty is not a number (such a row is simply not a stock-out)."""
    if not rule.on:
        return sa.false()
    kind = row.kind.in_(rule.kinds)
    if rule.mode is LaneMode.ALL:
        return kind
    found = sa.inspect(row)
    o = found.name if getattr(found, "is_aliased_class", False) else OutboxRow.__tablename__
    if dialect == "postgresql":
        # CASE: the cast runs only on numbers, whatever order the planner picks
        stockout = sa.text(
            f"CASE WHEN jsonb_typeof({o}.payload -> 'qty') = 'number' "
            f"THEN ({o}.payload ->> 'qty')::numeric <= :lane_threshold ELSE false END"
        )
    else:
        stockout = sa.text(
            f"CASE WHEN json_valid({o}.payload) AND json_type({o}.payload, '$.qty') "
            f"IN ('integer', 'real') THEN json_extract({o}.payload, '$.qty') <= :lane_threshold "
            "ELSE 0 END"
        )
    return sa.and_(kind, stockout.bindparams(lane_threshold=rule.threshold))


@dataclass(frozen=True)
class Due:
    """What a claim takes: the SKUs (each product with its variations) and the order codes of
    the due rows it picked."""

    skus: list[str]
    codes: list[str]
    full: bool = False  # the pick hit its limit: more rows are due than it took


def pick_due(session: Session, *, now: datetime, limit: int, lane: LaneRule | None = None) -> Due:
    """Start a claim (serialized: the caller's transaction holds the claimers' lock until it
    ends): pick pending rows due now, oldest first, up to ``limit``, never of a key that still
    has an in_flight row. A key is an order code, or a product with its variations (so a
    parent's product row and a variation's stock row can never be in flight at once, in two
    batches). With them come every other pending product/price/stock row of the same families
    (:func:`iter_pending_newest_first`), so that all of a SKU's changes are folded together,
    and an order's due steps (:func:`claim_orders`). No statement names more than IN_CHUNK keys.

    With ``lane`` (the fast lane), only rows the lane picks start a claim, but their families
    are claimed whole as above, so the lane folds a SKU's older and newer rows like a batch
    and can never send a value that a newer row would overwrite."""
    _lock_claimers(session)
    o = sa.orm.aliased(OutboxRow, name="o")
    due = (
        sa.select(o.id, o.kind, _family(o))
        .where(o.state == RowState.PENDING, o.available_at <= now, _family(o).not_in(_busy()))
        .order_by(o.id)
        .limit(limit)
    )
    dialect = session.get_bind().dialect.name
    if lane is not None:
        due = due.where(lane_filter(o, lane, dialect))
    if dialect == "postgresql":
        due = due.with_for_update(skip_locked=True, of=o)
    picked = session.execute(due).all()
    heads = list(dict.fromkeys(fam for _id, kind, fam in picked if kind in SKU_KINDS))
    codes = list(dict.fromkeys(fam for _id, kind, fam in picked if kind in ORDER_KINDS))
    skus = list(heads)
    for part in _slices(heads):  # stay under bound-parameter limits
        skus += session.scalars(sa.select(Item.sku).where(Item.parent_sku.in_(part)))
    return Due(skus=list(dict.fromkeys(skus)), codes=codes, full=len(picked) >= limit)


def keys_in_flight(session: Session) -> int:
    """How many keys (SKUs and order codes) have rows in flight: what the workers still have
    to send. Read from the partial claim index (only rows in flight are in it)."""
    refs = sa.select(OutboxRow.ref).where(OutboxRow.state == RowState.IN_FLIGHT).distinct()
    return session.execute(sa.select(sa.func.count()).select_from(refs.subquery())).scalar_one()


def claim_orders(
    session: Session, codes: Sequence[str], *, token: str, now: datetime, lease_until: datetime
) -> None:
    """Put the due steps of these orders in flight under ``token`` (read them back with
    :func:`iter_claimed`); an order's not-yet-due steps wait their turn."""
    claim = {"state": RowState.IN_FLIGHT, "claim_token": token, "lease_until": lease_until}
    pending = sa.update(OutboxRow).where(OutboxRow.state == RowState.PENDING)
    for part in _slices(codes):
        session.execute(
            pending.where(OutboxRow.kind.in_(ORDER_KINDS), OutboxRow.ref.in_(part))
            .where(OutboxRow.available_at <= now)
            .values(**claim, updated_at=now),
            execution_options={"synchronize_session": False},
        )


# SKUs per statement when reading a claim's SKU rows, to start with. A page that comes back full
# ends short of some of its SKUs (one cut short, maybe more not reached): they go back to the
# front of the queue, and the next read asks for about as many SKUs as the full page finished;
# a page that does not come back full doubles it, up to IN_CHUNK. A SKU alone over a page is
# read on newest first, in pages down the (ref, state, id) index of migration 0009.
REFS_PER_READ = 50


def _pending_sku_rows(conn: sa.Connection) -> sa.Select[Any]:
    payload = payload_text(OutboxRow.payload, conn.dialect.name)
    return sa.select(OutboxRow.id, OutboxRow.kind, OutboxRow.ref, payload).where(
        OutboxRow.state == RowState.PENDING, OutboxRow.kind.in_(SKU_KINDS)
    )


def iter_pending_newest_first(session: Session, skus: Sequence[str]) -> Iterator[list[PendingRow]]:
    """The pending product/price/stock rows of ``skus`` that no claim has put in flight yet
    (the newest of all, planner.newness), a page at a time: each SKU's rows together and
    newest first (a page holds PAGE_ROWS rows at most, whatever the backlog), payloads as
    their stored JSON text (:data:`PendingRow`). Every page is read whole before it is
    yielded, so the caller may change the state of the rows it got before it asks for the
    next page. The rows an earlier claim gave back come after, from
    :func:`iter_pending_claimed_before`."""
    conn = session.connection()
    columns = _pending_sku_rows(conn).where(OutboxRow.claim_epoch.is_(None))
    todo = deque(skus)
    width = REFS_PER_READ
    while todo:
        part = [todo.popleft() for _ in range(min(width, len(todo)))]
        query = columns.where(OutboxRow.ref.in_(part))
        query = query.order_by(OutboxRow.ref.desc(), OutboxRow.id.desc()).limit(PAGE_ROWS)
        page: list[PendingRow] = list(conn.execute(query).all())
        if len(page) < PAGE_ROWS:
            if page:
                yield page
            width = min(width * 2, IN_CHUNK)
            continue
        cut = page[-1][2]  # the page may have cut this SKU's rows short
        finished = [r for r in page if r[2] != cut]
        if finished:
            yield finished
            done = {r[2] for r in finished}
            width = len(done)
        else:  # this SKU alone fills the page: read all of it, down its rows
            yield from _one_sku_newest_first(conn, columns.where(OutboxRow.ref == cut), page)
            done = {cut}
            width = max(width // 2, 1)
        todo.extendleft(reversed([ref for ref in part if ref not in done]))


def iter_pending_claimed_before(
    session: Session, skus: Sequence[str]
) -> Iterator[list[PendingRow]]:
    """The pending product/price/stock rows of ``skus`` that an earlier claim put in flight and
    gave back (a retry, a wait, a lease that ran out, an operator's requeue or release): each
    SKU's rows newest first by planner.newness (claim epoch, then id). Older than every row of
    :func:`iter_pending_newest_first`, and few (at most the rows a SKU's requests needed), so
    once the caller has ended those, this reads little more than these rows."""
    conn = session.connection()
    columns = _pending_sku_rows(conn).where(OutboxRow.claim_epoch.is_not(None))
    order = (OutboxRow.ref, OutboxRow.claim_epoch.desc(), OutboxRow.id.desc())
    for part in _slices(list(skus)):
        page: list[PendingRow] = list(
            conn.execute(columns.where(OutboxRow.ref.in_(part)).order_by(*order)).all()
        )
        if page:
            yield page


def _one_sku_newest_first(
    conn: sa.Connection, query: sa.Select[Any], first: list[PendingRow]
) -> Iterator[list[PendingRow]]:
    """All of one SKU's rows (``first``: its first page, already read), newest first, a page at
    a time.

    On PostgreSQL in ONE statement, a server-side cursor fetched a page at a time: each
    statement of a READ COMMITTED transaction sees the rows committed when it began, so pages
    read by statements of their own could let in, below the first page, a row whose
    transaction committed after the first page was read, and fold it as older; a cursor sees
    one snapshot, and a row committed after it is left to the next claim, as newer
    (planner.newness). The first page is read again in the cursor. On SQLite nothing commits
    while the claim holds the write lock: keyset pages down the (ref, state, id) index."""
    if conn.dialect.name == "postgresql":
        ordered = query.order_by(OutboxRow.id.desc())
        options = {"stream_results": True, "max_row_buffer": PAGE_ROWS}
        with conn.execute(ordered, execution_options=options) as result:
            for part in result.partitions(PAGE_ROWS):
                yield list(part)
        return
    yield first
    yield from _pages_newest_first(conn, query, first[-1][0])


def _pages_newest_first(
    conn: sa.Connection, query: sa.Select[Any], before: int
) -> Iterator[list[PendingRow]]:
    """One SKU's rows older than ``before``, newest first, in keyset pages down the
    (ref, state, id) index."""
    while True:
        paged = query.where(OutboxRow.id < before).order_by(OutboxRow.id.desc()).limit(PAGE_ROWS)
        page: list[PendingRow] = list(conn.execute(paged).all())
        if page:
            yield page
        if len(page) < PAGE_ROWS:
            return
        before = page[-1][0]


def _update_pending(session: Session, ids: Sequence[int], values: dict[str, Any]) -> int:
    """Update those of ``ids`` that are still pending (a claim's own rows, under its lock)."""
    updated = 0
    pending = sa.update(OutboxRow).where(OutboxRow.state == RowState.PENDING)
    conn = session.connection()  # Core: none of these rows is loaded in the session
    for part in _slices(ids):
        result = conn.execute(pending.where(OutboxRow.id.in_(part)).values(**values))
        updated += result.rowcount or 0
    return updated


def claim_rows(
    session: Session,
    ids: Sequence[int],
    *,
    token: str,
    now: datetime,
    lease_until: datetime,
    epoch: int | None = None,
) -> int:
    """Put these pending rows in flight under ``token``: the rows a claim's requests need.
    ``epoch`` (:func:`next_claim_epoch`) is stamped on the rows no claim had put in flight
    before; a row given back keeps the epoch of the claim that first read it."""
    values: dict[str, Any] = {
        "state": RowState.IN_FLIGHT,
        "claim_token": token,
        "lease_until": lease_until,
        "updated_at": now,
    }
    if epoch is not None:
        values["claim_epoch"] = sa.func.coalesce(OutboxRow.claim_epoch, epoch)
    return _update_pending(session, ids, values)


_NEXT_EPOCH = (
    sa.update(Counter)
    .where(Counter.name == "claim_epoch")
    .values(value=Counter.value + 1)
    .returning(Counter.value)
)


def next_claim_epoch(session: Session) -> int:
    """This claim's number: one more than the claim before (claims are serialized by the
    claimers' lock, so they are numbered in the order they read the outbox). See
    planner.newness for what it decides."""
    epoch = session.execute(_NEXT_EPOCH).scalar()
    if epoch is None:  # the counter row is gone (a hand-made database): start it again
        session.add(Counter(name="claim_epoch", value=1))
        session.flush()
        epoch = 1
    return int(epoch)


def settle_pending(
    session: Session,
    ids: Sequence[int],
    *,
    token: str,
    state: str,
    now: datetime,
    reason: str,
    superseded_by: int | None = None,
    epoch: int | None = None,
) -> int:
    """End these pending rows at claim time, never in flight: ``rejected`` (invalid) or
    ``superseded`` (folded into a newer row); ``token`` names the claim that ended them, and
    ``epoch`` is stamped as :func:`claim_rows` does (a requeued row keeps its place)."""
    values: dict[str, Any] = {"state": state, "reason": reason, "claim_token": token}
    values.update(finished_at=now, updated_at=now, lease_until=None)
    if superseded_by is not None:
        values["superseded_by"] = superseded_by
    if epoch is not None:
        values["claim_epoch"] = sa.func.coalesce(OutboxRow.claim_epoch, epoch)
    return _update_pending(session, ids, values)


# Rows per statement when a claim supersedes the rows folded into their SKU's newest (PostgreSQL
# takes them as two arrays: two bound parameters, whatever the count).
SUPERSEDE_CHUNK = 5000

_SUPERSEDE_PG = sa.text(
    f"UPDATE {OutboxRow.__tablename__} AS o SET state = :superseded, superseded_by = f.winner, "
    "reason = 'folded into row ' || f.winner, claim_token = :token, finished_at = :now, "
    "updated_at = :now, lease_until = NULL, claim_epoch = COALESCE(o.claim_epoch, :epoch) "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:winners AS bigint[])) AS f(id, winner) "
    "WHERE o.id = f.id AND o.state = :pending"
).bindparams(sa.bindparam("now", type_=UTCDateTime()))


def supersede_pending(
    session: Session,
    folded: Mapping[int, Sequence[int]],
    *,
    token: str,
    now: datetime,
    epoch: int | None = None,
) -> int:
    """Supersede pending rows at claim time: ``folded`` maps each winner (the newest row of a
    SKU) to the rows folded into it. Returns how many rows were superseded."""
    if session.get_bind().dialect.name != "postgresql":
        return sum(
            settle_pending(
                session,
                ids,
                token=token,
                state=RowState.SUPERSEDED,
                now=now,
                reason=f"folded into row {winner}",
                superseded_by=winner,
                epoch=epoch,
            )
            for winner, ids in folded.items()
        )
    ids: list[int] = []
    winners: list[int] = []
    for winner, folded_ids in folded.items():
        ids += folded_ids
        winners += [winner] * len(folded_ids)
    conn = session.connection()
    done = 0
    for start in range(0, len(ids), SUPERSEDE_CHUNK):
        end = start + SUPERSEDE_CHUNK
        # as array literals: psycopg adapts a str at once, a list of ints one int at a time
        params = {
            "ids": "{" + ",".join(map(str, ids[start:end])) + "}",
            "winners": "{" + ",".join(map(str, winners[start:end])) + "}",
        }
        params.update(superseded=RowState.SUPERSEDED, pending=RowState.PENDING)
        params.update(token=token, now=now, epoch=epoch)
        done += conn.execute(_SUPERSEDE_PG, params).rowcount or 0
    return done


def lane_rows_due(session: Session, rule: LaneRule, now: datetime) -> bool:
    """Is there a row for the fast lane to claim: pending, due, picked by ``rule``, of a family
    with no row in flight (what :func:`claim_due` would take)? One cheap query (the pending-due
    index, stopped at the first match): the lane's watcher asks it before it wakes a worker."""
    o = sa.orm.aliased(OutboxRow, name="o")
    query = (
        sa.select(sa.literal(1))
        .select_from(o)
        .where(o.state == RowState.PENDING, o.available_at <= now, _family(o).not_in(_busy()))
        .where(lane_filter(o, rule, session.get_bind().dialect.name))
        .limit(1)
    )
    return session.execute(query).first() is not None


ClaimedRow = tuple[int, str, str, Any]  # id, kind, ref, payload
# id, kind, ref, payload as stored: JSON text (bytes, on SQLite, if the ERP wrote them), read by
# models.payload_from_stored unless the claim can judge it from the text (validation.plain_stock)
PendingRow = tuple[int, str, str, str | bytes | None]


def iter_claimed(session: Session, token: str) -> Iterator[list[PendingRow]]:
    """The rows in flight under ``token``, in id order, a page at a time (keyset pagination:
    however many rows a claim took, no statement and no page grows with them), payloads as
    their stored JSON text, like :func:`iter_pending_newest_first`'s."""
    payload = payload_text(OutboxRow.payload, session.connection().dialect.name)
    after = 0
    while True:
        page = [
            (r.id, r.kind, r.ref, r.payload)
            for r in session.execute(
                sa.select(OutboxRow.id, OutboxRow.kind, OutboxRow.ref, payload.label("payload"))
                .where(OutboxRow.claim_token == token, OutboxRow.state == RowState.IN_FLIGHT)
                .where(OutboxRow.id > after)
                .order_by(OutboxRow.id)
                .limit(PAGE_ROWS)
            )
        ]
        if not page:
            return
        yield page
        after = page[-1][0]


def load_claimed(session: Session, token: str, ids: list[int]) -> list[OutboxRow]:
    """The rows of ``ids`` still in_flight under ``token`` (a redelivered task finds none)."""
    rows: list[OutboxRow] = []
    for part in _slices(sorted(set(ids))):
        rows += session.scalars(
            sa.select(OutboxRow)
            .where(OutboxRow.id.in_(part), OutboxRow.claim_token == token)
            .where(OutboxRow.state == RowState.IN_FLIGHT)
            .order_by(OutboxRow.id)
        )
    return rows


_OUTBOX = OutboxRow.__table__
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
        for part in _slices(ids):
            result = session.execute(by_ids, {**params, "ids": part})
            updated += result.rowcount or 0
    return updated


def _outcome_values(**values: Any) -> dict[str, Any]:
    """The optional columns that were given."""
    return {k: v for k, v in values.items() if v is not None}


def finish(
    session: Session,
    ids: list[int],
    token: str,
    *,
    state: str,
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
        .where(OutboxRow.ref == ref, OutboxRow.state == RowState.HELD)
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
    for part in _slices(list(ids)):
        query = sa.select(OutboxRow.id, OutboxRow.state).where(OutboxRow.id.in_(part))
        found.update({row_id: state for row_id, state in session.execute(query)})
    refused = {
        i: ("no such row" if i not in found else f"is {found[i]}, not held")
        for i in ids
        if found.get(i) != RowState.HELD
    }
    held = [i for i in ids if i not in refused]
    for part in _slices(held):
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


def has_open_rows(session: Session, ref: str, kinds: tuple[str, ...]) -> bool:
    """Whether ``ref`` still has rows of ``kinds`` waiting or in flight."""
    query = sa.select(sa.literal(1)).where(
        OutboxRow.ref == ref,
        OutboxRow.kind.in_(kinds),
        OutboxRow.state.in_((RowState.PENDING, RowState.IN_FLIGHT)),
    )
    return session.execute(query.limit(1)).first() is not None


def requeue(
    session: Session, *, ids: list[int] | None = None, state: str | None = None, now: datetime
) -> int:
    """An operator's requeue: dead (or rejected) rows back to pending, attempts reset."""
    requeueable = (RowState.DEAD, RowState.REJECTED, RowState.WITHHELD)
    query = sa.update(OutboxRow).where(OutboxRow.state.in_(requeueable))
    if ids:
        query = query.where(OutboxRow.id.in_(ids))
    if state:
        query = query.where(OutboxRow.state == state)
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
        )
    )
    return result.rowcount or 0


# -- reconciliation -----------------------------------------------------------------------
ACCEPTED_STATES = (RowState.SENT, RowState.SUPERSEDED, RowState.WITHHELD)


def accepted_rows(session: Session, ids: Iterable[int]) -> dict[int, AcceptedRow]:
    """These rows (the ones ``skysync_item.last_applied`` names), by id."""
    found: dict[int, AcceptedRow] = {}
    columns = (OutboxRow.id, OutboxRow.ref, OutboxRow.payload, OutboxRow.finished_at)
    for part in _slices(sorted(set(ids))):
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
    for part in _slices(sorted(set(refs))):
        query = sa.select(*columns).where(
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
    for part in _slices(sorted(set(refs))):
        query = (
            sa.select(OutboxRow.ref, OutboxRow.kind)
            .where(
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
    for part in _slices(sorted(set(refs))):
        query = sa.select(OutboxRow.ref).where(OutboxRow.ref.in_(part)).distinct()
        found.update(session.scalars(query))
    return found


def enqueue_correction(session: Session, kind: str, ref: str, payload: Any) -> OutboxRow:
    """A corrective row from reconciliation: validated as the ERP's are, pending, and marked
    ``origin = 'reconcile'`` (a value the ERP's role cannot write)."""
    validate(kind, ref, payload)
    row = OutboxRow(kind=kind, ref=ref, payload=payload, origin=Origin.RECONCILE)
    session.add(row)
    session.flush()
    return row
