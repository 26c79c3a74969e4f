"""The fast lane (docs/fast-lane.md), in this process: which rows it picks (the SQL rule held
to the pure one), how it claims (whole families, never a SKU in flight), what it sends (through
the relay to the emulator over HTTP, never overtaking a newer value), and its watcher (LISTEN on
PostgreSQL, a poll on SQLite). Each runs on SQLite and on PostgreSQL. The same lane through real
Celery workers is in test_fast_lane_celery.py; the trigger's migration in test_migrations.py.
"""

from __future__ import annotations

import json
import threading

import pytest
import sqlalchemy as sa
from celery_helpers import wait_for
from relay_helpers import (
    create_product,
    insert,
    insert_raw,
    is_pg,
    make_client,
    product,
    relay_for,
    requests,
    row,
    rows,
    run_count,
    settings_for,
)

from skysync.config import ConfigError, load_settings
from skysync.domain.fast_lane import LaneMode, LaneRule
from skysync.emulator import Sandbox
from skysync.relay import Relay, batch, drain
from skysync.relay.fast_lane import LaneWatcher
from skysync.relay.outcome import BatchSummary
from skysync.store import claims
from skysync.store.db import session_scope
from skysync.store.models import OutboxRow, utcnow

STOCKOUTS = {"fast_lane": "stockouts"}


def _claim(db_url: str, rule: LaneRule | None, claim_as: str = "t-lane") -> set[int]:
    """The rows a claim takes (in flight, or ended at claim time) under ``claim_as``: the
    relay's own claim, which makes no request."""
    with make_client("http://127.0.0.1:9") as client:  # a claim sends nothing
        relay = Relay(settings_for(db_url), client)
        batch._claim(relay.deps, claim_as, BatchSummary(token=claim_as), rule)
    return {r.id for r in rows(db_url).values() if r.claim_token == claim_as}


# -- settings ------------------------------------------------------------------------------


def test_settings_bad_values_name_the_variable() -> None:
    """(The default and `skysync check-config` are in test_cli.py, with no SKYSYNC_* set.)"""
    assert not load_settings(fast_lane="off").lane_rule.on
    on = load_settings(fast_lane=" StockOuts ", fast_lane_stock_threshold=3)
    assert on.lane_rule == LaneRule(LaneMode.STOCKOUTS, 3)
    for bad, name in (
        ({"fast_lane": "fast"}, "SKYSYNC_FAST_LANE: "),
        ({"fast_lane_stock_threshold": -1}, "SKYSYNC_FAST_LANE_STOCK_THRESHOLD: "),
        ({"fast_lane_poll": 0}, "SKYSYNC_FAST_LANE_POLL: "),
    ):
        with pytest.raises(ConfigError, match=name):
            load_settings(**bad)


# -- which rows ----------------------------------------------------------------------------


def test_sql_rule_picks_exactly_what_the_pure_rule_picks(db_url: str) -> None:
    payloads = [
        ("stock", {"qty": 0}), ("stock", {"qty": -1}), ("stock", {"qty": 3}),
        ("stock", {"qty": 5}), ("stock", {"qty": 5.0}), ("stock", {"qty": 6}),
        ("stock", {"qty": "0"}), ("stock", {"qty": True}), ("stock", {"qty": None}),
        ("stock", {}), ("stock", [0]), ("stock", 0), ("stock", None),
        ("price", {"price": 10.0}), ("product", {"name": "x", "qty": 0}),
        ("order_cancel", {}),
    ]  # fmt: skip
    ids = {insert(db_url, kind, f"S{i}", payload): (kind, payload)
           for i, (kind, payload) in enumerate(payloads)}  # fmt: skip
    if not is_pg(db_url):  # only SQLite lets an ERP write text that is not JSON
        ids[insert_raw(db_url, "stock", "GARBAGE", "{qty: 0")] = ("stock", "garbage")
    origins = dict.fromkeys(ids, "erp")
    # reservation rows (an order took units): the lane takes them whatever quantity they carry
    for i, (kind, payload) in enumerate([("stock", {"qty": 7}), ("stock", {"qty": 0})]):
        with session_scope(db_url) as session:
            row = OutboxRow(kind=kind, ref=f"R{i}", payload=payload, origin="reservation")
            session.add(row)
            session.flush()
            row_id = row.id
        ids[row_id], origins[row_id] = (kind, payload), "reservation"
    for rule in (
        LaneRule(LaneMode.STOCKOUTS),
        LaneRule(LaneMode.STOCKOUTS, 5),
        LaneRule(LaneMode.ALL),
        LaneRule(LaneMode.OFF),
    ):
        with session_scope(db_url, readonly=True) as session:
            o = sa.orm.aliased(OutboxRow, name="o")
            dialect = session.get_bind().dialect.name
            found = set(session.scalars(
                sa.select(o.id).where(claims.lane_filter(o, rule, dialect))
            ))  # fmt: skip
        expected = {
            i for i, (kind, payload) in ids.items() if rule.picks(kind, payload, origins[i])
        }
        assert found == expected, rule
    stockouts = LaneRule(LaneMode.STOCKOUTS)
    assert len({i for i, (k, p) in ids.items() if stockouts.picks(k, p, origins[i])}) == 4
    assert len({i for i, (k, p) in ids.items() if stockouts.picks(k, p)}) == 3


