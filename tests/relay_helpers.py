"""Helpers for the relay's behaviour tests: write outbox rows the way an ERP does (plain SQL),
read them back, build a relay against an emulator, look at what the emulator received."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from click.testing import CliRunner

import skysync.config
from skysync.emulator import Sandbox, SandboxConfig
from skysync.entrypoints.cli import cli
from skysync.relay import Relay, drain
from skysync.skyhub.client import SkyHubClient
from skysync.store.db import get_engine, session_scope
from skysync.store.models import Item, OutboxRow, RunLog, utcnow

CLIENT_CREDENTIALS = {"email": "e@x", "api_key": "k", "account_key": "a"}


def is_pg(db_url: str) -> bool:
    return db_url.startswith("postgresql")


def insert_raw(db_url: str, kind: str, ref: str, payload_text: str | None) -> int:
    """INSERT one row with only kind, ref and payload, as the ERP does; returns its id."""
    value = "CAST(:p AS jsonb)" if is_pg(db_url) else ":p"
    sql = sa.text(
        f"INSERT INTO skysync_outbox (kind, ref, payload) VALUES (:k, :r, {value}) RETURNING id"
    )
    with get_engine(db_url).begin() as conn:
        return int(conn.execute(sql, {"k": kind, "r": ref, "p": payload_text}).scalar_one())


def insert(db_url: str, kind: str, ref: str, payload: Any) -> int:
    return insert_raw(db_url, kind, ref, json.dumps(payload, ensure_ascii=False))


class ErpTransaction:
    """One ERP transaction on a PostgreSQL connection of its own: :meth:`insert` writes a row
    (its id is taken now), and nothing is visible to skysync until :meth:`commit`; :meth:`close`
    (or leaving the ``with`` block) rolls back what was not committed."""

    def __init__(self, db_url: str) -> None:
        self.engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
        self.conn = self.engine.connect()
        self.tx = self.conn.begin()

    def insert(self, kind: str, ref: str, payload: Any) -> int:
        sql = sa.text(
            "INSERT INTO skysync_outbox (kind, ref, payload) "
            "VALUES (:k, :r, CAST(:p AS jsonb)) RETURNING id"
        )
        params = {"k": kind, "r": ref, "p": json.dumps(payload)}
        return int(self.conn.execute(sql, params).scalar_one())

    def commit(self) -> None:
        self.tx.commit()
        self.close()

    def close(self) -> None:
        if self.tx.is_active:
            self.tx.rollback()
        self.conn.close()
        self.engine.dispose()

    def __enter__(self) -> ErpTransaction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class RowView:
    id: int
    kind: str
    ref: str
    payload: Any
    state: str
    attempts: int
    reason: str | None
    superseded_by: int | None
    available_at: datetime
    lease_until: datetime | None
    claim_token: str | None
    last_error: str | None
    last_status: int | None
    finished_at: datetime | None


def rows(db_url: str) -> dict[int, RowView]:
    with session_scope(db_url) as session:
        found = session.scalars(sa.select(OutboxRow).order_by(OutboxRow.id)).all()
        return {
            r.id: RowView(
                r.id,
                r.kind,
                r.ref,
                r.payload,
                r.state,
                r.attempts,
                r.reason,
                r.superseded_by,
                r.available_at,
                r.lease_until,
                r.claim_token,
                r.last_error,
                r.last_status,
                r.finished_at,
            )
            for r in found
        }


def row(db_url: str, row_id: int) -> RowView:
    return rows(db_url)[row_id]


def make_due(db_url: str, *ids: int) -> None:
    """Time passes: the given rows (all pending rows when none given) are due again."""
    past = utcnow() - timedelta(seconds=1)
    query = sa.update(OutboxRow).where(OutboxRow.state == "pending").values(available_at=past)
    if ids:
        query = query.where(OutboxRow.id.in_(ids))
    with session_scope(db_url) as session:
        session.execute(query)


def expire_leases(db_url: str) -> None:
    past = utcnow() - timedelta(seconds=1)
    with session_scope(db_url) as session:
        session.execute(
            sa.update(OutboxRow).where(OutboxRow.state == "in_flight").values(lease_until=past)
        )


def settings_for(db_url: str, **overrides: Any) -> skysync.config.Settings:
    values: dict[str, Any] = {"database_url": db_url, "max_attempts": 3, "lease_seconds": 60}
    values.update(overrides)
    return skysync.config.load_settings(**values)


def make_client(base_url: str, **kw: Any) -> SkyHubClient:
    options: dict[str, Any] = {"timeout": httpx.Timeout(2.0), "max_rate_limit_waits": 3}
    options.update(kw)
    return SkyHubClient(base_url, **CLIENT_CREDENTIALS, **options)


@contextmanager
def relay_for(
    db_url: str,
    sb: Sandbox,
    *,
    client_kw: dict[str, Any] | None = None,
    settings_kw: dict[str, Any] | None = None,
    **relay_kw: Any,
) -> Iterator[Relay]:
    client = make_client(sb.base_url, **(client_kw or {}))
    options: dict[str, Any] = {"quick_retry_delay": 0.01, "rng": random.Random(1)}
    options.update(relay_kw)
    try:
        yield Relay(settings_for(db_url, **(settings_kw or {})), client, **options)
    finally:
        client.close()


def sandbox_config(**kw: Any) -> SandboxConfig:
    """Products never linked unless a test links them; no rate limits unless a test wants them."""
    values: dict[str, Any] = {"link_delay": None, "rate_limits_enabled": False}
    values.update(kw)
    return SandboxConfig(**values)


def requests(sb: Sandbox, method: str | None = None, route: str | None = None) -> list[dict]:
    return [
        e
        for e in sb.request_log()
        if (method is None or e["method"] == method) and (route is None or e["route"] == route)
    ]


def bodies(sb: Sandbox, method: str, path: str) -> list[Any]:
    """Bodies of the requests sent to exactly ``method path`` (decoded path)."""
    return [e["body"] for e in sb.request_log() if e["method"] == method and e["path"] == path]


def product(sb: Sandbox, sku: str) -> dict[str, Any]:
    return sb.state()["products"][sku]


def behind_the_back(sb: Sandbox, sku: str, **fields: Any) -> None:
    """Change a product in "SkyHub" without skysync: the emulator's admin API, over HTTP."""
    answer = httpx.patch(f"{sb.base_url}/_sandbox/products/{sku}", json=fields, timeout=5)
    assert answer.status_code == 204, answer.text


