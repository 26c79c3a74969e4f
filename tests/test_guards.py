"""Guardrails against costly mistakes (issue 11, part 3): the price drop guard holds back a price
far below the last one SkyHub acknowledged, until an operator releases it or a newer row replaces
it; the stock buffer keeps units back. Both against the emulator over HTTP, on SQLite and on
PostgreSQL; the pure decisions below them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from click.testing import CliRunner
from relay_helpers import (
    create_product,
    insert,
    product,
    relay_for,
    requests,
    row,
)

from skysync.domain.guards import buffer_stock, hold_price_drops, replaced_held
from skysync.domain.planner import ItemView, Row, SkuRequest, coalesce
from skysync.emulator import Sandbox
from skysync.entrypoints.cli import cli
from skysync.relay import drain
from skysync.reporting.status import collect_status, health_problems
from skysync.store.db import get_engine, migrate, session_scope


def cli_run(db_url: str, *args: str, **env: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"SKYSYNC_DATABASE_URL": db_url, **env})


def price_puts(sb: Sandbox, sku: str) -> list[dict[str, Any]]:
    return [
        e["body"]["product"]
        for e in requests(sb, "PUT", "/products/{sku}")
        if e["path"] == f"/products/{sku}"
    ]


GUARD = {"price_drop_guard": 50}


# -- the price drop guard --------------------------------------------------------------------------


def test_a_price_far_below_the_last_one_is_held_and_stock_still_goes(
    db_url: str, sb: Sandbox
) -> None:
    with relay_for(db_url, sb, settings_kw=GUARD) as relay:
        create_product(db_url, relay, "G-1", price=100.0, qty=5)
        create_product(db_url, relay, "G-2", price=100.0, qty=5)
        typo = insert(db_url, "price", "G-1", {"price": 9.9})
        stock = insert(db_url, "stock", "G-1", {"qty": 3})
        other = insert(db_url, "price", "G-2", {"price": 80.0})  # a 20 % cut: fine
        drain(relay.deps)
    assert product(sb, "G-1")["price"] == 100.0
    assert product(sb, "G-1")["qty"] == 3
    assert product(sb, "G-2")["price"] == 80.0
    held = row(db_url, typo)
    assert held.state == "held"
    assert "price 9.9 is 90% below 100" in (held.reason or "")
    assert f"skysync outbox release {typo}" in (held.reason or "")
    assert row(db_url, stock).state == "sent"
    assert row(db_url, other).state == "sent"
    # one request for G-1 (qty only): the held price never left
    assert price_puts(sb, "G-1") == [{"qty": 3}]
    with session_scope(db_url) as session:
        report = collect_status(session)
    assert report["outbox"]["held"] == 1
    problems = health_problems(
        report, sync_interval=900, order_poll_interval=60, max_pending_age=3600
    )
    assert any("held by the price drop guard" in p for p in problems)


def test_an_operator_release_lets_the_held_price_through_once(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb, settings_kw=GUARD) as relay:
        create_product(db_url, relay, "G-3", price=100.0)
        typo = insert(db_url, "price", "G-3", {"price": 20.0, "promotional_price": 19.0})
        drain(relay.deps)
        assert row(db_url, typo).state == "held"
        released = cli_run(db_url, "outbox", "release", str(typo))
        assert released.exit_code == 0, released.output
        assert "released 1 row(s)" in released.output
        drain(relay.deps)
        assert row(db_url, typo).state == "sent"
        assert product(sb, "G-3")["price"] == 20.0
        assert product(sb, "G-3")["promotional_price"] == 19.0
        # a new drop from the released price is guarded again
        again = insert(db_url, "price", "G-3", {"price": 5.0})
        drain(relay.deps)
    assert row(db_url, again).state == "held"
    assert "below 20," in (row(db_url, again).reason or "")
    assert product(sb, "G-3")["price"] == 20.0


def test_release_names_the_rows_it_did_not_release(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb, settings_kw=GUARD) as relay:
        create_product(db_url, relay, "G-4", price=100.0)
        typo = insert(db_url, "price", "G-4", {"price": 1.0})
        drain(relay.deps)
    sent_row = 1
    result = cli_run(db_url, "outbox", "release", str(typo), str(sent_row), "999999")
    assert result.exit_code == 1
    assert "released 1 row(s)" in result.output
    assert f"row {sent_row} not released: is sent, not held" in result.output
    assert "row 999999 not released: no such row" in result.output
    assert row(db_url, typo).state == "pending"


def test_a_newer_price_replaces_the_held_one(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb, settings_kw=GUARD) as relay:
        create_product(db_url, relay, "G-5", price=100.0)
        typo = insert(db_url, "price", "G-5", {"price": 10.0})
        drain(relay.deps)
        assert row(db_url, typo).state == "held"
        stock_only = insert(db_url, "stock", "G-5", {"qty": 1})
        drain(relay.deps)
        assert row(db_url, typo).state == "held", "a stock row does not replace a held price"
        fixed = insert(db_url, "price", "G-5", {"price": 95.0})
        drain(relay.deps)
    assert product(sb, "G-5")["price"] == 95.0
    replaced = row(db_url, typo)
    assert replaced.state == "superseded"
    assert replaced.superseded_by == fixed
    assert row(db_url, fixed).state == "sent"
    assert row(db_url, stock_only).state == "sent"


def test_a_promotional_price_far_below_the_price_is_held(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb, settings_kw=GUARD) as relay:
        create_product(db_url, relay, "G-6", price=100.0)
        promo = insert(db_url, "price", "G-6", {"price": 100.0, "promotional_price": 9.0})
        drain(relay.deps)
    assert row(db_url, promo).state == "held"
    assert "promotional_price 9 is 91% below 100" in (row(db_url, promo).reason or "")
    assert "promotional_price" not in product(sb, "G-6")


def test_a_held_variation_price_keeps_its_stock_flowing(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb, settings_kw=GUARD) as relay:
        create_product(db_url, relay, "G-P", variations=[{"sku": "G-P-1", "qty": 2, "price": 50.0}])
        typo = insert(db_url, "price", "G-P-1", {"price": 5.0})
        stock = insert(db_url, "stock", "G-P-1", {"qty": 7})
        drain(relay.deps)
    variation = sb.state()["variations"]["G-P-1"]
    assert variation["price"] == 50.0
    assert variation["qty"] == 7
    assert row(db_url, typo).state == "held"
    assert row(db_url, stock).state == "sent"


def test_the_guard_is_off_when_unset(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        assert relay.settings.price_drop_guard is None
        create_product(db_url, relay, "G-7", price=100.0)
        cut = insert(db_url, "price", "G-7", {"price": 1.0})
        drain(relay.deps)
    assert row(db_url, cut).state == "sent"
    assert product(sb, "G-7")["price"] == 1.0


# -- the stock buffer ------------------------------------------------------------------------------


def test_the_stock_buffer_keeps_units_back_and_item_show_gives_both_values(
    db_url: str, sb: Sandbox
) -> None:
    buffer = {"stock_buffer": 3}
    with relay_for(db_url, sb, settings_kw=buffer) as relay:
        create_product(
            db_url, relay, "B-1", qty=10, variations=[{"sku": "B-1-A", "qty": 2, "price": 9.0}]
        )
        assert product(sb, "B-1")["qty"] == 7
        assert sb.state()["variations"]["B-1-A"]["qty"] == 0
        insert(db_url, "stock", "B-1", {"qty": 10})  # unchanged for SkyHub: nothing to send
        drain(relay.deps)
        insert(db_url, "stock", "B-1", {"qty": 4})
        drain(relay.deps)
    assert product(sb, "B-1")["qty"] == 1
    assert [p.get("qty") for p in price_puts(sb, "B-1")] == [1]
    shown = cli_run(db_url, "item", "show", "B-1")
    assert shown.exit_code == 0, shown.output
    assert "qty = 1  (the ERP wrote 4; the stock buffer kept back the rest)" in shown.output
    as_json = cli_run(db_url, "item", "show", "B-1", "--json")
    assert '"erp_values": {\n    "qty": 4\n  }' in as_json.output


def test_guards_show_in_check_config_and_bad_values_are_named(tmp_path: Any) -> None:
    env = {"SKYSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"}
    shown = CliRunner().invoke(
        cli,
        ["check-config"],
        env={**env, "SKYSYNC_PRICE_DROP_GUARD": "40", "SKYSYNC_STOCK_BUFFER": "2"},
    )
    assert shown.exit_code == 0, shown.output
    assert '"price_drop_guard": 40.0' in shown.output
    assert '"stock_buffer": 2' in shown.output
    bad = CliRunner().invoke(cli, ["check-config"], env={**env, "SKYSYNC_PRICE_DROP_GUARD": "150"})
    assert bad.exit_code != 0
    assert "SKYSYNC_PRICE_DROP_GUARD: Input should be less than 100" in bad.output
    negative = CliRunner().invoke(cli, ["check-config"], env={**env, "SKYSYNC_STOCK_BUFFER": "-1"})
    assert "SKYSYNC_STOCK_BUFFER: Input should be greater than or equal to 0" in negative.output


# -- the migration ---------------------------------------------------------------------------------


def test_the_held_state_migration_keeps_sqlite_ids_never_reused(tmp_path: Any) -> None:
    """0005 rebuilds the outbox on SQLite (a CHECK cannot change in place): ids keep going up
    from where they were, even past deleted rows, and ``held`` is accepted afterwards."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate(url, "0004")
    insert_sql = sa.text(
        "INSERT INTO skysync_outbox (kind, ref, payload) VALUES ('stock', 'A', '{\"qty\": 1}')"
    )
    with get_engine(url).begin() as conn:
        for _ in range(5):
            conn.execute(insert_sql)
        conn.execute(sa.text("DELETE FROM skysync_outbox WHERE id > 3"))
    migrate(url)
    with get_engine(url).begin() as conn:
        conn.execute(insert_sql)
        ids = list(conn.execute(sa.text("SELECT id FROM skysync_outbox ORDER BY id")).scalars())
        conn.execute(sa.text("UPDATE skysync_outbox SET state = 'held', reason = 'r' WHERE id = 1"))
    assert ids == [1, 2, 3, 6]


