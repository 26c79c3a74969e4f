"""Shared fixtures: real databases (a SQLite file and a PostgreSQL database made for this run),
built by the Alembic migrations, emptied before each test.

PostgreSQL is required: when it cannot be reached the tests that need it fail (never skip).
Point SKYSYNC_TEST_PG_ADMIN_URL at a role that may CREATE DATABASE if the default does not fit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from celery_helpers import Worker
from relay_helpers import sandbox_config

from skysync.emulator import Sandbox, SandboxConfig
from skysync.skyhub.ratelimit import RateLimiter
from skysync.store.db import dispose_engines, migrate

PG_ADMIN_URL = os.environ.get(
    "SKYSYNC_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TABLES = (
    "skysync_outbox",
    "skysync_item",
    "skysync_order_inbox",
    "skysync_order",
    "skysync_order_line",
    "skysync_run",
    "skysync_request_stat",
    "skysync_sync_error",
    # chunks waiting their turn (relay/handout.py): a worker killed mid-batch leaves some, and
    # their id sequence is restarted below with the others, so they go too (left behind, the
    # next test's first chunk collided with them: "duplicate key ... skysync_chunk_pkey")
    "skysync_chunk",
)


def _pg_admin() -> sa.Engine:
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def create_pg_database(prefix: str = "skysync_test") -> str:
    """A new, empty PostgreSQL database; returns its URL."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    engine = _pg_admin()
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is required for this test and is not reachable at "
            f"{PG_ADMIN_URL} ({exc.orig}). Start it (see .ci/run) or set SKYSYNC_TEST_PG_ADMIN_URL."
        )
    finally:
        engine.dispose()
    return sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    dispose_engines()
    name = sa.make_url(url).database
    engine = _pg_admin()
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    engine.dispose()


@contextmanager
def migrated_pg_database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database at the migrations' head, dropped on exit."""
    url = create_pg_database(prefix)
    try:
        migrate(url)
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = create_pg_database()
    migrate(url)
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "skysync.db"
    url = f"sqlite:///{path}"
    migrate(url)
    return url


def empty_tables(url: str) -> None:
    """Every table empty and every id counting from 1 again. On PostgreSQL by DELETE and
    ALTER SEQUENCE ... RESTART: the same as TRUNCATE ... RESTART IDENTITY on tables this small,
    in a tenth of the time (6 ms against 63 here), which the hundreds of tests on PostgreSQL
    pay each."""
    from skysync.store.db import get_engine

    with get_engine(url).begin() as conn:
        for table in TABLES:
            conn.exec_driver_sql(f"DELETE FROM {table}")
        if url.startswith("postgresql"):
            for sequence in _sequences(conn):
                conn.exec_driver_sql(f'ALTER SEQUENCE "{sequence}" RESTART')
        else:
            conn.exec_driver_sql("DELETE FROM sqlite_sequence")


def _sequences(conn: sa.Connection) -> list[str]:
    """The id sequences of skysync's tables (those RESTART IDENTITY would reset)."""
    query = "SELECT relname FROM pg_class WHERE relkind = 'S' AND relname LIKE 'skysync_%%'"
    return list(conn.exec_driver_sql(query).scalars())


