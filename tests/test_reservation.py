"""Stock held back for marketplace orders the ERP has not consumed yet
(SKYSYNC_RESERVE_OPEN_ORDERS, docs/orders.md), on SQLite and PostgreSQL, against the emulator over
HTTP: orders with items queued through its admin API, pulled from its queue, quantities sent
with PUT /products and PUT /variations. Each edge of the rule has its test: consumed in the
stock row's own transaction, consumed after the stock row was written, two lines of one SKU, a
variation's SKU, a cancellation before the ERP consumed the order."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from click.testing import CliRunner
from conftest import SandboxAdmin, fresh_database_fixture
from prometheus_client import generate_latest
from relay_helpers import (
    acknowledged,
    create_product,
    insert,
    is_pg,
    product,
    relay_for,
    requests,
    row,
)

from skysync.emulator import Sandbox
from skysync.entrypoints.cli import cli
from skysync.relay import drain
from skysync.relay.pull_orders import PullSummary, pull_orders
from skysync.relay.reconcile import reconcile
from skysync.relay.relay import Relay
from skysync.reporting.metrics import registry_for
from skysync.store import outbox_reads
from skysync.store.db import Database, get_engine, migrate, session_scope
from skysync.store.models import Order, OutboxRow

RESERVE = {"reserve_open_orders": True}


def now_sql(db_url: str) -> str:
    """The database's own time, as the ERP contract asks for ``consumed_at``: on SQLite with
    milliseconds (its CURRENT_TIMESTAMP has whole seconds)."""
    return "CURRENT_TIMESTAMP" if is_pg(db_url) else "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def queue_order(sb: Sandbox, code: str, items: list[tuple[str, int]], **fields: Any) -> None:
    """An order with ``items`` (SKU, units) in the emulator's queue, through its admin API."""
    body = {
        "code": code,
        "status": fields.pop("status", "payment_received"),
        "items": [
            {"id": sku, "product_id": sku, "name": sku, "qty": qty, "special_price": 10.0}
            for sku, qty in items
        ],
        **fields,
    }
    answer = SandboxAdmin(sb.base_url).seed_order(body)
    assert answer.status_code in (200, 201), answer.text


def pull(relay: Relay) -> PullSummary:
    return pull_orders(relay.db, relay.client, reserving=relay.deps.reserving)


def consume(db_url: str, code: str, *, stock: tuple[str, int] | None = None) -> None:
    """The ERP reads the order's inbox rows and marks them consumed; with ``stock``, it writes
    that stock row in the same transaction (after the UPDATE, as the contract advises)."""
    with get_engine(db_url).begin() as conn:
        done = conn.execute(
            sa.text(
                f"UPDATE skysync_order_inbox SET consumed_at = {now_sql(db_url)} "
                "WHERE code = :code AND consumed_at IS NULL"
            ),
            {"code": code},
        )
        assert done.rowcount >= 1
        if stock is not None:
            conn.execute(
                sa.text("INSERT INTO skysync_outbox (kind, ref, payload) VALUES ('stock', :r, :p)"),
                {"r": stock[0], "p": json.dumps({"qty": stock[1]})},
            )


def qty_puts(sb: Sandbox, sku: str) -> list[Any]:
    return [
        e["body"]["product"].get("qty")
        for e in requests(sb, "PUT", "/products/{sku}")
        if e["path"] == f"/products/{sku}" and "qty" in e["body"]["product"]
    ]


def reservation_rows(db_url: str) -> list[OutboxRow]:
    with session_scope(db_url, readonly=True) as session:
        query = sa.select(OutboxRow).where(OutboxRow.origin == "reservation")
        return list(session.scalars(query.order_by(OutboxRow.id)))


def item_show(db_url: str, sku: str, *args: str) -> Any:
    env = {"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_RESERVE_OPEN_ORDERS": "true"}
    return CliRunner().invoke(cli, ["item", "show", sku, *args], env=env)


