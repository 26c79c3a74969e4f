"""The `skysync` command line, in-process with click's CliRunner and once as a real process.

Settings come from the environment and a `.env` in the working directory, so every test runs in
an empty tmp directory with no SKYSYNC_* variable inherited from the caller.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from skysync.config import mask_dsn
from skysync.domain.kinds import RowState
from skysync.domain.validation import problems
from skysync.entrypoints.cli import cli
from skysync.store.db import current_revision, dispose_engines, get_engine, session_scope
from skysync.store.models import OutboxRow, utcnow

API_KEY = "sk-live-7f3a9c1e5b2d4068"
ACCOUNT_KEY = "acct-2b8e6d0f4a1c9753"


# every test runs in an empty directory with no SKYSYNC_* inherited (conftest's clean_env)
pytestmark = pytest.mark.usefixtures("clean_env")


def run(args: list[str], **env: str) -> Result:
    return CliRunner().invoke(cli, args, env=env)


def outbox_rows(url: str) -> list[Any]:
    with session_scope(url) as s:
        return list(s.execute(sa.select(OutboxRow.__table__).order_by(OutboxRow.id)).all())


# -- enqueue ---------------------------------------------------------------------------------------


def test_enqueue_writes_one_pending_row(db_url: str) -> None:
    result = run(["enqueue", "price", "SKU-1", '{"price": 10.5}'], SKYSYNC_DATABASE_URL=db_url)
    assert result.exit_code == 0, result.output
    assert "enqueued outbox row 1: price SKU-1" in result.stdout
    rows = outbox_rows(db_url)
    assert len(rows) == 1
    row = rows[0]
    assert (row.kind, row.ref, row.payload) == ("price", "SKU-1", {"price": 10.5})
    assert (row.state, row.attempts, row.reason) == ("pending", 0, None)
    assert row.created_at is not None and row.available_at is not None


def test_enqueue_bad_payload_reports_every_problem_and_writes_nothing(db_url: str) -> None:
    payload = {"price": 0, "promotional_price": "5,00", "colour": "red"}
    result = run(["enqueue", "price", "SKU-1", json.dumps(payload)], SKYSYNC_DATABASE_URL=db_url)
    assert result.exit_code == 1
    expected = problems("price", "SKU-1", payload)
    assert len(expected) == 3
    for problem in expected:
        assert problem in result.stderr
    for field in ("payload.price:", "payload.promotional_price:", "payload.colour:"):
        assert field in result.stderr
    assert "enqueued" not in result.stdout
    assert outbox_rows(db_url) == []


def test_enqueue_invalid_json_exits_1(db_url: str) -> None:
    result = run(["enqueue", "price", "SKU-1", '{"price": 10.5'], SKYSYNC_DATABASE_URL=db_url)
    assert result.exit_code == 1
    assert "payload: is not valid JSON" in result.stderr
    assert outbox_rows(db_url) == []


def test_enqueue_unknown_kind_exits_1(db_url: str) -> None:
    result = run(["enqueue", "prices", "SKU-1", '{"price": 10.5}'], SKYSYNC_DATABASE_URL=db_url)
    assert result.exit_code == 1
    assert "kind: unknown kind" in result.stderr
    assert outbox_rows(db_url) == []


def test_enqueue_huge_integer_price_is_a_problem_not_a_traceback(sqlite_url: str) -> None:
    # Valid JSON; json.loads gives an int too large for a float (see the bug report).
    text = '{"price": 1' + "0" * 400 + "}"
    result = run(["enqueue", "price", "SKU-1", text], SKYSYNC_DATABASE_URL=sqlite_url)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert "payload.price:" in result.stderr


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("stock", '{"qty": ' + "[" * 20_000 + "]" * 20_000 + "}"),
        ("product", '{"name": ' + '{"a": ' * 20_000 + "1" + "}" * 20_000 + "}"),
    ],
    ids=["array-20000", "object-20000"],
)
def test_enqueue_a_payload_nested_absurdly_deep_is_a_field_error(
    db_url: str, kind: str, text: str
) -> None:
    """The outbox check's own words, exit 1 like any bad payload, never a RecursionError."""
    result = run(["enqueue", kind, "SKU-1", text], SKYSYNC_DATABASE_URL=db_url)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "RecursionError" not in result.output
    assert "payload: is nested 34+ levels deep (at most 32)" in result.stderr, result.stderr
    assert outbox_rows(db_url) == []
    # brackets inside a string are text, not nesting
    named = '{"name": "' + "[{" * 40 + '\\"[", "price": 5}'
    result = run(["enqueue", "product", "SKU-1", named], SKYSYNC_DATABASE_URL=db_url)
    assert result.exit_code == 0, result.output
    assert outbox_rows(db_url)[0].payload["name"] == "[{" * 40 + '"['


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('{"qty": 1e20}', "must be at most 2147483647, got 1e20"),
        ('{"qty": 100000000000000000000}', "must be at most 2147483647, got 100000000000000000000"),
        ('{"qty": 2.55E1}', "must be a whole number, got 2.55E1"),
        ('{"qty": -1.0}', "must be >= 0 (an absolute quantity, not a delta), got -1.0"),
        (
            '{"qty": 1' + "0" * 60 + "}",
            "must be at most 2147483647, got 10000000000000000000...(61 characters)",
        ),
    ],
    ids=["exponent", "digits", "fraction", "negative", "sixty-digits"],
)
def test_enqueue_quotes_a_bad_number_as_it_was_typed(db_url: str, text: str, shown: str) -> None:
    """As typed: 1e20, not 1e+20; all 21 digits, not 20 of them (another number)."""
    result = run(["enqueue", "stock", "SKU-1", text], SKYSYNC_DATABASE_URL=db_url)
    assert result.exit_code == 1, result.output
    assert f"payload.qty: {shown}" in result.stderr, result.stderr