def fresh_database_fixture(prefix: str) -> Any:
    """A fixture ``fresh_url``: a brand-new, empty database (no migrations applied), SQLite
    and PostgreSQL (created with ``prefix``, dropped afterwards), for the migrations' tests.
    A module says ``fresh_url = fresh_database_fixture("skysync_migr")``."""

    @pytest.fixture(name="fresh_url", params=["sqlite", "postgresql"])
    def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
        from skysync.store.db import dispose_engines

        if request.param == "sqlite":
            yield f"sqlite:///{tmp_path / 'fresh.db'}"
            dispose_engines()
        else:
            url = create_pg_database(prefix)
            try:
                yield url
            finally:
                drop_pg_database(url)

    return fresh


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty database: each test using it runs once on SQLite, once on PostgreSQL."""
    url = request.getfixturevalue(f"{'pg' if request.param == 'postgresql' else 'sqlite'}_url")
    empty_tables(url)
    return url


@pytest.fixture
def session(db_url: str) -> Iterator[sa.orm.Session]:
    from skysync.store.db import session_scope

    with session_scope(db_url) as s:
        yield s


@pytest.fixture
def make_limiter() -> Iterator[Callable[..., RateLimiter]]:
    """RateLimiters on a namespace of their own; every storage is reset at teardown."""
    made: list[RateLimiter] = []

    def make(rate: float, storage_url: str, namespace: str | None = None, **kw: Any) -> RateLimiter:
        limiter = RateLimiter(
            rate,
            storage_url=storage_url,
            namespace=namespace or f"skysync:test:{uuid.uuid4().hex}",
            **kw,
        )
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.reset()


def sandbox_fixture(
    make: Callable[..., SandboxConfig] = sandbox_config,
    *,
    name: str = "sb",
    scope: Literal["function", "module"] = "function",
    **config: Any,
) -> Any:
    """A fixture serving the SkyHub emulator on a free port, built from ``make(**config)``
    (default: relay_helpers.sandbox_config, products never linked unless a test links them, no
    rate limits unless a test wants them). A module that needs another emulator says so in one
    line, e.g. ``sb = sandbox_fixture(visibility_timeout=0.3)``."""

    @pytest.fixture(name=name, scope=scope)
    def serve() -> Iterator[Sandbox]:
        with Sandbox(make(**config)) as sandbox:
            yield sandbox

    return serve


sb = sandbox_fixture()


class SandboxAdmin:
    """The emulator's ``/_sandbox`` admin API over HTTP. Every call acts on ``account`` (the
    one given here, ``default`` unless told) unless it names another; answers are returned as
    they came, for the test to check."""

    def __init__(self, base_url: str, account: str | None = None, timeout: float = 5.0) -> None:
        self.base_url = base_url
        self.account = account
        self.timeout = timeout

    def call(
        self, method: str, path: str, json: Any = None, *, account: str | None = None
    ) -> httpx.Response:
        """``method /_sandbox/path`` with ``?account=`` (none when neither names one)."""
        name = account if account is not None else self.account
        params = {"account": name} if name is not None else None
        return httpx.request(
            method,
            f"{self.base_url}/_sandbox/{path.lstrip('/')}",
            json=json,
            params=params,
            timeout=self.timeout,
        )

    def state(self, *, account: str | None = None) -> dict[str, Any]:
        answer = self.call("GET", "state", account=account)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def seed_order(self, order: dict[str, Any], *, account: str | None = None) -> httpx.Response:
        return self.call("POST", "orders", order, account=account)

    def move_order_dates(
        self, code: str, dates: dict[str, Any], *, account: str | None = None
    ) -> httpx.Response:
        """``POST /_sandbox/orders/{code}/dates``: the order's dates moved, the order queued
        again (the code percent-encoded: order codes hold spaces)."""
        return self.call("POST", f"orders/{quote(code, safe='')}/dates", dates, account=account)

    def reset(self, *, account: str | None = None) -> httpx.Response:
        return self.call("POST", "reset", account=account)

    def add_account(self, name: str, email: str, api_key: str) -> httpx.Response:
        body = {"name": name, "email": email, "api_key": api_key}
        return self.call("POST", "accounts", body)

    def accounts(self) -> list[dict[str, Any]]:
        answer = self.call("GET", "accounts")
        assert answer.status_code == 200, answer.text
        listed: list[dict[str, Any]] = answer.json()["accounts"]
        return listed

    def revoke(self, name: str) -> httpx.Response:
        return self.call("POST", f"accounts/{name}/revoke")

    def restore(self, name: str) -> httpx.Response:
        return self.call("POST", f"accounts/{name}/restore")


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Starts real Celery workers with ``env`` (cwd: this test's empty directory, so no stray
    .env is read), 4 threads unless told; every worker started is stopped at the end, whatever
    happened."""
    started: list[Worker] = []

    def start(env: dict[str, str], *, concurrency: int = 4) -> Worker:
        worker = Worker(env, tmp_path, concurrency=concurrency)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_sandbox(base: str, proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """Until the `skysync sandbox` process ``proc`` answers at ``base`` (raise if it exits or
    ``timeout`` seconds pass)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{base}/_sandbox/state", timeout=2)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.1)


def max_in_window(times: list[float], window: float) -> int:
    """The most timestamps any sliding window of ``window`` seconds holds."""
    times = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] - start < window:
            j += 1
        best = max(best, j - i)
    return best


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The CLI reads SKYSYNC_* and .env: run it in an empty directory with none inherited."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("SKYSYNC_"):
            monkeypatch.delenv(name)
    return tmp_path
