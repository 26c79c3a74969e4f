"""Any backlog drains (issue 10, part 1): a hot SKU with more rows than a statement may carry
bound parameters (PostgreSQL 65,535; SQLite 32,766) drains in one batch, with one request, its
older rows superseded by the newest. No statement, no task argument and no load grows with the
backlog: the older rows are settled by claim token and SKU, never listed. Every test runs on
SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from relay_helpers import (
    create_product,
    insert,
    is_pg,
    product,
    relay_for,
    requests,
    row,
)

from skysync.domain.planner import Folding, Row, coalesce
from skysync.emulator import Sandbox
from skysync.store.db import get_engine


def insert_stock_rows(db_url: str, sku: str, n: int) -> tuple[int, int]:
    """``n`` pending stock rows for ``sku`` in one set-based INSERT, qty 1..n in id order;
    returns (first id, last id)."""
    if is_pg(db_url):
        sql = (
            "INSERT INTO skysync_outbox (kind, ref, payload) "
            "SELECT 'stock', :sku, jsonb_build_object('qty', g) FROM generate_series(1, :n) g"
        )
    else:
        sql = (
            "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < :n) "
            "INSERT INTO skysync_outbox (kind, ref, payload) "
            "SELECT 'stock', :sku, json_object('qty', i) FROM g"
        )
    with get_engine(db_url).begin() as conn:
        conn.execute(sa.text(sql), {"sku": sku, "n": n})
        first, last = conn.execute(
            sa.text(
                "SELECT min(id), max(id) FROM skysync_outbox WHERE ref = :sku AND kind = 'stock'"
            ),
            {"sku": sku},
        ).one()
    return int(first), int(last)


def states(db_url: str, sku: str) -> dict[tuple[str, int | None], int]:
    """(state, superseded_by) -> rows, for the stock rows of ``sku``."""
    sql = (
        "SELECT state, superseded_by, count(*) FROM skysync_outbox "
        "WHERE ref = :sku AND kind = 'stock' GROUP BY state, superseded_by"
    )
    with get_engine(db_url).connect() as conn:
        return {(s, by): int(n) for s, by, n in conn.execute(sa.text(sql), {"sku": sku})}


def hot_rows(db_url: str) -> int:
    """More rows than the database allows bound parameters in one statement."""
    return 70_000 if is_pg(db_url) else 40_000


def test_a_hot_sku_past_the_bind_parameter_limit_drains_in_one_batch_and_one_request(
    db_url: str, sb: Sandbox
) -> None:
    n = hot_rows(db_url)
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "HOT-1", price=10.0, qty=1)
        first, newest = insert_stock_rows(db_url, "HOT-1", n)
        before = len(sb.request_log())
        chunks: list[tuple[str, list[int]]] = []
        summary = relay.run_batch(dispatch=lambda token, ids: chunks.append((token, ids)))
        assert summary.claimed == n and summary.keys == 1 and summary.rejected == 0
        # the task's arguments name the row that carries the value, not the backlog
        assert [ids for _token, ids in chunks] == [[newest]]
        for token, ids in chunks:
            relay.deliver(token, ids)
    new = sb.request_log()[before:]
    assert [(e["method"], e["path"], e["status"]) for e in new] == [("PUT", "/products/HOT-1", 204)]
    assert new[0]["body"] == {"product": {"qty": n}}
    assert product(sb, "HOT-1")["qty"] == n
    assert row(db_url, newest).state == "sent"
    assert states(db_url, "HOT-1") == {("sent", None): 1, ("superseded", newest): n - 1}
    assert newest - first == n - 1


def test_a_hot_sku_drains_in_process_too(db_url: str, sb: Sandbox) -> None:
    """``skysync drain``'s path: the chunks delivered in this process."""
    n = hot_rows(db_url)
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "HOT-2", qty=1)
        _first, newest = insert_stock_rows(db_url, "HOT-2", n)
        summary = relay.run_batch()
    assert summary.claimed == n and summary.delivery is not None
    assert len(requests(sb, "PUT")) == 1
    assert product(sb, "HOT-2")["qty"] == n
    assert states(db_url, "HOT-2") == {("sent", None): 1, ("superseded", newest): n - 1}