# -- status ----------------------------------------------------------------------------------------


def insert_rows(url: str, rows: list[dict[str, Any]]) -> None:
    with get_engine(url).begin() as conn:
        for row in rows:
            conn.execute(sa.insert(OutboxRow.__table__).values(**row))


def status_json(url: str, exit_code: int = 0) -> dict[str, Any]:
    result = run(["status", "--json"], SKYSYNC_DATABASE_URL=url)
    assert result.exit_code == exit_code, result.output
    return json.loads(result.stdout)


def row(state: str, **extra: Any) -> dict[str, Any]:
    """An outbox row in ``state``; every final state but `sent` must carry a reason (CHECK)."""
    reason = None if state in ("pending", "in_flight", "sent") else f"test: {state}"
    payload = {"price": 1}
    base = {"kind": "price", "ref": "SKU-1", "payload": payload, "state": state, "reason": reason}
    return base | extra


def test_status_json_on_an_empty_outbox(db_url: str) -> None:
    report = status_json(db_url)
    assert report["outbox"] == dict.fromkeys(RowState, 0)
    assert report["oldest_pending_age_s"] is None
    assert report["orders"] == {"unconsumed": 0, "flagged": 0, "unacknowledgeable": []}
    assert report["last_relay"] is None


def test_status_json_counts_every_state(db_url: str) -> None:
    insert_rows(
        db_url,
        [
            row("pending", created_at=utcnow() - timedelta(seconds=120)),
            row("pending"),
            row("in_flight"),
            *[row("sent")] * 3,
            row("superseded"),
            row("withheld"),
            *[row("rejected")] * 2,
            *[row("dead")] * 4,
            row("held"),
        ],
    )
    report = status_json(db_url, exit_code=1)  # a held row waits for an operator
    assert any("held by the price drop guard" in p for p in report["problems"]), report
    assert report["outbox"] == {
        "pending": 2,
        "in_flight": 1,
        "sent": 3,
        "superseded": 1,
        "withheld": 1,
        "rejected": 2,
        "dead": 4,
        "held": 1,
    }
    age = report["oldest_pending_age_s"]
    assert isinstance(age, int | float)
    assert 120 <= age < 180


