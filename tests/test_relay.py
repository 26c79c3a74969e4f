"""Behaviour of the relay (docs/relay.md, "How a batch goes"): outbox rows written as the ERP
writes them, delivered to the SkyHub emulator over real sockets, outcomes read back from the outbox
table and from what the emulator received. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from relay_helpers import (
    bodies,
    create_product,
    expire_leases,
    insert,
    insert_raw,
    is_pg,
    make_client,
    make_due,
    product,
    relay_for,
    requests,
    row,
    rows,
    sandbox_config,
)

from skysync import bootstrap
from skysync.domain.planner import SkuRequest
from skysync.emulator import Sandbox
from skysync.entrypoints.cli import cli
from skysync.relay import Relay, drain
from skysync.relay.deliver import push_one_sku
from skysync.relay.deps import RelayDeps
from skysync.relay.outcome import Outcome
from skysync.store.db import get_engine, session_scope
from skysync.store.models import OutboxRow, RunLog, utcnow


def run_cli(args: list[str], **env: str) -> Result:
    return CliRunner().invoke(cli, args, env=env)


@pytest.fixture
def cli_relays(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Relay]]:
    """The relays `skysync relay`/`drain` build, so that a test can look at their client and
    close what the command left open (see test_cli_drain_closes_its_skyhub_client)."""
    built: list[Relay] = []
    real = bootstrap.build_relay

    def build_relay(settings: Any, account: Any = None) -> Relay:
        relay = real(settings, account)
        built.append(relay)
        return relay

    monkeypatch.setattr(bootstrap, "build_relay", build_relay)
    yield built
    for relay in built:
        relay.client.close()


# -- 1. coalescing ---------------------------------------------------------------------------------


def test_price_and_stock_rows_of_one_sku_become_one_put(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "SKU-1", price=10.0, qty=1)
        before = len(sb.request_log())
        ids = [
            insert(db_url, "price", "SKU-1", {"price": 11.0}),
            insert(db_url, "stock", "SKU-1", {"qty": 2}),
            insert(db_url, "price", "SKU-1", {"price": 12.0}),
            insert(db_url, "price", "SKU-1", {"price": 13.0}),
            insert(db_url, "stock", "SKU-1", {"qty": 3}),
            insert(db_url, "price", "SKU-1", {"price": 14.0}),
            insert(db_url, "price", "SKU-1", {"price": 15.5}),
            insert(db_url, "stock", "SKU-1", {"qty": 4}),
        ]
        summary = relay.run_batch()
    assert summary.claimed == 8 and summary.keys == 1
    new = sb.request_log()[before:]
    assert [(e["method"], e["path"], e["status"]) for e in new] == [("PUT", "/products/SKU-1", 204)]
    assert new[0]["body"] == {"product": {"price": 15.5, "qty": 4}}
    assert sb.request_counts().get("PUT /products/{sku} 204") == 1
    got = rows(db_url)
    newest = max(ids)
    assert got[newest].state == "sent"
    for i in ids[:-1]:
        assert got[i].state == "superseded", got[i]
        assert got[i].superseded_by == newest
        assert got[i].reason and str(newest) in got[i].reason
    assert product(sb, "SKU-1")["price"] == 15.5
    assert product(sb, "SKU-1")["qty"] == 4


# -- 2. create vs update ---------------------------------------------------------------------------


def test_first_product_row_creates_then_later_row_updates_only_changed_fields(
    db_url: str, sb: Sandbox
) -> None:
    with relay_for(db_url, sb) as relay:
        first = insert(
            db_url, "product", "NEW-1", {"name": "Bolsa", "price": 50.0, "qty": 3, "brand": "X"}
        )
        drain(relay.deps)
        assert row(db_url, first).state == "sent"
        log = sb.request_log()
        assert [(e["method"], e["path"], e["status"]) for e in log] == [
            ("GET", "/products/NEW-1", 404),
            ("POST", "/products", 201),
        ]
        assert log[1]["body"] == {
            "product": {"sku": "NEW-1", "name": "Bolsa", "price": 50.0, "qty": 3, "brand": "X"}
        }

        second = insert(
            db_url, "product", "NEW-1", {"name": "Bolsa", "price": 55.0, "qty": 3, "brand": "X"}
        )
        drain(relay.deps)
    assert row(db_url, second).state == "sent"
    puts = bodies(sb, "PUT", "/products/NEW-1")
    assert puts == [{"product": {"price": 55.0}}]  # name, qty and brand were unchanged
    assert len(requests(sb, "POST", "/products")) == 1
    stored = product(sb, "NEW-1")
    assert (stored["name"], stored["price"], stored["qty"]) == ("Bolsa", 55.0, 3)


def test_product_that_already_exists_in_skyhub_is_updated_not_created(
    db_url: str, sb: Sandbox
) -> None:
    with make_client(sb.base_url) as direct:
        direct.create_product({"sku": "OLD-1", "name": "Antigo", "price": 1.0, "qty": 1})
    with relay_for(db_url, sb) as relay:
        row_id = insert(db_url, "product", "OLD-1", {"name": "Novo", "price": 2.0})
        drain(relay.deps)
    assert row(db_url, row_id).state == "sent", row(db_url, row_id)
    assert len(requests(sb, "POST", "/products")) == 1  # only the direct one
    assert bodies(sb, "PUT", "/products/OLD-1") == [{"product": {"name": "Novo", "price": 2.0}}]
    stored = product(sb, "OLD-1")
    assert (stored["name"], stored["price"], stored["qty"]) == ("Novo", 2.0, 1)


def test_post_answering_422_exists_falls_back_to_put(db_url: str, sb: Sandbox) -> None:
    """The POST is applied but its answer is lost; the quick retry's POST answers 422 "already
    exists", and the relay updates with PUT instead."""
    sb.script_fault("POST", "/products", "lost", 1)
    with relay_for(db_url, sb) as relay:
        row_id = insert(db_url, "product", "LOST-1", {"name": "Mesa", "price": 99.0, "qty": 2})
        relay.run_batch()
    got = row(db_url, row_id)
    assert got.state == "sent", got
    assert got.attempts == 0
    posts = requests(sb, "POST", "/products")
    assert [e["status"] for e in posts] == [None, 422]
    assert bodies(sb, "PUT", "/products/LOST-1") == [
        {"product": {"name": "Mesa", "price": 99.0, "qty": 2}}
    ]
    stored = product(sb, "LOST-1")
    assert (stored["name"], stored["price"], stored["qty"]) == ("Mesa", 99.0, 2)


# -- 3. absent, null, empty, 0 ---------------------------------------------------------------------


def test_zero_is_a_value_null_and_empty_are_not_and_absent_changes_nothing(
    db_url: str, sb: Sandbox
) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(
            db_url, relay, "Z-1", description="Descrição", brand="Acme", price=10.0, qty=5
        )
        stock = insert(db_url, "stock", "Z-1", {"qty": 0})
        relay.run_batch()
        assert row(db_url, stock).state == "sent"
        assert bodies(sb, "PUT", "/products/Z-1") == [{"product": {"qty": 0}}]
        assert product(sb, "Z-1")["qty"] == 0

        blanks = insert(db_url, "product", "Z-1", {"description": None, "brand": "", "price": 11.0})
        relay.run_batch()
        assert row(db_url, blanks).state == "sent"
        assert bodies(sb, "PUT", "/products/Z-1")[-1] == {"product": {"price": 11.0}}

        absent = insert(db_url, "price", "Z-1", {"price": 12.0})
        relay.run_batch()
        assert row(db_url, absent).state == "sent"
        assert bodies(sb, "PUT", "/products/Z-1")[-1] == {"product": {"price": 12.0}}
    stored = product(sb, "Z-1")
    assert stored["description"] == "Descrição"
    assert stored["brand"] == "Acme"
    assert stored["name"] == "Produto Z-1"
    assert (stored["price"], stored["qty"]) == (12.0, 0)


