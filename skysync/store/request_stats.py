"""Requests to SkyHub counted by method, route and status (``skysync_request_stat``): every
process adds what its client counted, and the metrics read the totals."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from skysync.store.db import account_of
from skysync.store.models import RequestStat

RequestKey = tuple[str, str, str]  # method, route, status ("error": no answer)
AccountRequestKey = tuple[str, str, str, str]  # account, method, route, status


def save_request_counts(session: Session, counts: dict[RequestKey, int]) -> None:
    """Add a client's request counts to ``skysync_request_stat`` (an upsert per key), as the
    session's account's."""
    if not counts:
        return
    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for (method, route, status), n in counts.items():
        statement = insert(RequestStat).values(
            account=account_of(session), method=method, route=route, status=status, count=n
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["account", "method", "route", "status"],
                set_={"count": RequestStat.count + statement.excluded.count},
            )
        )


def request_counts(session: Session) -> dict[AccountRequestKey, int]:
    """Every request counted so far, by account, method, route and status."""
    return {
        (stat.account, stat.method, stat.route, stat.status): stat.count
        for stat in session.scalars(sa.select(RequestStat))
    }