def test_a_backlog_that_fails_goes_back_whole_and_drains_later(db_url: str, sb: Sandbox) -> None:
    """The rows never loaded share the request's fate: back to pending with it, attempt
    counted, then superseded once it goes through."""
    n = 5_000
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "HOT-3", qty=1)
        _first, newest = insert_stock_rows(db_url, "HOT-3", n)
        sb.script_fault("PUT", "/products/HOT-3", "503", 10)
        relay.run_batch()
        assert states(db_url, "HOT-3") == {("pending", None): n}
        with get_engine(db_url).connect() as conn:
            attempts = conn.execute(
                sa.text(
                    "SELECT min(attempts), max(attempts) FROM skysync_outbox "
                    "WHERE ref = 'HOT-3' AND kind = 'stock'"
                )
            ).one()
        assert tuple(attempts) == (1, 1)
        sb.clear_faults()
        with get_engine(db_url).begin() as conn:
            conn.execute(sa.text("UPDATE skysync_outbox SET available_at = created_at"))
        relay.run_batch()
    assert product(sb, "HOT-3")["qty"] == n
    assert states(db_url, "HOT-3") == {("sent", None): 1, ("superseded", newest): n - 1}


def test_the_newest_value_of_each_field_wins_when_only_some_rows_are_loaded(
    db_url: str, sb: Sandbox
) -> None:
    """An older row that is the newest to carry a field is loaded; an invalid newest row is
    rejected and the newest valid one wins."""
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "MIX-1", price=10.0, qty=1)
        older = [insert(db_url, "price", "MIX-1", {"price": 11.0 + i}) for i in range(5)]
        promo = insert(db_url, "price", "MIX-1", {"price": 20.0, "promotional_price": 18.0})
        later = [insert(db_url, "price", "MIX-1", {"price": 21.0 + i}) for i in range(5)]
        stock = [insert(db_url, "stock", "MIX-1", {"qty": i}) for i in range(5)]
        bad = insert(db_url, "stock", "MIX-1", {"qty": "many"})
        before = len(sb.request_log())
        relay.run_batch()
    new = sb.request_log()[before:]
    assert [(e["method"], e["path"]) for e in new] == [("PUT", "/products/MIX-1")]
    assert new[0]["body"] == {"product": {"price": 25.0, "promotional_price": 18.0, "qty": 4}}
    assert row(db_url, bad).state == "rejected"
    newest = stock[-1]
    assert row(db_url, newest).state == "sent"
    for i in [*older, promo, *later, *stock[:-1]]:
        got = row(db_url, i)
        assert (got.state, got.superseded_by) == ("superseded", newest), got


def rows_of(*specs: tuple[int, str, str, dict[str, Any]]) -> list[Row]:
    return [Row(i, kind, ref, payload, 0) for i, kind, ref, payload in specs]


def test_folding_loads_only_rows_that_carry_a_newest_field() -> None:
    specs = [
        (1, "product", "P", {"name": "A", "price": 1.0, "variations": [{"sku": "V", "qty": 1}]}),
        (2, "price", "P", {"price": 2.0, "promotional_price": 1.5}),
        (3, "price", "P", {"price": 3.0, "promotional_price": None}),
        (4, "stock", "V", {"qty": 4}),
        (5, "stock", "V", {"qty": 5}),
        (6, "order_invoice", "O-1", {"key": "k"}),
        (7, "order_invoice", "O-1", {"key": "k2"}),
    ]
    folding = Folding()
    for spec in specs:
        folding.add(*spec)
    picked = folding.ids_by_ref()
    assert picked == {"P": [1, 2, 3], "V": [5], "O-1": [6, 7]}
    everything = coalesce(rows_of(*specs[:5]), sku="P")
    loaded = coalesce(rows_of(*[s for s in specs[:5] if s[0] in picked[s[2]]]), sku="P")
    assert (loaded.fields, loaded.sources) == (everything.fields, everything.sources)
    assert loaded.variations == everything.variations


