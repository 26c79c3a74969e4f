"""The schema: Alembic upgrade/downgrade on fresh databases, the CHECK constraints and defaults the
ERP relies on when it writes plain SQL, and the least-privilege ERP role on PostgreSQL."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from conftest import (
    TABLES,
    empty_tables,
    fresh_database_fixture,
    migrated_pg_database,
)

from skysync.entrypoints.cli import erp_role_sql
from skysync.store.db import (
    alembic_config,
    current_revision,
    downgrade,
    get_engine,
    migrate,
)
from skysync.store.models import Base

HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _tables(url: str) -> set[str]:
    return set(sa.inspect(get_engine(url)).get_table_names())


fresh_url = fresh_database_fixture("skysync_migr")


@pytest.mark.slow
def test_upgrade_downgrade_upgrade(fresh_url: str) -> None:
    assert HEAD == "0014"
    assert current_revision(fresh_url) is None
    assert not _tables(fresh_url) & set(TABLES)

    migrate(fresh_url)
    assert current_revision(fresh_url) == HEAD
    assert set(TABLES) <= _tables(fresh_url)

    downgrade(fresh_url, "base")
    assert current_revision(fresh_url) is None
    assert not _tables(fresh_url) & set(TABLES)

    migrate(fresh_url, "head")
    assert current_revision(fresh_url) == HEAD
    assert set(TABLES) <= _tables(fresh_url)
    # Running it again is a no-op, not an error (the `migrate` container runs on every start).
    migrate(fresh_url)
    assert current_revision(fresh_url) == HEAD


def _lane_trigger(url: str) -> list[str]:
    """The fast lane's trigger and function, where the database has them."""
    with get_engine(url).connect() as conn:
        if url.startswith("sqlite"):
            return list(conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' "
                "AND name LIKE 'skysync_outbox_fast_lane%'"
            ).scalars())  # fmt: skip
        return list(conn.exec_driver_sql(
            "SELECT tgname FROM pg_trigger WHERE tgname = 'skysync_outbox_fast_lane' "
            "UNION ALL SELECT proname FROM pg_proc "
            "WHERE proname = 'skysync_outbox_fast_lane_notify'"
        ).scalars())  # fmt: skip


@pytest.mark.slow
def test_fast_lane_trigger_is_installed_and_removed(fresh_url: str) -> None:
    """0006 installs the NOTIFY trigger on PostgreSQL (a plain INSERT of a stock row rings,
    a product row does not); downgrading below it removes it. SQLite gets no trigger."""
    from skysync.store.notify import LaneListener

    migrate(fresh_url, "0003")
    assert _lane_trigger(fresh_url) == []
    migrate(fresh_url)
    if fresh_url.startswith("sqlite"):
        assert _lane_trigger(fresh_url) == []
        return
    assert sorted(_lane_trigger(fresh_url)) == [
        "skysync_outbox_fast_lane",
        "skysync_outbox_fast_lane_notify",
    ]
    with LaneListener(fresh_url) as listener:
        listener.listen()
        _insert(fresh_url, "kind, ref, payload", "'product', 'P', '{\"name\": \"x\"}'")
        assert not listener.wait(0.3)
        _insert(fresh_url, "kind, ref, payload", "'stock', 'S', '{\"qty\": 0}'")
        assert listener.wait(5)
        downgrade(fresh_url, "0005")
        assert _lane_trigger(fresh_url) == []
        _insert(fresh_url, "kind, ref, payload", "'stock', 'S', '{\"qty\": 0}'")
        assert not listener.wait(0.3)
    assert _count(fresh_url) == 3


# -- CHECK constraints and defaults (plain SQL, as an ERP would write it) --------------------------


def _insert(url: str, columns: str, values: str) -> None:
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO skysync_outbox ({columns}) VALUES ({values})")


def _count(url: str) -> int:
    with get_engine(url).connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM skysync_outbox").scalar_one()


