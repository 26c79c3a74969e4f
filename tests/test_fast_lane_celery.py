"""The fast lane through REAL Celery workers (``celery worker --pool=threads``) on a real Redis
broker and rate limiter, a fresh PostgreSQL database with the 0006 trigger, and the SkyHub
emulator over HTTP with SkyHub's limits (9/s per bucket). Rows are written with plain INSERTs, as
the ERP writes them; no batch is ever triggered unless a test says so (these workers run no beat).

Checked: a stock-out goes out without waiting for the batch; a flood of 1,000 stock-outs over a
few SKUs costs one request per SKU; two workers (one watcher leads, the other stands by) keep
under the shared limiter (no 429); the lane off changes nothing (no watcher, rows wait for the
batch, which sends them as always).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery_helpers import Worker, clean_env, flush_redis, run_skysync, wait_for
from conftest import empty_tables, migrated_pg_database, sandbox_fixture
from relay_helpers import run_count

from skysync.emulator import Sandbox, SandboxConfig
from skysync.skyhub.client import SkyHubClient
from skysync.store.db import get_engine

pytestmark = pytest.mark.celery  # every test here starts real workers

BROKER_DB, LIMITER_DB = 6, 7  # this machine's Redis databases for this test (flushed)
CREDS = {"email": "lane@example.com", "api_key": "LANE-API-KEY-3e1", "account_key": "LANE-ACCT-9b"}
SKUS = [f"LANE-{i:03d}" for i in range(60)]
WATCHER_LINE = "fast lane on (stockouts"


@pytest.fixture(scope="module")
def lane_db() -> Iterator[str]:
    with migrated_pg_database("skysync_lane") as url:
        yield url


# SkyHub with its limits (9/s per bucket) and the products the rows update.
sandbox = sandbox_fixture(
    SandboxConfig, name="sandbox", scope="module", seed=5, link_delay=None, **CREDS
)


def _flush_redis() -> None:
    flush_redis(BROKER_DB, LIMITER_DB)


@pytest.fixture
def env(lane_db: str, sandbox: Sandbox) -> Iterator[dict[str, str]]:
    empty_tables(lane_db)
    _flush_redis()
    sandbox.reset()
    sandbox.configure(rate_limits_enabled=False, latency_ms=0)
    with SkyHubClient(sandbox.base_url, **CREDS) as client:
        for sku in SKUS:
            client.create_product({"sku": sku, "name": f"Produto {sku}", "qty": 5, "price": 10})
    sandbox.configure(rate_limits_enabled=True)
    yield clean_env(
        {
            "SKYSYNC_DATABASE_URL": lane_db,
            "SKYSYNC_BROKER_URL": f"redis://127.0.0.1:6379/{BROKER_DB}",
            "SKYSYNC_REDIS_URL": f"redis://127.0.0.1:6379/{LIMITER_DB}",
            "SKYSYNC_SKYHUB_URL": sandbox.base_url,
            "SKYSYNC_SKYHUB_EMAIL": CREDS["email"],
            "SKYSYNC_SKYHUB_API_KEY": CREDS["api_key"],
            "SKYSYNC_SKYHUB_ACCOUNT_KEY": CREDS["account_key"],
            "SKYSYNC_LEASE_SECONDS": "30",
            "SKYSYNC_LOG_LEVEL": "INFO",
            "SKYSYNC_FAST_LANE": "stockouts",
        }
    )
    _flush_redis()


def _insert(url: str, rows: list[tuple[str, str, dict]]) -> list[int]:
    """One plain INSERT transaction, as the ERP writes rows."""
    sql = sa.text(
        "INSERT INTO skysync_outbox (kind, ref, payload) "
        "VALUES (:k, :r, CAST(:p AS jsonb)) RETURNING id"
    )
    with get_engine(url).begin() as conn:
        return [
            int(conn.execute(sql, {"k": k, "r": r, "p": json.dumps(p)}).scalar_one())
            for k, r, p in rows
        ]


def _states(url: str) -> dict[str, int]:
    with get_engine(url).connect() as conn:
        query = "SELECT state, count(*) FROM skysync_outbox GROUP BY state"
        return dict(conn.exec_driver_sql(query).all())


def _row_states(url: str) -> dict[int, str]:
    with get_engine(url).connect() as conn:
        return dict(conn.exec_driver_sql("SELECT id, state FROM skysync_outbox").all())


def _open(url: str) -> int:
    counts = _states(url)
    return counts.get("pending", 0) + counts.get("in_flight", 0)


def _puts(sandbox: Sandbox) -> list[dict]:
    return [
        e for e in sandbox.request_log() if e["method"] == "PUT" and e["route"] == "/products/{sku}"
    ]


def _wait_final(url: str, worker: Worker, timeout: float = 60) -> None:
    try:
        wait_for(lambda: _open(url) == 0, timeout, "every row to be final")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_states(url)}\nworker:\n{worker.output}") from None


def test_lane_sends_a_stockout_without_the_batch(
    env: dict[str, str], lane_db: str, sandbox: Sandbox, start_worker: Callable
) -> None:
    worker = start_worker(env)
    wait_for(lambda: "fast lane: listen" in worker.output, 20, "the watcher to LISTEN")
    [out] = _insert(lane_db, [("stock", SKUS[0], {"qty": 0})])
    [other] = _insert(lane_db, [("stock", SKUS[1], {"qty": 3})])  # not a stock-out
    wait_for(lambda: sandbox.state()["products"][SKUS[0]]["qty"] == 0, 30, "the stock-out")
    wait_for(lambda: _row_states(lane_db)[out] == "sent", 10, "the row to be recorded sent")
    assert _row_states(lane_db)[other] == "pending"
    assert run_count(lane_db, "relay") == 0 and run_count(lane_db, "fast_lane") >= 1
    assert sandbox.state()["products"][SKUS[1]]["qty"] == 5
    assert "skysync.relay_fast[" in worker.output


def test_a_flood_of_stockouts_costs_one_request_per_sku(
    env: dict[str, str], lane_db: str, sandbox: Sandbox, start_worker: Callable
) -> None:
    """1,000 stock-outs over 4 SKUs, in 20 ERP transactions within about a second."""
    worker = start_worker(env)
    wait_for(lambda: "fast lane: listen" in worker.output, 20, "the watcher to LISTEN")
    hot = SKUS[:4]
    before = len(_puts(sandbox))
    for burst in range(20):
        _insert(lane_db, [("stock", hot[(burst + i) % 4], {"qty": 0}) for i in range(50)])
        time.sleep(0.05)
    _wait_final(lane_db, worker)
    puts = _puts(sandbox)[before:]
    per_sku = {sku: sum(1 for e in puts if e["path"].endswith(sku)) for sku in hot}
    assert per_sku == dict.fromkeys(hot, 1), per_sku
    assert all(sandbox.state()["products"][sku]["qty"] == 0 for sku in hot)
    counts = _states(lane_db)
    assert counts.get("sent", 0) >= 4 and sum(counts.values()) == 1000, counts
    assert run_count(lane_db, "relay") == 0


def test_two_workers_keep_the_lane_under_the_shared_limit(
    env: dict[str, str], lane_db: str, sandbox: Sandbox, start_worker: Callable
) -> None:
    """60 stock-outs on 60 SKUs at once: more than SkyHub's 9/s, through two workers whose
    threads share the Redis limiter. Exactly one watcher LISTENs; SkyHub never answers 429."""
    workers = [start_worker(env), start_worker(env)]
    wait_for(
        lambda: (
            sum("fast lane: listen" in w.output for w in workers) == 1
            and sum("standing by" in w.output for w in workers) == 1
        ),
        30,
        "one watcher to LISTEN and the other to stand by",
    )
    before = len(sandbox.request_log())
    _insert(lane_db, [("stock", sku, {"qty": 0}) for sku in SKUS])
    _wait_final(lane_db, workers[0], 90)
    log = sandbox.request_log()[before:]
    assert [e for e in log if e["status"] == 429] == []
    assert _states(lane_db) == {"sent": len(SKUS)}
    assert all(sandbox.state()["products"][sku]["qty"] == 0 for sku in SKUS)
    assert sum("skysync.relay_fast[" in w.output for w in workers) >= 1


def test_lane_off_changes_nothing(
    env: dict[str, str], lane_db: str, sandbox: Sandbox, start_worker: Callable
) -> None:
    """SKYSYNC_FAST_LANE=off: no watcher, no lane task; the trigger's NOTIFY falls on nobody,
    the stock-out waits for the batch, and the batch sends it as always."""
    off = {**env, "SKYSYNC_FAST_LANE": "off"}
    worker = start_worker(off)
    before = len(sandbox.request_log())
    _insert(lane_db, [("stock", SKUS[0], {"qty": 0}), ("price", SKUS[0], {"price": 12})])
    time.sleep(3)  # three of the lane's polls, had it been on
    assert _states(lane_db) == {"pending": 2}
    assert len(sandbox.request_log()) == before
    run_skysync(["trigger"], off, Path(worker.cwd))
    _wait_final(lane_db, worker)
    assert _states(lane_db) in ({"sent": 2}, {"sent": 1, "superseded": 1})
    product = sandbox.state()["products"][SKUS[0]]
    assert (product["qty"], product["price"]) == (0, 12)
    assert run_count(lane_db, "relay") == 1 and run_count(lane_db, "fast_lane") == 0
    assert "fast lane" not in worker.output  # no watcher started
    assert "skysync.relay_fast[" not in worker.output  # no lane task ran