# -- the story ------------------------------------------------------------------------------


def test_a_recount_before_the_erp_reads_the_order_does_not_oversell(
    db_url: str, sb: Sandbox
) -> None:
    """The ERP writes stock 5; an order for 2 arrives; before the ERP consumes it, the ERP
    writes stock 5 again (a recount). SkyHub must end with 3, not 5."""
    with relay_for(db_url, sb, settings_kw=RESERVE) as relay:
        create_product(db_url, relay, "LIVRO-1", name="Livro", price=50.0)
        insert(db_url, "stock", "LIVRO-1", {"qty": 5})
        drain(relay.deps)
        assert product(sb, "LIVRO-1")["qty"] == 5

        queue_order(sb, "Lojas Americanas-1700000000101-01", [("LIVRO-1", 2)])
        summary = pull(relay)
        assert (summary.stored, summary.reservation_rows) == (1, 1)
        [made] = reservation_rows(db_url)
        assert (made.kind, made.ref, made.payload) == ("stock", "LIVRO-1", {"qty": 5})
        drain(relay.deps)
        assert product(sb, "LIVRO-1")["qty"] == 3
        assert row(db_url, made.id).state == "sent"

        recount = insert(db_url, "stock", "LIVRO-1", {"qty": 5})
        drain(relay.deps)
        assert product(sb, "LIVRO-1")["qty"] == 3  # not 5: the sold units stay reserved
        recounted = row(db_url, recount)
        assert recounted.state == "withheld", recounted
        assert "2 reserved by order Lojas Americanas-1700000000101-01" in recounted.reason

        shown = item_show(db_url, "LIVRO-1")
        assert shown.exit_code == 0, shown.output
        assert (
            "qty 3 = ERP 5 − 2 reserved by order Lojas Americanas-1700000000101-01 "
            "(not yet consumed by the ERP)"
        ) in shown.output

        # the ERP reads the order and books it: its next count is 3, and no order counts
        consume(db_url, "Lojas Americanas-1700000000101-01", stock=("LIVRO-1", 3))
        drain(relay.deps)
    assert product(sb, "LIVRO-1")["qty"] == 3
    assert qty_puts(sb, "LIVRO-1") == [5, 3]  # one write for the order, nothing else
    assert "held for orders" not in item_show(db_url, "LIVRO-1").output


# -- the edges of the rule --------------------------------------------------------------------


def test_an_order_consumed_in_the_stock_rows_own_transaction_is_reflected_by_it(
    db_url: str, sb: Sandbox
) -> None:
    with relay_for(db_url, sb, settings_kw=RESERVE) as relay:
        create_product(db_url, relay, "SAME-1", qty=5)
        queue_order(sb, "A-SAME", [("SAME-1", 2)])
        pull(relay)
        drain(relay.deps)
        assert product(sb, "SAME-1")["qty"] == 3
        # the ERP books the order and writes its new count in one transaction: 3 is final
        consume(db_url, "A-SAME", stock=("SAME-1", 3))
        drain(relay.deps)
    assert product(sb, "SAME-1")["qty"] == 3  # not 1: the order is not taken off twice


def test_an_order_consumed_after_the_stock_row_was_written_still_counts_against_it(
    db_url: str, sb: Sandbox
) -> None:
    with relay_for(db_url, sb, settings_kw=RESERVE) as relay:
        create_product(db_url, relay, "LATE-1", qty=8)
        written = insert(db_url, "stock", "LATE-1", {"qty": 5})  # not sent yet
        queue_order(sb, "A-AFTER", [("LATE-1", 2)])
        pull(relay)
        consume(db_url, "A-AFTER")  # after the stock row: that row still counts the 2 units
        drain(relay.deps)
        assert product(sb, "LATE-1")["qty"] == 3
        assert row(db_url, written).state in ("sent", "superseded")
        # a count written after the consumption no longer has the order taken off
        insert(db_url, "stock", "LATE-1", {"qty": 3})
        drain(relay.deps)
    assert product(sb, "LATE-1")["qty"] == 3