def test_status_ages_the_first_written_pending_row_and_the_first_due_one(db_url: str) -> None:
    """The oldest pending row is the first written (lowest id) still pending; the oldest *due*
    one skips rows waiting out a backoff. A sent row older than both counts for neither."""
    now = utcnow()
    insert_rows(
        db_url,
        [
            row("sent", created_at=now - timedelta(hours=3)),
            row(
                "pending",
                created_at=now - timedelta(hours=2),
                available_at=now + timedelta(hours=1),
            ),
            row("pending", created_at=now - timedelta(seconds=600)),
            row("pending", created_at=now - timedelta(seconds=30)),
        ],
    )
    report = status_json(db_url)
    assert 7200 <= report["oldest_pending_any_age_s"] < 7260, report
    assert 600 <= report["oldest_pending_age_s"] < 660, report


def test_a_database_not_migrated_or_not_reachable_is_said_in_one_line(tmp_path: Path) -> None:
    """No traceback for an operator: what is wrong and what to do, exit 1."""
    fresh = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    result = run(["status"], SKYSYNC_DATABASE_URL=fresh)
    assert result.exit_code == 1, result.output
    assert "no skysync tables yet" in result.stderr and "skysync migrate" in result.stderr
    assert "Traceback" not in result.output
    down = "postgresql+psycopg://skysync:not-this-one@127.0.0.1:1/skysync"
    result = run(["outbox", "list"], SKYSYNC_DATABASE_URL=down)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("skysync: cannot use the database"), result.stderr
    assert "not-this-one" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_status_json_oldest_pending_is_null_without_pending_rows(db_url: str) -> None:
    old = utcnow() - timedelta(hours=1)
    insert_rows(db_url, [row("sent", created_at=old), row("rejected", created_at=old)])
    report = status_json(db_url)
    assert report["outbox"] == dict.fromkeys(RowState, 0) | {"sent": 1, "rejected": 1}
    assert report["oldest_pending_age_s"] is None


def test_status_text_output(sqlite_url: str) -> None:
    insert_rows(sqlite_url, [row("dead"), row("pending")])
    result = run(["status"], SKYSYNC_DATABASE_URL=sqlite_url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "  dead        1" in lines
    assert "  pending     1" in lines
    assert any(line.startswith("oldest due pending row: ") for line in lines)


# -- check-config ----------------------------------------------------------------------------------


def test_check_config_masks_secrets() -> None:
    result = run(
        ["check-config"],
        SKYSYNC_DATABASE_URL="postgresql://skysync:hunter2@db:5432/skysync",
        SKYSYNC_REDIS_URL="redis://:redispw@cache:6379/0",
        SKYSYNC_SKYHUB_EMAIL="loja@example.com",
        SKYSYNC_SKYHUB_API_KEY=API_KEY,
        SKYSYNC_SKYHUB_ACCOUNT_KEY=ACCOUNT_KEY,
    )
    assert result.exit_code == 0, result.output
    for secret in (API_KEY, ACCOUNT_KEY, "hunter2", "redispw"):
        assert secret not in result.stdout
        assert secret not in result.stderr
    shown = json.loads(result.stdout)
    assert shown["skyhub_api_key"] == "**********"
    assert shown["skyhub_account_key"] == "**********"
    assert shown["database_url"] == "postgresql+psycopg://skysync:***@db:5432/skysync"
    assert shown["redis_url"] == "redis://:***@cache:6379/0"
    assert shown["skyhub_target"] == "configured SkyHub"
    assert shown["rate_limit"] == 8.5
    assert shown["sync_interval"] == 900.0


UNESCAPED = "hunt@er2@db.example"  # the password is "hunt@er2": its "@" is not escaped


def test_check_config_masks_a_password_with_an_unescaped_at_whole() -> None:
    result = run(
        ["check-config"],
        SKYSYNC_DATABASE_URL=f"postgresql://skysync:{UNESCAPED}:5432/skysync",
        SKYSYNC_REDIS_URL="redis://:p@ss/w0rd@cache:6379/0",
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["database_url"] == "postgresql+psycopg://skysync:***@db.example:5432/skysync"
    assert shown["redis_url"] == "redis://:***@cache:6379/0"
    for piece in ("hunt", "er2", "ss/w0rd", "p@"):
        assert piece not in result.output


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://skysync:{UNESCAPED}:5432/skysync",
        "postgresql://skysync:hunt@er2/x@db.example:5432/skysync",
        "postgresql://skysync:hunt@er2:99/x@db.example:5432/skysync",
    ],
    ids=["at", "at-then-slash", "at-then-colon"],
)
def test_status_host_error_shows_no_piece_of_a_password_with_an_unescaped_at(url: str) -> None:
    """The driver parses such a password short and names the rest as (part of) the host it
    cannot resolve: the error is shown, the pieces of the password are not."""
    result = run(["status"], SKYSYNC_DATABASE_URL=url)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("skysync: cannot use the database"), result.stderr
    assert "hunt" not in result.output and "er2" not in result.output, result.stderr
    assert "Traceback" not in result.output


