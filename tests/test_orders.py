"""Orders both ways against the emulator over HTTP, on SQLite and PostgreSQL: the queue drained
into the inbox and acknowledged only after storing, redeliveries not duplicated, malformed orders
kept raw and flagged; status steps sent in order, impossible ones refused locally, a refused one
blocking only its own order."""

from __future__ import annotations

import itertools
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import sandbox_fixture
from relay_helpers import (
    insert,
    make_client,
    make_due,
    relay_for,
    requests,
    row,
)

from skysync.emulator import Sandbox
from skysync.entrypoints.cli import cli
from skysync.relay import drain
from skysync.relay.pull_orders import pull_orders
from skysync.reporting.status import collect_status
from skysync.skyhub.ratelimit import RateLimiter
from skysync.store.db import Database, get_engine, session_scope
from skysync.store.models import Order, OrderInbox, utcnow

AMERICANAS = "Lojas Americanas-1517940500554-01"
SUBMARINO = "Submarino-2222222222-01"
KEY = "35190812345678000123550010000012341000012345"
SHIPMENT = {
    "code": "SHIP-1",
    "items": [{"sku": "SKU-1", "qty": 1}],
    "track": {"code": "BR123456789BR", "carrier": "Correios", "method": "PAC"},
}


sb = sandbox_fixture(visibility_timeout=0.3)


def inbox(db_url: str) -> list[OrderInbox]:
    with session_scope(db_url, readonly=True) as session:
        return list(session.scalars(sa.select(OrderInbox).order_by(OrderInbox.id)))


def order_status(db_url: str, code: str) -> str | None:
    with session_scope(db_url, readonly=True) as session:
        found = session.get(Order, ("default", code))
        return found.status if found else None


def pull(db_url: str, sb: Sandbox, **kw: object):  # type: ignore[no-untyped-def]
    with make_client(sb.base_url, **kw) as client:
        return pull_orders(Database.for_url(db_url), client)


# -- orders in ----------------------------------------------------------------------------


def test_queue_is_drained_stored_and_acknowledged(db_url: str, sb: Sandbox) -> None:
    sb.seed_order({"code": AMERICANAS, "status": "book_product"})
    sb.seed_order({"code": SUBMARINO, "status": "payment_received"})

    summary = pull(db_url, sb)

    assert (summary.received, summary.stored, summary.acknowledged) == (2, 2, 2)
    stored = inbox(db_url)
    assert [(r.code, r.status) for r in stored] == [
        (AMERICANAS, "book_product"),
        (SUBMARINO, "payment_received"),
    ]
    assert stored[0].raw["code"] == AMERICANAS and stored[0].parse_error is None
    assert all(r.consumed_at is None for r in stored)
    assert order_status(db_url, AMERICANAS) == "book_product"
    assert sb.state()["queue"] == []
    # acknowledged with the code, spaces and all, after the order was stored
    deletes = [e["path"] for e in requests(sb, "DELETE")]
    assert deletes == [
        "/queues/orders/Lojas%20Americanas-1517940500554-01",
        f"/queues/orders/{SUBMARINO}",
    ]
    # nothing comes back after the visibility window
    assert pull(db_url, sb).received == 0


def test_failed_acknowledgement_does_not_duplicate_the_inbox_row(db_url: str, sb: Sandbox) -> None:
    sb.seed_order({"code": AMERICANAS, "status": "payment_received"})
    sb.script_fault("DELETE", "/queues/orders/", "503", count=1)  # the acknowledgement fails

    first = pull(db_url, sb)
    assert (first.stored, first.ack_failed) == (1, 1)
    assert sb.state()["queue"] == [AMERICANAS]  # SkyHub still has it

    time.sleep(0.35)  # the emulator's visibility window (0.3 s): SkyHub delivers it again
    second = pull(db_url, sb)
    assert (second.received, second.stored, second.duplicates, second.acknowledged) == (1, 0, 1, 1)
    assert len(inbox(db_url)) == 1
    assert sb.state()["queue"] == []


