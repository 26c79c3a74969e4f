"""Price and stock always reach SkyHub (issue 9): every path where the ERP's latest value could be
lost, frozen or overwritten, reproduced against the SkyHub emulator over HTTP on PostgreSQL.

A "crash" here is :class:`Killed`, raised by the HTTP transport once SkyHub's answer arrived: a
BaseException, so nothing in the relay records anything after it, as when the process dies
between the send and the record. The same case with a real worker process killed by SIGKILL is
in test_celery.py.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from conftest import empty_tables
from relay_helpers import (
    bodies,
    create_product,
    expire_leases,
    insert,
    make_due,
    product,
    relay_for,
    requests,
    row,
    rows,
)

from skysync.emulator import Sandbox
from skysync.relay import drain
from skysync.reporting import reports
from skysync.store.db import session_scope
from skysync.store.models import Item, Order, utcnow

KEY = "35190812345678000123550010000012341000012345"


class Killed(BaseException):
    """The process died: raised where the answer arrived, so nothing after it runs."""


class AfterAnswer(httpx.BaseTransport):
    """The real HTTP transport, with a hook that runs once SkyHub's answer has arrived."""

    def __init__(self, hook: Callable[[httpx.Request], None]):
        self.inner = httpx.HTTPTransport()
        self.hook = hook

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        self.hook(request)
        return response

    def close(self) -> None:
        self.inner.close()


def once(method: str, path: str, action: Callable[[], None]) -> Callable[[httpx.Request], None]:
    """A hook that runs ``action`` after the first answer to ``method path``."""
    fired: list[bool] = []

    def hook(request: httpx.Request) -> None:
        if not fired and request.method == method and request.url.path == path:
            fired.append(True)
            action()

    return hook


def kill() -> None:
    raise Killed


@pytest.fixture
def db(pg_url: str) -> str:
    empty_tables(pg_url)
    return pg_url


def item(db: str, sku: str) -> Item:
    with session_scope(db) as session:
        found = session.get(Item, ("default", sku))
        assert found is not None, sku
        session.expunge(found)
        return found


# -- case 1: a variation's price and stock inside a linked product's snapshot -----------------


def test_variation_stock_and_price_in_a_linked_products_snapshot_go_out(
    db: str, sb: Sandbox
) -> None:
    snapshot = {"name": "Camiseta", "price": 60.0, "qty": 1}
    variation = {"sku": "VA-P", "qty": 1, "price": 50.0, "images": ["https://img/p1.jpg"]}
    with relay_for(db, sb) as relay:
        create_product(db, relay, "VA", **snapshot, variations=[variation])
        sb.link_product("VA")

        changed = {**variation, "qty": 7, "price": 55.0, "images": ["https://img/p2.jpg"]}
        again = insert(db, "product", "VA", {**snapshot, "variations": [changed]})
        drain(relay.deps)

    got = row(db, again)
    assert got.state == "sent", got
    assert "variations[VA-P].images: frozen" in (got.reason or ""), got.reason
    held = sb.state()["variations"]["VA-P"]
    assert (held["qty"], held["price"]) == (7, 55.0)
    assert held["images"] == ["https://img/p1.jpg"]
    assert bodies(sb, "PUT", "/variations/VA-P") == [{"variation": {"qty": 7, "price": 55.0}}]
    assert sb.state()["frozen_writes"] == []
    assert item(db, "VA-P").acknowledged["qty"] == 7


@pytest.mark.parametrize("stock_first", [False, True])
def test_variation_in_a_linked_snapshot_and_its_own_stock_row_make_one_request_with_the_latest(
    db: str, sb: Sandbox, stock_first: bool
) -> None:
    with relay_for(db, sb) as relay:
        create_product(db, relay, "VB", variations=[{"sku": "VB-P", "qty": 1, "price": 50.0}])
        sb.link_product("VB")
        snapshot_row = ("product", "VB", {"variations": [{"sku": "VB-P", "qty": 7, "price": 55.0}]})
        stock_row = ("stock", "VB-P", {"qty": 9})
        first, second = (stock_row, snapshot_row) if stock_first else (snapshot_row, stock_row)
        ids = [insert(db, *first), insert(db, *second)]
        assert relay.run_batch().claimed == 2
    latest_qty = 7 if stock_first else 9
    assert bodies(sb, "PUT", "/variations/VB-P") == [
        {"variation": {"qty": latest_qty, "price": 55.0}}
    ]
    held = sb.state()["variations"]["VB-P"]
    assert (held["qty"], held["price"]) == (latest_qty, 55.0)
    got = rows(db)
    assert got[ids[1]].state == "sent", got[ids[1]]
    assert (got[ids[0]].state, got[ids[0]].superseded_by) == ("superseded", ids[1])