def test_row_with_only_blank_values_is_withheld_with_a_reason(db_url: str, sb: Sandbox) -> None:
    """Nothing to send: the row is withheld, and (design: every row that is not sent carries a
    human-readable reason) it says why."""
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "Z-2", description="Descrição", price=10.0)
        before = len(sb.request_log())
        blank = insert(db_url, "product", "Z-2", {"description": None, "brand": ""})
        relay.run_batch()
    got = row(db_url, blank)
    assert got.state == "withheld"
    assert len(sb.request_log()) == before  # nothing to say to SkyHub
    assert got.reason and got.reason.strip(), f"withheld row without a reason: {got.reason!r}"
    assert product(sb, "Z-2")["description"] == "Descrição"


def test_unchanged_values_are_withheld_as_unchanged(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "U-1", price=10.0, qty=5)
        before = len(sb.request_log())
        same = insert(db_url, "price", "U-1", {"price": 10.0})
        relay.run_batch()
    got = row(db_url, same)
    assert got.state == "withheld"
    assert "price" in (got.reason or "") and "unchanged" in (got.reason or "")
    assert len(sb.request_log()) == before


# -- 4. freeze -------------------------------------------------------------------------------------


def test_linked_product_withholds_attributes_until_unfrozen(
    db_url: str, sb: Sandbox, clean_env: Path
) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "FZ-1", name="Velho", price=10.0, qty=1)
        sb.link_product("FZ-1")

        both = insert(db_url, "product", "FZ-1", {"name": "Novo", "price": 12.0})
        relay.run_batch()
        got = row(db_url, both)
        assert got.state == "sent", got
        assert "name" in (got.reason or "") and "frozen" in (got.reason or ""), got.reason
        assert bodies(sb, "PUT", "/products/FZ-1") == [{"product": {"price": 12.0}}]

        name_only = insert(db_url, "product", "FZ-1", {"name": "Novo"})
        before = len(sb.request_log())
        relay.run_batch()
        got = row(db_url, name_only)
        assert got.state == "withheld", got
        assert "name" in (got.reason or "") and "frozen" in (got.reason or ""), got.reason
        assert len(sb.request_log()) == before
        assert product(sb, "FZ-1")["name"] == "Velho"
        assert product(sb, "FZ-1")["price"] == 12.0

        shown = run_cli(["item", "show", "FZ-1", "--json"], SKYSYNC_DATABASE_URL=db_url)
        assert shown.exit_code == 0, shown.output
        data = json.loads(shown.stdout)
        assert data["frozen"] is True and data["linked"] is True
        assert data["acknowledged"]["price"] == 12.0
        assert data["acknowledged"]["name"] == "Velho"

        result = run_cli(["item", "unfreeze", "FZ-1"], SKYSYNC_DATABASE_URL=db_url)
        assert result.exit_code == 0, result.output
        result = run_cli(["outbox", "requeue", str(name_only)], SKYSYNC_DATABASE_URL=db_url)
        assert result.exit_code == 0, result.output
        assert "requeued 1 row" in result.stdout
        assert row(db_url, name_only).state == "pending"
        relay.run_batch()
    got = row(db_url, name_only)
    assert got.state == "sent", got
    assert bodies(sb, "PUT", "/products/FZ-1")[-1] == {"product": {"name": "Novo"}}
    assert product(sb, "FZ-1")["name"] == "Novo"


def test_linked_on_creation_withholds_later_attributes_but_not_price(db_url: str) -> None:
    with Sandbox(sandbox_config(link_delay=0)) as sb, relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "FZ-2", name="Velho", price=10.0)
        row_id = insert(
            db_url, "product", "FZ-2", {"name": "Novo", "description": "d", "price": 9.0}
        )
        relay.run_batch()
        got = row(db_url, row_id)
        assert got.state == "sent"
        assert "frozen" in (got.reason or "")
        assert "description" in (got.reason or "") and "name" in (got.reason or "")
        assert bodies(sb, "PUT", "/products/FZ-2") == [{"product": {"price": 9.0}}]
        assert product(sb, "FZ-2")["name"] == "Velho"


# -- 5. ordering, no stale overwrite ---------------------------------------------------------------


def test_older_row_backing_off_is_folded_into_the_newer_one(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "ORD-1", price=10.0)
        sb.script_fault("PUT", "/products/ORD-1", "503", 3)
        a = insert(db_url, "price", "ORD-1", {"price": 20.0})
        relay.run_batch()
        got_a = row(db_url, a)
        assert (got_a.state, got_a.attempts) == ("pending", 1)
        assert got_a.available_at > utcnow()
        assert [e["status"] for e in requests(sb, "PUT")] == [503, 503, 503]

        b = insert(db_url, "price", "ORD-1", {"price": 30.0})
        summary = relay.run_batch()  # B is due: A comes along although it is backing off
        assert summary.claimed == 2
    got = rows(db_url)
    assert got[b].state == "sent"
    assert (got[a].state, got[a].superseded_by) == ("superseded", b)
    puts = requests(sb, "PUT", "/products/{sku}")
    assert [(e["body"], e["status"]) for e in puts] == [
        ({"product": {"price": 20.0}}, 503),
        ({"product": {"price": 20.0}}, 503),
        ({"product": {"price": 20.0}}, 503),
        ({"product": {"price": 30.0}}, 204),
    ]
    assert product(sb, "ORD-1")["price"] == 30.0


def test_key_with_a_row_in_flight_is_not_claimed_again(db_url: str, sb: Sandbox) -> None:
    """A worker holds row A; row B of the same SKU waits for it, so A's value can never land
    after B's."""
    tasks: list[tuple[str, list[int]]] = []
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "ORD-2", price=10.0)
        a = insert(db_url, "price", "ORD-2", {"price": 20.0})
        relay.run_batch(dispatch=lambda token, ids: tasks.append((token, ids)))
        assert row(db_url, a).state == "in_flight"
        b = insert(db_url, "price", "ORD-2", {"price": 30.0})
        summary = relay.run_batch()
        assert summary.claimed == 0
        assert row(db_url, b).state == "pending"
        for token, ids in tasks:  # the worker holding A finishes
            relay.deliver(token, ids)
        assert row(db_url, a).state == "sent"
        drain(relay.deps)
    assert row(db_url, b).state == "sent"
    puts = [e["body"]["product"]["price"] for e in requests(sb, "PUT", "/products/{sku}")]
    assert puts == [20.0, 30.0]
    assert product(sb, "ORD-2")["price"] == 30.0


