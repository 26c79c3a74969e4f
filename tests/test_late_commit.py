"""The row that commits last wins, whatever its id (issue 19, part 1; docs/erp-contract.md,
"Which row is newer").

Ids come from a sequence at INSERT time, but a row becomes visible at COMMIT. These tests play
the ERP with two real concurrent transactions on PostgreSQL, in both orders, and on both
databases the shape a late commit leaves behind (a lower id that no claim could see when the
higher one went out), against the SkyHub emulator over HTTP.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from relay_helpers import ErpTransaction, create_product, make_due, product, relay_for, row

from skysync.emulator import Sandbox
from skysync.relay import drain
from skysync.store.db import get_engine, session_scope
from skysync.store.models import Item


def insert_with_id(db_url: str, row_id: int, kind: str, ref: str, payload: Any) -> int:
    """A row whose id is lower than rows already sent: what a transaction that took its id
    early and committed late leaves behind, on either database."""
    value = "CAST(:p AS jsonb)" if db_url.startswith("postgresql") else ":p"
    sql = sa.text(
        f"INSERT INTO skysync_outbox (id, kind, ref, payload) VALUES (:i, :k, :r, {value})"
    )
    with get_engine(db_url).begin() as conn:
        conn.execute(sql, {"i": row_id, "k": kind, "r": ref, "p": json.dumps(payload)})
    return row_id


@pytest.mark.parametrize("late", ["lower id", "higher id"])
def test_the_transaction_that_commits_last_wins_on_postgresql(
    pg_url: str, sb: Sandbox, late: str
) -> None:
    """The issue's case: A inserts stock CO 5 and stays open; B inserts stock CO 3 and commits;
    a batch sends 3; A commits; the next batch must send 5. And the other order: the first to
    insert (lower id) commits first and is sent, the later insert commits last and wins."""
    from conftest import empty_tables

    empty_tables(pg_url)
    with relay_for(pg_url, sb) as relay:
        create_product(pg_url, relay, "CO", qty=9)
        with ErpTransaction(pg_url) as a, ErpTransaction(pg_url) as b:
            first = a.insert("stock", "CO", {"qty": 5})
            second = b.insert("stock", "CO", {"qty": 3})
            assert first < second  # ids are taken at INSERT time
            early, late_tx, late_row, late_qty, early_qty = (
                (b, a, first, 5, 3) if late == "lower id" else (a, b, second, 3, 5)
            )
            early_row = second if late == "lower id" else first
            early.commit()
            drain(relay.deps)
            assert product(sb, "CO")["qty"] == early_qty
            assert row(pg_url, early_row).state == "sent"
            late_tx.commit()
        drain(relay.deps)
    assert product(sb, "CO")["qty"] == late_qty, "the ERP's last committed word must win"
    got = row(pg_url, late_row)
    assert got.state == "sent", got
    with session_scope(pg_url) as session:
        item = session.get(Item, ("default", "CO"))
        assert item is not None and item.last_applied["qty"] == late_row
        assert item.acknowledged["qty"] == late_qty


def test_rows_committed_before_the_same_claim_follow_their_ids(pg_url: str, sb: Sandbox) -> None:
    """Both transactions commit before a claim reads the SKU: the claim reads them together and
    the higher id is newer, whichever committed last (the documented contract: an ERP that
    needs commit order there serializes its writers of a SKU, and then ids follow commits)."""
    from conftest import empty_tables

    empty_tables(pg_url)
    with relay_for(pg_url, sb) as relay:
        create_product(pg_url, relay, "TG", qty=9)
        with ErpTransaction(pg_url) as a, ErpTransaction(pg_url) as b:
            a.insert("stock", "TG", {"qty": 5})
            higher = b.insert("stock", "TG", {"qty": 3})
            b.commit()
            a.commit()
        drain(relay.deps)
    assert product(sb, "TG")["qty"] == 3
    assert row(pg_url, higher).state == "sent"


def test_a_row_no_claim_had_read_wins_over_a_sent_row_with_a_higher_id(
    db_url: str, sb: Sandbox
) -> None:
    """On both databases: a price row with id 900 is sent, then a row with id 500 appears (its
    transaction committed late); it is newer, sent, and the item names it as applied."""
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "LC-1", price=10.0, qty=1)
        sent = insert_with_id(db_url, 900, "price", "LC-1", {"price": 20.0})
        drain(relay.deps)
        assert product(sb, "LC-1")["price"] == 20.0
        late = insert_with_id(db_url, 500, "price", "LC-1", {"price": 30.0})
        drain(relay.deps)
    assert product(sb, "LC-1")["price"] == 30.0
    assert (row(db_url, sent).state, row(db_url, late).state) == ("sent", "sent")
    with session_scope(db_url) as session:
        item = session.get(Item, ("default", "LC-1"))
        assert item is not None and item.last_applied["price"] == late


def test_a_late_row_beats_an_older_rows_retry(db_url: str, sb: Sandbox) -> None:
    """Row 900 fails (5xx) and goes back to wait for its retry; row 500 commits late: the next
    claim reads the late row as the newer one, folds the retried row into it, and sends it."""
    with relay_for(db_url, sb) as relay:
        create_product(db_url, relay, "LC-2", qty=1)
        sb.script_fault("PUT", "/products/LC-2", "503", 5)
        retried = insert_with_id(db_url, 900, "stock", "LC-2", {"qty": 7})
        relay.run_batch()
        assert row(db_url, retried).state == "pending"
        late = insert_with_id(db_url, 500, "stock", "LC-2", {"qty": 2})
        sb.clear_faults()
        make_due(db_url)
        drain(relay.deps)
    assert product(sb, "LC-2")["qty"] == 2
    got = row(db_url, retried)
    assert (got.state, got.superseded_by) == ("superseded", late), got
    assert row(db_url, late).state == "sent"


def test_a_row_committed_while_a_claim_reads_a_long_backlog_is_left_for_the_next_claim(
    pg_url: str, sb: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SKU with more pending rows than a page is read in several pages. A transaction that
    took a low id commits after the claim read the first page: the claim must not fold it in
    as older (a later page would have let it in); it stays for the next claim, newer, and
    SkyHub ends with its value."""
    from conftest import empty_tables

    from skysync.relay import batch
    from skysync.store import claims

    empty_tables(pg_url)
    monkeypatch.setattr(claims, "PAGE_ROWS", 5)
    with relay_for(pg_url, sb) as relay:
        create_product(pg_url, relay, "BIG", qty=1)
        with ErpTransaction(pg_url) as late:
            late_row = late.insert("stock", "BIG", {"qty": 42})
            newest = 0
            for qty in range(10, 22):  # 12 rows, committed: pages of 5
                newest = insert_with_id(pg_url, late_row + qty, "stock", "BIG", {"qty": qty})
            real_take = batch._Claim.take
            pages: list[list[int]] = []

            def take(self: Any, page: list[Any], *, in_flight: bool) -> None:
                real_take(self, page, in_flight=in_flight)
                pages.append([r[0] for r in page])
                if len(pages) == 1:
                    late.commit()  # between the claim's first page and the next

            monkeypatch.setattr(batch._Claim, "take", take)
            relay.run_batch()
            monkeypatch.setattr(batch._Claim, "take", real_take)
        assert len(pages) >= 3 and late_row not in {i for page in pages for i in page}
        assert product(sb, "BIG")["qty"] == 21
        assert row(pg_url, newest).state == "sent"
        assert row(pg_url, late_row).state == "pending"
        drain(relay.deps)
    assert product(sb, "BIG")["qty"] == 42
    assert row(pg_url, late_row).state == "sent"