# -- what a SKU's backlog costs per request -----------------------------------------------------


def _leases(db_url: str, sku: str) -> set[Any]:
    """The leases of the SKU's rows in flight (as datetimes, on either database)."""
    from skysync.store.models import OutboxRow

    query = sa.select(OutboxRow.lease_until).where(
        OutboxRow.ref == sku, OutboxRow.state == "in_flight"
    )
    with get_engine(db_url).connect() as conn:
        return set(conn.execute(query).scalars())


@pytest.mark.parametrize("minutes_later, renewed", [(0.25, False), (0.75, True)])
def test_a_key_renews_its_backlogs_lease_only_when_half_of_it_is_gone(
    db_url: str, sb: Sandbox, minutes_later: float, renewed: bool
) -> None:
    """Renewing a lease rewrites every row of the SKU's backlog: with more than half of the
    lease left (60 s here), the request goes out under the claim's lease as it is; with less,
    the whole backlog gets a fresh lease before the request."""
    from datetime import timedelta

    from skysync.store.models import utcnow

    chunks: list[tuple[str, list[int]]] = []
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "LEASE-1", qty=1)
        insert_stock_rows(db_url, "LEASE-1", 50)
        relay.run_batch(dispatch=lambda token, ids: chunks.append((token, ids)))
        ((token, ids),) = chunks
        (claimed_lease,) = _leases(db_url, "LEASE-1")
        later = utcnow() + timedelta(minutes=minutes_later)
        relay.clock = lambda: later
        seen: list[set[Any]] = []
        original = relay._push_sku

        def push(request: Any) -> Any:
            seen.append(_leases(db_url, "LEASE-1"))
            return original(request)

        relay._push_sku = push  # type: ignore[method-assign]
        relay.deliver(token, ids)
    assert len(seen) == 1
    if renewed:
        (lease,) = seen[0]
        assert lease >= later + timedelta(seconds=59)
    else:
        assert seen[0] == {claimed_lease}
    assert product(sb, "LEASE-1")["qty"] == 50
    assert states(db_url, "LEASE-1")[("sent", None)] == 1


def test_a_big_claim_refreshes_the_planner_statistics_so_settling_uses_the_claim_index(
    pg_url: str, sb: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(PostgreSQL: SQLite keeps no statistics unless asked.) After a claim moves many rows to
    in_flight, PostgreSQL's statistics (taken when they were pending) would make it reach a
    SKU's claimed rows through (state, id), reading every row in flight for each SKU settled.
    The batch refreshes them, and the settling statements use the claim index (migration
    0004)."""
    from skysync.store import outbox

    db_url = pg_url

    monkeypatch.setattr(outbox, "BIG_CLAIM_ROWS", 1_000)
    for i in range(40):
        insert_stock_rows(db_url, f"STAT-{i:02d}", 50)
    with get_engine(db_url).begin() as conn:
        conn.execute(sa.text("ANALYZE skysync_outbox"))  # all pending, as the ERP left them
    chunks: list[tuple[str, list[int]]] = []
    with relay_for(db_url, sb) as relay:
        relay.run_batch(dispatch=lambda token, ids: chunks.append((token, ids)))
    token = chunks[0][0]
    settle = (
        "EXPLAIN UPDATE skysync_outbox SET lease_until = now() WHERE claim_token = :t "
        "AND state = 'in_flight' AND kind IN ('product', 'price', 'stock') AND ref IN ('STAT-07')"
    )
    with get_engine(db_url).connect() as conn:
        plan = "\n".join(conn.execute(sa.text(settle), {"t": token}).scalars())
    assert "ix_skysync_outbox_claim" in plan, plan
