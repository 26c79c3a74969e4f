"""What the console's tests share: its users and the secrets no page may show, the settings of a
console on a test database and emulator, and a story that leaves a database as a day of skysync
would, through the real relay wherever it can (products sent, a price held by the guard, a bad
row rejected, SkyHub's errors pulled, an order pulled with a step written back, a drift found by
a reconciliation), and only the states the relay takes hours to reach (dead, withheld) set by
hand."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import uvicorn
from relay_helpers import behind_the_back, insert, make_client, notice, relay_for, row

import skysync.config
from skysync.emulator import Sandbox
from skysync.relay import drain
from skysync.relay.pull_orders import pull_orders
from skysync.relay.reconcile import reconcile
from skysync.relay.sync_errors import pull_sync_errors
from skysync.store.db import Database, get_engine, session_scope
from skysync.store.models import OutboxRow, utcnow

VIEWER = ("vera", "viewer-pass-4411")
OPERATOR = ("otto", "operator-pass-7723")
API_KEY = "sk-live-API-KEY-5f1e9a"
ACCOUNT_KEY = "acct-KEY-77c0de"
FLOWER = "admin:flower-PASS-93ab"
SUL_KEY = "sk-sul-API-KEY-0b7d55"
DB_PASSWORD = "db-PASS-e61f2"
SECRETS = (
    API_KEY,
    ACCOUNT_KEY,
    "flower-PASS-93ab",
    SUL_KEY,
    DB_PASSWORD,
    VIEWER[1],
    OPERATOR[1],
)
ORDER_CODE = "Americanas-1001"


def accounts_file(directory: Path) -> Path:
    """A second SkyHub account, loja-sul, besides default."""
    path = directory / "accounts.toml"
    path.write_text(
        f'[accounts.loja-sul]\nemail = "sul@example.com"\napi_key = "{SUL_KEY}"\n',
        encoding="utf-8",
    )
    return path


def console_settings(
    db_url: str, skyhub_url: str, *, accounts: Path | None = None, **more: Any
) -> skysync.config.Settings:
    """A console's settings: both kinds of users, every secret set (the pages must show none)."""
    values: dict[str, Any] = {
        "database_url": db_url,
        "skyhub_url": skyhub_url,
        "skyhub_email": "loja@example.com",
        "skyhub_api_key": API_KEY,
        "skyhub_account_key": ACCOUNT_KEY,
        "flower_basic_auth": FLOWER,
        "console_viewers": f"{VIEWER[0]}:{VIEWER[1]}",
        "console_operators": f"{OPERATOR[0]}:{OPERATOR[1]}",
        "accounts_file": accounts,
        "max_attempts": 3,
    }
    values.update(more)
    return skysync.config.load_settings(**values)


def with_password(db_url: str) -> str:
    """``db_url`` with DB_PASSWORD in it (PostgreSQL here trusts local connections, so it still
    connects): a page that leaked the URL would show it."""
    if not db_url.startswith("postgresql"):
        return db_url
    return sa.make_url(db_url).set(password=DB_PASSWORD).render_as_string(hide_password=False)


@dataclass
class Story:
    """What :func:`seed` left, by id."""

    sent_skus: list[str]
    held: int
    rejected: int
    dead: list[int]
    withheld: int
    drifted_sku: str
    error_ids: list[int]
    order_code: str = ORDER_CODE
    extra: dict[str, Any] = field(default_factory=dict)


def _end_as(db_url: str, ids: list[int], state: str, reason: str, attempts: int = 3) -> None:
    """Rows the relay would take hours to get there (dead after every retry, withheld by a
    marketplace freeze): their final state set as the relay writes it."""
    now = utcnow()
    with session_scope(db_url) as session:
        session.execute(
            sa.update(OutboxRow)
            .where(OutboxRow.id.in_(ids))
            .values(state=state, reason=reason, attempts=attempts, finished_at=now, updated_at=now)
        )