def test_a_new_status_of_the_same_order_is_a_new_inbox_row(db_url: str, sb: Sandbox) -> None:
    sb.seed_order({"code": AMERICANAS, "status": "book_product"})
    pull(db_url, sb)
    sb.seed_order({"code": AMERICANAS, "status": "payment_received"})  # the marketplace approves
    pull(db_url, sb)
    assert [r.status for r in inbox(db_url)] == ["book_product", "payment_received"]
    assert order_status(db_url, AMERICANAS) == "payment_received"


def test_malformed_order_is_kept_raw_flagged_and_acknowledged(
    db_url: str, sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb.seed_order({"code": "BROKEN-1", "status": 42, "items": "not a list"}, raw=True)
    sb.seed_order({"code": SUBMARINO, "status": "payment_received"})

    summary = pull(db_url, sb)

    assert (summary.stored, summary.flagged, summary.acknowledged) == (2, 1, 2)
    broken = next(r for r in inbox(db_url) if r.code == "BROKEN-1")
    assert broken.raw == {"code": "BROKEN-1", "status": 42, "items": "not a list"}
    assert broken.parse_error and "status" in broken.parse_error
    assert sb.state()["queue"] == []  # it does not block the queue
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli, ["status", "--json"], env={"SKYSYNC_DATABASE_URL": db_url}, catch_exceptions=False
    )
    assert '"flagged": 1' in result.output