def test_two_lines_of_one_sku_in_one_order_reserve_their_sum(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb, settings_kw=RESERVE) as relay:
        create_product(db_url, relay, "DUO-1", qty=10)
        queue_order(sb, "A-DUO", [("DUO-1", 1), ("DUO-1", 2)])
        pull(relay)
        drain(relay.deps)
    assert product(sb, "DUO-1")["qty"] == 7
    assert "3 reserved by order A-DUO" in item_show(db_url, "DUO-1").output


def test_a_variation_sku_is_reserved_on_the_variation(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb, settings_kw=RESERVE) as relay:
        create_product(
            db_url,
            relay,
            "CAMISA",
            variations=[{"sku": "CAMISA-P", "qty": 4}, {"sku": "CAMISA-M", "qty": 6}],
        )
        queue_order(sb, "A-VAR", [("CAMISA-P", 1)])
        pull(relay)
        drain(relay.deps)
        variations = sb.state()["variations"]
        assert (variations["CAMISA-P"]["qty"], variations["CAMISA-M"]["qty"]) == (3, 6)
        # the ERP recounts through the product row, variations and all: still reserved
        insert(db_url, "product", "CAMISA", {"variations": [{"sku": "CAMISA-P", "qty": 4}]})
        drain(relay.deps)
        assert sb.state()["variations"]["CAMISA-P"]["qty"] == 3
        insert(db_url, "stock", "CAMISA-P", {"qty": 4})
        drain(relay.deps)
    assert sb.state()["variations"]["CAMISA-P"]["qty"] == 3
    assert acknowledged(db_url, "CAMISA-P")["qty"] == 3


def test_a_cancellation_before_the_erp_consumed_the_order_frees_its_units(
    db_url: str, sb: Sandbox
) -> None:
    with relay_for(db_url, sb, settings_kw=RESERVE) as relay:
        create_product(db_url, relay, "CANC-1", qty=5)
        queue_order(sb, "A-CANC", [("CANC-1", 2)])
        queue_order(sb, "A-KEEP", [("CANC-1", 1)])
        pull(relay)
        drain(relay.deps)
        assert product(sb, "CANC-1")["qty"] == 2
        # the marketplace cancels one: the queue brings its new status
        SandboxAdmin(sb.base_url).seed_order({"code": "A-CANC", "status": "order_canceled"})
        assert pull(relay).reservation_rows == 1
        drain(relay.deps)
        assert product(sb, "CANC-1")["qty"] == 4
        # the seller cancels the other through the ERP's outbox: sent, its unit comes back
        cancel = insert(db_url, "order_cancel", "A-KEEP", {})
        drain(relay.deps)
        assert row(db_url, cancel).state == "sent"
        drain(relay.deps)
    assert product(sb, "CANC-1")["qty"] == 5
    assert "held for orders" not in item_show(db_url, "CANC-1").output


# -- how it combines ---------------------------------------------------------------------------


def test_off_by_default_orders_change_nothing(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "OFF-1", qty=5)
        queue_order(sb, "A-OFF", [("OFF-1", 2)])
        assert pull(relay).reservation_rows == 0
        insert(db_url, "stock", "OFF-1", {"qty": 5})
        drain(relay.deps)
    assert product(sb, "OFF-1")["qty"] == 5
    assert reservation_rows(db_url) == []


def test_the_reservation_and_the_stock_buffer_combine(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb, settings_kw={**RESERVE, "stock_buffer": 1}) as relay:
        create_product(db_url, relay, "BUF-1", qty=5)
        assert product(sb, "BUF-1")["qty"] == 4
        queue_order(sb, "A-BUF", [("BUF-1", 2)])
        pull(relay)
        drain(relay.deps)
        assert product(sb, "BUF-1")["qty"] == 2
        queue_order(sb, "A-BUF-2", [("BUF-1", 9)])
        pull(relay)
        drain(relay.deps)
    assert product(sb, "BUF-1")["qty"] == 0  # never below 0