@pytest.mark.slow
def test_lane_claims_whole_families_of_picked_rows_only(db_url: str) -> None:
    a_price = insert(db_url, "price", "A", {"price": 12.0})
    a_out = insert(db_url, "stock", "A", {"qty": 0})
    a_newer = insert(db_url, "stock", "A", {"qty": 7})
    b_stock = insert(db_url, "stock", "B", {"qty": 4})
    c_price = insert(db_url, "price", "C", {"price": 9.0})
    order = insert(db_url, "order_cancel", "ORDER-1", {})
    assert _claim(db_url, LaneRule(LaneMode.STOCKOUTS)) == {a_price, a_out, a_newer}
    for untouched in (b_stock, c_price, order):
        assert row(db_url, untouched).state == "pending"
    # "all": every price and stock row starts a claim, still never an order step
    assert _claim(db_url, LaneRule(LaneMode.ALL), "t-all") == {b_stock, c_price}
    assert row(db_url, order).state == "pending"


@pytest.mark.slow
def test_lane_never_claims_a_sku_that_is_in_flight(db_url: str) -> None:
    first = insert(db_url, "stock", "A", {"qty": 2})
    assert _claim(db_url, None, "t-batch") == {first}  # a batch holds A
    out = insert(db_url, "stock", "A", {"qty": 0})
    rule = LaneRule(LaneMode.STOCKOUTS)
    with session_scope(db_url, readonly=True) as session:
        assert not claims.lane_rows_due(session, rule, utcnow())
    assert _claim(db_url, rule) == set()
    assert row(db_url, out).state == "pending"


# -- what it sends -------------------------------------------------------------------------


def test_lane_sends_a_stockout_without_waiting_for_the_batch(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb, settings_kw=STOCKOUTS) as relay:
        create_product(db_url, relay, "A", qty=5, price=10.0)
        create_product(db_url, relay, "B", qty=5, price=10.0)
        batches = run_count(db_url, "relay")
        out = insert(db_url, "stock", "A", {"qty": 0})
        other = insert(db_url, "price", "B", {"price": 11.0})
        summary = relay.run_fast()
        assert summary.claimed == 1
        assert row(db_url, out).state == "sent"
        assert product(sb, "A")["qty"] == 0
        assert row(db_url, other).state == "pending"  # waits for the batch
        assert run_count(db_url, "relay") == batches and run_count(db_url, "fast_lane") == 1
        # nothing picked: no claim, no run logged, no request
        sent = len(sb.request_log())
        assert relay.run_fast().claimed == 0
        assert run_count(db_url, "fast_lane") == 1 and len(sb.request_log()) == sent


