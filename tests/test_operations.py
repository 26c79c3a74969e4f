"""Operations: logs without secrets and with context, Prometheus metrics about the data, and the
health verdict of `skysync status`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import free_port, wait_for_sandbox
from prometheus_client import generate_latest
from relay_helpers import cli_status, insert, relay_for, sandbox_config

from skysync.emulator import Sandbox
from skysync.entrypoints.cli import cli
from skysync.logs import redact
from skysync.relay import drain
from skysync.reporting.metrics import registry_for
from skysync.store.db import Database, session_scope
from skysync.store.models import RunLog, utcnow

BIN = Path(sys.executable).parent
API_KEY = "SECRET-API-KEY-7f3a9c"
ACCOUNT_KEY = "SECRET-ACCOUNT-KEY-51e0d2"
DB_PASSWORD = "SECRET-DB-PASSWORD-99"


def _with_password(db_url: str) -> str:
    """The same database URL with a password in it (trust auth ignores it; SQLite has none)."""
    if not db_url.startswith("postgresql"):
        return db_url
    url = sa.make_url(db_url).set(password=DB_PASSWORD)
    return url.render_as_string(hide_password=False)


@pytest.mark.slow
def test_a_refused_key_leaves_no_secret_in_the_logs(db_url: str, tmp_path: Path) -> None:
    """A real `skysync drain` process whose key SkyHub refuses: its whole output (JSON logs,
    error messages) holds neither SkyHub key nor the database password."""
    config = sandbox_config(email="ops@x", api_key="the-right-key", account_key="the-right-acct")
    with Sandbox(config) as sb:
        # product rows: the first request is about a SKU (a price or stock row of a SKU never
        # seen would first read SkyHub's catalogue, a request about no SKU in particular)
        insert(db_url, "product", "SKU-LOG-1", {"name": "Caneca", "price": 12.5})
        insert(db_url, "product", "SKU-LOG-2", {"name": "Copo", "qty": 3})
        env = {
            **os.environ,
            "SKYSYNC_DATABASE_URL": _with_password(db_url),
            "SKYSYNC_SKYHUB_URL": sb.base_url,
            "SKYSYNC_SKYHUB_EMAIL": "ops@x",
            "SKYSYNC_SKYHUB_API_KEY": API_KEY,
            "SKYSYNC_SKYHUB_ACCOUNT_KEY": ACCOUNT_KEY,
            "SKYSYNC_LOG_LEVEL": "DEBUG",
        }
        result = subprocess.run(
            [str(BIN / "skysync"), "drain"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        checked = subprocess.run(
            [str(BIN / "skysync"), "check-config"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    output = result.stdout + result.stderr + checked.stdout + checked.stderr
    assert result.returncode == 1, output  # rows left pending: the credentials were refused
    assert "credentials" in output
    for secret in (API_KEY, ACCOUNT_KEY, DB_PASSWORD):
        assert secret not in output
    # the logs are JSON lines off a terminal, and the relay's lines carry their context
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    relay_lines = [r for r in records if r["logger"] == "skysync.relay"]
    assert relay_lines, result.stderr
    assert all("claim_token" in r and "sku" in r for r in relay_lines), relay_lines


def test_redaction_masks_headers_keys_and_dsn_passwords() -> None:
    text = (
        "X-Api-Key: abc123 x-accountmanager-key=zzz9 api_key='k1' "
        "postgresql+psycopg://skysync:pw0rd@db:5432/skysync redis://:r3dis@cache:6379/0"
    )
    cleaned = redact(text)
    for secret in ("abc123", "zzz9", "k1'", "pw0rd", "r3dis"):
        assert secret not in cleaned
    assert "postgresql+psycopg://skysync:***@db:5432/skysync" in cleaned


def test_metrics_report_the_data(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        insert(db_url, "product", "M-1", {"name": "Caneca", "price": 10.0, "qty": 1})
        insert(db_url, "price", "M-1", {"price": 11.0})
        insert(db_url, "price", "M-404", {"price": 5.0})  # SkyHub has no such SKU: rejected
        insert(db_url, "price", "M-BAD", {"price": 0})  # invalid: rejected before sending
        drain(relay.deps)
        insert(db_url, "stock", "M-1", {"qty": 2})  # still pending
    text = generate_latest(registry_for(Database.for_url(db_url))).decode()

    def value(line_start: str) -> float:
        for line in text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{line_start} not in metrics:\n{text}")

    # the product row folded into the newer price row of the same SKU: one POST carried both
    assert value('skysync_outbox_rows{account="default",kind="product",state="superseded"}') == 1
    assert value('skysync_outbox_rows{account="default",kind="price",state="sent"}') == 1
    assert value('skysync_outbox_rows{account="default",kind="price",state="rejected"}') == 2
    assert value('skysync_outbox_rows{account="default",kind="stock",state="pending"}') == 1
    assert value('skysync_outbox_rejected_rows{account="default"}') == 2
    assert value('skysync_outbox_dead_rows{account="default"}') == 0
    assert value('skysync_outbox_oldest_due_pending_age_seconds{account="default"}') >= 0
    assert value('skysync_last_relay_timestamp_seconds{account="default"}') > time.time() - 120
    assert (
        value(
            'skysync_skyhub_requests_total{account="default",method="PUT",route="/products/{sku}",status="404"}'
        )
        == 1
    )
    assert (
        value(
            'skysync_skyhub_requests_total{account="default",method="POST",route="/products",status="201"}'
        )
        == 1
    )
    assert value('skysync_skyhub_rate_limited_total{account="default"}') == 0
    assert value('skysync_orders_waiting_for_erp{account="default"}') == 0


@pytest.mark.slow
def test_metrics_command_serves_prometheus_text(db_url: str, tmp_path: Path) -> None:
    insert(db_url, "price", "SRV-1", {"price": 1.0})
    port = free_port()
    env = {**os.environ, "SKYSYNC_DATABASE_URL": db_url}
    proc = subprocess.Popen(
        [str(BIN / "skysync"), "metrics", "--port", str(port), "--address", "127.0.0.1"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert response.status_code == 200
        assert (
            'skysync_outbox_rows{account="default",kind="price",state="pending"} 1.0'
            in response.text
        )
        # `docker stop` sends SIGTERM: a clean exit 0, not death by the signal (143 in a shell)
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_status_is_healthy_then_flags_an_old_due_row(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, report = cli_status(db_url)
    assert (code, report["healthy"], report["problems"]) == (0, True, [])
    row_id = insert(db_url, "price", "OLD-1", {"price": 10.0})
    with session_scope(db_url) as session:
        session.execute(
            sa.text("UPDATE skysync_outbox SET created_at = :t, available_at = :t WHERE id = :i"),
            {"t": (utcnow() - timedelta(hours=2)).replace(tzinfo=None), "i": row_id},
        )
    code, report = cli_status(db_url)  # default threshold: 2 x 900 s = 30 min
    assert code == 1
    assert any("oldest due pending row" in p for p in report["problems"]), report
    code, _ = cli_status(db_url, "--max-pending-age", "10800")
    assert code == 0


def test_status_flags_a_beat_that_stopped(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with session_scope(db_url) as session:
        session.add(
            RunLog(
                kind="relay",
                started_at=utcnow() - timedelta(seconds=100),
                finished_at=utcnow() - timedelta(seconds=99),
                summary={},
            )
        )
    code, report = cli_status(db_url, SKYSYNC_SYNC_INTERVAL="60")  # two intervals: 120 s
    assert code == 0, report
    code, report = cli_status(db_url, SKYSYNC_SYNC_INTERVAL="30")  # two intervals: 60 s
    assert code == 1
    assert any("is beat running" in p for p in report["problems"]), report
    human = CliRunner().invoke(
        cli, ["status"], env={"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_SYNC_INTERVAL": "30"}
    )
    assert human.exit_code == 1 and "UNHEALTHY" in human.output


def test_relay_lines_carry_the_task_id_from_every_delivery_thread(
    db_url: str, sb: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    from skysync.logs import ContextFilter, log_context

    caplog.handler.addFilter(ContextFilter())
    caplog.set_level(logging.INFO, logger="skysync.relay")
    for n in range(6):  # six families: five of them run in the pool's threads
        insert(db_url, "product", f"TID-{n}", {"name": f"Produto {n}", "price": 10.0})
    with relay_for(db_url, sb, concurrency=4) as relay, log_context(task_id="task-42"):
        relay.run_batch()
    lines = [r for r in caplog.records if r.name == "skysync.relay" and "TID-" in r.getMessage()]
    assert len(lines) == 6
    assert {getattr(r, "task_id", None) for r in lines} == {"task-42"}
    assert all(getattr(r, "sku", "").startswith("TID-") for r in lines)


def test_configured_secret_values_are_masked_wherever_they_appear() -> None:
    from skysync.logs import RedactingFilter

    record = logging.makeLogRecord(
        {"msg": "headers %r then X-Api-Key %s", "args": ([(b"X-Api-Key", b"S3CRET-k")], "S3CRET-k")}
    )
    RedactingFilter(["S3CRET-k"]).filter(record)
    assert "S3CRET-k" not in record.getMessage()


@pytest.mark.slow
def test_sandbox_command_enforces_the_configured_credentials(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SKYSYNC_")},
        "SKYSYNC_SKYHUB_EMAIL": "ops@x",
        "SKYSYNC_SKYHUB_API_KEY": "right-key-1",
        "SKYSYNC_SKYHUB_ACCOUNT_KEY": "right-acct-1",
    }
    proc = subprocess.Popen(
        [str(BIN / "skysync"), "sandbox", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_sandbox(base, proc)
        headers = {"X-User-Email": "ops@x", "X-Accountmanager-Key": "right-acct-1"}
        wrong = httpx.get(f"{base}/products/X", headers={**headers, "X-Api-Key": "wrong"})
        right = httpx.get(f"{base}/products/X", headers={**headers, "X-Api-Key": "right-key-1"})
        assert (wrong.status_code, right.status_code) == (401, 404)
        proc.terminate()  # SIGTERM, as `docker stop` sends: a clean exit 0
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_terminal_lines_drop_celerys_per_task_chatter_json_keeps_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On a terminal skysync's own lines lead: Celery's 'Task ... received/succeeded' lines
    are dropped there (warnings still pass); JSON logs keep everything."""
    from skysync.logs import configure_logging

    def emit() -> None:
        logging.getLogger("celery.worker.strategy").info("Task skysync.deliver_chunk[1] received")
        logging.getLogger("celery.app.trace").info("Task skysync.deliver_chunk[1] succeeded")
        logging.getLogger("celery.app.trace").warning("Task skysync.deliver_chunk[2] retry")
        logging.getLogger("skysync.relay").info("sku DEMO-1: sent")

    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger("httpx").level)
    try:
        configure_logging("INFO", json_lines=False)
        emit()
        text = capsys.readouterr().err
        assert "sku DEMO-1: sent" in text
        assert "retry" in text
        assert "received" not in text and "succeeded" not in text

        configure_logging("INFO", json_lines=True)
        emit()
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        assert [line["message"].split()[-1] for line in lines] == [
            "received",
            "succeeded",
            "retry",
            "sent",
        ]
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        logging.getLogger("httpx").setLevel(saved[2])
