"""`skysync reconcile` against the emulator over HTTP, on SQLite and PostgreSQL: drift made
behind skysync's back through the emulator's admin API is found, reported with the ERP's value,
SkyHub's and since when, and repaired through the outbox (rows marked origin 'reconcile' that
the relay then sends); orphans and missing SKUs; frozen attributes reported, never repaired;
--sku, --json and the exit codes; many pages; status and metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from prometheus_client import generate_latest
from relay_helpers import (
    acknowledged,
    behind_the_back,
    create_product,
    drain,
    insert,
    relay_for,
    requests,
    row,
    rows,
)

from skysync.emulator import Sandbox
from skysync.entrypoints.cli import cli
from skysync.relay.reconcile import reconcile
from skysync.reporting.metrics import registry_for
from skysync.reporting.status import collect_status
from skysync.store.db import Database, session_scope
from skysync.store.models import OutboxRow


def origins(db_url: str) -> dict[int, str]:
    with session_scope(db_url) as session:
        return dict(session.execute(sa.select(OutboxRow.id, OutboxRow.origin)).all())


def test_no_drift_when_skyhub_holds_what_the_erp_said(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "REC-1", price=10.0, qty=3)
        insert(db_url, "price", "REC-1", {"price": 12.5, "promotional_price": 11.0})
        insert(db_url, "stock", "REC-1", {"qty": 0})
        drain(relay.deps)

        report = reconcile(relay.deps)

    assert not report.has_drift, report.as_dict()
    assert report.skus_compared == 1
    assert report.pages == 1
    assert report.error is None


def test_drift_behind_skysyncs_back_is_reported_then_repaired(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "REC-P", price=10.0, qty=3, description="caneca azul")
        price_row = insert(db_url, "price", "REC-P", {"price": 12.5})
        drain(relay.deps)
        price_sent_at = row(db_url, price_row).finished_at
        behind_the_back(sb, "REC-P", price=99.9, qty=40, description="alterada no painel")

        report = reconcile(relay.deps)

        found = {d.field: d for d in report.drift}
        assert set(found) == {"price", "qty", "description"}
        assert (found["price"].erp, found["price"].skyhub) == (12.5, 99.9)
        assert found["price"].row_id == price_row
        assert found["price"].since == price_sent_at
        assert (found["qty"].erp, found["qty"].skyhub) == (3, 40)
        assert found["description"].erp == "caneca azul"
        assert report.has_drift and not report.repaired
        assert not [r for r in rows(db_url).values() if r.state == "pending"]
        # the belief SkyHub proved false is gone: the ERP's next 12.5 would go out
        assert not {"price", "qty", "description"} & set(acknowledged(db_url, "REC-P"))

        repaired = reconcile(relay.deps, repair=True)
        assert [r["ref"] for r in repaired.repaired] == ["REC-P"]
        fix = row(db_url, repaired.repaired[0]["row_id"])
        assert (fix.kind, fix.state) == ("product", "pending")
        assert fix.payload == {"price": 12.5, "qty": 3, "description": "caneca azul"}
        assert origins(db_url)[fix.id] == "reconcile"
        assert set(origins(db_url).values()) == {"erp", "reconcile"}

        drain(relay.deps)
        assert row(db_url, fix.id).state == "sent"
        held = sb.state()["products"]["REC-P"]
        assert (held["price"], held["qty"], held["description"]) == (12.5, 3, "caneca azul")
        after = reconcile(relay.deps)
    assert not after.has_drift, after.as_dict()


def test_variations_in_the_listing_drift_and_are_repaired_through_their_parent(
    db_url: str, sb: Sandbox
) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(
            db_url,
            relay,
            "REC-V",
            variations=[{"sku": "REC-V-P", "qty": 2, "price": 30.0, "ean": "7891"}],
        )
        insert(db_url, "stock", "REC-V-P", {"qty": 5})
        drain(relay.deps)
        behind_the_back(sb, "REC-V-P", qty=0, ean="0000")

        report = reconcile(relay.deps, repair=True)

        assert {(d.sku, d.field, d.erp, d.skyhub) for d in report.drift} == {
            ("REC-V-P", "qty", 5, 0),
            ("REC-V-P", "ean", "7891", "0000"),
        }
        fix = row(db_url, report.repaired[0]["row_id"])
        assert (fix.kind, fix.ref) == ("product", "REC-V")
        assert fix.payload == {"variations": [{"sku": "REC-V-P", "ean": "7891", "qty": 5}]}
        drain(relay.deps)
        assert row(db_url, fix.id).state == "sent", row(db_url, fix.id)
        variation = sb.state()["variations"]["REC-V-P"]
        assert (variation["qty"], variation["ean"]) == (5, "7891")
        assert not reconcile(relay.deps).has_drift


def test_frozen_attributes_are_reported_never_repaired(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "REC-L", name="Caneca", price=20.0, qty=1)
        sb.link_product("REC-L")
        # the relay learns of the link and withholds the new name
        withheld = insert(db_url, "product", "REC-L", {"name": "Caneca nova"})
        drain(relay.deps)
        assert row(db_url, withheld).state == "withheld"
        behind_the_back(sb, "REC-L", price=25.0)

        report = reconcile(relay.deps, repair=True)

        assert [(d.field, d.erp, d.skyhub) for d in report.frozen] == [
            ("name", "Caneca nova", "Caneca")
        ]
        assert [(d.field, d.erp, d.skyhub) for d in report.drift] == [("price", 20.0, 25.0)]
        fix = row(db_url, report.repaired[0]["row_id"])
        assert fix.payload == {"price": 20.0}  # the frozen name never goes
        drain(relay.deps)
        assert sb.state()["products"]["REC-L"]["price"] == 20.0
        assert sb.state()["frozen_writes"] == []
        again = reconcile(relay.deps, repair=True)
    assert not again.has_drift and len(again.frozen) == 1
    assert again.repaired == []


def test_orphans_and_missing_skus(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "REC-KEEP", price=5.0, qty=1)
        create_product(
            db_url,
            relay,
            "REC-GONE",
            price=7.0,
            qty=2,
            variations=[{"sku": "REC-GONE-1", "qty": 4}],
        )
        seeded = httpx.post(
            f"{sb.base_url}/_sandbox/products",
            json={"product": {"sku": "REC-ORPHAN", "name": "made elsewhere", "qty": 9}},
            timeout=5,
        )
        assert seeded.status_code == 201
        removed = httpx.delete(f"{sb.base_url}/_sandbox/products/REC-GONE", timeout=5)
        assert removed.status_code == 204
        pending = insert(db_url, "stock", "REC-NEW", {"qty": 1})  # on its way: not missing

        report = reconcile(relay.deps)
        assert report.orphans == ["REC-ORPHAN"]
        assert sorted(m.sku for m in report.missing) == ["REC-GONE", "REC-GONE-1"]
        assert report.has_drift
        assert ("GET", "/products/{sku}", 404) in {
            (e["method"], e["route"], e["status"]) for e in requests(sb)
        }  # read once more before it is called missing

        repaired = reconcile(relay.deps, repair=True)
        fixes = [row(db_url, r["row_id"]) for r in repaired.repaired]
        assert [(f.kind, f.ref) for f in fixes] == [("product", "REC-GONE")]
        assert fixes[0].payload["variations"] == [{"sku": "REC-GONE-1", "qty": 4}]
        drain(relay.deps)
        held = sb.state()
        assert "REC-ORPHAN" in held["products"]  # never deleted
        assert (held["products"]["REC-GONE"]["price"], held["variations"]["REC-GONE-1"]["qty"]) == (
            7.0,
            4,
        )
        assert row(db_url, pending).state in ("sent", "rejected")
        final = reconcile(relay.deps)
    assert final.missing == [] and final.drift == []
    assert final.orphans == ["REC-ORPHAN"]


def test_a_newer_erp_row_on_its_way_is_never_overwritten(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "REC-W", price=10.0, qty=1)
        behind_the_back(sb, "REC-W", price=50.0, qty=7)
        newer = insert(db_url, "price", "REC-W", {"price": 11.0})  # pending, not sent yet

        report = reconcile(relay.deps, repair=True)

        assert [d.field for d in report.drift] == ["qty"]  # price: a write is on its way
        assert report.busy_fields == 1
        assert report.repaired == []
        assert report.not_repaired and "on its way" in report.not_repaired[0]["reason"]
        drain(relay.deps)
        assert row(db_url, newer).state == "sent"
        assert sb.state()["products"]["REC-W"]["price"] == 11.0


def test_paging_across_many_pages(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        skus = [f"REC-M-{i:02d}" for i in range(23)]
        for sku in skus:
            insert(db_url, "product", sku, {"name": sku, "price": 3.0, "qty": 1})
        drain(relay.deps)
        behind_the_back(sb, "REC-M-21", qty=2)
        before = len(requests(sb, "GET", "/products"))
        seen: list[Any] = []

        report = reconcile(relay.deps, per_page=5, progress=seen.append)

    assert report.pages == 5
    assert len(requests(sb, "GET", "/products")) - before == 5
    assert report.skus_compared == 23
    assert [(d.sku, d.field) for d in report.drift] == [("REC-M-21", "qty")]
    assert [p.pages for p in seen] == [1, 2, 3, 4, 5]
    assert seen[-1].line().startswith("reconcile: 5/5 pages read, 23 SKUs compared, 1 drift")


def test_the_run_goes_to_the_run_log_status_and_metrics(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "REC-S", price=10.0, qty=1)
        sb.seed_product({"sku": "REC-S-ORPHAN", "qty": 1})
        behind_the_back(sb, "REC-S", price=1.0)
        reconcile(relay.deps)

    with session_scope(db_url) as session:
        last = collect_status(session)["last_reconcile"]
    assert (last["drift"], last["orphans"], last["missing"]) == (1, 1, 0)
    assert last["drift_fields"] == {"price": 1}
    text = generate_latest(registry_for(Database.for_url(db_url))).decode()
    assert 'skysync_drift_fields{account="default",field="price"} 1.0' in text
    assert 'skysync_orphan_skus{account="default"} 1.0' in text
    assert 'skysync_last_reconcile_timestamp_seconds{account="default"} 0.0' not in text


# -- the command line -------------------------------------------------------------------------


def test_cli_sku_json_and_exit_codes(db_url: str, sb: Sandbox, clean_env: Path) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "REC-C1", price=10.0, qty=1)
        create_product(db_url, relay, "REC-C2", price=20.0, qty=2)
    env = {"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_SKYHUB_URL": sb.base_url}

    clean = CliRunner().invoke(cli, ["reconcile"], env=env)
    assert clean.exit_code == 0, clean.output
    assert "2 SKUs compared over 1 page(s); 0 drift" in clean.stdout

    behind_the_back(sb, "REC-C2", qty=9)
    one = CliRunner().invoke(cli, ["reconcile", "--sku", "REC-C1", "--json"], env=env)
    assert one.exit_code == 0, one.output
    data = json.loads(one.stdout)
    assert (data["sku"], data["skus_compared"], data["has_drift"]) == ("REC-C1", 1, False)

    drifted = CliRunner().invoke(cli, ["reconcile", "--sku", "REC-C2", "--json"], env=env)
    assert drifted.exit_code == 1, drifted.output
    data = json.loads(drifted.stdout)
    assert [(d["sku"], d["field"], d["erp"], d["skyhub"]) for d in data["drift"]] == [
        ("REC-C2", "qty", 2, 9)
    ]
    assert data["drift"][0]["believed_since"]

    full = CliRunner().invoke(cli, ["reconcile", "--repair"], env=env)
    assert full.exit_code == 1
    assert "REC-C2" in full.stdout and "qty" in full.stdout
    assert "enqueued correction row" in full.stdout
    listed = CliRunner().invoke(cli, ["outbox", "list"], env=env)
    assert "[reconcile]" in listed.stdout


# -- the emulator's listing -------------------------------------------------------------------


@pytest.mark.slow
def test_cursor_pages_past_ten_thousand_and_survives_changes_meanwhile(sb: Sandbox) -> None:
    for i in range(10_050):
        sb.seed_product({"sku": f"DEEP-{i:05d}", "qty": 1})
    headers = {"X-User-Email": "e@x", "X-Api-Key": "k", "X-Accountmanager-Key": "a"}
    with httpx.Client(base_url=sb.base_url, headers=headers, timeout=10) as http:
        assert http.get("/products", params={"page": 101, "per_page": 100}).status_code == 400
        seen: list[str] = []
        page = http.get("/products", params={"per_page": 100}).json()
        assert page["total"] == 10_050
        while True:
            seen += [p["sku"] for p in page["products"]]
            if len(seen) == 100:  # a change while paging: one deleted behind, one created
                sb.remove_product("DEEP-00010")
                sb.seed_product({"sku": "DEEP-NEW", "qty": 1})
            if not page["next"]:
                break
            page = http.get(page["next"]).json()
    assert len(seen) == len(set(seen)) == 10_051
    assert seen[-1] == "DEEP-NEW"


# -- the origin column: the ERP cannot mark a row as a correction ------------------------------


def test_origin_defaults_to_erp_and_is_fixed_once_written(db_url: str) -> None:
    row_id = insert(db_url, "stock", "ORIGIN-1", {"qty": 1})
    assert origins(db_url) == {row_id: "erp"}
    fixed = pytest.raises(sa.exc.DBAPIError, match="origin is written once")
    with fixed, session_scope(db_url) as session:
        session.execute(sa.update(OutboxRow).values(origin="reconcile"))
    with pytest.raises(sa.exc.IntegrityError), session_scope(db_url) as session:
        session.execute(
            sa.insert(OutboxRow).values(
                kind="stock", ref="ORIGIN-2", payload={"qty": 1}, origin="someone"
            )
        )
    assert origins(db_url) == {row_id: "erp"}


def test_the_erp_role_cannot_write_origin_on_postgresql(pg_url: str) -> None:
    from conftest import empty_tables

    from skysync.entrypoints.cli import erp_role_sql
    from skysync.store.db import get_engine

    empty_tables(pg_url)
    role = f"skysync_erp_test_{os.getpid()}"
    engine = get_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(erp_role_sql(role))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'SET LOCAL ROLE "{role}"')
            conn.exec_driver_sql(
                "INSERT INTO skysync_outbox (kind, ref, payload) "
                "VALUES ('stock', 'ROLE-1', '{\"qty\": 1}')"
            )
        for statement in (
            "INSERT INTO skysync_outbox (kind, ref, payload, origin) "
            "VALUES ('stock', 'ROLE-2', '{\"qty\": 1}', 'reconcile')",
            "UPDATE skysync_outbox SET origin = 'reconcile'",
        ):
            refused = pytest.raises(sa.exc.ProgrammingError, match="permission denied")
            with refused, engine.begin() as conn:
                conn.exec_driver_sql(f'SET LOCAL ROLE "{role}"')
                conn.exec_driver_sql(statement)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE "{role}"')
    assert set(origins(pg_url).values()) == {"erp"}


@pytest.mark.slow
def test_a_listing_skyhub_cannot_answer_stops_the_run_and_says_why(
    db_url: str, sb: Sandbox
) -> None:
    with relay_for(db_url, sb) as relay:
        for i in range(6):
            create_product(db_url, relay, f"REC-F-{i}", price=1.0, qty=1)
        sb.script_fault("GET", "/products", "503", count=50)

        report = reconcile(relay.deps, per_page=2, repair=True)

    assert report.error is not None and report.error.startswith("stopped:")
    assert "503" in report.error or "Service" in report.error
    assert report.repaired == [] and report.missing == []  # nothing concluded from a failed read
    with session_scope(db_url) as session:
        assert collect_status(session)["last_reconcile"]["error"] == report.error


def test_an_unfrozen_product_has_its_variations_attributes_repaired(
    db_url: str, sb: Sandbox, clean_env: Path
) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "REC-U", variations=[{"sku": "REC-U-1", "ean": "111"}])
        sb.link_product("REC-U")
        insert(db_url, "product", "REC-U", {"name": "learn the link"})
        drain(relay.deps)
        env = {"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_SKYHUB_URL": sb.base_url}
        assert CliRunner().invoke(cli, ["item", "unfreeze", "REC-U"], env=env).exit_code == 0
        behind_the_back(sb, "REC-U-1", ean="999")

        report = reconcile(relay.deps)

    assert [(d.sku, d.field, d.frozen) for d in report.drift] == [("REC-U-1", "ean", False)]
    assert report.frozen == []