# -- the pure decisions ----------------------------------------------------------------------------


def request_of(*rows: Row) -> SkuRequest:
    return coalesce(list(rows))


def test_hold_price_drops_compares_with_the_last_acknowledged_price() -> None:
    item = ItemView(sku="S", in_skyhub=True, acknowledged={"price": 100.0})
    request = request_of(Row(1, "price", "S", {"price": 49.0}), Row(2, "stock", "S", {"qty": 1}))
    kept, held = hold_price_drops(request, item, 50)
    assert kept.fields == {"qty": 1}
    assert set(held) == {1}
    kept, held = hold_price_drops(request_of(Row(1, "price", "S", {"price": 50.0})), item, 50)
    assert held == {} and kept.fields == {"price": 50.0}
    # off, a new SKU, or a released row: nothing is held
    assert hold_price_drops(request, item, None)[1] == {}
    assert hold_price_drops(request, ItemView(sku="S"), 50)[1] == {}
    released = request_of(Row(1, "price", "S", {"price": 1.0}, released=True))
    assert hold_price_drops(released, item, 50)[1] == {}


def test_buffer_stock_lowers_every_quantity_never_below_zero() -> None:
    request = request_of(
        Row(1, "product", "P", {"qty": 5, "variations": [{"sku": "V", "qty": 1}, {"sku": "W"}]})
    )
    buffered = buffer_stock(request, 2)
    assert buffered.fields["qty"] == 3
    assert buffered.variations["V"]["qty"] == 0
    assert "qty" not in buffered.variations["W"]
    assert buffer_stock(request, 0) is request