def acknowledged(db_url: str, sku: str) -> dict[str, Any]:
    """What skysync last saw SkyHub acknowledge for ``sku`` (empty: no item yet)."""
    with session_scope(db_url) as session:
        item = session.get(Item, ("default", sku))
        return dict(item.acknowledged) if item else {}


def run_count(db_url: str, kind: str) -> int:
    """How many runs of ``kind`` ("relay", "fast_lane", ...) the run log holds."""
    with session_scope(db_url) as session:
        query = sa.select(sa.func.count()).select_from(RunLog).where(RunLog.kind == kind)
        return session.execute(query).scalar_one()


def cli_status(db_url: str, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    """``skysync status --json ARGS`` in this process: its exit code and the report."""
    result = CliRunner().invoke(
        cli, ["status", "--json", *args], env={"SKYSYNC_DATABASE_URL": db_url, **env}
    )
    return result.exit_code, json.loads(result.stdout)


def create_product(db_url: str, relay: Relay, sku: str, **fields: Any) -> int:
    """A product row for a new SKU, delivered: the SKU exists in SkyHub and skysync knows it."""
    row_id = insert(db_url, "product", sku, {"name": f"Produto {sku}", **fields})
    drain(relay.deps)
    assert row(db_url, row_id).state == "sent", row(db_url, row_id)
    return row_id


def notice(sb: Sandbox, entity_type: str, entity_id: str, code: str, **extra: Any) -> None:
    """SkyHub notices an error: the emulator's admin API, over HTTP."""
    body = {
        "entity_type": entity_type,
        "entity_id": entity_id,
        "error_category_code": "link_b2w_products" if entity_type == "products" else "sync",
        "error_code": code,
        "message": f"problem {code}",
        **extra,
    }
    answer = httpx.post(f"{sb.base_url}/_sandbox/sync_errors", json=body, timeout=5)
    assert answer.status_code == 201, answer.text