def test_check_config_without_credentials_uses_the_emulator() -> None:
    result = run(["check-config"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["skyhub_api_key"] is None
    assert shown["skyhub_target"] == "emulator"
    assert shown["database_url"] == "sqlite:///skysync.db"


def test_check_config_bad_rate_limit_exits_2_naming_the_variable() -> None:
    result = run(["check-config"], SKYSYNC_RATE_LIMIT="abc")
    assert result.exit_code == 2
    assert "SKYSYNC_RATE_LIMIT" in result.stderr
    assert result.stdout == ""


def test_check_config_shows_the_fast_lane_off_by_default_and_refuses_a_bad_mode() -> None:
    shown = json.loads(run(["check-config"]).stdout)
    assert (shown["fast_lane"], shown["fast_lane_stock_threshold"]) == ("off", 0)
    assert shown["fast_lane_poll"] == 1.0
    on = run(["check-config"], SKYSYNC_FAST_LANE="stockouts", SKYSYNC_FAST_LANE_STOCK_THRESHOLD="2")
    assert on.exit_code == 0, on.output
    assert json.loads(on.stdout)["fast_lane"] == "stockouts"
    assert json.loads(on.stdout)["fast_lane_stock_threshold"] == 2
    bad = run(["check-config"], SKYSYNC_FAST_LANE="yes", SKYSYNC_FAST_LANE_STOCK_THRESHOLD="-1")
    assert bad.exit_code == 2 and bad.stdout == ""
    assert "SKYSYNC_FAST_LANE: Value error, must be one of off, stockouts, all" in bad.stderr
    assert "SKYSYNC_FAST_LANE_STOCK_THRESHOLD: " in bad.stderr


def test_bad_value_next_to_a_secret_never_shows_the_secret() -> None:
    result = run(
        ["check-config"],
        SKYSYNC_SKYHUB_API_KEY=API_KEY,
        SKYSYNC_SYNC_INTERVAL="-5",
    )
    assert result.exit_code == 2
    assert "SKYSYNC_SYNC_INTERVAL" in result.stderr
    assert API_KEY not in result.output
    assert API_KEY not in result.stderr
    assert result.stdout == ""


def test_dot_env_in_the_working_directory_is_read_and_its_secret_stays_hidden(
    clean_env: Path,
) -> None:
    (clean_env / ".env").write_text(
        f"SKYSYNC_SKYHUB_API_KEY={API_KEY}\nSKYSYNC_BATCH_SIZE=0\n", encoding="utf-8"
    )
    bad = run(["check-config"])
    assert bad.exit_code == 2
    assert "SKYSYNC_BATCH_SIZE" in bad.stderr
    assert API_KEY not in bad.output and API_KEY not in bad.stderr

    (clean_env / ".env").write_text(f"SKYSYNC_SKYHUB_API_KEY={API_KEY}\n", encoding="utf-8")
    good = run(["check-config"])
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout)["skyhub_api_key"] == "**********"
    assert API_KEY not in good.output


def test_other_commands_also_refuse_bad_configuration() -> None:
    result = run(["status"], SKYSYNC_DATABASE_URL="mysql://x@y/z")
    assert result.exit_code == 2
    assert "SKYSYNC_DATABASE_URL" in result.stderr


# -- migrate ---------------------------------------------------------------------------------------


@pytest.fixture
def fresh_sqlite(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'fresh.db'}"
    dispose_engines()


def migration_head() -> str:
    from alembic.script import ScriptDirectory

    from skysync.store.db import alembic_config

    return str(ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head())


def test_migrate_fresh_sqlite_prints_the_revision(fresh_sqlite: str) -> None:
    head = migration_head()
    result = run(["migrate"], SKYSYNC_DATABASE_URL=fresh_sqlite)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"database {fresh_sqlite} at revision {head}"
    assert current_revision(fresh_sqlite) == head
    again = run(["migrate"], SKYSYNC_DATABASE_URL=fresh_sqlite)
    assert again.exit_code == 0, again.output
    assert f"at revision {head}" in again.stdout


# -- erp-role --------------------------------------------------------------------------------------


def test_erp_role_prints_the_grants() -> None:
    result = run(["erp-role"])
    assert result.exit_code == 0, result.output
    assert (
        'GRANT INSERT (account, kind, ref, payload) ON skysync_outbox TO "skysync_erp";'
        in result.stdout
    )
    assert 'GRANT UPDATE (consumed_at) ON skysync_order_inbox TO "skysync_erp";' in result.stdout

    named = run(["erp-role", "erp_loja_1"])
    assert named.exit_code == 0, named.output
    assert (
        'GRANT INSERT (account, kind, ref, payload) ON skysync_outbox TO "erp_loja_1";'
        in named.stdout
    )
    assert "skysync_erp" not in named.stdout


@pytest.mark.parametrize("role", ["x; drop table y", "ERP", "1erp", "erp-role", "a" * 64, ""])
def test_erp_role_refuses_unsafe_names(role: str) -> None:
    result = run(["erp-role", role])
    assert result.exit_code == 2
    assert "ROLE" in result.stderr
    assert "GRANT" not in result.stdout


def test_erp_role_apply_needs_postgresql(sqlite_url: str) -> None:
    result = run(["erp-role", "--apply"], SKYSYNC_DATABASE_URL=sqlite_url)
    assert result.exit_code == 2
    assert "PostgreSQL" in result.stderr


def test_erp_role_apply_creates_the_role(pg_url: str) -> None:
    role = f"skysync_erp_cli_{uuid.uuid4().hex[:10]}"
    try:
        result = run(["erp-role", role, "--apply"], SKYSYNC_DATABASE_URL=pg_url)
        assert result.exit_code == 0, result.output
        with get_engine(pg_url).connect() as conn:
            privileges = conn.exec_driver_sql(
                "SELECT column_name, privilege_type FROM information_schema.column_privileges "
                f"WHERE grantee = '{role}' AND table_name = 'skysync_outbox' "
                "ORDER BY column_name, privilege_type"
            ).all()
        assert [tuple(p) for p in privileges] == [
            ("account", "INSERT"),
            ("kind", "INSERT"),
            ("payload", "INSERT"),
            ("ref", "INSERT"),
        ]
    finally:
        with get_engine(pg_url).begin() as conn:
            exists = conn.exec_driver_sql(
                f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'"
            ).first()
            if exists:
                conn.exec_driver_sql(f"DROP OWNED BY {role}")
                conn.exec_driver_sql(f"DROP ROLE {role}")


# -- mask_dsn --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://user:pw@host/db", "postgresql+psycopg://user:***@host/db"),
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql+psycopg://user@host:5432/db", "postgresql+psycopg://user@host:5432/db"),
        ("postgresql+psycopg://host:5432/db", "postgresql+psycopg://host:5432/db"),
        ("sqlite:///skysync.db", "sqlite:///skysync.db"),
        ("amqp://guest:s3cr%40t@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
        ("postgresql+psycopg://u:p@ss@host/db", "postgresql+psycopg://u:***@host/db"),
        (
            "postgresql+psycopg://u:a@b:c/d?e#f@host:5432/db",
            "postgresql+psycopg://u:***@host:5432/db",
        ),
        ("redis://:p w@@host:6379/0", "redis://:***@host:6379/0"),
        ("sqlite:////var/lib/a:b@c.db", "sqlite:////var/lib/a:b@c.db"),
    ],
    ids=[
        "pg-user-pw",
        "redis-pw-only",
        "pg-no-pw",
        "pg-no-user",
        "sqlite",
        "amqp-encoded",
        "unescaped-at",
        "every-url-character",
        "blank-and-at-at",
        "sqlite-path-with-colon-and-at",
    ],
)
def test_mask_dsn(url: str, masked: str) -> None:
    assert mask_dsn(url) == masked