def test_an_order_for_a_sku_skyhub_does_not_have_writes_nothing(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb, settings_kw=RESERVE) as relay:
        queue_order(sb, "A-NEW", [("NOVO-1", 1)])
        assert pull(relay).reservation_rows == 0
        # its first quantity goes out reserved
        create_product(db_url, relay, "NOVO-1", qty=4)
    assert product(sb, "NOVO-1")["qty"] == 3


def test_reconciliation_expects_the_reserved_quantity_with_the_buffer(
    db_url: str, sb: Sandbox
) -> None:
    """SkyHub holding the ERP's quantity less the open orders' units (and the buffer) is no
    drift; SkyHub showing the ERP's full quantity is, and its repair goes out reserved."""
    with relay_for(db_url, sb, settings_kw={**RESERVE, "stock_buffer": 1}) as relay:
        create_product(db_url, relay, "REC-1", qty=6, price=20.0)
        queue_order(sb, "A-REC", [("REC-1", 2)])
        pull(relay)
        drain(relay.deps)
        assert product(sb, "REC-1")["qty"] == 3
        assert not reconcile(relay.deps).has_drift
        sb.change_product("REC-1", {"qty": 6})  # someone "fixed" it in SkyHub's panel
        report = reconcile(relay.deps, repair=True)
        [drift] = report.drift
        assert (drift.field, drift.erp, drift.skyhub) == ("qty", 6, 6)
        assert (
            drift.note
            == "SkyHub should hold 3: 2 reserved by order A-REC (not yet consumed by the ERP)"
        )
        drain(relay.deps)
        assert product(sb, "REC-1")["qty"] == 3
        # the ERP books the order (consumed with its new count): expected 4 - 1 = 3, no drift
        consume(db_url, "A-REC", stock=("REC-1", 4))
        drain(relay.deps)
        assert product(sb, "REC-1")["qty"] == 3
        assert not reconcile(relay.deps).has_drift


def test_metrics_show_the_units_reserved(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb, settings_kw=RESERVE) as relay:
        create_product(db_url, relay, "MET-1", qty=9)
        create_product(db_url, relay, "MET-2", qty=9)
        queue_order(sb, "A-MET-1", [("MET-1", 2), ("MET-2", 1)])
        queue_order(sb, "A-MET-2", [("MET-1", 3)])
        queue_order(sb, "A-MET-3", [("MET-2", 4)])
        pull(relay)
        consume(db_url, "A-MET-2")  # the ERP has it: no longer held for it
        SandboxAdmin(sb.base_url).seed_order({"code": "A-MET-3", "status": "order_canceled"})
        pull(relay)
    text = generate_latest(registry_for(Database.for_url(db_url))).decode()
    values = {
        line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("skysync_reserved_")
    }
    assert values == {
        'skysync_reserved_units{account="default"}': 3.0,
        'skysync_reserved_skus{account="default"}': 2.0,
        'skysync_reserved_orders{account="default"}': 1.0,
    }


# -- the ERP's quantity that a reservation row repeats --------------------------------------------


def _taken(db_url: str, kind: str, ref: str, payload: Any, *, epoch: int, state: str) -> int:
    with session_scope(db_url) as session:
        written = OutboxRow(kind=kind, ref=ref, payload=payload)
        session.add(written)
        session.flush()
        written.state, written.claim_epoch = state, epoch
        if state != "sent":
            written.reason = "test"
        return written.id