def test_stale_task_after_a_reclaim_sends_nothing(db_url: str, sb: Sandbox) -> None:
    """Worker 1 claimed A and stalled past its lease; the next batch reclaimed A, folded it with
    the newer B and sent B. Worker 1's task, delivered late, must not send A's value."""
    tasks: list[tuple[str, list[int]]] = []
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "ORD-3", price=10.0)
        a = insert(db_url, "price", "ORD-3", {"price": 20.0})
        relay.run_batch(dispatch=lambda token, ids: tasks.append((token, ids)))
        b = insert(db_url, "price", "ORD-3", {"price": 30.0})
        expire_leases(db_url)
        summary = relay.run_batch()
        assert summary.reclaimed == 1 and summary.claimed == 2
        assert (row(db_url, a).state, row(db_url, b).state) == ("superseded", "sent")
        before = len(sb.request_log())
        ((token, ids),) = tasks
        late = relay.deliver(token, ids)
    assert late.keys == 0
    assert len(sb.request_log()) == before
    assert product(sb, "ORD-3")["price"] == 30.0
    assert (row(db_url, a).state, row(db_url, b).state) == ("superseded", "sent")


def test_worker_that_lost_its_claim_mid_delivery_does_not_overwrite_newer_value(
    db_url: str, sb: Sandbox
) -> None:
    """Worker 1 loaded row A (price 20) and then stalled (GC pause, slow DNS...) past its lease.
    Meanwhile batch 2 reclaimed A, folded it with the newer B (price 30) and sent 30. When
    worker 1 wakes up it no longer holds A: it must not send 20 on top of 30 (design invariant:
    no stale overwrite, "even after crashes and retries")."""
    tasks: list[tuple[str, list[int]]] = []
    with relay_for(db_url, sb) as relay, relay_for(db_url, sb) as other:
        create_product(db_url, relay, "ORD-4", price=10.0)
        a = insert(db_url, "price", "ORD-4", {"price": 20.0})
        relay.run_batch(dispatch=lambda token, ids: tasks.append((token, ids)))
        ((token, ids),) = tasks

        stalled = threading.Event()

        def push_after_stall(deps: RelayDeps, request: SkuRequest) -> Outcome:
            if not stalled.is_set():
                stalled.set()
                # while worker 1 is stalled: its lease runs out, B arrives, batch 2 runs
                insert(db_url, "price", "ORD-4", {"price": 30.0})
                expire_leases(db_url)
                other.run_batch()
            return push_one_sku(deps, request)

        relay.deliver(token, ids, push=push_after_stall)
    assert stalled.is_set()
    prices = [e["body"]["product"]["price"] for e in requests(sb, "PUT", "/products/{sku}")]
    assert prices[0] == 30.0
    assert product(sb, "ORD-4")["price"] == 30.0, f"stale overwrite: PUT bodies {prices}"
    assert prices == [30.0], f"a price was sent after 30.0 was acknowledged: {prices}"
    assert row(db_url, a).state == "superseded"


# -- 6. variations ---------------------------------------------------------------------------------


def test_variations_are_created_with_the_parent_and_updated_through_variations(
    db_url: str, sb: Sandbox
) -> None:
    with relay_for(db_url, sb) as relay:
        parent = insert(
            db_url,
            "product",
            "PAI-1",
            {
                "name": "Camiseta",
                "price": 100.0,
                "qty": 0,
                "variations": [{"sku": "V1", "qty": 1}, {"sku": "V2", "qty": 2}],
            },
        )
        stock = insert(db_url, "stock", "V1", {"qty": 7})
        summary = relay.run_batch()
        assert summary.claimed == 2
        got = rows(db_url)
        # the variation's stock row folds into its parent's request: one POST, V1 at 7
        assert got[stock].state == "sent", got[stock]
        assert (got[parent].state, got[parent].superseded_by) == ("superseded", stock)
        log = [(e["method"], e["path"], e["status"]) for e in sb.request_log()]
        assert log == [("GET", "/products/PAI-1", 404), ("POST", "/products", 201)]
        post = requests(sb, "POST", "/products")[0]["body"]["product"]
        assert post["sku"] == "PAI-1"
        assert post["variations"] == [{"sku": "V1", "qty": 7}, {"sku": "V2", "qty": 2}]

        price = insert(db_url, "price", "V2", {"price": 90.0})
        relay.run_batch()
    assert row(db_url, price).state == "sent", row(db_url, price)
    assert bodies(sb, "PUT", "/variations/V2") == [{"variation": {"price": 90.0}}]
    assert not [e for e in sb.request_log() if e["path"] in ("/products/V1", "/products/V2")]
    variations = sb.state()["variations"]
    assert variations["V1"]["qty"] == 7 and variations["V1"]["parent_sku"] == "PAI-1"
    assert variations["V2"]["qty"] == 2 and variations["V2"]["price"] == 90.0
    assert "V1" not in sb.state()["products"]


def test_stock_row_of_a_variation_goes_with_its_parent(db_url: str, sb: Sandbox) -> None:
    """A variation's stock row and its parent's product row go as one request: when the parent
    cannot be created yet, both retry together."""
    sb.script_fault("*", "/products", "503", 3)  # the parent's GET fails three times
    with relay_for(db_url, sb) as relay:
        parent = insert(
            db_url, "product", "PAI-2", {"name": "Calça", "variations": [{"sku": "W1", "qty": 1}]}
        )
        stock = insert(db_url, "stock", "W1", {"qty": 5})
        relay.run_batch()
        got = rows(db_url)
        assert (got[parent].state, got[parent].attempts) == ("pending", 1)
        assert (got[stock].state, got[stock].attempts) == ("pending", 1)
        assert "PAI-2" in (got[stock].reason or "")
        assert not requests(sb, "PUT", "/variations/{sku}")
        make_due(db_url)
        drain(relay.deps)
    got = rows(db_url)
    assert (got[parent].state, got[stock].state) == ("superseded", "sent")
    assert sb.state()["variations"]["W1"]["qty"] == 5


