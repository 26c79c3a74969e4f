"""Several accounts through a REAL Celery worker (issue #21): a worker configured only by
SKYSYNC_* variables and an accounts file, on a real Redis broker and a fresh PostgreSQL database,
sending to the emulator in this process over HTTP. SkyHub refuses loja-norte's key: its rows
wait with the reason, while loja-sul's and the default account's (an ERP row that names no
account) go out, each to its own catalogue; the task results name each account (what Flower
shows), and no key reaches the worker's output. Once the key works again, loja-norte's rows go
out at its next batch."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from celery_helpers import Worker, clean_env, flush_redis, run_python, run_skysync, wait_for
from conftest import empty_tables, migrated_pg_database, sandbox_fixture

from skysync.emulator import Sandbox, SandboxConfig
from skysync.store.db import get_engine

pytestmark = pytest.mark.celery  # starts a real worker

BROKER_DB, LIMITER_DB = 8, 9
SUL = ("loja-sul", "sul@lojas.test", "KEY-SUL-CELERY-61aa")
NORTE = ("loja-norte", "norte@lojas.test", "KEY-NORTE-CELERY-93fe")
ACCOUNT_KEY = "ACCOUNT-MANAGER-CELERY-0c2d"

sandbox = sandbox_fixture(SandboxConfig, name="sandbox", scope="module", link_delay=None)


@pytest.fixture(scope="module")
def accounts_db() -> Iterator[str]:
    with migrated_pg_database("skysync_acc_celery") as url:
        yield url


@pytest.fixture
def env(accounts_db: str, sandbox: Sandbox, tmp_path: Path) -> Iterator[dict[str, str]]:
    empty_tables(accounts_db)
    sandbox.reset()
    flush_redis(BROKER_DB, LIMITER_DB)
    path = tmp_path / "accounts.toml"
    path.write_text(
        "".join(
            f'[accounts.{name}]\nemail = "{email}"\napi_key = "{key}"\n\n'
            for name, email, key in (SUL, NORTE)
        )
    )
    yield clean_env(
        {
            "SKYSYNC_DATABASE_URL": accounts_db,
            "SKYSYNC_BROKER_URL": f"redis://127.0.0.1:6379/{BROKER_DB}",
            "SKYSYNC_REDIS_URL": f"redis://127.0.0.1:6379/{LIMITER_DB}",
            "SKYSYNC_SKYHUB_URL": sandbox.base_url,
            "SKYSYNC_SKYHUB_ACCOUNT_KEY": ACCOUNT_KEY,
            "SKYSYNC_ACCOUNTS_FILE": str(path),
            "SKYSYNC_LOG_LEVEL": "INFO",
        }
    )
    flush_redis(BROKER_DB, LIMITER_DB)


def insert(url: str, account: str | None, ref: str, qty: int) -> None:
    columns, values = ("account, ", ":a, ") if account else ("", "")
    with get_engine(url).begin() as conn:
        conn.execute(
            sa.text(
                f"INSERT INTO skysync_outbox ({columns}kind, ref, payload) "
                f"VALUES ({values}'stock', :r, CAST(:p AS jsonb))"
            ),
            {"a": account, "r": ref, "p": json.dumps({"qty": qty})},
        )


def by_account(url: str) -> dict[str, list[tuple[str, str | None]]]:
    with get_engine(url).connect() as conn:
        found: dict[str, list[tuple[str, str | None]]] = {}
        query = "SELECT account, state, reason FROM skysync_outbox ORDER BY id"
        for account, state, reason in conn.execute(sa.text(query)):
            found.setdefault(account, []).append((state, reason))
    return found


def qty_on_skyhub(sandbox: Sandbox, account: str) -> dict[str, int | None]:
    return {sku: p.get("qty") for sku, p in sandbox.state(account=account)["products"].items()}


def test_a_refused_key_stops_only_its_account_on_a_real_worker(
    env: dict[str, str],
    accounts_db: str,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    for name, email, key in (SUL, NORTE):
        sandbox.add_account(name, email, key)
    for account in ("default", SUL[0], NORTE[0]):
        sandbox.seed_products(
            [{"sku": f"W-{i}", "name": "Camisa", "price": 50.0, "qty": 0} for i in range(4)],
            account=account,
        )
    sandbox.revoke_account(NORTE[0])
    for i in range(4):
        insert(accounts_db, SUL[0], f"W-{i}", 10 + i)
        insert(accounts_db, NORTE[0], f"W-{i}", 20 + i)
        insert(accounts_db, None, f"W-{i}", 30 + i)  # an ERP that names no account: default

    worker = start_worker(env)
    run_skysync(["trigger"], env, tmp_path)

    def settled() -> bool:
        rows = by_account(accounts_db)
        stopped = [r for r in rows.get(NORTE[0], []) if "refused the credentials" in (r[1] or "")]
        done = all(s == "sent" for a in ("default", SUL[0]) for s, _r in rows.get(a, []))
        return done and len(stopped) == 4

    wait_for(settled, 60, "loja-sul's and default's rows sent, loja-norte's stopped")
    assert qty_on_skyhub(sandbox, SUL[0]) == {f"W-{i}": 10 + i for i in range(4)}
    assert qty_on_skyhub(sandbox, "default") == {f"W-{i}": 30 + i for i in range(4)}
    assert qty_on_skyhub(sandbox, NORTE[0]) == {f"W-{i}": 0 for i in range(4)}
    assert {s for s, _r in by_account(accounts_db)[NORTE[0]]} == {"pending"}
    # each account's batch is its own task, and its result names it (what Flower shows)
    wait_for(lambda: "'account': 'loja-norte'" in worker.output, 10, "loja-norte's result")
    for account in ("default", SUL[0], NORTE[0]):
        assert f"'account': '{account}'" in worker.output
    for _name, _email, key in (SUL, NORTE):
        assert key not in worker.output
    assert ACCOUNT_KEY not in worker.output

    # the key works again: loja-norte's rows go at its next batch, with their own values
    sandbox.restore_account(NORTE[0])
    with get_engine(accounts_db).begin() as conn:
        conn.execute(sa.text("UPDATE skysync_outbox SET available_at = now()"))
    run_skysync(["trigger"], env, tmp_path)
    wait_for(
        lambda: qty_on_skyhub(sandbox, NORTE[0]) == {f"W-{i}": 20 + i for i in range(4)},
        60,
        "loja-norte's rows on its own catalogue",
    )
    assert qty_on_skyhub(sandbox, SUL[0]) == {f"W-{i}": 10 + i for i in range(4)}


def test_the_broker_holds_two_chunks_of_an_account_at_most(
    env: dict[str, str], accounts_db: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    """No worker: a batch of loja-sul's 150 keys queues 2 deliver_chunk tasks, naming the
    account, and keeps the rest in skysync_chunk for their turn."""
    sandbox.add_account(*SUL)
    sandbox.seed_products(
        [{"sku": f"Q-{i:03d}", "name": "x", "price": 9.0} for i in range(150)], account=SUL[0]
    )
    for i in range(150):
        insert(accounts_db, SUL[0], f"Q-{i:03d}", i)
    code = "from skysync.tasks import relay_batch; print(relay_batch.run(account='loja-sul'))"
    out = run_python(code, env, tmp_path)
    assert "'account': 'loja-sul'" in out
    broker = redis.Redis(host="127.0.0.1", port=6379, db=BROKER_DB)
    try:
        queued = [json.loads(m) for m in broker.lrange("celery", 0, -1)]
    finally:
        broker.close()
    chunks = [m for m in queued if m["headers"]["task"] == "skysync.deliver_chunk"]
    assert len(chunks) == 2
    assert all("loja-sul" in m["headers"]["kwargsrepr"] for m in chunks)
    with get_engine(accounts_db).connect() as conn:
        waiting = conn.execute(
            sa.text("SELECT count(*) FROM skysync_chunk WHERE sent_at IS NULL")
        ).scalar_one()
    assert waiting >= 4