def test_unknown_kind_is_refused(db_url: str) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        _insert(db_url, "kind, ref, payload", "'bogus', 'SKU-1', '{\"price\": 1}'")
    assert _count(db_url) == 0


@pytest.mark.parametrize("kind", ["product", "price", "stock", "order_invoice", "order_cancel"])
def test_known_kinds_are_accepted(db_url: str, kind: str) -> None:
    _insert(db_url, "kind, ref, payload", f"'{kind}', 'REF-1', '{{}}'")
    assert _count(db_url) == 1


def test_unknown_state_is_refused(db_url: str) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        _insert(
            db_url,
            "kind, ref, payload, state, reason",
            "'price', 'SKU-1', '{\"price\": 1}', 'weird', 'because'",
        )
    assert _count(db_url) == 0


@pytest.mark.parametrize("state", ["superseded", "withheld", "rejected", "dead"])
def test_final_state_other_than_sent_needs_a_reason(db_url: str, state: str) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        _insert(db_url, "kind, ref, payload, state", f"'price', 'SKU-1', '{{}}', '{state}'")
    assert _count(db_url) == 0
    _insert(
        db_url,
        "kind, ref, payload, state, reason",
        f"'price', 'SKU-1', '{{}}', '{state}', 'payload.price: must be greater than 0'",
    )
    with get_engine(db_url).connect() as conn:
        row = conn.exec_driver_sql("SELECT state, reason FROM skysync_outbox").one()
    assert tuple(row) == (state, "payload.price: must be greater than 0")


@pytest.mark.parametrize("state", ["pending", "in_flight", "sent"])
def test_live_and_sent_states_need_no_reason(db_url: str, state: str) -> None:
    _insert(db_url, "kind, ref, payload, state", f"'price', 'SKU-1', '{{}}', '{state}'")
    assert _count(db_url) == 1


def test_negative_attempts_are_refused(db_url: str) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        _insert(db_url, "kind, ref, payload, attempts", "'price', 'SKU-1', '{}', -1")


def test_erp_insert_of_kind_ref_payload_gets_the_defaults(db_url: str) -> None:
    from skysync.store.models import OutboxRow, utcnow

    before = utcnow().replace(microsecond=0)
    _insert(db_url, "kind, ref, payload", "'price', 'SKU-1', '{\"price\": 10.5}'")
    _insert(db_url, "kind, ref, payload", "'stock', 'SKU-1', '{\"qty\": 0}'")
    with get_engine(db_url).connect() as conn:
        raw = conn.exec_driver_sql(
            "SELECT id, created_at, state, attempts, available_at, lease_until, claim_token, "
            "reason FROM skysync_outbox ORDER BY id"
        ).all()
        rows = conn.execute(sa.select(OutboxRow.__table__).order_by(OutboxRow.id)).all()
    assert [r.id for r in raw] == [1, 2]  # ids in write order
    for r in raw:
        assert r.created_at is not None and r.available_at is not None
        assert (r.state, r.attempts) == ("pending", 0)
        assert (r.lease_until, r.claim_token, r.reason) == (None, None, None)
    # Read back through the model: aware UTC datetimes (also from SQLite's CURRENT_TIMESTAMP
    # text) and the JSON payload.
    after = utcnow()
    for r in rows:
        assert before <= r.created_at <= after
        assert before <= r.available_at <= after
    assert [r.payload for r in rows] == [{"price": 10.5}, {"qty": 0}]


def test_sqlite_due_index_is_partial(sqlite_url: str) -> None:
    with get_engine(sqlite_url).connect() as conn:
        sql = conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'ix_skysync_outbox_due'"
        ).scalar_one()
    assert "(account, available_at, id)" in sql
    assert "WHERE state = 'pending'" in sql