# -- flower and metrics: where they listen ---------------------------------------------------------


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of sockets listening on TCP ``port`` (Linux /proc/net/tcp{,6})."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    if len(address) == 8:
                        found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
                    else:
                        found.add(address)
    return found


@pytest.mark.slow
def test_metrics_listens_on_localhost_only_by_default(tmp_path: Path) -> None:
    """Outside compose nothing says where to listen: no authentication, so 127.0.0.1 only."""
    import socket
    import time

    exe = Path(sys.executable).with_name("skysync")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SKYSYNC_")}
    env["SKYSYNC_DATABASE_URL"] = f"sqlite:///{tmp_path / 'metrics.db'}"
    subprocess.run([str(exe), "migrate"], cwd=tmp_path, env=env, check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(exe), "metrics", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not _listening_addresses(port) and time.monotonic() < deadline:
            assert server.poll() is None, server.communicate()
            time.sleep(0.1)
        assert _listening_addresses(port) == {"127.0.0.1"}
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=10)
    assert f"http://127.0.0.1:{port}/metrics" in stderr


@pytest.mark.parametrize("command", ["flower", "metrics"])
def test_flower_and_metrics_default_to_localhost(command: str) -> None:
    option = next(p for p in cli.commands[command].params if p.name == "address")
    assert option.default == "127.0.0.1"
    shown = run([command, "--help"])
    assert "[default: 127.0.0.1]" in shown.stdout, shown.stdout


