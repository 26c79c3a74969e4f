"""Any backlog drains (issue 10, part 1): a hot SKU with more rows than a statement may carry
bound parameters (PostgreSQL 65,535; SQLite 32,766) drains in one batch, with one request, its
older rows superseded by the newest. No statement, no task argument and no load grows with the
backlog: the older rows are settled by claim token and SKU, never listed. Every test runs on
SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from relay_helpers import (
    create_product,
    expire_leases,
    insert,
    is_pg,
    product,
    relay_for,
    requests,
    row,
)

from skysync.domain.kinds import RowState
from skysync.domain.planner import Folding, Row, SkuRequest, coalesce
from skysync.emulator import Sandbox
from skysync.relay.deliver import deliver, push_one_sku
from skysync.relay.deps import RelayDeps
from skysync.relay.outcome import Outcome
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_backlog_that_fails_leaves_only_its_newest_row_to_retry(db_url: str, sb: Sandbox) -> None:
    """The rows folded into the newest are superseded by it at claim time, whatever the
    request's fate: when the request fails, only the newest row goes back to pending (attempt
    counted), and it is what the next batch sends."""
    n = 5_000
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "HOT-3", qty=1)
        _first, newest = insert_stock_rows(db_url, "HOT-3", n)
        sb.script_fault("PUT", "/products/HOT-3", "503", 10)
        summary = relay.run_batch()
        assert (summary.claimed, summary.superseded) == (n, n - 1)
        assert states(db_url, "HOT-3") == {("pending", None): 1, ("superseded", newest): n - 1}
        assert (row(db_url, newest).state, row(db_url, newest).attempts) == ("pending", 1)
        sb.clear_faults()
        with get_engine(db_url).begin() as conn:
            conn.execute(sa.text("UPDATE skysync_outbox SET available_at = created_at"))
        assert relay.run_batch().claimed == 1
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
    # a claim feeds each SKU's rows newest first, and order steps in id order
    kept = {s[0]: folding.keep(*s) for s in [*reversed(specs[:5]), *specs[5:]]}
    picked = folding.ids_by_ref()
    assert picked == {"P": [1, 2, 3], "V": [5], "O-1": [6, 7]}
    assert [i for i, k in kept.items() if not k] == [4]
    assert (folding.winner("P"), folding.winner("V")) == (3, 5)
    everything = coalesce(rows_of(*specs[:5]), sku="P")
    loaded = coalesce(rows_of(*[s for s in specs[:5] if s[0] in picked[s[2]]]), sku="P")
    assert (loaded.fields, loaded.sources) == (everything.fields, everything.sources)
    assert loaded.variations == everything.variations


_FIELD_VALUES = {
    "price": st.sampled_from([10.0, 12.5, None, ""]),
    "promotional_price": st.sampled_from([9.0, None]),
    "qty": st.integers(0, 3),
    "name": st.sampled_from(["a", "b", ""]),
}
_SKU_ROWS = st.lists(
    st.tuples(
        st.sampled_from(["product", "price", "stock"]),
        st.dictionaries(st.sampled_from(sorted(_FIELD_VALUES)), st.just(None), min_size=1),
        st.lists(st.tuples(st.sampled_from(["V1", "V2"]), st.integers(0, 3)), max_size=2),
    ),
    min_size=1,
    max_size=12,
)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(specs=_SKU_ROWS, data=st.data())
def test_folding_newest_first_builds_the_same_request_as_folding_every_row(
    specs: list[tuple[str, dict[str, None], list[tuple[str, int]]]], data: st.DataObject
) -> None:
    """Whatever a SKU's rows carry, the rows Folding keeps (fed newest first, as a claim does)
    fold into the same request as all of them, and the winner is the newest row."""
    rows = []
    for i, (kind, names, variations) in enumerate(specs, start=1):
        payload = {name: data.draw(_FIELD_VALUES[name]) for name in names}
        if kind == "product" and variations:
            payload["variations"] = [{"sku": v, "qty": q} for v, q in variations]
        rows.append(Row(i, kind, "P", payload, 0))
    folding = Folding()
    kept = [r for r in reversed(rows) if folding.keep(r.id, r.kind, r.ref, r.payload)]
    assert folding.winner("P") == len(rows)
    everything, loaded = coalesce(rows, sku="P"), coalesce(kept, sku="P")
    assert (loaded.fields, loaded.sources) == (everything.fields, everything.sources)
    assert (loaded.variations, loaded.variation_sources) == (
        everything.variations,
        everything.variation_sources,
    )
    assert loaded.has_product_row == everything.has_product_row


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
    """Renewing a lease is a write before the request: with more than half of the lease left
    (60 s here), the request goes out under the claim's lease as it is; with less, the rows in
    flight get a fresh lease before the request."""
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
        seen: list[set[Any]] = []

        def push(deps: RelayDeps, request: SkuRequest) -> Outcome:
            seen.append(_leases(db_url, "LEASE-1"))
            return push_one_sku(deps, request)

        deliver(replace(relay.deps, clock=lambda: later), token, ids, push=push)
    assert len(seen) == 1
    if renewed:
        (lease,) = seen[0]
        assert lease >= later + timedelta(seconds=59)
    else:
        assert seen[0] == {claimed_lease}
    assert product(sb, "LEASE-1")["qty"] == 50
    assert states(db_url, "LEASE-1")[("sent", None)] == 1


@contextmanager
def _count_row_updates(db_url: str) -> Iterator[None]:
    """A trigger counting every row version written by an UPDATE of the outbox (test only),
    dropped with its table on exit: the database is shared by the tests that follow."""
    with get_engine(db_url).begin() as conn:
        conn.execute(sa.text("CREATE TABLE row_updates (n integer NOT NULL)"))
        conn.execute(sa.text("INSERT INTO row_updates VALUES (0)"))
        if is_pg(db_url):
            conn.execute(
                sa.text(
                    "CREATE FUNCTION count_update() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN UPDATE row_updates SET n = n + 1; RETURN NULL; END $$"
                )
            )
            conn.execute(
                sa.text(
                    "CREATE TRIGGER count_update AFTER UPDATE ON skysync_outbox "
                    "FOR EACH ROW EXECUTE FUNCTION count_update()"
                )
            )
        else:
            conn.execute(
                sa.text(
                    "CREATE TRIGGER count_update AFTER UPDATE ON skysync_outbox "
                    "BEGIN UPDATE row_updates SET n = n + 1; END"
                )
            )
    try:
        yield
    finally:
        with get_engine(db_url).begin() as conn:
            if is_pg(db_url):
                conn.execute(sa.text("DROP TRIGGER IF EXISTS count_update ON skysync_outbox"))
                conn.execute(sa.text("DROP FUNCTION IF EXISTS count_update()"))
            else:
                conn.execute(sa.text("DROP TRIGGER IF EXISTS count_update"))
            conn.execute(sa.text("DROP TABLE IF EXISTS row_updates"))


def _row_updates(db_url: str) -> int:
    with get_engine(db_url).connect() as conn:
        return conn.execute(sa.text("SELECT n FROM row_updates")).scalar_one()


@pytest.mark.slow
def test_a_claim_writes_each_row_of_a_backlog_once(db_url: str, sb: Sandbox) -> None:
    """A claim ends the rows folded into a SKU's newest row on the spot instead of putting them
    in flight first: claiming 40 SKUs of 50 rows writes 2,000 row versions, and their requests
    40 more (the newest rows, sent)."""
    chunks: list[tuple[str, list[int]]] = []
    with relay_for(db_url, sb, settings_kw={"batch_size": 2_000}) as relay:
        for i in range(40):
            create_product(db_url, relay, f"ONCE-{i:02d}", qty=1)
        newest = {i: insert_stock_rows(db_url, f"ONCE-{i:02d}", 50)[1] for i in range(40)}
        with _count_row_updates(db_url):
            relay.run_batch(dispatch=lambda token, ids: chunks.append((token, ids)))
            claimed = _row_updates(db_url)
            for token, ids in chunks:
                relay.deliver(token, ids)
            delivered = _row_updates(db_url) - claimed
    assert (claimed, delivered) == (2_000, 40)
    assert sum(len(ids) for _token, ids in chunks) == 40
    assert states(db_url, "ONCE-07") == {("sent", None): 1, ("superseded", newest[7]): 49}
    assert product(sb, "ONCE-07")["qty"] == 50


@pytest.mark.parametrize("page_rows, refs_per_read", [(7, 3), (2, 50), (1_000, 1)])
def test_pages_of_any_size_read_every_row_once_newest_first(
    db_url: str, monkeypatch: pytest.MonkeyPatch, page_rows: int, refs_per_read: int
) -> None:
    """However the pages cut a claim's SKUs (a SKU cut short by a full page, a SKU alone over
    many pages), every pending row is read exactly once, each SKU's rows together and newest
    first; the rows of other SKUs and of orders are not."""
    from skysync.store import claims
    from skysync.store.db import session_scope
    from skysync.store.models import utcnow

    monkeypatch.setattr(claims, "PAGE_ROWS", page_rows)
    monkeypatch.setattr(claims, "REFS_PER_READ", refs_per_read)
    sizes = {"P-A": 1, "P-B": 9, "P-C": 3, "P-D": 20, "P-E": 2}
    wanted: dict[str, list[int]] = {}
    for sku, n in sizes.items():
        first, last = insert_stock_rows(db_url, sku, n)
        wanted[sku] = list(range(last, first - 1, -1))
    insert_stock_rows(db_url, "OTHER", 5)
    insert(db_url, "order_cancel", "P-A", {})
    seen: list[tuple[int, str]] = []
    with session_scope(db_url) as session:
        for page in claims.iter_pending_newest_first(session, list(sizes)):
            assert 0 < len(page) <= page_rows
            seen += [(row_id, ref) for row_id, _kind, ref, _payload in page]
            # the caller may end the rows it got before it asks for the next page
            claims.settle_pending(
                session, [r[0] for r in page], token="t", state=RowState.SUPERSEDED, now=utcnow(),
                reason="read",
            )  # fmt: skip
    by_ref: dict[str, list[int]] = {}
    for row_id, ref in seen:
        by_ref.setdefault(ref, []).append(row_id)
    assert by_ref == wanted
    # each SKU's rows come together: the refs, in the order read, never come back
    order = [ref for i, (_id, ref) in enumerate(seen) if i == 0 or seen[i - 1][1] != ref]
    assert len(order) == len(set(order)) == len(sizes)


def test_a_claim_reads_many_skus_a_few_statements_at_a_time_not_one_per_sku(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SKUs a full page did not finish go back to the queue and are read with others, not one
    statement each: 30 SKUs of 5 rows in pages of 20 rows take a few statements per page's
    worth of rows (reading the unfinished SKUs one by one took 28)."""
    from skysync.store import claims
    from skysync.store.db import session_scope

    monkeypatch.setattr(claims, "PAGE_ROWS", 20)
    skus = [f"Q-{i:02d}" for i in range(30)]
    for sku in skus:
        insert_stock_rows(db_url, sku, 5)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    engine = get_engine(db_url)
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with session_scope(db_url) as session:
            read = [r for page in claims.iter_pending_newest_first(session, skus) for r in page]
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert sorted(r[0] for r in read) == list(
        range(min(r[0] for r in read), max(r[0] for r in read) + 1)
    )
    assert len(read) == 150 and len({r[2] for r in read}) == 30
    assert len(statements) <= 2 * (150 // 20) + 2, len(statements)


def test_rows_reclaimed_from_a_dead_worker_are_folded_like_any_other(
    db_url: str, sb: Sandbox
) -> None:
    """A worker died holding a SKU's price and stock rows; newer rows carry both. The next batch
    reclaims the old rows and supersedes them by the newest. (On PostgreSQL the superseded rows
    are written from a second connection while the claim runs: had the claim's own transaction
    reclaimed them, it would hold their row locks, and the two would wait for each other.)"""
    # a batch of one row: the claim picks (and locks) only the oldest row of the SKU
    with relay_for(db_url, sb, settings_kw={"batch_size": 1}) as relay:
        create_product(db_url, relay, "DEAD-1", price=10.0, qty=1)
        old = [
            insert(db_url, "price", "DEAD-1", {"price": 11.0}),
            insert(db_url, "stock", "DEAD-1", {"qty": 2}),
        ]
        relay.run_batch(dispatch=lambda token, ids: None)  # the worker never runs them
        assert {row(db_url, i).state for i in old} == {"in_flight"}
        expire_leases(db_url)
        price = insert(db_url, "price", "DEAD-1", {"price": 12.0})
        newest = insert(db_url, "stock", "DEAD-1", {"qty": 3})
        summary = relay.run_batch()
    assert (summary.reclaimed, summary.superseded) == (2, 2)
    assert [(row(db_url, i).state, row(db_url, i).superseded_by) for i in old] == [
        ("superseded", newest),
        ("superseded", newest),
    ]
    assert (row(db_url, price).state, row(db_url, newest).state) == ("superseded", "sent")
    assert (product(sb, "DEAD-1")["price"], product(sb, "DEAD-1")["qty"]) == (12.0, 3)