def test_postgresql_payload_is_jsonb_and_due_index_is_partial(pg_url: str) -> None:
    with get_engine(pg_url).connect() as conn:
        types = dict(
            conn.exec_driver_sql(
                "SELECT table_name || '.' || column_name, data_type"
                " FROM information_schema.columns"
                " WHERE column_name IN ('payload', 'raw', 'acknowledged', 'created_at')"
                " AND table_schema = 'public'"
            ).all()
        )
        indexdef = conn.exec_driver_sql(
            "SELECT indexdef FROM pg_indexes "
            "WHERE tablename = 'skysync_outbox' AND indexname = 'ix_skysync_outbox_due'"
        ).scalar_one()
    assert types["skysync_outbox.payload"] == "jsonb"
    assert types["skysync_order_inbox.raw"] == "jsonb"
    assert types["skysync_item.acknowledged"] == "jsonb"
    assert types["skysync_outbox.created_at"] == "timestamp with time zone"
    assert "(account, available_at, id)" in indexdef
    assert "WHERE (state = 'pending'::text)" in indexdef


# -- the ERP role (PostgreSQL) ---------------------------------------------------------------------


@pytest.fixture
def erp_role(pg_url: str) -> Iterator[str]:
    role = f"skysync_erp_test_{uuid.uuid4().hex[:10]}"
    empty_tables(pg_url)
    with get_engine(pg_url).begin() as conn:
        conn.exec_driver_sql(erp_role_sql(role))
    try:
        yield role
    finally:
        with get_engine(pg_url).begin() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
        empty_tables(pg_url)


@pytest.fixture
def as_erp(pg_url: str, erp_role: str) -> Iterator[Callable[[str], list[Any]]]:
    """Run one statement (own transaction) as the ERP role, on its own connection."""
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    conn = engine.connect()
    conn.exec_driver_sql(f"SET ROLE {erp_role}")
    conn.commit()
    assert conn.exec_driver_sql("SELECT current_user").scalar_one() == erp_role
    conn.commit()

    def run(sql: str) -> list[Any]:
        try:
            result = conn.exec_driver_sql(sql)
            rows = result.all() if result.returns_rows else []
            conn.commit()
            return rows
        except BaseException:
            conn.rollback()
            raise

    try:
        yield run
    finally:
        conn.close()
        engine.dispose()


def _denied(run: Callable[[str], list[Any]], sql: str) -> None:
    with pytest.raises(sa.exc.ProgrammingError) as excinfo:
        run(sql)
    assert isinstance(excinfo.value.orig, psycopg.errors.InsufficientPrivilege), excinfo.value


def test_erp_role_can_insert_the_erp_columns(
    pg_url: str, as_erp: Callable[[str], list[Any]]
) -> None:
    as_erp(
        "INSERT INTO skysync_outbox (kind, ref, payload)"
        " VALUES ('stock', 'SKU-ERP', '{\"qty\": 3}')"
    )
    as_erp(
        "INSERT INTO skysync_outbox (kind, ref, payload)"
        " VALUES ('price', 'SKU-ERP', '{\"price\": 9}')"
    )
    with get_engine(pg_url).connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT id, kind, ref, payload, state, attempts FROM skysync_outbox ORDER BY id"
        ).all()
    assert [tuple(r)[1:] for r in rows] == [
        ("stock", "SKU-ERP", {"qty": 3}, "pending", 0),
        ("price", "SKU-ERP", {"price": 9}, "pending", 0),
    ]
    assert rows[0].id < rows[1].id


def test_erp_role_cannot_touch_skysyncs_columns_or_tables(
    pg_url: str, as_erp: Callable[[str], list[Any]]
) -> None:
    with get_engine(pg_url).begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO skysync_outbox (kind, ref, payload)"
            " VALUES ('price', 'S', '{\"price\": 1}')"
        )
        conn.exec_driver_sql("INSERT INTO skysync_item (sku) VALUES ('S')")
    _denied(as_erp, "UPDATE skysync_outbox SET state = 'sent'")
    _denied(
        as_erp,
        "INSERT INTO skysync_outbox (kind, ref, payload, state)"
        " VALUES ('price', 'S', '{}', 'sent')",
    )
    _denied(as_erp, "DELETE FROM skysync_outbox")
    for table in (
        "skysync_outbox",
        "skysync_item",
        "skysync_order",
        "skysync_run",
        "alembic_version",
    ):
        _denied(as_erp, f"SELECT * FROM {table}")
    _denied(as_erp, "UPDATE skysync_item SET frozen = true")
    with get_engine(pg_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT state FROM skysync_outbox").scalars().all() == [
            "pending"
        ]
        assert conn.exec_driver_sql("SELECT frozen FROM skysync_item").scalar_one() is False