@pytest.mark.slow
def test_a_parent_and_its_variation_on_skyhub_are_updated_at_the_same_time(
    db_url: str, sb: Sandbox
) -> None:
    """Issue 19, part 4, a fashion catalogue: parents each with a stock row of its own and one
    on its own variation, all already on SkyHub. Updates need no order between them, so a
    parent's PUT /products and its variation's PUT /variations are at SkyHub at the same time
    (different buckets), where a family used to go one request after the other. A new parent in
    the same batch is still created first, its variation's stock in that one POST."""
    latency = 0.3
    families = [(f"MODA-{i}", f"MODA-{i}-M") for i in range(6)]
    with relay_for(db_url, sb) as relay:
        for parent, variation in families:
            insert(
                db_url,
                "product",
                parent,
                {"name": parent, "price": 50.0, "variations": [{"sku": variation, "qty": 1}]},
            )
        drain(relay.deps)
        assert {r.state for r in rows(db_url).values()} == {"sent"}
        seen = len(sb.request_log())
        sb.configure(latency_ms=latency * 1000)

        written = []
        for i, (parent, variation) in enumerate(families):
            written.append(insert(db_url, "stock", parent, {"qty": 10 + i}))
            written.append(insert(db_url, "stock", variation, {"qty": 20 + i}))
        new_parent = insert(
            db_url,
            "product",
            "MODA-NEW",
            {"name": "Vestido", "price": 80.0, "variations": [{"sku": "MODA-NEW-M", "qty": 1}]},
        )
        new_stock = insert(db_url, "stock", "MODA-NEW-M", {"qty": 4})
        relay.run_batch()

    got = rows(db_url)
    assert {got[i].state for i in written} == {"sent"}, [got[i] for i in written]
    assert (got[new_parent].state, got[new_stock].state) == ("superseded", "sent")
    state = sb.state()
    for i, (parent, variation) in enumerate(families):
        assert state["products"][parent]["qty"] == 10 + i
        assert state["variations"][variation]["qty"] == 20 + i
    log = sb.request_log()[seen:]
    # the new parent: read, created with its variation's latest stock; nothing else for it
    new = [(e["method"], e["path"]) for e in log if "MODA-NEW" in json.dumps(e)]
    assert new == [("GET", "/products/MODA-NEW"), ("POST", "/products")], new
    post = next(e for e in log if e["method"] == "POST")["body"]["product"]
    assert post["variations"] == [{"sku": "MODA-NEW-M", "qty": 4}]
    assert state["variations"]["MODA-NEW-M"]["parent_sku"] == "MODA-NEW"
    # the updates: one PUT each, no 404 and no retry
    at = {(e["method"], e["path"]): e["t"] for e in log if e["method"] == "PUT"}
    assert len(at) == 2 * len(families) == len([e for e in log if e["method"] == "PUT"])
    assert {e["status"] for e in log if e["method"] == "PUT"} == {204}
    # SkyHub logs a request once its latency has passed: two requests sent one after the other
    # are logged at least the latency apart. Parent and variation at SkyHub together:
    together = [
        parent
        for parent, variation in families
        if abs(at[("PUT", f"/variations/{variation}")] - at[("PUT", f"/products/{parent}")])
        < latency
    ]
    assert together, {k[1]: round(t, 2) for k, t in at.items()}


# -- 7. faults -------------------------------------------------------------------------------------


def test_one_500_is_retried_at_once(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "F-1", price=10.0)
        sb.script_fault("PUT", "/products/F-1", "500", 1)
        row_id = insert(db_url, "price", "F-1", {"price": 11.0})
        relay.run_batch()
    got = row(db_url, row_id)
    assert (got.state, got.attempts) == ("sent", 0)
    assert [e["status"] for e in requests(sb, "PUT")] == [500, 204]
    assert product(sb, "F-1")["price"] == 11.0


def test_timeout_is_retried(db_url: str, sb: Sandbox) -> None:
    sb.configure(hang_seconds=1.0)
    with relay_for(db_url, sb, client_kw={"timeout": httpx.Timeout(0.3)}) as relay:
        create_product(db_url, relay, "F-2", price=10.0)
        sb.script_fault("PUT", "/products/F-2", "timeout", 1)
        row_id = insert(db_url, "price", "F-2", {"price": 11.0})
        relay.run_batch()
    got = row(db_url, row_id)
    assert (got.state, got.attempts) == ("sent", 0)
    assert [(e["status"], e["fault"]) for e in requests(sb, "PUT")] == [
        (None, "timeout"),
        (204, None),
    ]
    assert product(sb, "F-2")["price"] == 11.0


def test_lost_answer_is_retried_with_the_same_absolute_value(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "F-3", price=10.0, qty=5)
        sb.script_fault("PUT", "/products/F-3", "lost", 1)
        row_id = insert(db_url, "stock", "F-3", {"qty": 8})
        relay.run_batch()
    got = row(db_url, row_id)
    assert (got.state, got.attempts) == ("sent", 0)
    puts = requests(sb, "PUT")
    assert [(e["status"], e["fault"]) for e in puts] == [(None, "lost"), (204, None)]
    assert [e["body"] for e in puts] == [{"product": {"qty": 8}}] * 2  # absolute, not a delta
    assert product(sb, "F-3")["qty"] == 8


def test_persistent_5xx_backs_off_then_dies(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "F-4", price=10.0)
        sb.configure(fail_rate=1.0, seed=7)
        row_id = insert(db_url, "price", "F-4", {"price": 11.0})
        relay.run_batch()
        got = row(db_url, row_id)
        assert (got.state, got.attempts) == ("pending", 1)
        assert got.available_at > utcnow()
        assert "attempt 1 failed" in (got.reason or "")
        assert "PUT /products/F-4 -> 50" in (got.reason or "")
        assert got.last_status in (500, 502, 503)
        assert len(requests(sb, "PUT")) == 3  # one try and two quick retries

        summary = relay.run_batch()  # backing off: not due
        assert summary.claimed == 0
        assert len(requests(sb, "PUT")) == 3

        make_due(db_url)
        relay.run_batch()
        got = row(db_url, row_id)
        assert (got.state, got.attempts) == ("pending", 2)
        assert got.available_at > utcnow()

        make_due(db_url)
        relay.run_batch()
    got = row(db_url, row_id)
    assert got.state == "dead", got
    assert "gave up" in (got.reason or "")
    assert "PUT /products/F-4 -> 50" in (got.reason or "")
    assert len(requests(sb, "PUT")) == 9
    assert product(sb, "F-4")["price"] == 10.0


def test_backoff_grows_between_attempts(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb, settings_kw={"max_attempts": 5}) as relay:
        create_product(db_url, relay, "F-5", price=10.0)
        sb.configure(fail_rate=1.0, seed=3)
        row_id = insert(db_url, "price", "F-5", {"price": 11.0})
        delays = []
        for _ in range(3):
            make_due(db_url)
            start = utcnow()
            relay.run_batch()
            delays.append((row(db_url, row_id).available_at - start).total_seconds())
    # base 30 s, doubling, jitter in [50 %, 100 %]
    assert 15 <= delays[0] <= 31
    assert 30 <= delays[1] <= 61
    assert 60 <= delays[2] <= 121


def test_429_is_waited_out_and_not_counted(db_url: str, sb: Sandbox) -> None:
    waits: list[float] = []
    with relay_for(db_url, sb, client_kw={"sleep": waits.append}) as relay:
        create_product(db_url, relay, "F-6", price=10.0)
        sb.script_fault("PUT", "/products/F-6", "429", 2)
        row_id = insert(db_url, "price", "F-6", {"price": 11.0})
        relay.run_batch()
    got = row(db_url, row_id)
    assert (got.state, got.attempts) == ("sent", 0)
    assert len(waits) == 2 and all(0 < w <= 1.1 for w in waits)
    assert [e["status"] for e in requests(sb, "PUT")] == [429, 429, 204]


def test_persistent_429_puts_rows_back_without_counting(db_url: str, sb: Sandbox) -> None:
    waits: list[float] = []
    with relay_for(db_url, sb, client_kw={"sleep": waits.append}) as relay:
        create_product(db_url, relay, "F-7", price=10.0)
        sb.script_fault("PUT", "/products/F-7", "429", 10)
        row_id = insert(db_url, "price", "F-7", {"price": 11.0})
        relay.run_batch()
    got = row(db_url, row_id)
    assert (got.state, got.attempts) == ("pending", 0)
    assert "rate limited" in (got.reason or "")
    assert len(requests(sb, "PUT")) == 4  # one try, three waits


# -- 8. permanent refusals -------------------------------------------------------------------------