def test_variation_rows_folded_into_the_parents_request_retry_together(
    db: str, sb: Sandbox
) -> None:
    with relay_for(db, sb) as relay:
        create_product(db, relay, "VC", variations=[{"sku": "VC-P", "qty": 1, "price": 50.0}])
        snapshot = insert(db, "product", "VC", {"variations": [{"sku": "VC-P", "price": 55.0}]})
        stock = insert(db, "stock", "VC-P", {"qty": 9})
        sb.script_fault("PUT", "/variations/VC-P", "503", 3)
        relay.run_batch()
        got = rows(db)
        assert (got[snapshot].state, got[stock].state) == ("pending", "pending")
        make_due(db)
        relay.run_batch()
    held = sb.state()["variations"]["VC-P"]
    assert (held["qty"], held["price"]) == (9, 55.0)
    assert (row(db, snapshot).state, row(db, stock).state) == ("superseded", "sent")


# -- case 2: one refused attribute must not hold back price and stock ------------------------------


def test_refused_category_rejects_the_product_row_and_price_and_stock_still_go(
    db: str, sb: Sandbox
) -> None:
    with relay_for(db, sb) as relay:
        create_product(db, relay, "CAT-1", price=10.0, qty=5)
        sb.configure(refused_categories=["NOPE"])
        attrs = insert(
            db, "product", "CAT-1", {"name": "Novo", "categories": [{"code": "NOPE", "name": "X"}]}
        )
        stock = insert(db, "stock", "CAT-1", {"qty": 0})
        price = insert(db, "price", "CAT-1", {"price": 12.0})
        summary = relay.run_batch()
        assert summary.claimed == 3
        got = rows(db)
    assert got[attrs].state == "rejected", got[attrs]
    assert "Categoria não encontrada: NOPE" in (got[attrs].reason or "")
    assert "categories" in (got[attrs].reason or "") and "name" in (got[attrs].reason or "")
    assert (got[price].state, got[stock].state) == ("sent", "superseded")
    assert got[stock].superseded_by == price
    held = product(sb, "CAT-1")
    assert (held["qty"], held["price"], held["name"]) == (0, 12.0, "Produto CAT-1")
    assert [(e["body"]["product"], e["status"]) for e in requests(sb, "PUT")] == [
        (
            {
                "name": "Novo",
                "categories": [{"code": "NOPE", "name": "X"}],
                "qty": 0,
                "price": 12.0,
            },
            422,
        ),
        ({"qty": 0, "price": 12.0}, 204),
    ]


def test_refused_row_carrying_the_only_price_waits_until_that_price_got_through(
    db: str, sb: Sandbox
) -> None:
    """Found by the stateful property: the row SkyHub refused is also the one carrying the new
    price; when the resend of that price fails for a while, the row must not end rejected
    before its price reached SkyHub."""
    # after SkyHub's 422, the resend of the price alone meets three 503s
    hook = once("PUT", "/products/CAT-2", lambda: sb.script_fault("PUT", "/products/", "503", 3))
    with relay_for(db, sb, client_kw={"transport": AfterAnswer(hook)}) as relay:
        create_product(db, relay, "CAT-2", price=10.0)
        sb.configure(refused_categories=["NOPE"])
        value = insert(
            db, "product", "CAT-2", {"categories": [{"code": "NOPE", "name": "N"}], "price": 12.0}
        )
        relay.run_batch()
        got = row(db, value)
        assert (got.state, got.attempts) == ("pending", 1), got
        assert product(sb, "CAT-2")["price"] == 10.0
        make_due(db)
        relay.run_batch()
    got = row(db, value)
    assert got.state == "rejected", got
    assert "Categoria não encontrada: NOPE" in (got.reason or "")
    assert product(sb, "CAT-2")["price"] == 12.0