def test_erp_role_reads_and_consumes_the_order_inbox(
    pg_url: str, erp_role: str, as_erp: Callable[[str], list[Any]]
) -> None:
    with get_engine(pg_url).begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO skysync_order_inbox (code, status, dedupe_key, raw) "
            "VALUES ('ORDER-1', 'NEW', 'ORDER-1:NEW', '{\"code\": \"ORDER-1\"}')"
        )
    unconsumed = as_erp("SELECT code, raw FROM skysync_order_inbox WHERE consumed_at IS NULL")
    assert [tuple(r) for r in unconsumed] == [("ORDER-1", {"code": "ORDER-1"})]
    as_erp("UPDATE skysync_order_inbox SET consumed_at = now() WHERE code = 'ORDER-1'")
    assert as_erp("SELECT code FROM skysync_order_inbox WHERE consumed_at IS NULL") == []
    _denied(as_erp, "UPDATE skysync_order_inbox SET status = 'CANCELED'")
    _denied(as_erp, "DELETE FROM skysync_order_inbox")
    _denied(
        as_erp,
        "INSERT INTO skysync_order_inbox (code, dedupe_key, raw) VALUES ('X', 'X', '{}')",
    )
    with get_engine(pg_url).connect() as conn:
        row = conn.exec_driver_sql("SELECT status, consumed_at FROM skysync_order_inbox").one()
    assert row.status == "NEW"
    assert row.consumed_at is not None


def test_erp_role_sql_is_idempotent(pg_url: str, erp_role: str) -> None:
    # The DO block skips CREATE ROLE when the role exists, so the script can be re-run.
    with get_engine(pg_url).begin() as conn:
        conn.exec_driver_sql(erp_role_sql(erp_role))
        n = conn.exec_driver_sql(
            f"SELECT count(*) FROM pg_roles WHERE rolname = '{erp_role}'"
        ).scalar_one()
    assert n == 1


def _revoked(sql: str) -> set[str]:
    found = re.search(r"^REVOKE ALL ON (.*?)\s+FROM\s", sql, re.MULTILINE | re.DOTALL)
    assert found, sql
    return {name.strip() for name in found.group(1).split(",")}


def test_erp_role_sql_revokes_every_table() -> None:
    # Read from the metadata, so a table a migration adds is never left out of the list; held
    # against a database of its own, made by the migrations alone (the shared one may hold a
    # test's own tables)
    revoked = _revoked(erp_role_sql("skysync_erp"))
    assert revoked == {*Base.metadata.tables, "alembic_version"}
    with migrated_pg_database("skysync_role") as url:
        assert _tables(url) <= revoked
    assert "skysync_sync_error" in revoked


def test_erp_role_is_granted_only_the_outbox_and_the_inbox(
    pg_url: str, erp_role: str, as_erp: Callable[[str], list[Any]]
) -> None:
    with get_engine(pg_url).connect() as conn:
        granted = conn.exec_driver_sql(
            "SELECT table_name FROM information_schema.table_privileges WHERE grantee = %s "
            "UNION SELECT table_name FROM information_schema.column_privileges WHERE grantee = %s",
            (erp_role, erp_role),
        ).scalars()
        assert set(granted) == {"skysync_outbox", "skysync_order_inbox"}
    for table in sorted(_tables(pg_url) - {"skysync_outbox", "skysync_order_inbox"}):
        _denied(as_erp, f"SELECT * FROM {table}")