def test_price_for_a_sku_unknown_to_skyhub_is_rejected(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        row_id = insert(db_url, "price", "GHOST", {"price": 10.0})
        relay.run_batch()
    got = row(db_url, row_id)
    assert got.state == "rejected", got
    assert "GHOST" in (got.reason or "")
    assert got.attempts == 0
    assert [(e["method"], e["path"], e["status"]) for e in sb.request_log()] == [
        ("GET", "/products?per_page=100", 200),  # a SKU never seen: is it in the catalogue?
        ("PUT", "/products/GHOST", 404),
        ("PUT", "/variations/GHOST", 404),
    ]
    # never retried by itself
    make_due(db_url)
    with relay_for(db_url, sb) as relay:
        assert relay.run_batch().claimed == 0


def test_whole_number_written_as_float_goes_out_as_an_integer(db_url: str, sb: Sandbox) -> None:
    """{"qty": 5.0} is a valid whole number; SkyHub's quantities are integers, so 5 is sent."""
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "R-1", price=10.0, qty=1)
        newer = insert_raw(db_url, "stock", "R-1", '{"qty": 5.0}')
        relay.run_batch()
    got = rows(db_url)
    assert got[newer].state == "sent", got[newer]
    assert product(sb, "R-1")["qty"] == 5
    body = requests(sb, "PUT", "/products/{sku}")[-1]["body"]
    assert body == {"product": {"qty": 5}} and isinstance(body["product"]["qty"], int)


def test_product_refused_for_a_taken_variation_sku_is_rejected_with_skyhubs_text(
    db_url: str, sb: Sandbox
) -> None:
    """POST /products answers 422 "Variação com SKU 'TAKEN' já existe" (the new product's
    variation SKU belongs to another product). The product itself does not exist, so the reason
    must be SkyHub's 422 text, not a "PUT -> 404" from treating it as "product exists"."""
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "TAKEN", price=10.0)
        older = insert(db_url, "stock", "R-2", {"qty": 4})
        row_id = insert(
            db_url,
            "product",
            "R-2",
            {"name": "Tênis", "price": 80.0, "variations": [{"sku": "TAKEN", "qty": 1}]},
        )
        relay.run_batch()
    got = row(db_url, row_id)
    assert got.state == "rejected", got
    assert got.last_status == 422
    folded = row(db_url, older)
    assert folded.state == "rejected" and str(row_id) in (folded.reason or ""), folded
    assert "R-2" not in sb.state()["products"]
    assert "TAKEN" in (got.reason or "") and "existe" in (got.reason or ""), got.reason
    assert not requests(sb, "PUT", "/products/{sku}"), "updated a product that does not exist"


# -- 9. authentication -----------------------------------------------------------------------------


def test_refused_credentials_stop_the_batch_after_one_request(
    db_url: str, clean_env: Path, cli_relays: list[Relay]
) -> None:
    # 50 ms per answer, as over a real network: the 401 is not back before the other SKUs go
    config = sandbox_config(
        email="real@x", api_key="real-key", account_key="real-account", latency_ms=50
    )
    with Sandbox(config) as sb:
        with relay_for(db_url, sb) as relay:
            ids = [insert(db_url, "price", f"A-{i}", {"price": 10.0 + i}) for i in range(4)]
            summary = relay.run_batch()
        assert summary.delivery is not None and summary.delivery.auth_failed
        got = rows(db_url)
        for i in ids:
            assert (got[i].state, got[i].attempts) == ("pending", 0), got[i]
            assert "credentials" in (got[i].reason or ""), got[i].reason
        batch_requests = [(e["method"], e["path"], e["status"]) for e in sb.request_log()]

        status = run_cli(["status", "--json"], SKYSYNC_DATABASE_URL=db_url)
        assert status.exit_code == 1, status.output  # unhealthy: a monitor alerts on it
        report = json.loads(status.stdout)
        assert "credentials" in (report["last_relay"]["error"] or "")
        assert report["healthy"] is False
        assert any("credentials" in p for p in report["problems"]), report["problems"]
        assert report["outbox"]["pending"] == 4

        result = run_cli(["drain"], SKYSYNC_DATABASE_URL=db_url, SKYSYNC_SKYHUB_URL=sb.base_url)
        assert result.exit_code != 0, result.output
        assert "pending" in result.stderr
    got = rows(db_url)
    assert all((r.state, r.attempts) == ("pending", 0) for r in got.values())
    # the batch stops at the first refusal: one request, not one per SKU
    assert len(batch_requests) == 1, batch_requests


def test_refused_credentials_stop_a_serial_batch_after_one_request(db_url: str) -> None:
    """With one delivery thread the stop holds: the first 401 ends the batch."""
    config = sandbox_config(email="real@x", api_key="real-key", account_key="real-account")
    with Sandbox(config) as sb, relay_for(db_url, sb, concurrency=1) as relay:
        ids = [insert(db_url, "stock", f"S-{i}", {"qty": i}) for i in range(3)]
        summary = relay.run_batch()
        assert summary.delivery is not None and summary.delivery.auth_failed
        assert summary.delivery.by_outcome == {"auth": 3}
        assert len(sb.request_log()) == 1
        got = rows(db_url)
        assert all((got[i].state, got[i].attempts) == ("pending", 0) for i in ids)
        assert all("credentials" in (got[i].reason or "") for i in ids)
        counts = drain(relay.deps).counts
        assert counts["pending"] == 3
        assert len(sb.request_log()) == 2  # drain stopped after the first refused request


def test_a_drain_stops_the_batch_it_claimed_meanwhile_without_a_request(db_url: str) -> None:
    """`drain` claims the next batch while the one before is delivered (on PostgreSQL; SQLite
    writes one transaction at a time): when SkyHub refuses the credentials in the first, the
    second (already claimed) gives its rows back untouched."""
    config = sandbox_config(email="real@x", api_key="real-key", account_key="real-account")
    settings = {"batch_size": 2}
    with Sandbox(config) as sb, relay_for(db_url, sb, concurrency=1, settings_kw=settings) as relay:
        # product rows: no catalogue read at claim time (that is for price and stock rows of
        # SKUs never seen), so the first request is the first batch's delivery
        ids = [insert(db_url, "product", f"D-{i}", {"name": "x", "qty": i}) for i in range(6)]
        drained = drain(relay.deps)
        batches, counts = drained.batches, drained.counts
        assert len(sb.request_log()) == 1
    claimed = 2 if is_pg(db_url) else 1  # batches
    assert batches == claimed and counts["pending"] == 6
    got = rows(db_url)
    assert all((got[i].state, got[i].attempts) == ("pending", 0) for i in ids)
    # every batch claimed stopped on the credentials, the first after its one request, the
    # second before any (its rows may be the first batch's again: given back, they are due at
    # once and oldest first)
    with session_scope(db_url) as session:
        errors = session.scalars(sa.select(RunLog.error).where(RunLog.kind == "relay")).all()
    assert len(errors) == claimed and all("credentials" in (e or "") for e in errors), errors
    assert sum("credentials" in (got[i].reason or "") for i in ids) >= 2


# -- 10. bad rows written with plain SQL -----------------------------------------------------------