@pytest.mark.slow
def test_an_order_without_a_code_stays_one_inbox_row_flagged_once_and_named_in_status(
    db_url: str, sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """It can never be acknowledged (DELETE /queues/orders/{code} needs the code), so SkyHub
    delivers it again after every visibility window, for ever: each time it is recognised,
    never a second inbox row, never a second flag or warning, and `status` names it (SkyHub's
    support must remove it from the queue)."""
    codeless = {
        "status": {"code": "payment_received", "label": "Aprovado", "type": "APPROVED"},
        "items": [{"id": "SKU-1", "qty": 1, "original_price": 10.0}],
        "placed_at": "2026-11-28T10:00:00-03:00",
    }
    sb.seed_order(codeless, raw=True)
    sb.seed_order({"code": SUBMARINO, "status": "payment_received"})
    flagged, named = [], []
    with caplog.at_level("WARNING", logger="skysync.orders"):
        for n in range(4):  # the first pull, then three redeliveries
            if n == 2:  # SkyHub's bookkeeping moved on: the same order state all the same
                sb.seed_order({**codeless, "updated_at": "2026-11-28T11:00:00-03:00"}, raw=True)
            summary = pull(db_url, sb)
            flagged.append(summary.flagged)
            named.append(summary.unacknowledgeable_rows)
            time.sleep(0.35)  # the emulator's visibility window (0.3 s)
    assert flagged == [1, 0, 0, 0]
    assert SUBMARINO in [r.code for r in inbox(db_url)]
    stored = [r for r in inbox(db_url) if r.code != SUBMARINO]
    assert len(stored) == 1, [(r.id, r.code, r.dedupe_key) for r in stored]
    assert named == [[stored[0].id]] * 4
    assert stored[0].raw == codeless
    assert stored[0].parse_error and "code" in stored[0].parse_error
    warned = [r for r in caplog.records if "flagged" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in warned]

    monkeypatch.chdir(tmp_path)
    shown = CliRunner().invoke(cli, ["status", "--json"], env={"SKYSYNC_DATABASE_URL": db_url})
    report = json.loads(shown.output)
    named = [p for p in report["problems"] if "without a code" in p]
    assert len(named) == 1, report["problems"]
    assert f"inbox row {stored[0].id}" in named[0]
    assert shown.exit_code == 1
    text = CliRunner().invoke(cli, ["status"], env={"SKYSYNC_DATABASE_URL": db_url})
    assert f"inbox row {stored[0].id}" in text.output and "without a code" in text.output
    # once SkyHub stops delivering it (removed from the queue), status stops naming it
    later = utcnow() + timedelta(minutes=11)
    with session_scope(db_url, readonly=True) as session:
        assert collect_status(session, now=later)["orders"]["unacknowledgeable"] == []


@pytest.mark.slow
def test_queue_calls_go_through_the_rate_limiter(db_url: str, sb: Sandbox) -> None:
    for n in range(3):
        sb.seed_order({"code": f"{AMERICANAS}-{n}", "status": "book_product"})
    limiter = RateLimiter(4.0)  # 4/s: requests at least 250 ms apart per bucket
    pull(db_url, sb, limiter=limiter)
    reads = [e["t"] for e in requests(sb, "GET", "/queues/orders")]
    assert len(reads) == 4  # three orders and the empty answer
    gaps = [b - a for a, b in itertools.pairwise(reads)]
    assert min(gaps) >= 0.24, gaps


def test_erp_reads_and_consumes_the_inbox_with_plain_sql(db_url: str, sb: Sandbox) -> None:
    sb.seed_order({"code": AMERICANAS, "status": "payment_received"})
    sb.seed_order({"code": SUBMARINO, "status": "payment_received"})
    pull(db_url, sb)
    with get_engine(db_url).begin() as conn:
        new = conn.execute(
            sa.text(
                "SELECT id, code, status FROM skysync_order_inbox "
                "WHERE consumed_at IS NULL ORDER BY id LIMIT 100"
            )
        ).all()
        assert [c for _i, c, _s in new] == [AMERICANAS, SUBMARINO]
        conn.execute(
            sa.text("UPDATE skysync_order_inbox SET consumed_at = CURRENT_TIMESTAMP WHERE id = :i"),
            {"i": new[0][0]},
        )
    runner = CliRunner()
    env = {"SKYSYNC_DATABASE_URL": db_url}
    listed = runner.invoke(cli, ["orders", "list", "--unconsumed", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert [o["code"] for o in json.loads(listed.output)] == [SUBMARINO]


# -- orders out ---------------------------------------------------------------------------


def test_steps_go_out_in_order(db_url: str, sb: Sandbox) -> None:
    sb.seed_order({"code": AMERICANAS, "status": "payment_received"})
    pull(db_url, sb)
    ids = [
        insert(db_url, "order_invoice", AMERICANAS, {"key": KEY}),
        insert(db_url, "order_shipment", AMERICANAS, SHIPMENT),
        insert(
            db_url, "order_delivery", AMERICANAS, {"delivered_date": "2026-12-02T15:20:00-03:00"}
        ),
    ]
    with relay_for(db_url, sb) as relay:
        drain(relay.deps)
    assert [row(db_url, i).state for i in ids] == ["sent", "sent", "sent"]
    posts = [e["route"] for e in requests(sb, "POST")]
    assert posts == [
        "/orders/{code}/invoice",
        "/orders/{code}/shipments",
        "/orders/{code}/delivery",
    ]
    assert sb.state()["orders"][AMERICANAS]["status"]["code"] == "complete"
    assert order_status(db_url, AMERICANAS) == "complete"


def test_impossible_step_is_refused_locally_and_costs_no_request(db_url: str, sb: Sandbox) -> None:
    sb.seed_order({"code": AMERICANAS, "status": "payment_received"})
    pull(db_url, sb)
    before = len(sb.request_log())
    delivery = insert(
        db_url, "order_delivery", AMERICANAS, {"delivered_date": "2026-12-02T15:20:00-03:00"}
    )
    with relay_for(db_url, sb) as relay:
        drain(relay.deps)
    got = row(db_url, delivery)
    assert got.state == "rejected"
    assert "payment_received" in (got.reason or "") and "order_delivery" in (got.reason or "")
    assert len(sb.request_log()) == before


def test_repeat_of_the_current_status_counts_as_done(db_url: str, sb: Sandbox) -> None:
    # known locally: no request at all
    sb.seed_order({"code": AMERICANAS, "status": "order_invoiced"})
    pull(db_url, sb)
    local = insert(db_url, "order_invoice", AMERICANAS, {"key": KEY})
    # not known locally (never pulled): SkyHub answers 422, a read shows it already invoiced
    sb.seed_order({"code": SUBMARINO, "status": "order_invoiced"})
    remote = insert(db_url, "order_invoice", SUBMARINO, {"key": KEY})
    with relay_for(db_url, sb) as relay:
        drain(relay.deps)
    assert row(db_url, local).state == "sent" and "already" in (row(db_url, local).reason or "")
    assert row(db_url, remote).state == "sent" and "already" in (row(db_url, remote).reason or "")
    invoice_posts = [e for e in requests(sb, "POST") if e["route"] == "/orders/{code}/invoice"]
    assert [(e["path"], e["status"]) for e in invoice_posts] == [
        (f"/orders/{SUBMARINO}/invoice", 422)
    ]


def test_a_refused_step_blocks_only_its_own_order(db_url: str, sb: Sandbox) -> None:
    # AMERICANAS is still book_product in SkyHub and skysync never pulled it, so the invoice
    # goes out and SkyHub refuses it (422); its shipment must wait, SUBMARINO must not.
    sb.seed_order({"code": AMERICANAS, "status": "book_product"})
    sb.seed_order({"code": SUBMARINO, "status": "payment_received"})
    invoice = insert(db_url, "order_invoice", AMERICANAS, {"key": KEY})
    shipment = insert(db_url, "order_shipment", AMERICANAS, SHIPMENT)
    other = insert(db_url, "order_invoice", SUBMARINO, {"key": KEY})
    with relay_for(db_url, sb) as relay:
        drain(relay.deps)
        refused, waiting = row(db_url, invoice), row(db_url, shipment)
        assert refused.state == "rejected" and refused.last_status == 422
        assert "book_product" in (refused.reason or "")  # SkyHub's text names the status
        assert waiting.state == "pending"
        assert f"waiting for row {invoice} (order_invoice" in (waiting.reason or "")
        assert row(db_url, other).state == "sent"
        shipments = [e for e in requests(sb, "POST") if e["route"] == "/orders/{code}/shipments"]
        assert shipments == []

        # the ERP fixes it at the source: the marketplace approves, a new invoice row goes out,
        # and the shipment that waited follows it
        sb.seed_order({"code": AMERICANAS, "status": "payment_received"})
        fix = insert(db_url, "order_invoice", AMERICANAS, {"key": KEY})
        make_due(db_url)  # time passes: the next batch
        drain(relay.deps)
    assert row(db_url, fix).state == "sent"
    assert row(db_url, shipment).state == "sent"
    assert sb.state()["orders"][AMERICANAS]["status"]["code"] == "order_shipped"


def test_orders_cli_pull_list_show(
    db_url: str, sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_SKYHUB_URL": sb.base_url}
    sb.seed_order({"code": AMERICANAS, "status": "payment_received"})
    runner = CliRunner()
    pulled = runner.invoke(cli, ["orders", "pull"], env=env, catch_exceptions=False)
    assert pulled.exit_code == 0, pulled.output
    assert '"stored": 1' in pulled.output
    insert(db_url, "order_invoice", AMERICANAS, {"key": KEY})
    drained = runner.invoke(cli, ["drain"], env=env, catch_exceptions=False)
    assert drained.exit_code == 0, drained.output
    listed = runner.invoke(cli, ["orders", "list", "--status", "order_invoiced"], env=env)
    assert AMERICANAS in listed.output
    shown = runner.invoke(cli, ["orders", "show", AMERICANAS], env=env)
    assert shown.exit_code == 0, shown.output
    assert "payment_received" in shown.output  # inbox history
    assert "order_invoice" in shown.output and "sent" in shown.output  # the step sent back
    unknown = runner.invoke(cli, ["orders", "show", "NOPE-1"], env=env)
    assert unknown.exit_code == 1


def test_a_later_repeat_of_the_same_status_is_kept_but_a_redelivery_is_not(
    db_url: str, sb: Sandbox
) -> None:
    """Two shipment exceptions of one order are two events (their updated_at differ); the same
    event delivered twice is one."""
    first = {
        "code": AMERICANAS,
        "status": "shipment_exception",
        "updated_at": "2026-11-28T10:00:00",
    }
    sb.seed_order(first)
    pull(db_url, sb)
    sb.seed_order(first)  # SkyHub sends the very same state again
    pull(db_url, sb)
    assert len(inbox(db_url)) == 1
    sb.seed_order({**first, "updated_at": "2026-11-29T09:00:00"})  # a second exception
    pull(db_url, sb)
    assert [r.status for r in inbox(db_url)] == ["shipment_exception", "shipment_exception"]
