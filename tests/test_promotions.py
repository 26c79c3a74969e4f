"""Never a promotional price above the price on SkyHub (issue 19, part 2), against the SkyHub
emulator over HTTP, on SQLite and PostgreSQL.

The ERP writes ``price F-1 {"price": 100, "promotional_price": 90}`` and then a newer price of
50 without a promotional price. SkyHub cannot clear a promotional price (a null one is refused
since 2025), so skysync sends it equal to the price: SkyHub ends on 50/50, the row's reason says
so, and what skysync records as acknowledged is what SkyHub holds. The ERP's promotional price
still stands (an absent key means no change): when a newer price rises above it again, it is
sent again. Reconciliation reports a promotional price above the price as drift and repairs it.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from relay_helpers import (
    acknowledged,
    behind_the_back,
    bodies,
    create_product,
    drain,
    insert,
    product,
    relay_for,
    row,
)

from skysync.emulator import Sandbox
from skysync.entrypoints.cli import cli
from skysync.relay.reconcile import reconcile

CAPPED = "promotional_price 90 is above the newer price 50: sent as 50"


def prices(sb: Sandbox, sku: str) -> tuple[Any, Any]:
    held = product(sb, sku)
    return held.get("price"), held.get("promotional_price")


@pytest.mark.slow
def test_newer_price_below_the_promotion_in_one_batch(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "F-1", price=120.0, qty=3)
        first = insert(db_url, "price", "F-1", {"price": 100, "promotional_price": 90})
        newer = insert(db_url, "price", "F-1", {"price": 50})
        drain(relay.deps)

    assert prices(sb, "F-1") == (50, 50)
    assert bodies(sb, "PUT", "/products/F-1")[-1] == {
        "product": {"price": 50, "promotional_price": 50}
    }
    assert row(db_url, newer).state == "sent"
    assert CAPPED in (row(db_url, newer).reason or "")
    assert row(db_url, first).state == "superseded"
    assert acknowledged(db_url, "F-1")["promotional_price"] == 50


def test_newer_price_below_the_promotion_across_two_batches(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "F-1", price=120.0, qty=3)
        insert(db_url, "price", "F-1", {"price": 100, "promotional_price": 90})
        drain(relay.deps)
        assert prices(sb, "F-1") == (100, 90)
        newer = insert(db_url, "price", "F-1", {"price": 50})
        drain(relay.deps)

        assert prices(sb, "F-1") == (50, 50)
        assert row(db_url, newer).state == "sent"
        assert CAPPED in (row(db_url, newer).reason or "")
        ack = acknowledged(db_url, "F-1")
        assert (ack["price"], ack["promotional_price"]) == (50, 50)
        assert not reconcile(relay.deps).has_drift

        # the ERP's promotional price still stands: a price above it again brings it back
        rises = insert(db_url, "price", "F-1", {"price": 120})
        drain(relay.deps)
        assert prices(sb, "F-1") == (120, 90)
        assert "promotional_price 90 sent again" in (row(db_url, rises).reason or "")
        assert not reconcile(relay.deps).has_drift


def test_product_row_carrying_a_newer_price_below_the_promotion(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "F-1", price=120.0, qty=3)
        insert(db_url, "price", "F-1", {"price": 100, "promotional_price": 90})
        drain(relay.deps)
        newer = insert(db_url, "product", "F-1", {"name": "Produto F-1 novo", "price": 50})
        drain(relay.deps)

        assert prices(sb, "F-1") == (50, 50)
        assert product(sb, "F-1")["name"] == "Produto F-1 novo"
        assert row(db_url, newer).state == "sent"
        assert CAPPED in (row(db_url, newer).reason or "")
        assert not reconcile(relay.deps).has_drift

    shown = CliRunner().invoke(cli, ["item", "show", "F-1"], env={"SKYSYNC_DATABASE_URL": db_url})
    assert shown.exit_code == 0, shown.output
    assert CAPPED in shown.output
    assert "promotional_price = 50  (the ERP wrote 90" in shown.output


def test_product_row_in_the_same_batch_as_the_promotion(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "F-1", price=120.0, qty=3)
        insert(db_url, "price", "F-1", {"price": 100, "promotional_price": 90})
        newer = insert(db_url, "product", "F-1", {"price": 50, "qty": 4})
        drain(relay.deps)

    assert prices(sb, "F-1") == (50, 50)
    assert CAPPED in (row(db_url, newer).reason or "")


def test_variation_price_below_its_promotion(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        variations = [{"sku": "F-1-P", "qty": 2, "price": 100, "promotional_price": 90}]
        create_product(db_url, relay, "F-1", variations=variations)
        newer = insert(db_url, "price", "F-1-P", {"price": 50})
        drain(relay.deps)

        held = sb.state()["variations"]["F-1-P"]
        assert (held["price"], held["promotional_price"]) == (50, 50)
        reason = row(db_url, newer).reason or ""
        assert "promotional_price 90 is above the newer price 50" in reason
        assert not reconcile(relay.deps).has_drift


@pytest.mark.slow
def test_reconcile_reports_a_promotion_above_the_price_and_repairs_it(
    db_url: str, sb: Sandbox
) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "F-1", price=120.0, qty=3)
        insert(db_url, "price", "F-1", {"price": 100, "promotional_price": 90})
        drain(relay.deps)
        insert(db_url, "price", "F-1", {"price": 50})
        drain(relay.deps)
        # SkyHub at 50/90, as it ended before this was fixed: each field holds the ERP's
        # newest value, and yet the promotion is above the price
        behind_the_back(sb, "F-1", promotional_price=90)
        assert prices(sb, "F-1") == (50, 90)

        report = reconcile(relay.deps, repair=True)
        assert report.has_drift
        found = {d.field: d for d in report.drift}
        assert set(found) == {"promotional_price"}
        assert (found["promotional_price"].erp, found["promotional_price"].skyhub) == (50, 90)
        assert report.repaired, report.as_dict()
        drain(relay.deps)

        assert prices(sb, "F-1") == (50, 50)
        assert not reconcile(relay.deps).has_drift


def test_reconcile_reports_a_promotion_the_erp_never_wrote_above_the_price(
    db_url: str, sb: Sandbox
) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "F-2", price=50.0, qty=3)
        behind_the_back(sb, "F-2", promotional_price=90)

        report = reconcile(relay.deps, repair=True)
        found = {d.field: d for d in report.drift}
        assert set(found) == {"promotional_price"}
        assert (found["promotional_price"].erp, found["promotional_price"].skyhub) == (50, 90)
        drain(relay.deps)

        assert prices(sb, "F-2") == (50, 50)
        assert not reconcile(relay.deps).has_drift


def test_price_drop_guard_and_stock_buffer_with_a_capped_promotion(
    db_url: str, sb: Sandbox
) -> None:
    guards = {"price_drop_guard": 50, "stock_buffer": 3}
    with relay_for(db_url, sb, settings_kw=guards) as relay:
        create_product(db_url, relay, "F-1", price=120.0, qty=10)
        insert(db_url, "price", "F-1", {"price": 100, "promotional_price": 90})
        drain(relay.deps)
        # 40 % below 100 passes the guard; the promotion goes down with it, never held itself
        insert(db_url, "price", "F-1", {"price": 60})
        newest = insert(db_url, "stock", "F-1", {"qty": 5})
        drain(relay.deps)
        assert (*prices(sb, "F-1"), product(sb, "F-1")["qty"]) == (60, 60, 2)
        assert row(db_url, newest).state == "sent"  # the request's newest row speaks for it
        reason = row(db_url, newest).reason or ""
        assert "promotional_price 90 is above the newer price 60" in reason

        # far below: held, and SkyHub keeps a consistent pair meanwhile
        typo = insert(db_url, "price", "F-1", {"price": 20})
        drain(relay.deps)
        assert row(db_url, typo).state == "held"
        assert prices(sb, "F-1") == (60, 60)

        released = CliRunner().invoke(
            cli, ["outbox", "release", str(typo)], env={"SKYSYNC_DATABASE_URL": db_url}
        )
        assert released.exit_code == 0, released.output
        drain(relay.deps)
        assert prices(sb, "F-1") == (20, 20)
        assert not reconcile(relay.deps).has_drift
