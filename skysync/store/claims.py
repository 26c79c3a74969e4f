"""A claim on the outbox (docs/relay.md, "How a batch goes"): serialized by the claimers' lock,
it reclaims expired leases, picks the due rows of keys with nothing in flight, reads each SKU's
pending rows newest first, and puts in flight the rows its requests need; the rows it will never
send (invalid, or folded into a newer one) it ends there and then. What happens to claimed rows
afterwards is in ``settle.py``."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import AliasedInsp

from skysync.domain.fast_lane import LaneMode, LaneRule
from skysync.domain.kinds import DEFAULT_ACCOUNT, ORDER_KINDS, SKU_KINDS, Origin, RowState
from skysync.store.db import account_of
from skysync.store.models import Counter, Item, OutboxRow, UTCDateTime, payload_text
from skysync.store.slices import IN_CHUNK, in_slices

CLAIM_LOCK_ID = 0x5C75_0B0C  # arbitrary, fixed: "skysync claim"
# No page grows with the backlog: claimed rows are read in pages of PAGE_ROWS (and lists of ids
# or refs go in slices of IN_CHUNK, see slices.py).
PAGE_ROWS = 2000


def _lock_claimers(session: Session) -> None:
    """Serialize the claimers of the session's account: a transaction-scoped advisory lock on
    PostgreSQL, one per account (two accounts never claim the same rows, so their claims run
    side by side). On SQLite the transaction began with ``BEGIN IMMEDIATE`` (see
    db.Database.scope) and holds the write lock."""
    if session.get_bind().dialect.name == "postgresql":
        query = sa.text("SELECT pg_advisory_xact_lock(:k, hashtext(:a))")
        session.execute(query, {"k": CLAIM_LOCK_ID, "a": account_of(session)})


def try_lock_claimers(session: Session) -> bool:
    """:func:`_lock_claimers` if no other claim of the account holds it now; False (at once)
    if one does. On SQLite the transaction already holds the write lock."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    query = sa.text("SELECT pg_try_advisory_xact_lock(:k, hashtext(:a))")
    params = {"k": CLAIM_LOCK_ID, "a": account_of(session)}
    return bool(session.execute(query, params).scalar_one())


def reclaim_expired(session: Session, now: datetime) -> int:
    """The account's in_flight rows whose lease ran out (their worker died) go back to
    pending."""
    result = session.execute(
        sa.update(OutboxRow)
        .where(OutboxRow.account == account_of(session))
        .where(OutboxRow.state == RowState.IN_FLIGHT, OutboxRow.lease_until < now)
        .values(
            state=RowState.PENDING,
            claim_token=None,
            lease_until=None,
            reason="lease expired: the worker handling it stopped; retrying",
            updated_at=now,
        )
    )
    return cast(sa.CursorResult[Any], result).rowcount or 0


def _family(row: type[OutboxRow]) -> sa.ColumnElement[str]:
    """The key a row is claimed under: a variation's SKU rows belong to their parent product's
    family (the parent's product row carries the variation's values too); anything else is its
    own ref. Within the row's account: the same SKU in another account is another item."""
    parent = (
        sa.select(Item.parent_sku)
        .where(Item.account == row.account, Item.sku == row.ref, row.kind.in_(SKU_KINDS))
        .correlate_except(Item)
        .scalar_subquery()
    )
    return sa.func.coalesce(parent, row.ref)


def _busy(account: str) -> sa.Select[str]:
    """The account's families with a row in flight: one uncorrelated subquery (evaluated
    once), not a scan of the in-flight rows per row."""
    in_flight = sa.orm.aliased(OutboxRow, name="f")
    return sa.select(_family(in_flight)).where(
        in_flight.account == account, in_flight.state == RowState.IN_FLIGHT
    )


