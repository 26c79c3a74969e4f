"""The stock reservation through a REAL Celery worker (``celery worker --pool=threads``),
configured only by SKYSYNC_* variables, on a real Redis broker and rate limiter, a fresh
PostgreSQL database and the emulator over HTTP with SkyHub's limits. The ERP writes with plain
SQL, as it does; the worker pulls the orders (``skysync.pull_orders``, as beat sends it) and
sends what the reservation changed; nothing else runs but what the test asks for.

The story of issue 22: the ERP writes stock 5; an order for 2 arrives; before the ERP consumes
it, the ERP writes stock 5 again (a recount). SkyHub must end with 3, not 5. Then an order takes
the rest: with the fast lane on, 0 goes out without waiting for a batch."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery_helpers import Worker, clean_env, flush_redis, run_python, run_skysync, wait_for
from conftest import SandboxAdmin, empty_tables, migrated_pg_database, sandbox_fixture
from relay_helpers import run_count

from skysync.emulator import Sandbox, SandboxConfig
from skysync.skyhub.client import SkyHubClient
from skysync.store.db import get_engine

pytestmark = pytest.mark.celery  # starts a real worker

BROKER_DB, LIMITER_DB = 4, 5  # this machine's Redis databases for this test (flushed)
CREDS = {"email": "res@example.com", "api_key": "RES-API-KEY-77c", "account_key": "RES-ACCT-1d"}
SKU = "LIVRO-RES-1"
PULL = "from skysync.tasks import pull_orders; pull_orders.delay()"

sandbox = sandbox_fixture(SandboxConfig, name="sandbox", scope="module", link_delay=None, **CREDS)


@pytest.fixture(scope="module")
def reserve_db() -> Iterator[str]:
    with migrated_pg_database("skysync_reserve") as url:
        yield url


@pytest.fixture
def env(reserve_db: str, sandbox: Sandbox) -> Iterator[dict[str, str]]:
    empty_tables(reserve_db)
    flush_redis(BROKER_DB, LIMITER_DB)
    sandbox.reset()
    with SkyHubClient(sandbox.base_url, **CREDS) as client:
        client.create_product({"sku": SKU, "name": "Livro", "qty": 0, "price": 40.0})
    yield clean_env(
        {
            "SKYSYNC_DATABASE_URL": reserve_db,
            "SKYSYNC_BROKER_URL": f"redis://127.0.0.1:6379/{BROKER_DB}",
            "SKYSYNC_REDIS_URL": f"redis://127.0.0.1:6379/{LIMITER_DB}",
            "SKYSYNC_SKYHUB_URL": sandbox.base_url,
            "SKYSYNC_SKYHUB_EMAIL": CREDS["email"],
            "SKYSYNC_SKYHUB_API_KEY": CREDS["api_key"],
            "SKYSYNC_SKYHUB_ACCOUNT_KEY": CREDS["account_key"],
            "SKYSYNC_RESERVE_OPEN_ORDERS": "true",
            "SKYSYNC_FAST_LANE": "stockouts",
            "SKYSYNC_LOG_LEVEL": "INFO",
        }
    )
    flush_redis(BROKER_DB, LIMITER_DB)


def erp_stock(url: str, qty: int) -> int:
    """The ERP's plain INSERT of a stock row."""
    sql = sa.text(
        "INSERT INTO skysync_outbox (kind, ref, payload) "
        "VALUES ('stock', :r, CAST(:p AS jsonb)) RETURNING id"
    )
    with get_engine(url).begin() as conn:
        return int(conn.execute(sql, {"r": SKU, "p": json.dumps({"qty": qty})}).scalar_one())


def state_of(url: str, row_id: int) -> tuple[str, str | None]:
    with get_engine(url).connect() as conn:
        query = sa.text("SELECT state, reason FROM skysync_outbox WHERE id = :i")
        state, reason = conn.execute(query, {"i": row_id}).one()
        return state, reason


def reservation_rows(url: str) -> list[int]:
    with get_engine(url).connect() as conn:
        query = "SELECT id FROM skysync_outbox WHERE origin = 'reservation' ORDER BY id"
        return list(conn.exec_driver_sql(query).scalars())


def skyhub_qty(sandbox: Sandbox) -> int:
    return int(sandbox.state()["products"][SKU]["qty"])


def queue_order(sandbox: Sandbox, code: str, qty: int) -> None:
    body = {"code": code, "status": "payment_received", "items": [{"id": SKU, "qty": qty}]}
    answer = SandboxAdmin(sandbox.base_url).seed_order(body)
    assert answer.status_code in (200, 201), answer.text


def test_the_recount_story_through_a_real_worker(
    env: dict[str, str],
    reserve_db: str,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    worker = start_worker(env)
    wait_for(lambda: "fast lane: listen" in worker.output, 20, "the lane's watcher to LISTEN")

    # the ERP writes stock 5; a batch sends it
    first = erp_stock(reserve_db, 5)
    run_skysync(["trigger"], env, tmp_path)
    wait_for(lambda: state_of(reserve_db, first)[0] == "sent", 30, "stock 5 to be sent")
    assert skyhub_qty(sandbox) == 5

    # an order for 2 arrives: the worker pulls it, its reservation row goes out by the lane
    queue_order(sandbox, "Lojas Americanas-1700000000201-01", 2)
    batches = run_count(reserve_db, "relay")
    run_python(PULL, env, tmp_path)
    wait_for(lambda: len(reservation_rows(reserve_db)) == 1, 30, "the reservation row")
    [reserved] = reservation_rows(reserve_db)
    wait_for(lambda: skyhub_qty(sandbox) == 3, 30, "SkyHub to hold 3")
    assert state_of(reserve_db, reserved)[0] == "sent"
    assert run_count(reserve_db, "relay") == batches  # the lane took it, not a batch

    # before the ERP consumes the order, it writes stock 5 again (a recount)
    recount = erp_stock(reserve_db, 5)
    run_skysync(["trigger"], env, tmp_path)
    wait_for(lambda: state_of(reserve_db, recount)[0] != "pending", 30, "the recount to go")
    state, reason = state_of(reserve_db, recount)
    assert (state, skyhub_qty(sandbox)) == ("withheld", 3), (state, reason, worker.output[-3000:])
    assert "2 reserved by order Lojas Americanas-1700000000201-01" in (reason or "")

    # an order for the other 3: the lane sends 0 without waiting for a batch
    batches = run_count(reserve_db, "relay")
    queue_order(sandbox, "Lojas Americanas-1700000000202-01", 3)
    asked = time.monotonic()
    run_python(PULL, env, tmp_path)
    wait_for(lambda: skyhub_qty(sandbox) == 0, 30, "SkyHub to hold 0")
    took = time.monotonic() - asked
    print(f"the order's stock-out reached SkyHub {took:.2f} s after the pull was asked for")
    assert run_count(reserve_db, "relay") == batches  # no batch ran: the lane sent it
    assert run_count(reserve_db, "fast_lane") >= 2
    assert skyhub_qty(sandbox) == 0
    assert CREDS["api_key"] not in worker.output
