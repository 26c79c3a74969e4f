"""The scheduled reconciliation for real: beat's schedule as a fresh process builds it from
SKYSYNC_* settings, and the ``skysync.reconcile`` task run by a REAL worker process (threads
pool, Redis broker and limiter, PostgreSQL) against the emulator over HTTP: it finds drift made
behind skysync's back and, when SKYSYNC_RECONCILE_REPAIR is on, enqueues the correction that the
worker's next batch delivers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from celery_helpers import Worker, clean_env, run_python, run_skysync, wait_for
from conftest import create_pg_database, drop_pg_database, sandbox_fixture
from relay_helpers import behind_the_back, create_product, insert, relay_for, row

from skysync.emulator import Sandbox
from skysync.store import runs, sync_errors
from skysync.store.db import migrate, session_scope
from skysync.store.models import OutboxRow

pytestmark = pytest.mark.celery  # real workers and beat's schedule

BROKER_DB, LIMITER_DB = 9, 12


@pytest.fixture
def pg() -> Iterator[str]:
    url = create_pg_database("skysync_reconcile_celery")
    migrate(url)
    yield url
    drop_pg_database(url)


sb = sandbox_fixture(rate_limits_enabled=True)


@pytest.fixture
def env(pg: str, sb: Sandbox) -> Iterator[dict[str, str]]:
    for db in (BROKER_DB, LIMITER_DB):
        redis.Redis(port=6379, db=db).flushdb()
    yield clean_env(
        {
            "SKYSYNC_DATABASE_URL": pg,
            "SKYSYNC_BROKER_URL": f"redis://127.0.0.1:6379/{BROKER_DB}",
            "SKYSYNC_REDIS_URL": f"redis://127.0.0.1:6379/{LIMITER_DB}",
            "SKYSYNC_SKYHUB_URL": sb.base_url,
            "SKYSYNC_RECONCILE_INTERVAL": "3600",
            "SKYSYNC_RECONCILE_REPAIR": "true",
        }
    )
    for db in (BROKER_DB, LIMITER_DB):
        redis.Redis(port=6379, db=db).flushdb()


def test_beat_schedules_reconcile_from_the_settings(env: dict[str, str], tmp_path: Path) -> None:
    code = (
        "from skysync.celery_app import app\n"
        "entry = app.conf.beat_schedule['reconcile']\n"
        "print(entry['task'], entry['schedule'].total_seconds())\n"
    )
    assert run_python(code, env, tmp_path).split() == ["skysync.reconcile", "3600.0"]
    default = {k: v for k, v in env.items() if k != "SKYSYNC_RECONCILE_INTERVAL"}
    assert run_python(code, default, tmp_path).split() == ["skysync.reconcile", "86400.0"]
    errors_code = code.replace("'reconcile'", "'pull-sync-errors'")
    assert run_python(errors_code, env, tmp_path).split() == ["skysync.pull_sync_errors", "3600.0"]
    shown = run_skysync(["check-config"], env, tmp_path)
    assert '"reconcile_interval": 3600.0' in shown
    assert '"reconcile_repair": true' in shown
    assert '"sync_errors_interval": 3600.0' in shown


def test_a_real_worker_reconciles_and_repairs(
    env: dict[str, str], pg: str, sb: Sandbox, tmp_path: Path
) -> None:
    with relay_for(pg, sb) as relay:
        create_product(pg, relay, "CEL-R1", price=10.0, qty=5)
        create_product(pg, relay, "CEL-R2", price=20.0, qty=6)
    behind_the_back(sb, "CEL-R2", qty=60)
    worker = Worker(env, tmp_path)
    try:
        worker.start()
        run_python("from skysync.tasks import reconcile\nreconcile.delay()\n", env, tmp_path)

        def reconciled() -> bool:
            with session_scope(pg) as session:
                return runs.last(session, "reconcile") is not None

        wait_for(reconciled, 60, "the worker's reconciliation")
        with session_scope(pg) as session:
            last = runs.last(session, "reconcile")
            assert last is not None
            summary, error = last.summary, last.error
        assert error is None
        assert (summary["skus_compared"], summary["drift"]) == (2, 1)
        assert summary["drift_fields"] == {"qty": 1}
        assert summary["repaired_rows"] == 1
        with session_scope(pg) as session:
            fixes = session.scalars(
                sa.select(OutboxRow.id).where(OutboxRow.origin == "reconcile")
            ).all()
        assert len(fixes) == 1
        fix_id = fixes[0]
        assert row(pg, fix_id).payload == {"qty": 6}

        run_skysync(["trigger"], env, tmp_path)
        wait_for(lambda: row(pg, fix_id).state == "sent", 60, "the correction to be sent")
        assert sb.state()["products"]["CEL-R2"]["qty"] == 6
        assert "skysync.reconcile" in worker.output
    finally:
        worker.stop()
    insert(pg, "stock", "CEL-R1", {"qty": 1})  # the outbox still takes ERP rows afterwards


def test_a_real_worker_pulls_skyhubs_own_errors(
    env: dict[str, str], pg: str, sb: Sandbox, tmp_path: Path
) -> None:
    sb.add_sync_error(
        "products",
        {
            "entity_id": "CEL-E1",
            "error_category_code": "link_b2w_products",
            "error_code": "ean_null",
            "message": "EAN vazio",
        },
    )
    worker = Worker(env, tmp_path)
    try:
        worker.start()
        run_python(
            "from skysync.tasks import pull_sync_errors\npull_sync_errors.delay()\n", env, tmp_path
        )

        def pulled() -> bool:
            with session_scope(pg) as session:
                return runs.last(session, "pull_sync_errors") is not None

        wait_for(pulled, 60, "the worker's pull of SkyHub's errors")
    finally:
        worker.stop()
    with session_scope(pg) as session:
        found = [sync_errors.as_dict(e) for e in sync_errors.listed(session)]
    assert [(e["entity_id"], e["error_code"], e["message"]) for e in found] == [
        ("CEL-E1", "ean_null", "EAN vazio")
    ]