def lane_filter(row: type[OutboxRow], rule: LaneRule, dialect: str) -> sa.ColumnElement[bool]:
    """The SQL form of :meth:`LaneRule.picks` over ``row``: never raises on a payload that is
    not JSON or whose qty is not a number (such a row is simply not a stock-out)."""
    if not rule.on:
        return sa.false()
    kind = row.kind.in_(rule.kinds)
    if rule.mode is LaneMode.ALL:
        return kind
    found = sa.inspect(row)
    o = found.name if isinstance(found, AliasedInsp) else OutboxRow.__tablename__
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
    reserving = row.origin == Origin.RESERVATION.value
    return sa.and_(kind, sa.or_(reserving, stockout.bindparams(lane_threshold=rule.threshold)))


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
    account = account_of(session)
    o = sa.orm.aliased(OutboxRow, name="o")
    due = (
        sa.select(o.id, o.kind, _family(o))
        .where(o.account == account, o.state == RowState.PENDING, o.available_at <= now)
        .where(_family(o).not_in(_busy(account)))
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
    for part in in_slices(heads):  # stay under bound-parameter limits
        skus += session.scalars(
            sa.select(Item.sku).where(Item.account == account, Item.parent_sku.in_(part))
        )
    return Due(skus=list(dict.fromkeys(skus)), codes=codes, full=len(picked) >= limit)


def keys_in_flight(session: Session) -> int:
    """How many of the account's keys (SKUs and order codes) have rows in flight: what the
    workers still have to send. Read from the partial claim index (only rows in flight are in
    it)."""
    refs = (
        sa.select(OutboxRow.ref)
        .where(OutboxRow.account == account_of(session), OutboxRow.state == RowState.IN_FLIGHT)
        .distinct()
    )
    return session.execute(sa.select(sa.func.count()).select_from(refs.subquery())).scalar_one()


def claim_orders(
    session: Session, codes: Sequence[str], *, token: str, now: datetime, lease_until: datetime
) -> None:
    """Put the due steps of these orders in flight under ``token`` (read them back with
    :func:`iter_claimed`); an order's not-yet-due steps wait their turn."""
    claim = {"state": RowState.IN_FLIGHT, "claim_token": token, "lease_until": lease_until}
    pending = sa.update(OutboxRow).where(
        OutboxRow.account == account_of(session), OutboxRow.state == RowState.PENDING
    )
    for part in in_slices(codes):
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


def _pending_sku_rows(session: Session) -> sa.Select[Any]:
    """The pending product/price/stock rows of the session's account."""
    payload = payload_text(OutboxRow.payload, session.connection().dialect.name)
    return sa.select(OutboxRow.id, OutboxRow.kind, OutboxRow.ref, payload).where(
        OutboxRow.account == account_of(session),
        OutboxRow.state == RowState.PENDING,
        OutboxRow.kind.in_(SKU_KINDS),
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
    columns = _pending_sku_rows(session).where(OutboxRow.claim_epoch.is_(None))
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
    columns = _pending_sku_rows(session).where(OutboxRow.claim_epoch.is_not(None))
    order = (OutboxRow.ref, OutboxRow.claim_epoch.desc(), OutboxRow.id.desc())
    for part in in_slices(list(skus)):
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
    for part in in_slices(ids):
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
    .where(Counter.name == sa.bindparam("counter"))
    .values(value=Counter.value + 1)
    .returning(Counter.value)
)


def epoch_counter(account: str) -> str:
    """The counter of ``account``'s claims: epochs order the rows of one key, and a key is one
    account's, so each account numbers its claims on its own (``claim_epoch``: default's, the
    counter from before accounts), and the claims of two accounts never wait on one row."""
    return "claim_epoch" if account == DEFAULT_ACCOUNT else f"claim_epoch:{account}"


def next_claim_epoch(session: Session) -> int:
    """This claim's number: one more than the account's claim before (its claims are
    serialized by the claimers' lock, so they are numbered in the order they read the outbox).
    See planner.newness for what it decides."""
    counter = epoch_counter(account_of(session))
    epoch = session.execute(_NEXT_EPOCH, {"counter": counter}).scalar()
    if epoch is None:  # the account's first claim (or a hand-made database): start it
        session.add(Counter(name=counter, value=1))
        session.flush()
        epoch = 1
    return int(epoch)


def settle_pending(
    session: Session,
    ids: Sequence[int],
    *,
    token: str,
    state: RowState,
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
        params: dict[str, Any] = {
            "ids": "{" + ",".join(map(str, ids[start:end])) + "}",
            "winners": "{" + ",".join(map(str, winners[start:end])) + "}",
        }
        params.update(superseded=RowState.SUPERSEDED, pending=RowState.PENDING)
        params.update(token=token, now=now, epoch=epoch)
        done += conn.execute(_SUPERSEDE_PG, params).rowcount or 0
    return done


def lane_rows_due(session: Session, rule: LaneRule, now: datetime) -> bool:
    """Is there a row for the fast lane to claim: pending, due, picked by ``rule``, of a family
    with no row in flight (what :func:`pick_due` with ``lane=rule`` would take)? One cheap query
    (the pending-due index, stopped at the first match): the lane's watcher asks it before it
    wakes a worker."""
    account = account_of(session)
    o = sa.orm.aliased(OutboxRow, name="o")
    query = (
        sa.select(sa.literal(1))
        .select_from(o)
        .where(o.account == account, o.state == RowState.PENDING, o.available_at <= now)
        .where(_family(o).not_in(_busy(account)))
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
    for part in in_slices(sorted(set(ids))):
        rows += session.scalars(
            sa.select(OutboxRow)
            .where(OutboxRow.id.in_(part), OutboxRow.claim_token == token)
            .where(OutboxRow.state == RowState.IN_FLIGHT)
            .order_by(OutboxRow.id)
        )
    return rows
