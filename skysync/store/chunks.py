"""The chunks a claim hands to the workers (``skysync_chunk``), so that an account never has
more than a few out at once (relay/handout.py says why): queued, taken in turn, finished."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.store.db import account_of
from skysync.store.models import Chunk

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
    ``at_once`` are out; each marked out now. A chunk out for longer than ``lost_after``
    seconds (its task was lost, or its worker killed: its rows' lease has run out, and the
    next claim takes them) no longer counts. Serialized per account: two workers finishing at
    once never hand out more than ``at_once`` between them."""
    account = account_of(session)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            sa.text("SELECT pg_advisory_xact_lock(:k, hashtext(:a))"),
            {"k": CHUNK_LOCK_ID, "a": account},
        )
    mine = Chunk.account == account
    lost = now - timedelta(seconds=lost_after)
    session.execute(
        sa.delete(Chunk).where(mine, Chunk.sent_at.is_not(None), Chunk.sent_at < lost),
        execution_options={"synchronize_session": False},
    )
    out = session.execute(
        sa.select(sa.func.count()).where(mine, Chunk.sent_at.is_not(None))
    ).scalar_one()
    free = at_once - out
    if free <= 0:
        return []
    ready = session.execute(
        sa.select(Chunk.id, Chunk.token, Chunk.row_ids)
        .where(mine, Chunk.sent_at.is_(None))
        .order_by(Chunk.id)
        .limit(free)
    ).all()
    if ready:
        session.execute(
            sa.update(Chunk).where(Chunk.id.in_([r.id for r in ready])).values(sent_at=now),
            execution_options={"synchronize_session": False},
        )
    return [(token, [int(i) for i in ids]) for _id, token, ids in ready]


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