def test_refused_row_next_to_an_unchanged_price_rejects_only_the_refused_row(
    db: str, sb: Sandbox
) -> None:
    """Found by the stateful property: the price row is withheld as unchanged, not rejected
    with the category's refusal."""
    with relay_for(db, sb) as relay:
        create_product(db, relay, "CAT-3", price=10.0)
        sb.configure(refused_categories=["NOPE"])
        refused = insert(db, "product", "CAT-3", {"categories": [{"code": "NOPE", "name": "N"}]})
        same = insert(db, "price", "CAT-3", {"price": 10.0})
        relay.run_batch()
    got = rows(db)
    assert got[refused].state == "rejected", got[refused]
    assert got[same].state == "withheld", got[same]
    assert "price: unchanged" in (got[same].reason or "")


# -- case 3: a lost answer followed by a revert --------------------------------------------------


def test_lost_answer_then_revert_sends_the_reverted_value(db: str, sb: Sandbox) -> None:
    hook = once("PUT", "/products/REV-1", kill)
    with relay_for(db, sb, client_kw={"transport": AfterAnswer(hook)}) as relay:
        create_product(db, relay, "REV-1", price=10.0)
        insert(db, "price", "REV-1", {"price": 12.0})
        with pytest.raises(Killed):
            relay.run_batch()
        assert product(sb, "REV-1")["price"] == 12.0  # applied; the answer was never recorded
        assert "price" in item(db, "REV-1").attempt
        with session_scope(db) as session:  # what `skysync item show` reports
            assert reports.item_report(session, "REV-1")["unknown"] == ["price"]

        back = insert(db, "price", "REV-1", {"price": 10.0})  # the ERP goes back
        expire_leases(db)
        drain(relay.deps)
    assert row(db, back).state == "sent", row(db, back)
    assert product(sb, "REV-1")["price"] == 10.0
    assert item(db, "REV-1").attempt == {}
    assert item(db, "REV-1").acknowledged["price"] == 10.0


def test_variation_lost_answer_then_revert_sends_the_reverted_value(db: str, sb: Sandbox) -> None:
    hook = once("PUT", "/variations/REV-V", kill)
    with relay_for(db, sb, client_kw={"transport": AfterAnswer(hook)}) as relay:
        create_product(db, relay, "REV-P", variations=[{"sku": "REV-V", "qty": 4}])
        insert(db, "stock", "REV-V", {"qty": 0})
        with pytest.raises(Killed):
            relay.run_batch()
        assert sb.state()["variations"]["REV-V"]["qty"] == 0
        back = insert(db, "product", "REV-P", {"variations": [{"sku": "REV-V", "qty": 4}]})
        expire_leases(db)
        drain(relay.deps)
    assert row(db, back).state == "sent", row(db, back)
    assert sb.state()["variations"]["REV-V"]["qty"] == 4


# -- case 4: attempts do not leak from old rows into a fresh value -------------------------------


def test_fresh_value_folded_into_a_failing_sku_gets_a_full_attempt_budget(
    db: str, sb: Sandbox
) -> None:
    with relay_for(db, sb, settings_kw={"max_attempts": 3}) as relay:
        create_product(db, relay, "ATT-1", price=10.0)
        old = insert(db, "price", "ATT-1", {"price": 20.0})
        sb.script_fault("PUT", "/products/ATT-1", "503", 6)
        relay.run_batch()
        make_due(db)
        relay.run_batch()
        assert (row(db, old).state, row(db, old).attempts) == ("pending", 2)

        fresh = insert(db, "stock", "ATT-1", {"qty": 4})
        sb.script_fault("PUT", "/products/ATT-1", "503", 3)
        make_due(db)
        relay.run_batch()  # the third failure of the old value, the first of the fresh one
        got = rows(db)
        assert (got[fresh].state, got[fresh].attempts) == ("pending", 1), got[fresh]
        assert (got[old].state, got[old].attempts) == ("pending", 3), got[old]
        make_due(db)
        relay.run_batch()
    got = rows(db)
    assert (got[fresh].state, got[old].state) == ("sent", "superseded")
    assert (product(sb, "ATT-1")["price"], product(sb, "ATT-1")["qty"]) == (20.0, 4)


