"""SkyHub's own errors (issue 11, part 2), on SQLite and PostgreSQL against the emulator over
HTTP: errors SkyHub notices are pulled through the limiter and stored per SKU and order, never
lost (resolved when SkyHub stops listing them, kept); shown by `item show`, `errors list`,
`status` and the metrics; `errors ignore` PATCHes SkyHub and marks them ignored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from relay_helpers import notice, relay_for, requests

from skysync.emulator import Sandbox
from skysync.entrypoints.cli import cli
from skysync.relay.sync_errors import ignore_sync_errors, pull_sync_errors
from skysync.reporting.metrics import registry_for
from skysync.reporting.status import collect_status
from skysync.store import sync_errors
from skysync.store.db import Database, session_scope


def stored(db_url: str, **kw: Any) -> list[dict[str, Any]]:
    with session_scope(db_url) as session:
        return [sync_errors.as_dict(e) for e in sync_errors.listed(session, **kw)]


def test_errors_are_pulled_stored_per_sku_and_order_and_never_lost(
    db_url: str, sb: Sandbox
) -> None:
    notice(sb, "products", "SKU-E1", "ean_null", last_occurrence="2026-12-01T10:00:00-03:00")
    notice(sb, "products", "SKU-E1", "empty_name")
    notice(sb, "orders", "Lojas Americanas-77", "invoice_rejected")
    with relay_for(db_url, sb) as relay:
        first = pull_sync_errors(relay.deps)
        assert (first.new, first.resolved, first.stopped) == (3, 0, None)
        assert first.listed == {"products": 2, "orders": 1}
        by_sku = stored(db_url, entity_id="SKU-E1")
        assert sorted(e["error_code"] for e in by_sku) == ["ean_null", "empty_name"]
        assert {e["last_occurrence"] for e in by_sku} >= {"2026-12-01T10:00:00-03:00"}
        assert [e["entity_id"] for e in stored(db_url, entity_type="orders")] == [
            "Lojas Americanas-77"
        ]

        again = pull_sync_errors(relay.deps)  # the same errors: no duplicates
        assert (again.new, again.seen_again) == (0, 3)
        assert len(stored(db_url, include_closed=True)) == 3

        # SkyHub stops listing one (fixed in its panel): resolved, never deleted
        sb._state.sync_errors["products"][:] = [
            e for e in sb._state.sync_errors["products"] if e["error_code"] != "ean_null"
        ]
        third = pull_sync_errors(relay.deps)
    assert third.resolved == 1
    everything = stored(db_url, include_closed=True)
    assert len(everything) == 3
    assert [e["error_code"] for e in everything if e["resolved_at"]] == ["ean_null"]
    assert len(stored(db_url)) == 2
    listed = [e for e in requests(sb, "GET") if e["route"].startswith("/sync_errors")]
    assert {e["route"] for e in listed} == {"/sync_errors/products", "/sync_errors/orders"}


def test_a_failed_read_resolves_nothing(db_url: str, sb: Sandbox) -> None:
    notice(sb, "products", "SKU-F", "x1")
    with relay_for(db_url, sb) as relay:
        pull_sync_errors(relay.deps)
        sb._state.sync_errors["products"].clear()
        sb.script_fault("GET", "/sync_errors/products", "503", count=10)
        failed = pull_sync_errors(relay.deps)
    assert failed.stopped is not None and failed.resolved == 0
    assert len(stored(db_url)) == 1


def test_ignore_patches_skyhub_and_marks_them_ignored(db_url: str, sb: Sandbox) -> None:
    notice(sb, "products", "SKU-I", "bad_image")
    notice(sb, "orders", "ORD-I", "late")
    with relay_for(db_url, sb) as relay:
        pull_sync_errors(relay.deps)
        ids = sorted(e["id"] for e in stored(db_url))
        ignored, unknown = ignore_sync_errors(relay.deps, [*ids, 999])
        assert (ignored, unknown) == (ids, [999])
        patches = [e for e in requests(sb, "PATCH")]
        assert sorted(e["path"] for e in patches) == [
            "/sync_errors/orders",
            "/sync_errors/products",
        ]
        assert patches[0]["body"]["errors"][0].keys() == {
            "entity_id",
            "error_category_code",
            "error_code",
        }
        assert sb.state()["sync_errors"] == {"products": [], "orders": []}
        pull_sync_errors(relay.deps)
    assert stored(db_url) == []
    assert all(e["ignored_at"] for e in stored(db_url, include_closed=True))


@pytest.mark.slow
def test_item_show_errors_list_status_and_metrics(
    db_url: str, sb: Sandbox, clean_env: Path
) -> None:
    notice(sb, "products", "SKU-CLI", "ean_null")
    notice(sb, "orders", "ORD-CLI", "late")
    env = {"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_SKYHUB_URL": sb.base_url}
    pulled = CliRunner().invoke(cli, ["errors", "pull"], env=env)
    assert pulled.exit_code == 0, pulled.output

    shown = CliRunner().invoke(cli, ["item", "show", "SKU-CLI"], env=env)
    assert "SkyHub's own errors about it:" in shown.stdout
    assert "link_b2w_products/ean_null: problem ean_null" in shown.stdout
    listed = CliRunner().invoke(cli, ["errors", "list", "--sku", "SKU-CLI", "--json"], env=env)
    data = json.loads(listed.stdout)
    assert [(e["entity_id"], e["error_code"]) for e in data] == [("SKU-CLI", "ean_null")]
    everything = CliRunner().invoke(cli, ["errors", "list"], env=env)
    assert "order ORD-CLI" in everything.stdout and "SKU SKU-CLI" in everything.stdout

    with session_scope(db_url) as session:
        assert collect_status(session)["sync_errors"] == {"products": 1, "orders": 1}
    status = CliRunner().invoke(cli, ["status"], env=env)
    assert "SkyHub's own errors, open: 1 about products, 1 about orders" in status.stdout
    text = generate_latest(registry_for(Database.for_url(db_url))).decode()
    assert 'skysync_skyhub_sync_errors{account="default",entity_type="products"} 1.0' in text

    error_id = data[0]["id"]
    ignored = CliRunner().invoke(cli, ["errors", "ignore", str(error_id)], env=env)
    assert ignored.exit_code == 0, ignored.output
    assert f"ignored 1 error(s): {error_id}" in ignored.stdout
    unknown = CliRunner().invoke(cli, ["errors", "ignore", "424242"], env=env)
    assert unknown.exit_code == 1
    assert "unknown error id(s): 424242" in unknown.stderr
    after = CliRunner().invoke(cli, ["errors", "list", "--sku", "SKU-CLI"], env=env)
    assert after.stdout.strip() == "no errors"


def test_the_emulator_pages_filters_and_refuses_bad_input(sb: Sandbox) -> None:
    for i in range(5):
        notice(sb, "products", f"SKU-P{i}", f"code{i}")
    notice(sb, "products", "SKU-OTHER", "z", error_category_code="other_category")
    headers = {"X-User-Email": "e@x", "X-Api-Key": "k", "X-Accountmanager-Key": "a"}
    with httpx.Client(base_url=sb.base_url, headers=headers, timeout=5) as http:
        page = http.get("/sync_errors/products", params={"page": 2, "per_page": 2}).json()
        assert page["error_qty"] == 6
        assert [e["entity_id"] for e in page["errors"]] == ["SKU-P2", "SKU-P3"]
        only = http.get("/sync_errors/products", params={"error_category_code": "other_category"})
        assert [e["entity_id"] for e in only.json()["errors"]] == ["SKU-OTHER"]
        assert http.patch("/sync_errors/products", json={"errors": {}}).status_code == 400
        missing = http.patch("/sync_errors/products", json={"errors": [{"entity_id": "SKU-P0"}]})
        assert missing.status_code == 422
        assert "error_category_code" in missing.json()["error"]
    refused = httpx.post(
        f"{sb.base_url}/_sandbox/sync_errors", json={"entity_type": "skus"}, timeout=5
    )
    assert refused.status_code == 422