def test_lane_never_overtakes_a_newer_value(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb, settings_kw=STOCKOUTS) as relay:
        create_product(db_url, relay, "A", qty=5, price=10.0)
        out = insert(db_url, "stock", "A", {"qty": 0})
        restock = insert(db_url, "stock", "A", {"qty": 12})
        price = insert(db_url, "price", "A", {"price": 15.0})
        before = len(requests(sb, "PUT"))
        relay.run_fast()
        assert product(sb, "A")["qty"] == 12 and product(sb, "A")["price"] == 15.0
        assert row(db_url, out).state == "superseded"
        assert {row(db_url, restock).state, row(db_url, price).state} <= {"sent", "superseded"}
        assert len(requests(sb, "PUT")) == before + 1  # one request for the SKU


def test_lane_off_runs_nothing(db_url: str, sb: Sandbox) -> None:
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "A", qty=5)
        out = insert(db_url, "stock", "A", {"qty": 0})
        assert relay.run_fast().claimed == 0
        assert row(db_url, out).state == "pending"
        with pytest.raises(ValueError, match="SKYSYNC_FAST_LANE=off"):
            LaneWatcher(relay.settings, lambda: None)
        drain(relay.deps)  # the batch sends it as always
        assert row(db_url, out).state == "sent"


# -- the watcher ---------------------------------------------------------------------------


def test_watcher_wakes_the_lane_on_a_stockout(db_url: str, sb: Sandbox) -> None:
    """PostgreSQL: woken by the trigger's NOTIFY (the poll is set to 30 s, so only the
    notification can wake it in time); SQLite: by its poll. A second watcher on PostgreSQL
    stands by while the first leads."""
    poll = 30.0 if is_pg(db_url) else 0.2
    with relay_for(db_url, sb, settings_kw={**STOCKOUTS, "fast_lane_poll": poll}) as relay:
        create_product(db_url, relay, "A", qty=5)
        lock = threading.Lock()

        def wake() -> None:
            with lock:
                relay.run_fast()

        watcher = LaneWatcher(relay.settings, wake)
        second = LaneWatcher(relay.settings, wake, standby=0.2)
        watcher.start()
        try:
            expected = "listen" if is_pg(db_url) else "poll"
            wait_for(lambda: watcher.how == expected, 10, f"the watcher to {expected}")
            if is_pg(db_url):
                second.start()
                wait_for(lambda: second.how == "standby", 10, "the second watcher to stand by")
            insert(db_url, "price", "A", {"price": 20.0})  # not a stock-out: no wake
            out = insert(db_url, "stock", "A", {"qty": 0})
            wait_for(lambda: row(db_url, out).state == "sent", 20, "the lane to send it")
            assert product(sb, "A")["qty"] == 0
            assert watcher.wakes >= 1 and second.wakes == 0
        finally:
            watcher.stop()
            second.stop()
        assert not watcher.is_alive() and not second.is_alive()


def test_watcher_polls_when_listen_is_unavailable(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the LISTEN connection cannot be had (here: refused at connect, as behind a pooler
    that does not carry LISTEN), the watcher polls PostgreSQL instead."""
    from conftest import empty_tables

    import skysync.store.notify as notify

    def refused(url: str) -> notify.LaneListener:
        raise OSError("LISTEN is not available")

    empty_tables(pg_url)
    monkeypatch.setattr(notify, "LaneListener", refused)
    woke = threading.Event()
    watcher = LaneWatcher(settings_for(pg_url, fast_lane="stockouts", fast_lane_poll=0.2), woke.set)
    watcher.start()
    try:
        wait_for(lambda: watcher.how == "poll", 10, "the watcher to poll")
        insert(pg_url, "stock", "A", {"qty": 0})
        wait_for(woke.is_set, 10, "the poll to wake the lane")
    finally:
        watcher.stop()


def test_notification_payload_is_empty_and_folded_per_transaction(pg_url: str) -> None:
    from conftest import empty_tables

    from skysync.store.notify import LaneListener

    empty_tables(pg_url)
    with LaneListener(pg_url) as listener:
        listener.listen()
        assert not listener.wait(0.1)
        with session_scope(pg_url) as session:
            for qty in range(50):
                session.add(OutboxRow(kind="stock", ref="A", payload={"qty": qty}))
        assert listener.wait(5)
        assert not listener.wait(0.2)  # the 50 rows were one notification
        insert(pg_url, "product", "P", {"name": json.dumps("x")})
        assert not listener.wait(0.2)  # products do not ring