def test_bad_rows_are_rejected_with_the_field_and_good_rows_still_go(
    db_url: str, sb: Sandbox
) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "B-1", price=10.0, qty=1)
        bad = {
            "payload": insert_raw(db_url, "price", "B-1", '"12.50"'),
            "payload ": insert_raw(db_url, "stock", "B-1", "[1, 2]"),
            "payload.price": insert_raw(db_url, "price", "B-1", '{"price": "12,50"}'),
            "payload  ": insert(db_url, "product", "B-2", {"name": "x" * (300 * 1024)}),
            "payload.colour": insert(db_url, "price", "B-1", {"price": 12.0, "colour": "red"}),
            "payload.qty": insert(db_url, "stock", "B-1", {"qty": -1}),
            "payload   ": insert_raw(db_url, "price", "B-1", None),
        }
        good_price = insert(db_url, "price", "B-1", {"price": 12.5})
        good_new = insert(db_url, "product", "B-3", {"name": "Boa", "price": 5.0})
        summary = relay.run_batch()
    assert summary.rejected == len(bad)
    got = rows(db_url)
    for field, row_id in bad.items():
        r = got[row_id]
        assert r.state == "rejected", r
        assert r.reason and r.reason.startswith("invalid: "), r.reason
        assert f"{field.strip()}:" in r.reason, (field, r.reason)
    assert "12,50" in (got[bad["payload.price"]].reason or "")
    assert "over the" in (got[bad["payload  "]].reason or "")
    assert got[good_price].state == "sent"
    assert got[good_new].state == "sent"
    assert product(sb, "B-1")["price"] == 12.5
    assert "B-3" in sb.state()["products"] and "B-2" not in sb.state()["products"]
    assert bodies(sb, "PUT", "/products/B-1") == [{"product": {"price": 12.5}}]


def test_bad_row_newer_than_a_good_one_does_not_hide_it(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "B-4", price=10.0)
        good = insert(db_url, "price", "B-4", {"price": 11.0})
        bad = insert(db_url, "price", "B-4", {"price": 0})
        relay.run_batch()
    got = rows(db_url)
    assert got[good].state == "sent"
    assert got[bad].state == "rejected" and "payload.price" in (got[bad].reason or "")
    assert product(sb, "B-4")["price"] == 11.0


def test_payload_that_is_not_json_is_rejected(db_url: str, sb: Sandbox) -> None:
    """SQLite lets the ERP store any text; PostgreSQL's jsonb refuses it at INSERT."""
    if is_pg(db_url):
        with pytest.raises(sa.exc.DataError):
            insert_raw(db_url, "price", "J-1", "{price: 12,50}")
        assert rows(db_url) == {}
        return
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "J-1", price=10.0)
        bad = insert_raw(db_url, "price", "J-1", "{price: 12,50}")
        good = insert(db_url, "price", "J-1", {"price": 12.5})
        relay.run_batch()
    got = rows(db_url)
    assert got[bad].state == "rejected"
    assert "not valid JSON" in (got[bad].reason or "")
    assert got[good].state == "sent"


def test_bare_stock_rows_are_read_without_parsing_yet_a_bad_ref_or_unreadable_bytes_is_rejected(
    db_url: str, sb: Sandbox
) -> None:
    """A claim reads a bare {"qty": n} from its text (validation.plain_stock): its ref is still
    checked, and text it cannot read that way goes through the full check (on SQLite the ERP
    may even have stored bytes that are not UTF-8)."""
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "Q-1", price=10.0, qty=1)
        spaced = insert_raw(db_url, "stock", " Q-1", '{"qty": 3}')
        older = insert_raw(db_url, "stock", "Q-1", '{"qty": 3}')
        newest = insert_raw(db_url, "stock", "Q-1", '{"qty":4}')
        blob = None
        if not is_pg(db_url):
            sql = "INSERT INTO skysync_outbox (kind, ref, payload) VALUES ('stock', 'Q-1', :p)"
            with get_engine(db_url).begin() as conn:
                conn.execute(sa.text(sql), {"p": b'{"qty": \xff}'})
                blob = conn.execute(sa.text("SELECT max(id) FROM skysync_outbox")).scalar_one()
        relay.run_batch()
    got = rows(db_url)
    assert got[spaced].state == "rejected"
    assert "ref: has leading or trailing spaces" in (got[spaced].reason or ""), got[spaced]
    assert got[older].state == "superseded" and got[older].superseded_by == newest
    assert got[newest].state == "sent", got[newest]
    assert product(sb, "Q-1")["qty"] == 4
    assert bodies(sb, "PUT", "/products/Q-1") == [{"product": {"qty": 4}}]
    if blob is not None:
        assert got[blob].state == "rejected" and "payload:" in (got[blob].reason or "")


# -- 11. lease reclaim -----------------------------------------------------------------------------


def test_rows_of_a_worker_that_died_are_reclaimed_and_sent(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "L-1", price=10.0)
        ids = [
            insert(db_url, "price", "L-1", {"price": 11.0}),
            insert(db_url, "product", "L-2", {"name": "Lápis", "price": 1.0}),
        ]
        first = relay.run_batch(dispatch=lambda token, chunk: None)  # the task is lost
        assert first.claimed == 2
        got = rows(db_url)
        assert all(got[i].state == "in_flight" and got[i].claim_token for i in ids)
        assert all(got[i].lease_until and got[i].lease_until > utcnow() for i in ids)

        summary = relay.run_batch()  # lease still running: nothing to do
        assert (summary.reclaimed, summary.claimed) == (0, 0)

        expire_leases(db_url)
        summary = relay.run_batch()
        assert (summary.reclaimed, summary.claimed) == (2, 2)
    got = rows(db_url)
    assert [got[i].state for i in ids] == ["sent", "sent"]
    assert all(got[i].attempts == 0 for i in ids)
    assert product(sb, "L-1")["price"] == 11.0
    assert "L-2" in sb.state()["products"]


# -- 12. duplicated task ---------------------------------------------------------------------------


def test_duplicated_task_does_nothing_the_second_time(db_url: str, sb: Sandbox) -> None:
    tasks: list[tuple[str, list[int]]] = []
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "D-1", price=10.0)
        insert(db_url, "price", "D-1", {"price": 11.0})
        insert(db_url, "stock", "D-1", {"qty": 3})
        relay.run_batch(dispatch=lambda token, ids: tasks.append((token, list(ids))))
        assert len(tasks) == 1
        token, ids = tasks[0]
        first = relay.deliver(token, ids)
        assert first.keys == 1 and first.by_outcome == {"sent": 1}
        after_first = rows(db_url)
        log_length = len(sb.request_log())
        second = relay.deliver(token, ids)
    assert second.keys == 0 and second.by_outcome == {}
    assert len(sb.request_log()) == log_length
    assert rows(db_url) == after_first
    assert bodies(sb, "PUT", "/products/D-1") == [{"product": {"price": 11.0, "qty": 3}}]


# -- 13. the CLI -----------------------------------------------------------------------------------


def test_cli_drain_reports_progress_off_a_terminal(
    db_url: str, sb: Sandbox, clean_env: Path, cli_relays: list[Relay]
) -> None:
    """Off a terminal (a cron job, a container log), `skysync drain` logs how it goes: rows
    left, rows/s, requests sent, ETA (every --progress-every seconds; 0: after each batch)."""
    env = {"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_SKYHUB_URL": sb.base_url}
    for n in range(3):
        insert(db_url, "product", f"PG-{n}", {"name": "Prato", "price": 10.0 + n, "qty": n})
    result = run_cli(["drain", "--progress-every", "0"], **env)
    assert result.exit_code == 0, (result.output, result.stderr)
    lines = [line for line in result.stderr.splitlines() if "drain:" in line]
    assert lines, result.stderr
    assert "0 rows left, 3 done" in lines[-1], lines
    assert f"{len(sb.request_log())} requests sent" in lines[-1], lines
    assert "rows/s" in lines[-1] and "ETA 0 s" in lines[-1], lines


