"""Engines and sessions. One engine per process and URL; SQLite gets the pragmas that make it a
sane embedded database for several threads and processes (WAL, a busy timeout)."""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from skysync.config import mask_dsns_in, scrub_dsn_secret
from skysync.domain.kinds import DEFAULT_ACCOUNT


def _alembic_dir() -> Path:
    """Alembic's scripts: inside the installed package (a wheel ships the top-level migrations/
    as skysync/_migrations, see setup.py), else beside the package in a source checkout or an
    editable install."""
    package = Path(__file__).resolve().parent.parent  # skysync/
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError(
        f"skysync's migration scripts are missing: neither {package / '_migrations'} nor "
        f"{package.parent / 'migrations'} holds env.py (a broken install?)"
    )


ALEMBIC_DIR = _alembic_dir()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own transaction handling is turned off so that SQLAlchemy's BEGIN is the one
    # that counts (see the SQLAlchemy docs, "Serializable isolation / Savepoints / Transactional
    # DDL"): it lets us take the write lock up front with BEGIN IMMEDIATE where we need it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # A deferred transaction that reads and then writes fails at once with "database is locked"
    # when another connection wrote in between (WAL cannot upgrade a stale read snapshot), and
    # the busy timeout does not help. So every transaction takes the write lock up front, except
    # those that promise to only read.
    readonly = conn.get_execution_options().get("sqlite_readonly")
    conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _drop_if_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Never hand out a pooled PostgreSQL connection the server has closed (PostgreSQL restarted,
    or an administrator or an idle timeout ended the session): the pool discards it and
    checks out another, connecting afresh if need be (SQLAlchemy's "Dealing with Disconnects",
    pessimistic handling with a custom check: a checkout handler raises DisconnectionError).

    This is pool_pre_ping's guarantee without its round trip on every checkout (the relay
    checks out a connection twice per SKU): a connection idle in the pool has nothing to read,
    so if its socket is readable the server has hung up on it (PostgreSQL sends its FATAL
    message and closes the socket; a killed server's kernel closes it). A harmless false
    alarm (an unsolicited message on a live session) only costs a fresh connection."""
    try:
        if dbapi_connection.closed or dbapi_connection.broken:
            raise sa.exc.DisconnectionError("the connection was closed")
        poller = select.poll()
        poller.register(dbapi_connection.pgconn.socket, select.POLLIN | select.POLLPRI)
        if poller.poll(0):
            raise sa.exc.DisconnectionError("the server closed the connection while it was pooled")
    except sa.exc.DisconnectionError:
        raise
    except Exception as exc:  # no socket any more, say
        raise sa.exc.DisconnectionError(f"the connection is unusable: {exc}") from exc


_ENGINES: dict[str, sa.Engine] = {}


def get_engine(url: str) -> sa.Engine:
    """The engine for ``url`` (one pool per process and database)."""
    engine = _ENGINES.get(url)
    if engine is not None:
        return engine
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin)
    else:
        from skysync.store.models import lenient_json_loads

        # the check below where psycopg's socket can be polled, else pool_pre_ping's ping
        checked = sa.engine.make_url(url).get_driver_name() == "psycopg" and hasattr(select, "poll")
        engine = sa.create_engine(
            url,
            pool_pre_ping=not checked,
            pool_size=5,
            max_overflow=10,
            json_deserializer=lenient_json_loads,
        )
        if checked:
            sa.event.listen(engine, "checkout", _drop_if_closed)
    _ENGINES[url] = engine
    return engine


def dispose_engines() -> None:
    """Close every pooled connection (after a fork, or at the end of tests)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
    _DATABASES.clear()


@dataclass(frozen=True)
class Database:
    """One database of this process: its URL, its engine and its session factory, built once
    (``Database.for_url``) by the composition root and handed to what uses it, instead of a URL
    that every caller turns into an engine again."""

    url: str
    engine: sa.Engine
    sessions: sessionmaker[Session]
    # the SkyHub account whose rows this handle's sessions read and write (account_of)
    account: str = DEFAULT_ACCOUNT

    def for_account(self, account: str) -> Database:
        """This database, for ``account``'s rows: what its sessions' :func:`account_of` says."""
        return self if account == self.account else replace(self, account=account)

    @classmethod
    def for_url(cls, url: str) -> Database:
        """The process's Database for ``url`` (one engine and pool per process and URL)."""
        database = _DATABASES.get(url)
        if database is None:
            engine = get_engine(url)
            database = _DATABASES[url] = cls(
                url, engine, sessionmaker(engine, expire_on_commit=False)
            )
        return database

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @contextmanager
    def scope(self, *, readonly: bool = False, flush_wal: bool = True) -> Iterator[Session]:
        """A unit of work: commits when the block ends cleanly, rolls back otherwise.

        On SQLite every transaction takes the write lock at BEGIN (``BEGIN IMMEDIATE``), which
        also serializes claimers there the way the advisory lock does on PostgreSQL;
        ``readonly`` skips it for pure reads.

        ``flush_wal=False`` (PostgreSQL): the commit returns without waiting for its WAL to
        reach the disk (``synchronous_commit = off``, for this transaction only). A crash of
        PostgreSQL itself may then lose the last fraction of a second of such commits, never
        corrupt them, and never one that a later flushed commit depends on: WAL is written in
        order, so the next flushed commit makes every earlier one durable too. The relay uses
        it for its bookkeeping (claims, outcomes), because every request is preceded by a
        flushed commit (the attempt record, see relay/unit_of_work.py): a lost outcome leaves
        its rows in flight, sent again after the lease with the attempted fields counted as
        unknown, so nothing is lost and no stale value wins. Never for anything the ERP or an
        operator wrote.
        """
        session = self.sessions(info={ACCOUNT_KEY: self.account})
        if readonly and self.url.startswith("sqlite"):
            session.connection(execution_options={"sqlite_readonly": True})
        if not flush_wal and self.url.startswith("postgresql"):
            session.execute(sa.text("SET LOCAL synchronous_commit TO OFF"))
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


_DATABASES: dict[str, Database] = {}

ACCOUNT_KEY = "skysync_account"  # Session.info: the account of the Database that opened it


def account_of(session: Session) -> str:
    """The SkyHub account ``session`` works for (:meth:`Database.for_account`): every store
    function that reads or writes rows by SKU, order code or state keeps to its rows."""
    return str(session.info.get(ACCOUNT_KEY, DEFAULT_ACCOUNT))


def session_factory(url: str) -> sessionmaker[Session]:
    return Database.for_url(url).sessions


def session_scope(
    url: str, *, readonly: bool = False, flush_wal: bool = True
) -> AbstractContextManager[Session]:
    """``Database.for_url(url).scope(...)``: for code that holds a URL rather than a Database
    (tests, the few callers not given one yet)."""
    return Database.for_url(url).scope(readonly=readonly, flush_wal=flush_wal)


def database_problem(exc: BaseException, url: str | None = None) -> str | None:
    """What an operator should read when a command meets ``exc`` from the database: its tables
    are missing (not migrated yet), or it cannot be reached. None for anything else. The
    driver's first line only, without any piece of ``url``'s password (a password with an
    unescaped "@" is parsed short, and the driver names the rest as part of the host)."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    text = str(exc.orig if exc.orig is not None else exc).strip()
    detail = text.splitlines()[0] if text else type(exc).__name__
    detail = scrub_dsn_secret(detail, url) if url else mask_dsns_in(detail)
    if "no such table" in detail or getattr(exc.orig, "sqlstate", None) == "42P01":
        return (
            f"the database (SKYSYNC_DATABASE_URL) has no skysync tables yet ({detail}): "
            "run `skysync migrate` first"
        )
    if isinstance(exc, sa.exc.OperationalError) and not getattr(exc.orig, "sqlstate", None):
        return f"cannot use the database (SKYSYNC_DATABASE_URL): {detail}"
    return None


def alembic_config(url: str) -> Any:
    """An Alembic Config for our migrations and ``url``, independent of the working directory."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.attributes["database_url"] = url
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Bring the schema of ``url`` to ``revision`` (alembic upgrade)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
