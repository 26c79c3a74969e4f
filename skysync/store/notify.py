"""PostgreSQL's LISTEN side of the fast lane's doorbell.

Migration 0006 installs a trigger that NOTIFYs :data:`LANE_CHANNEL` (empty payload, so
PostgreSQL folds a transaction's notifications into one) whenever a price or stock row is
INSERTed. :class:`LaneListener` holds one dedicated autocommit connection that LISTENs on that
channel, and a session advisory lock that elects one listener among all workers: the lock goes
with the connection, so when its worker dies another takes over."""

from __future__ import annotations

from types import TracebackType

import psycopg
import sqlalchemy as sa

LANE_CHANNEL = "skysync_fast_lane"
LANE_LOCK_ID = 0x5C75_FA57  # arbitrary, fixed: "skysync fast lane"


def libpq_dsn(url: str) -> str:
    """The SQLAlchemy URL (``postgresql+psycopg://...``) as a libpq connection string."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class LaneListener:
    """One LISTEN connection (use as a context manager; closed on exit)."""

    def __init__(self, url: str, *, connect_timeout: int = 10):
        self._conn = psycopg.connect(
            libpq_dsn(url), autocommit=True, connect_timeout=connect_timeout
        )

    def __enter__(self) -> LaneListener:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()  # also releases the advisory lock and the LISTEN

    def try_lead(self) -> bool:
        """Become the one listener of the account's database, if no other worker is."""
        cur = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LANE_LOCK_ID,))
        row = cur.fetchone()
        return bool(row and row[0])

    def listen(self) -> None:
        self._conn.execute(f"LISTEN {LANE_CHANNEL}")

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a notification; True if one (or more) came.
        Notifications already queued are taken with it."""
        got = False
        for _ in self._conn.notifies(timeout=timeout, stop_after=1):
            got = True
        if got:
            for _ in self._conn.notifies(timeout=0.001):
                pass
        return got