def test_cli_drain_list_requeue_show_status(
    db_url: str, sb: Sandbox, clean_env: Path, cli_relays: list[Relay]
) -> None:
    env = {"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_SKYHUB_URL": sb.base_url}
    good = insert(db_url, "product", "C-1", {"name": "Cadeira", "price": 150.0, "qty": 2})
    bad = insert(db_url, "price", "C-1", {"price": -3})
    result = run_cli(["drain"], **env)
    assert result.exit_code == 0, (result.output, result.stderr)
    out = json.loads(result.stdout)
    assert out["outbox"]["sent"] == 1 and out["outbox"]["rejected"] == 1
    assert out["outbox"]["pending"] == 0 and out["batches"] >= 1
    assert (row(db_url, good).state, row(db_url, bad).state) == ("sent", "rejected")
    assert product(sb, "C-1")["name"] == "Cadeira"

    listed = run_cli(["outbox", "list", "--state", "rejected"], **env)
    assert listed.exit_code == 0, listed.output
    assert str(bad) in listed.stdout and "payload.price" in listed.stdout
    assert str(good) not in listed.stdout.split()

    # a dead row, made by an in-process relay against a failing SkyHub
    with relay_for(db_url, sb, settings_kw={"max_attempts": 1}) as relay:
        sb.configure(fail_rate=1.0)
        dead = insert(db_url, "stock", "C-1", {"qty": 9})
        relay.run_batch()
        sb.configure(fail_rate=0.0)
    assert row(db_url, dead).state == "dead"
    requeued = run_cli(["outbox", "requeue", "--state", "dead"], **env)
    assert requeued.exit_code == 0, requeued.output
    assert "requeued 1 row" in requeued.stdout
    got = row(db_url, dead)
    assert (got.state, got.attempts) == ("pending", 0)
    assert row(db_url, bad).state == "rejected"  # only dead rows were asked for

    result = run_cli(["drain"], **env)
    assert result.exit_code == 0, result.output
    assert row(db_url, dead).state == "sent"
    assert product(sb, "C-1")["qty"] == 9

    shown = run_cli(["item", "show", "C-1", "--json"], **env)
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["known"] and data["in_skyhub"] and data["frozen"] is False
    assert data["acknowledged"] == {"name": "Cadeira", "price": 150.0, "qty": 9}
    assert {r["id"] for r in data["recent_rows"]} == {good, bad, dead}

    status = run_cli(["status", "--json"], **env)
    assert status.exit_code == 0, status.output
    report = json.loads(status.stdout)
    assert report["outbox"]["sent"] == 2 and report["outbox"]["rejected"] == 1
    assert report["outbox"]["pending"] == 0
    assert report["last_relay"] is not None and report["last_relay"]["error"] is None


@pytest.mark.slow
def test_cli_drain_exits_1_when_rows_are_left_backing_off(
    db_url: str, sb: Sandbox, clean_env: Path, cli_relays: list[Relay]
) -> None:
    env = {"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_SKYHUB_URL": sb.base_url}
    sb.script_fault("*", "/products/S-1", "503", 3)
    row_id = insert(db_url, "product", "S-1", {"name": "Sofá"})
    result = run_cli(["drain"], **env)
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["outbox"]["pending"] == 1
    assert (row(db_url, row_id).state, row(db_url, row_id).attempts) == ("pending", 1)


def test_cli_drain_closes_its_skyhub_client(
    db_url: str, sb: Sandbox, clean_env: Path, cli_relays: list[Relay]
) -> None:
    """`skysync drain` (and `skysync relay`) build a SkyHub client with a connection pool; the
    command must close it, or its keep-alive sockets are left to the garbage collector
    (ResourceWarning: unclosed socket)."""
    env = {"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_SKYHUB_URL": sb.base_url}
    insert(db_url, "product", "CL-1", {"name": "Cama"})
    for command in (["drain"], ["relay"]):
        result = run_cli(command, **env)
        assert result.exit_code == 0, result.output
    assert len(cli_relays) == 2
    still_open = [r for r in cli_relays if not r.client._http.is_closed]
    assert not still_open, f"{len(still_open)} of 2 commands left their SkyHub client open"


# -- found in review: unchanged values count as applied; hostile payloads ------------------------


def test_an_unchanged_newer_value_is_never_overwritten_by_an_older_waiting_row(
    db_url: str, sb: Sandbox
) -> None:
    """Row 2 (V qty 4, carried by a product row) hit a 429 and waits; row 3 (stock V qty 3)
    arrives. A parent and its variations are one key, so the waiting row 2 is claimed with row 3
    into one request: the variation must end on 3, the ERP's latest value."""
    with relay_for(db_url, sb, client_kw={"max_rate_limit_waits": 0}) as relay:
        create_product(db_url, relay, "P-ST", price=10.0, variations=[{"sku": "V-ST", "qty": 3}])
        older = insert(db_url, "product", "P-ST", {"variations": [{"sku": "V-ST", "qty": 4}]})
        sb.script_fault("PUT", "/variations/", "429", count=1)
        sb.script_fault("POST", "/products/", "429", count=1)
        relay.run_batch()
        assert row(db_url, older).state == "pending", row(db_url, older)
        newer = insert(db_url, "stock", "V-ST", {"qty": 3})
        summary = relay.run_batch()
        assert summary.claimed == 2  # row 2 is not due yet, but it is of the same key
        assert row(db_url, newer).state == "sent", row(db_url, newer)
        make_due(db_url)
        drain(relay.deps)
    # one request for both rows; the 4 that met the 429 is unknown, so 3 is not "unchanged"
    assert [b["variation"]["qty"] for b in bodies(sb, "PUT", "/variations/V-ST")] == [4, 3]
    assert sb.state()["variations"]["V-ST"]["qty"] == 3
    assert row(db_url, older).state == "superseded", row(db_url, older)


def test_requeued_older_price_does_not_overwrite_a_newer_unchanged_one(
    db_url: str, sb: Sandbox, clean_env: Path
) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "RQ-1", price=10.0)
        old = insert(db_url, "price", "RQ-1", {"price": 20.0})
        with session_scope(db_url) as session:  # an operator rejected it, say
            session.execute(
                sa.update(OutboxRow)
                .where(OutboxRow.id == old)
                .values(state="rejected", reason="test: rejected by hand")
            )
        newer = insert(db_url, "price", "RQ-1", {"price": 10.0})
        drain(relay.deps)
        assert row(db_url, newer).state == "withheld"
        result = run_cli(["outbox", "requeue", str(old)], SKYSYNC_DATABASE_URL=db_url)
        assert result.exit_code == 0, result.output
        drain(relay.deps)
    assert product(sb, "RQ-1")["price"] == 10.0
    assert "newer value" in (row(db_url, old).reason or "")


