"""The relay's run log: one ``RunLog`` row per batch, with its summary and the error that
stopped it (``skysync status`` and the metrics read it). A run is its account's (the session's,
db.account_of)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.store.db import account_of
from skysync.store.models import RunLog

# How a run that SkyHub refused the credentials for says so. One definition: the relay and the
# order pull write it (auth_stop_reason), `skysync status` and the metrics read it
# (is_auth_stop), so the two sides cannot drift apart.
AUTH_STOP = "stopped: SkyHub refused the credentials"
# What an operator did in the console (skysync/console/actions.py): who, what, on which rows.
CONSOLE_ACTION = "console_action"


def auth_stop_reason(detail: object) -> str:
    """The run error (and row reason) for a 401/403 from SkyHub."""
    return f"{AUTH_STOP} ({detail})"


def is_auth_stop(error: str | None) -> bool:
    """Did SkyHub refuse the credentials in the run that ended with ``error``?"""
    return error is not None and AUTH_STOP in error


def start(
    session: Session,
    token: str,
    now: datetime,
    *,
    kind: str = "relay",
    summary: dict[str, Any] | None = None,
) -> int:
    """A new relay run (``fast_lane``: a run of the fast lane) for the batch claimed with
    ``token``, with its claim's ``summary`` when it is known already; returns its id."""
    run = RunLog(
        account=account_of(session),
        kind=kind,
        claim_token=token,
        started_at=now,
        summary=summary or {},
    )
    session.add(run)
    session.flush()
    return run.id


def finish(
    session: Session, run_id: int, now: datetime, summary: dict[str, Any], error: str | None
) -> None:
    """Close the run with its summary; an error a chunk already noted (a stop) is kept."""
    run = session.get(RunLog, run_id)
    if run is not None:
        run.finished_at = now
        run.summary = summary
        run.error = error or run.error


def note_claim(session: Session, run_id: int, summary: dict[str, Any]) -> None:
    """What the run's claim took, before its chunks go out (:func:`finish` writes the rest)."""
    session.execute(sa.update(RunLog).where(RunLog.id == run_id).values(summary=summary))


def error_of(session: Session, token: str) -> str | None:
    """The error noted on the run of ``token``, if any."""
    return session.scalars(sa.select(RunLog.error).where(RunLog.claim_token == token)).first()


def note_error(session: Session, token: str, reason: str) -> None:
    """Note why the run of ``token`` stopped, unless a reason is already there (the first
    stop wins)."""
    session.execute(
        sa.update(RunLog)
        .where(RunLog.claim_token == token, RunLog.error.is_(None))
        .values(error=reason)
    )


def add(
    session: Session,
    kind: str,
    *,
    started_at: datetime,
    finished_at: datetime,
    summary: dict[str, Any],
    error: str | None,
) -> int:
    """A finished run of ``kind`` (an order pull, a reconciliation, an operator's action in
    the console) with its summary; returns its id."""
    run = RunLog(
        account=account_of(session),
        kind=kind,
        started_at=started_at,
        finished_at=finished_at,
        summary=summary,
        error=error,
    )
    session.add(run)
    session.flush()
    return run.id


def last(session: Session, kind: str, *, account: str | None = None) -> RunLog | None:
    """The newest run of ``kind`` of ``account`` (else of the session's account)."""
    query = sa.select(RunLog).where(
        RunLog.account == (account or account_of(session)), RunLog.kind == kind
    )
    return session.scalars(query.order_by(RunLog.started_at.desc()).limit(1)).first()


def recent(
    session: Session, kinds: tuple[str, ...], *, account: str, limit: int = 10
) -> list[RunLog]:
    """The newest runs of ``kinds`` of ``account``, newest first (down the (account, kind,
    started_at) index, one walk per kind)."""
    found: list[RunLog] = []
    for kind in kinds:
        query = sa.select(RunLog).where(RunLog.account == account, RunLog.kind == kind)
        found += session.scalars(query.order_by(RunLog.started_at.desc()).limit(limit))
    return sorted(found, key=lambda run: run.started_at, reverse=True)[:limit]


def by_id(session: Session, run_id: int, *, kind: str) -> RunLog | None:
    """The run ``run_id`` if it is of ``kind``."""
    run = session.get(RunLog, run_id)
    return run if run is not None and run.kind == kind else None
