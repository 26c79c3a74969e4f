"""The SQL on ``skysync_sync_error``: SkyHub's own errors, kept per SKU and order, never
deleted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.store.db import account_of
from skysync.store.models import SyncError

KEY_FIELDS = ("entity_id", "error_category_code", "error_code")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def record_seen(
    session: Session, entity_type: str, errors: Iterable[Mapping[str, Any]], now: datetime
) -> tuple[int, int]:
    """Store what SkyHub lists now: a new error gets a row, a known one is seen again (and open
    again if it had been resolved). Returns (new, seen again). Entries without the three key
    fields are stored with "?" in place of what is missing, never dropped."""
    new = again = 0
    account = account_of(session)
    for error in errors:
        key = {k: _text(error.get(k)) or "?" for k in KEY_FIELDS}
        found = session.scalars(
            sa.select(SyncError).where(
                SyncError.account == account,
                SyncError.entity_type == entity_type,
                *(getattr(SyncError, k) == v for k, v in key.items()),
            )
        ).first()
        if found is None:
            session.add(
                SyncError(
                    account=account,
                    entity_type=entity_type,
                    **key,
                    message=_text(error.get("message")),
                    last_occurrence=_text(
                        error.get("last_occurrence") or error.get("last_accurence")
                    ),
                    raw=dict(error),
                    first_seen_at=now,
                    last_seen_at=now,
                )
            )
            new += 1
            continue
        found.message = _text(error.get("message")) or found.message
        found.last_occurrence = _text(
            error.get("last_occurrence") or error.get("last_accurence") or found.last_occurrence
        )
        found.raw = dict(error)
        found.last_seen_at = now
        found.resolved_at = None
        again += 1
    session.flush()
    return new, again


def resolve_unseen(session: Session, entity_type: str, seen_since: datetime, now: datetime) -> int:
    """Open errors of ``entity_type`` SkyHub did not list in a complete read that began at
    ``seen_since``: resolved (kept, never deleted)."""
    result = session.execute(
        sa.update(SyncError)
        .where(
            SyncError.account == account_of(session),
            SyncError.entity_type == entity_type,
            SyncError.resolved_at.is_(None),
            SyncError.last_seen_at < seen_since,
        )
        .values(resolved_at=now)
    )
    return cast(sa.CursorResult[Any], result).rowcount or 0


def by_ids(session: Session, ids: Iterable[int]) -> list[SyncError]:
    return list(session.scalars(sa.select(SyncError).where(SyncError.id.in_(list(ids)))))


def mark_ignored(session: Session, ids: Iterable[int], now: datetime) -> None:
    session.execute(sa.update(SyncError).where(SyncError.id.in_(list(ids))).values(ignored_at=now))


def listed(
    session: Session,
    *,
    entity_id: str | None = None,
    entity_type: str | None = None,
    include_closed: bool = False,
    limit: int = 100,
    account: str | None = None,
) -> list[SyncError]:
    """Errors, newest first: open ones only (neither resolved nor ignored) unless
    ``include_closed``; ``account``'s only when given."""
    query = sa.select(SyncError).order_by(SyncError.id.desc()).limit(limit)
    if account is not None:
        query = query.where(SyncError.account == account)
    if entity_id is not None:
        query = query.where(SyncError.entity_id == entity_id)
    if entity_type is not None:
        query = query.where(SyncError.entity_type == entity_type)
    if not include_closed:
        query = query.where(SyncError.resolved_at.is_(None), SyncError.ignored_at.is_(None))
    return list(session.scalars(query))


def count_open(session: Session, *, account: str, entity_id: str | None = None) -> int:
    """How many of ``account``'s errors are open (of one SKU or order: ``entity_id``)."""
    query = sa.select(sa.func.count()).select_from(SyncError)
    query = query.where(SyncError.account == account, *_open())
    if entity_id is not None:
        query = query.where(SyncError.entity_id == entity_id)
    return int(session.execute(query).scalar_one())


def open_ids(session: Session, *, account: str, entity_id: str | None = None) -> list[int]:
    """The ids of ``account``'s open errors (of one SKU or order: ``entity_id``), oldest first."""
    query = sa.select(SyncError.id).where(SyncError.account == account, *_open())
    if entity_id is not None:
        query = query.where(SyncError.entity_id == entity_id)
    return list(session.scalars(query.order_by(SyncError.id)))


def _open() -> tuple[sa.ColumnElement[bool], ...]:
    """Neither resolved (SkyHub stopped listing it) nor ignored (an operator asked it to)."""
    return (SyncError.resolved_at.is_(None), SyncError.ignored_at.is_(None))


def open_counts(session: Session, *, account: str | None = None) -> dict[str, int]:
    """Open errors (neither resolved nor ignored) per entity type, both types present;
    ``account``'s only when given."""
    counts = {"products": 0, "orders": 0}
    query = sa.select(SyncError.entity_type, sa.func.count()).where(
        SyncError.resolved_at.is_(None), SyncError.ignored_at.is_(None)
    )
    if account is not None:
        query = query.where(SyncError.account == account)
    query = query.group_by(SyncError.entity_type)
    for entity_type, n in session.execute(query):
        counts[entity_type] = n
    return counts


def as_dict(error: SyncError) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": error.id,
        "entity_type": error.entity_type,
        "entity_id": error.entity_id,
        "error_category_code": error.error_category_code,
        "error_code": error.error_code,
        "message": error.message,
        "last_occurrence": error.last_occurrence,
        "first_seen_at": iso(error.first_seen_at),
        "last_seen_at": iso(error.last_seen_at),
        "resolved_at": iso(error.resolved_at),
        "ignored_at": iso(error.ignored_at),
    }