def test_absurdly_nested_payload_is_rejected_and_blocks_nothing(db_url: str, sb: Sandbox) -> None:
    deep = '{"name": ' + "[" * 5000 + "]" * 5000 + "}"
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "DEEP-OK", price=10.0)
        bad = insert_raw(db_url, "product", "DEEP-1", deep)
        medium = insert(
            db_url,
            "product",
            "DEEP-2",
            {"name": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
        )
        good = insert(db_url, "price", "DEEP-OK", {"price": 12.0})
        drain(relay.deps)
    assert row(db_url, good).state == "sent"
    assert product(sb, "DEEP-OK")["price"] == 12.0
    for rejected in (bad, medium):
        got = row(db_url, rejected)
        assert got.state == "rejected", got
        assert "payload" in (got.reason or "") and "nested" in (got.reason or ""), got.reason


def test_a_payload_nested_20000_deep_written_by_sql_is_rejected_or_refused_by_postgresql(
    db_url: str, sb: Sandbox
) -> None:
    """What the ERP writes with plain SQL, 20,000 levels deep: SQLite stores the text and the
    claim rejects the row with a reason; PostgreSQL refuses the ERP's own INSERT (jsonb's
    parser: "stack depth limit exceeded"), so nothing reaches the relay. Either way the batch
    goes on and the other rows go out."""
    deep = '{"qty": ' + "[" * 20_000 + "]" * 20_000 + "}"
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "DEEPER-OK", price=10.0)
        if is_pg(db_url):
            with pytest.raises(sa.exc.DBAPIError, match="stack depth limit exceeded"):
                insert_raw(db_url, "stock", "DEEPER-1", deep)
            bad = None
        else:
            bad = insert_raw(db_url, "stock", "DEEPER-1", deep)
        good = insert(db_url, "stock", "DEEPER-OK", {"qty": 4})
        drain(relay.deps)
    assert row(db_url, good).state == "sent"
    assert product(sb, "DEEPER-OK")["qty"] == 4
    if bad is not None:
        got = row(db_url, bad)
        assert got.state == "rejected", got
        assert "payload" in (got.reason or "") and "nested" in (got.reason or ""), got.reason


def test_a_bad_number_is_quoted_as_the_erp_wrote_it(db_url: str, sb: Sandbox) -> None:
    """The reason quotes the number as the row's text has it: never "1e+20", never a digit
    string cut short into another number. PostgreSQL's jsonb keeps the value but not the
    spelling (1e20 is stored as 100000000000000000000, -1.50 as -1.50): there the reason
    quotes what PostgreSQL stored, the same number."""
    with relay_for(db_url, sb) as relay:
        exp = insert_raw(db_url, "stock", "NUM-1", '{"qty": 1e20}')
        digits = insert_raw(db_url, "stock", "NUM-2", '{"qty": 100000000000000000000}')
        price = insert_raw(db_url, "price", "NUM-3", '{"price": -1.50}')
        step = insert_raw(
            db_url,
            "order_shipment",
            "Lojas Americanas-1",
            '{"code": "S1", "items": [{"sku": "A", "qty": 1E20}], "track": {"code": "T"}}',
        )
        drain(relay.deps)
    reasons = {i: row(db_url, i).reason or "" for i in (exp, digits, price, step)}
    assert all(row(db_url, i).state == "rejected" for i in reasons), reasons
    as_stored = "100000000000000000000" if is_pg(db_url) else "1e20"
    assert reasons[exp].endswith(f"payload.qty: must be at most 2147483647, got {as_stored}")
    assert reasons[digits].endswith("got 100000000000000000000"), reasons[digits]
    assert reasons[price].endswith("got -1.50"), reasons[price]
    as_stored = "100000000000000000000" if is_pg(db_url) else "1E20"
    assert f"items[0].qty: must be at most 2147483647, got {as_stored};" in reasons[step]


def test_cli_drain_exits_0_when_what_is_left_is_in_other_hands(
    db_url: str, sb: Sandbox, clean_env: Path, cli_relays: list[Relay]
) -> None:
    """Another worker's claim holds rows in flight (claimed, its chunks not started yet), and
    a row backs off from an earlier attempt: neither is this drain's failure. It sends what
    is due, says what is left and whose it is, and exits 0."""
    env = {"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_SKYHUB_URL": sb.base_url}
    with relay_for(db_url, sb) as relay:
        for sku in ("OH-1", "OH-2", "OH-3", "OH-4"):
            create_product(db_url, relay, sku, price=10.0)
    with relay_for(db_url, sb) as other:  # another worker: claims, its chunks not started
        theirs = [insert(db_url, "stock", sku, {"qty": 5}) for sku in ("OH-1", "OH-2")]
        claimed = other.run_batch(dispatch=lambda _token, _ids: None)
    assert claimed is not None and claimed.keys == 2
    assert {row(db_url, i).state for i in theirs} == {"in_flight"}
    backing_off = insert(db_url, "price", "OH-3", {"price": 12.0})
    with session_scope(db_url) as session:  # an earlier attempt failed: due in an hour
        session.execute(
            sa.update(OutboxRow)
            .where(OutboxRow.id == backing_off)
            .values(attempts=1, available_at=utcnow() + timedelta(hours=1), reason="attempt 1")
        )
    mine = insert(db_url, "stock", "OH-4", {"qty": 7})
    bad = insert(db_url, "stock", "OH-4", {"qty": -1})

    result = run_cli(["drain"], **env)

    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert row(db_url, mine).state == "sent" and product(sb, "OH-4")["qty"] == 7
    assert row(db_url, bad).state == "rejected"
    out = json.loads(result.stdout)
    assert out["outbox"]["in_flight"] == 2 and out["outbox"]["pending"] == 1
    assert out["this_drain"]["failed"] == 0 and out["this_drain"]["rejected"] == 1
    assert out["left_in_other_hands"] == {"in_flight": 2, "pending_not_due": 1}
    assert "2 in-flight row(s) are held by other workers' claims" in result.stderr
    assert "1 pending row(s) not due yet" in result.stderr
    assert "1 row(s) rejected" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("max_attempts", [5, 1], ids=["retrying", "dead"])
def test_cli_drain_exits_1_when_rows_it_handled_failed_even_beside_other_hands(
    db_url: str, sb: Sandbox, clean_env: Path, cli_relays: list[Relay], max_attempts: int
) -> None:
    env = {
        "SKYSYNC_DATABASE_URL": db_url,
        "SKYSYNC_SKYHUB_URL": sb.base_url,
        "SKYSYNC_MAX_ATTEMPTS": str(max_attempts),
    }
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "FH-1", price=10.0)
        create_product(db_url, relay, "FH-2", price=10.0)
    with relay_for(db_url, sb) as other:
        insert(db_url, "stock", "FH-1", {"qty": 1})
        other.run_batch(dispatch=lambda _token, _ids: None)
    failing = insert(db_url, "stock", "FH-2", {"qty": 2})
    sb.script_fault("PUT", "/products/FH-2", "503", 50)

    result = run_cli(["drain"], **env)

    assert result.exit_code == 1, (result.stdout, result.stderr)
    state = "dead" if max_attempts == 1 else "pending"
    assert row(db_url, failing).state == state
    out = json.loads(result.stdout)
    assert out["this_drain"]["failed"] == 1
    assert out["this_drain"]["dead" if max_attempts == 1 else "retrying"] == 1
    assert out["left_in_other_hands"]["in_flight"] == 1
    assert "1 row(s) this drain handled" in result.stderr