def test_the_newest_value_still_dies_after_its_own_attempts(db: str, sb: Sandbox) -> None:
    with relay_for(db, sb, settings_kw={"max_attempts": 2}) as relay:
        create_product(db, relay, "ATT-2", price=10.0)
        value = insert(db, "price", "ATT-2", {"price": 20.0})
        sb.script_fault("PUT", "/products/ATT-2", "503", 6)
        relay.run_batch()
        make_due(db)
        relay.run_batch()
    got = row(db, value)
    assert (got.state, got.attempts) == ("dead", 2), got
    assert "gave up after 2 attempts" in (got.reason or "")


# -- a parent and its variations are one key ------------------------------------------------------


def test_variation_row_waits_while_its_parents_row_is_in_flight(db: str, sb: Sandbox) -> None:
    tasks: list[tuple[str, list[int]]] = []
    with relay_for(db, sb) as relay:
        create_product(db, relay, "FAM", variations=[{"sku": "FAM-P", "qty": 1}])
        parent = insert(db, "product", "FAM", {"variations": [{"sku": "FAM-P", "qty": 5}]})
        relay.run_batch(dispatch=lambda token, ids: tasks.append((token, ids)))
        assert row(db, parent).state == "in_flight"

        stock = insert(db, "stock", "FAM-P", {"qty": 6})  # a trigger during a slow batch
        assert relay.run_batch().claimed == 0
        assert row(db, stock).state == "pending"

        for token, ids in tasks:  # the first batch's worker finishes
            relay.deliver(token, ids)
        drain(relay.deps)
    assert [b["variation"]["qty"] for b in bodies(sb, "PUT", "/variations/FAM-P")] == [5, 6]
    assert sb.state()["variations"]["FAM-P"]["qty"] == 6


def test_parent_row_waits_while_a_variation_row_is_in_flight(db: str, sb: Sandbox) -> None:
    tasks: list[tuple[str, list[int]]] = []
    with relay_for(db, sb) as relay:
        create_product(db, relay, "FAM2", variations=[{"sku": "FAM2-P", "qty": 1}])
        insert(db, "stock", "FAM2-P", {"qty": 5})
        relay.run_batch(dispatch=lambda token, ids: tasks.append((token, ids)))
        parent = insert(db, "product", "FAM2", {"variations": [{"sku": "FAM2-P", "qty": 6}]})
        assert relay.run_batch().claimed == 0
        assert row(db, parent).state == "pending"
        for token, ids in tasks:
            relay.deliver(token, ids)
        drain(relay.deps)
    assert sb.state()["variations"]["FAM2-P"]["qty"] == 6


# -- a worker that lost its claim records nothing ---------------------------------------------


def test_worker_that_lost_its_claim_writes_no_acknowledgement_or_link(db: str, sb: Sandbox) -> None:
    taken: list[tuple[str, list[int]]] = []

    def lease_runs_out_and_another_batch_claims() -> None:
        expire_leases(db)
        summary = other.run_batch(dispatch=lambda token, ids: taken.append((token, ids)))
        assert summary.reclaimed == 1 and summary.claimed == 1

    hook = once("PUT", "/products/LOST-1", lease_runs_out_and_another_batch_claims)
    with (
        relay_for(db, sb, client_kw={"transport": AfterAnswer(hook)}) as relay,
        relay_for(db, sb) as other,
    ):
        create_product(db, relay, "LOST-1", name="Velho", price=10.0)
        sb.link_product("LOST-1")
        value = insert(db, "product", "LOST-1", {"name": "Novo", "price": 20.0})
        relay.run_batch()  # GET shows it linked; PUT price; then the claim is lost

        assert row(db, value).state == "in_flight"
        ((token, _ids),) = taken
        assert row(db, value).claim_token == token  # the new claim keeps it
        lost = item(db, "LOST-1")
        assert lost.acknowledged["price"] == 10.0  # no acknowledgement by the stale worker
        assert not lost.linked and not lost.frozen  # nor the link it saw
        assert "price" in lost.attempt  # SkyHub's price is unknown: the next claim sends it

        for token, ids in taken:
            other.deliver(token, ids)
    assert row(db, value).state == "sent"
    assert item(db, "LOST-1").acknowledged["price"] == 20.0
    assert item(db, "LOST-1").frozen
    assert product(sb, "LOST-1")["name"] == "Velho"


