"""The only SQL on the outbox table: writing rows, counting them, and (for the relay) claiming
and completing them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.models import OUTBOX_STATES, OutboxRow, UTCDateTime, utcnow
from skysync.validation import validate


def enqueue(session: Session, kind: str, ref: str, payload: Any) -> OutboxRow:
    """Validate one change and write it as a pending outbox row (what ``skysync enqueue`` does).

    The ERP normally INSERTs rows itself; this is the same row, refused up front when bad.
    """
    validate(kind, ref, payload)
    row = OutboxRow(kind=kind, ref=ref, payload=payload)
    session.add(row)
    session.flush()
    return row


def count_by_state(session: Session) -> dict[str, int]:
    """Rows per state, every state present (0 when none)."""
    counts = dict.fromkeys(OUTBOX_STATES, 0)
    rows = session.execute(sa.select(OutboxRow.state, sa.func.count()).group_by(OutboxRow.state))
    for state, n in rows:
        counts[state] = n
    return counts


def oldest_pending(
    session: Session, *, due_only: bool, now: datetime | None = None
) -> datetime | None:
    """created_at of the oldest pending row (only rows due now when ``due_only``)."""
    oldest = sa.func.min(OutboxRow.created_at, type_=UTCDateTime())
    query = sa.select(oldest).where(OutboxRow.state == "pending")
    if due_only:
        query = query.where(OutboxRow.available_at <= (now or utcnow()))
    return session.execute(query).scalar()
