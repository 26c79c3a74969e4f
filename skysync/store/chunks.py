"""The chunks a claim hands to the workers (``skysync_chunk``), so that an account never has
more than a few out at once (relay/handout.py says why): queued, taken in turn, finished."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.domain.kinds import RowState
from skysync.store.db import account_of
from skysync.store.models import Chunk, OutboxRow
from skysync.store.slices import IN_CHUNK

CHUNK_LOCK_ID = 0x5C75_C4A7  # arbitrary, fixed: "skysync chunks" (with the account's hash)


def queue(session: Session, token: str, chunks: Sequence[Sequence[int]], now: datetime) -> None:
    """The chunks of the claim ``token`` wait their turn, in this order."""
    account = account_of(session)
    rows = [
        {
            "account": account,
            "token": token,
            "first_id": int(ids[0]),
            "row_ids": [int(i) for i in ids],
            "queued_at": now,
        }
        for ids in chunks
        if ids
    ]
    for start in range(0, len(rows), 500):
        session.execute(sa.insert(Chunk), rows[start : start + 500])


def take_turns(
    session: Session, *, at_once: int, now: datetime, lost_after: float
) -> list[tuple[str, list[int]]]:
    """The next chunks of the session's account to hand out, oldest first, so that at most
    ``at_once`` are out; each marked out now. A chunk out whose rows are no longer in flight
    under its claim (its worker was killed, its rows went back at their lease's end), or out
    for longer than ``lost_after`` seconds (its task was lost), no longer counts. Serialized
    per account: two workers finishing at once never hand out more than ``at_once`` between
    them."""
    account = account_of(session)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            sa.text("SELECT pg_advisory_xact_lock(:k, hashtext(:a))"),
            {"k": CHUNK_LOCK_ID, "a": account},
        )
    mine = Chunk.account == account
    lost = now - timedelta(seconds=lost_after)
    out = session.execute(
        sa.select(Chunk.id, Chunk.token, Chunk.row_ids, Chunk.sent_at).where(
            mine, Chunk.sent_at.is_not(None)
        )
    ).all()
    gone = [
        c.id for c in out if c.sent_at < lost or not _still_claimed(session, c.token, c.row_ids)
    ]
    if gone:
        session.execute(
            sa.delete(Chunk).where(Chunk.id.in_(gone)),
            execution_options={"synchronize_session": False},
        )
    free = at_once - (len(out) - len(gone))
    ready: list[tuple[str, list[int]]] = []
    while len(ready) < free:
        waiting_ = session.execute(
            sa.select(Chunk.id, Chunk.token, Chunk.row_ids)
            .where(mine, Chunk.sent_at.is_(None))
            .order_by(Chunk.id)
            .limit(free - len(ready))
        ).all()
        if not waiting_:
            break
        for chunk_id, token, row_ids in waiting_:
            ids = [int(i) for i in row_ids]
            if _still_claimed(session, token, ids):  # else its claim was reclaimed: dropped
                session.execute(sa.update(Chunk).where(Chunk.id == chunk_id).values(sent_at=now))
                ready.append((token, ids))
            else:
                session.execute(sa.delete(Chunk).where(Chunk.id == chunk_id))
    return ready


def _still_claimed(session: Session, token: str, row_ids: Sequence[int]) -> bool:
    """Has the chunk a row still in flight under its claim? None when its worker was killed
    and the rows went back at their lease's end (a later claim took them, under its own
    token): the chunk no longer holds a turn."""
    query = (
        sa.select(sa.literal(1))
        .where(OutboxRow.claim_token == token, OutboxRow.state == RowState.IN_FLIGHT)
        .where(OutboxRow.id.in_([int(i) for i in row_ids][:IN_CHUNK]))
        .limit(1)
    )
    return session.execute(query).first() is not None


def finish(session: Session, token: str, row_ids: Sequence[int]) -> int:
    """The chunk of ``token`` that starts with ``row_ids[0]`` is done (a repeat finds none)."""
    if not row_ids:
        return 0
    result = session.execute(
        sa.delete(Chunk).where(Chunk.token == token, Chunk.first_id == int(row_ids[0])),
        execution_options={"synchronize_session": False},
    )
    return cast(sa.CursorResult[Any], result).rowcount or 0


def waiting(session: Session, *, account: str | None = None) -> int:
    """Chunks queued and not handed out yet (``account``'s, or every account's)."""
    query = sa.select(sa.func.count()).where(Chunk.sent_at.is_(None))
    if account is not None:
        query = query.where(Chunk.account == account)
    return session.execute(query).scalar_one()