def test_worker_that_lost_its_claim_writes_no_order_status(db: str, sb: Sandbox) -> None:
    code = "Lojas Americanas-900-01"
    sb.seed_order({"code": code, "status": "payment_received"})

    def lease_runs_out_and_another_batch_claims() -> None:
        expire_leases(db)
        assert other.run_batch(dispatch=lambda token, ids: None).claimed == 1

    hook = once("POST", f"/orders/{code}/invoice", lease_runs_out_and_another_batch_claims)
    with (
        relay_for(db, sb, client_kw={"transport": AfterAnswer(hook)}) as relay,
        relay_for(db, sb) as other,
    ):
        step = insert(db, "order_invoice", code, {"key": KEY})
        relay.run_batch()
    assert row(db, step).state == "in_flight"
    with session_scope(db) as session:
        assert session.get(Order, ("default", code)) is None


# -- Retry-After -------------------------------------------------------------------------------


def test_long_retry_after_releases_the_rows_due_then_without_sleeping(db: str, sb: Sandbox) -> None:
    slept: list[float] = []
    with relay_for(db, sb, client_kw={"sleep": slept.append}) as relay:
        create_product(db, relay, "RA-1", price=10.0)
        sb.configure(retry_after_header=True, retry_after_seconds=3600)
        sb.script_fault("PUT", "/products/RA-1", "429")
        value = insert(db, "price", "RA-1", {"price": 11.0})
        relay.run_batch()
    got = row(db, value)
    assert (got.state, got.attempts) == ("pending", 0), got
    assert (got.available_at - utcnow()).total_seconds() > 3500
    assert "rate limited" in (got.reason or "")
    assert all(s <= 60 for s in slept), slept
    assert len(requests(sb, "PUT")) == 1


def test_short_retry_after_is_waited_out(db: str, sb: Sandbox) -> None:
    slept: list[float] = []
    with relay_for(db, sb, client_kw={"sleep": slept.append}) as relay:
        create_product(db, relay, "RA-2", price=10.0)
        sb.configure(retry_after_header=True, retry_after_seconds=7)
        sb.script_fault("PUT", "/products/RA-2", "429")
        value = insert(db, "price", "RA-2", {"price": 11.0})
        relay.run_batch()
    assert row(db, value).state == "sent"
    assert 7.0 in slept
    assert product(sb, "RA-2")["price"] == 11.0


# -- order steps: a failed read after a 422 is transient ------------------------------------------


def test_failed_order_read_after_a_repeat_422_is_retried_not_rejected(db: str, sb: Sandbox) -> None:
    code = "Lojas Americanas-901-01"
    sb.seed_order({"code": code, "status": "payment_received"})
    with relay_for(db, sb) as relay:
        step = insert(db, "order_invoice", code, {"key": KEY})
        sb.script_fault("POST", f"/orders/{code}/invoice", "lost")  # applied, no answer
        sb.script_fault("GET", f"/orders/{code}", "503", 3)  # and the order cannot be read
        relay.run_batch()
        got = row(db, step)
        assert (got.state, got.attempts) == ("pending", 1), got
        assert "reading the order" in (got.reason or "")
        make_due(db)
        relay.run_batch()
    got = row(db, step)
    assert got.state == "sent", got
    assert "already order_invoiced" in (got.reason or "")
    assert sb.state()["orders"][code]["status"]["code"] == "order_invoiced"


# -- payload.sku ----------------------------------------------------------------------------------


def test_product_row_carrying_its_own_sku_is_delivered(db: str, sb: Sandbox) -> None:
    with relay_for(db, sb) as relay:
        value = insert(db, "product", "SKU-IN", {"sku": "SKU-IN", "name": "x", "price": 5.0})
        drain(relay.deps)
    assert row(db, value).state == "sent"
    assert bodies(sb, "POST", "/products") == [
        {"product": {"sku": "SKU-IN", "name": "x", "price": 5.0}}
    ]


def test_product_row_carrying_another_sku_is_rejected_naming_both(db: str, sb: Sandbox) -> None:
    with relay_for(db, sb) as relay:
        value = insert(db, "product", "SKU-A", {"sku": "SKU-B", "name": "x"})
        drain(relay.deps)
    got = row(db, value)
    assert got.state == "rejected"
    assert "payload.sku" in (got.reason or "")
    assert '"SKU-B"' in (got.reason or "") and '"SKU-A"' in (got.reason or "")
    assert sb.request_log() == []