def seed(db_url: str, sb: Sandbox, *, dead: int = 3) -> Story:
    """A day of skysync on ``db_url`` against ``sb``."""
    skus = ["CANECA-AZUL", "PRATO-FUNDO", "TACA-VINHO"]
    with relay_for(db_url, sb, settings_kw={"price_drop_guard": 50}) as relay:
        for sku in skus:
            insert(db_url, "product", sku, {"name": f"Produto {sku}", "price": 100.0, "qty": 5})
        insert(db_url, "stock", "CANECA-AZUL", {"qty": 7})
        drain(relay.deps)
        held = insert(db_url, "price", "PRATO-FUNDO", {"price": 9.9})  # 90 % below: held
        rejected = insert(db_url, "price", "TACA-VINHO", {"price": -1})  # bad input
        drain(relay.deps)
        assert row(db_url, held).state == "held", row(db_url, held)
        assert row(db_url, rejected).state == "rejected", row(db_url, rejected)

        for sku, code in (("TACA-VINHO", "ean_null"), ("CANECA-AZUL", "bad_image")):
            notice(sb, "products", sku, code, message=f"Marketplace recusou: {code}")
        pull_sync_errors(relay.deps)

        sb.seed_order({"code": ORDER_CODE, "status": "payment_received"})
        with make_client(sb.base_url) as client:
            pull_orders(Database.for_url(db_url), client)
        key = "0" * 44
        insert(db_url, "order_invoice", ORDER_CODE, {"key": key})
        drain(relay.deps)

        behind_the_back(sb, "TACA-VINHO", price=120.0)  # SkyHub changed behind skysync's back
        reconcile(relay.deps)

    dead_ids = [insert(db_url, "stock", f"SKU-D{i:03d}", {"qty": i}) for i in range(dead)]
    _end_as(db_url, dead_ids, "dead", "SkyHub answered 503 three times: Service Unavailable")
    withheld = insert(db_url, "product", "CANECA-AZUL", {"name": "Caneca azul (nova)"})
    _end_as(db_url, [withheld], "withheld", "frozen by the marketplace: name withheld", attempts=1)
    with session_scope(db_url) as session:
        error_ids = list(session.scalars(sa.text("SELECT id FROM skysync_sync_error ORDER BY id")))
    return Story(
        sent_skus=skus,
        held=held,
        rejected=rejected,
        dead=dead_ids,
        withheld=withheld,
        drifted_sku="TACA-VINHO",
        error_ids=error_ids,
    )


def _stamp(db_url: str, when: datetime) -> str:
    """A time as plain SQL writes it: with its zone on PostgreSQL, naive UTC text on SQLite."""
    if db_url.startswith("postgresql"):
        return when.isoformat()
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(" ")


def many_dead(db_url: str, n: int, *, kind: str = "stock", account: str = "default") -> list[int]:
    """``n`` dead rows at once (a backlog that died during an outage), ids in order."""
    now = utcnow()
    rows = [
        {
            "account": account,
            "kind": kind,
            "ref": f"BULK-{i:04d}",
            "payload": json.dumps({"qty": i}),
            "state": "dead",
            "reason": "SkyHub answered 503 three times",
            "attempts": 3,
            "finished_at": _stamp(db_url, now - timedelta(minutes=n - i)),
        }
        for i in range(n)
    ]
    value = "CAST(:payload AS jsonb)" if db_url.startswith("postgresql") else ":payload"
    sql = sa.text(
        "INSERT INTO skysync_outbox (account, kind, ref, payload, state, reason, attempts, "
        f"finished_at) VALUES (:account, :kind, :ref, {value}, :state, :reason, :attempts, "
        ":finished_at)"
    )
    with get_engine(db_url).begin() as conn:
        conn.execute(sql, rows)
        found = conn.execute(
            sa.text("SELECT id FROM skysync_outbox WHERE ref LIKE 'BULK-%' ORDER BY id")
        )
        return [int(i) for (i,) in found]


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn (as `skysync console` serves it) on a free port of 127.0.0.1,
    in a thread of this process; yields its base URL, stops it on exit."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="console", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the console did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