# -- the real entry point --------------------------------------------------------------------------


@pytest.mark.slow
def test_entry_point_in_a_real_process(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("skysync")
    assert exe.exists(), f"console script missing: {exe}"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SKYSYNC_")}
    env["SKYSYNC_DATABASE_URL"] = f"sqlite:///{tmp_path / 'proc.db'}"

    def skysync(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(exe), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )

    migrated = skysync("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert f"at revision {migration_head()}" in migrated.stdout

    ok = skysync("enqueue", "stock", "SKU-1", '{"qty": 0}')
    assert ok.returncode == 0, ok.stderr
    bad = skysync("enqueue", "stock", "SKU-1", '{"qty": -1}')
    assert bad.returncode == 1
    assert "payload.qty:" in bad.stderr

    status = skysync("status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["outbox"]["pending"] == 1
    assert sum(report["outbox"].values()) == 1

    module = subprocess.run(
        [sys.executable, "-m", "skysync", "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert module.returncode == 0, module.stderr
    assert module.stdout.strip() == "skysync, version 0.1.0"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SKYSYNC_SKYHUB_API_KEY", "CHANGE_ME"),
        ("SKYSYNC_SKYHUB_ACCOUNT_KEY", "change-me-please"),
        ("SKYSYNC_SKYHUB_API_KEY", "<your api key>"),
        ("SKYSYNC_FLOWER_BASIC_AUTH", "admin:CHANGE_ME"),
    ],
)
def test_placeholder_secret_is_refused_unless_the_target_is_an_emulator(
    variable: str, value: str
) -> None:
    refused = run(["check-config"], **{variable: value})
    assert refused.exit_code == 2
    assert f"{variable}: is still a placeholder" in refused.stderr
    assert value not in refused.output
    emulated = run(
        ["check-config"], SKYSYNC_SKYHUB_URL="http://127.0.0.1:8710", **{variable: value}
    )
    assert emulated.exit_code == 0, emulated.output
    real = run(["check-config"], **{variable: "admin:S3cr3t-9f" if "FLOWER" in variable else "k9"})
    assert real.exit_code == 0, real.output


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("SKYSYNC_LEASE_SECONDS", "inf", "finite"),
        ("SKYSYNC_SYNC_INTERVAL", "nan", "finite"),
        ("SKYSYNC_LEASE_SECONDS", "1000000", "less than or equal"),
        (
            "SKYSYNC_DATABASE_URL",
            "postgresql+psycopg://skysync:CHANGE_ME@db/skysync",
            "placeholder",
        ),
    ],
)
def test_out_of_range_and_placeholder_settings_are_refused(
    variable: str, value: str, says: str
) -> None:
    result = run(["check-config"], **{variable: value})
    assert result.exit_code == 2
    assert variable in result.stderr and says in result.stderr, result.stderr
    assert "CHANGE_ME" not in result.output