def test_replaced_held_needs_a_newer_value_of_every_price_it_carries() -> None:
    held = [Row(3, "price", "S", {"price": 1.0, "promotional_price": 0.9})]
    assert replaced_held(held, {"price": 5}) == {}
    assert replaced_held(held, {"price": 5, "promotional_price": 6}) == {3: 6}
    assert replaced_held(held, {"price": 2, "promotional_price": 6}) == {}


def test_reconcile_holds_skyhub_to_the_buffered_quantity(db_url: str, sb: Sandbox) -> None:
    """With a stock buffer SkyHub should hold the ERP's quantity less the buffer: that is no
    drift; SkyHub showing the ERP's full quantity is, and its repair goes out buffered."""
    from skysync.relay.reconcile import reconcile

    with relay_for(db_url, sb, settings_kw={"stock_buffer": 3}) as relay:
        create_product(db_url, relay, "B-R", qty=10, price=20.0)
        assert product(sb, "B-R")["qty"] == 7
        assert not reconcile(relay.deps).has_drift
        sb.change_product("B-R", {"qty": 10})  # someone "fixed" it in SkyHub's panel
        report = reconcile(relay.deps, repair=True)
        assert [(d.field, d.erp, d.skyhub) for d in report.drift] == [("qty", 10, 10)]
        drain(relay.deps)
    assert product(sb, "B-R")["qty"] == 7