def test_the_erps_newest_quantity_follows_the_claims_order_not_the_ids(db_url: str) -> None:
    """Two ERP transactions: id 1 (qty 5) commits after id 2 (qty 3) was claimed: the later
    claim read id 1, so 5 is the ERP's last word (docs/erp-contract.md, "Which row is newer");
    a parent's product rows without a quantity for the variation are passed over, page after
    page; rows a claim refused, skysync's own and those still waiting are not the ERP's."""
    first = _taken(db_url, "stock", "V-1", {"qty": 5}, epoch=2, state="sent")
    _taken(db_url, "stock", "V-1", {"qty": 3}, epoch=1, state="sent")
    with session_scope(db_url, readonly=True) as session:
        found = outbox_reads.latest_erp_qty(session, "V-1", "P-1", page=3)
    assert found is not None and (found.row_id, found.qty) == (first, 5)

    for _ in range(7):  # newer product rows of the parent, none with V-1's quantity
        _taken(db_url, "product", "P-1", {"name": "x"}, epoch=3, state="sent")
    carried = _taken(
        db_url,
        "product",
        "P-1",
        {"variations": [{"sku": "V-1", "qty": 8}]},
        epoch=4,
        state="superseded",
    )
    for _ in range(7):
        _taken(db_url, "product", "P-1", {"name": "y"}, epoch=5, state="withheld")
    _taken(db_url, "stock", "V-1", {"qty": 1}, epoch=6, state="rejected")
    insert(db_url, "stock", "V-1", {"qty": 2})  # pending
    with session_scope(db_url) as session:
        session.add(OutboxRow(kind="stock", ref="V-1", payload={"qty": 9}, origin="reservation"))
    with session_scope(db_url, readonly=True) as session:
        found = outbox_reads.latest_erp_qty(session, "V-1", "P-1", page=3)
        assert found is not None and (found.row_id, found.qty) == (carried, 8)
        assert outbox_reads.latest_erp_qty(session, "V-1") is not None
        assert outbox_reads.latest_erp_qty(session, "OTHER") is None


# -- the migration ------------------------------------------------------------------------


fresh_url = fresh_database_fixture("skysync_res_migr")


def test_the_migration_gives_orders_already_pulled_their_lines_and_dates(fresh_url: str) -> None:
    migrate(fresh_url, "0011")
    old = {"code": "A-OLD", "status": {"code": "book_product"}, "items": [{"id": "S", "qty": 1}]}
    new = {
        **old,
        "status": {"code": "payment_received"},
        "items": [{"id": "S", "qty": 1}, {"id": "S", "qty": 1}, {"id": "S-P", "qty": 3}],
        "expedition_limit_date": "2026-12-08T10:00:00-03:00",
        "approved_date": "2026-12-06T09:00:00",
    }
    with get_engine(fresh_url).begin() as conn:
        for n, raw in enumerate((old, new, {"code": "A-BAD", "items": "x"})):
            conn.execute(
                sa.text(
                    "INSERT INTO skysync_order_inbox (code, status, dedupe_key, raw, parse_error) "
                    "VALUES (:c, 's', :k, :r, :p)"
                ),
                {
                    "c": raw["code"],
                    "k": f"k{n}",
                    "r": json.dumps(raw),
                    "p": "bad" if n == 2 else None,
                },
            )
        conn.exec_driver_sql("INSERT INTO skysync_order (code, status) VALUES ('A-OLD', 's')")
    migrate(fresh_url)
    with session_scope(fresh_url, readonly=True) as session:
        lines = session.execute(
            sa.text("SELECT code, sku, qty FROM skysync_order_line ORDER BY sku")
        ).all()
        assert [tuple(r) for r in lines] == [("A-OLD", "S", 2), ("A-OLD", "S-P", 3)]
        order = session.get(Order, ("default", "A-OLD"))
        assert order is not None and order.expedition_limit_at is not None
        assert order.expedition_limit_at.isoformat() == "2026-12-08T13:00:00+00:00"
        assert order.approved_at is not None  # naive: Brasília time
        assert order.approved_at.isoformat() == "2026-12-06T12:00:00+00:00"
