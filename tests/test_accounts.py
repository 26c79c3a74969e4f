"""Several SkyHub accounts in one deployment (issue #21), on both databases, against the emulator
over HTTP: each account's rows go with its own credentials to its own catalogue; the same SKU in
two accounts is two items; one account's refused key stops only that account; a row naming an
account that is not configured is rejected with its name; an account's override of the stock
buffer is its own; its chunks go to the workers a few at a time; an account added to the
accounts file is served without a restart; and the migration moves single-account data into
``default`` without losing a row."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import empty_tables, fresh_database_fixture
from relay_helpers import rows, settings_for

from skysync import bootstrap
from skysync.accounts import load_accounts
from skysync.emulator import Sandbox
from skysync.relay import Relay, drain
from skysync.relay.handout import Handout
from skysync.store import chunks, runs, settle
from skysync.store.db import downgrade, get_engine, migrate, session_scope
from skysync.store.models import Item, utcnow

SUL, NORTE = "loja-sul", "loja-norte"
CREDENTIALS = {
    SUL: ("sul@lojas.test", "KEY-SUL-8d1c"),
    NORTE: ("norte@lojas.test", "KEY-NORTE-2b7e"),
}
ACCOUNT_KEY = "ACCOUNT-MANAGER-KEY-4411"


def accounts_toml(extra: str = "") -> str:
    return "".join(
        f'[accounts.{name}]\nemail = "{email}"\napi_key = "{key}"\n{extra if name == SUL else ""}\n'
        for name, (email, key) in CREDENTIALS.items()
    )


def insert_for(db_url: str, account: str | None, kind: str, ref: str, payload: Any) -> int:
    """One row as the ERP writes it, naming ``account`` (None: the column left out)."""
    value = "CAST(:p AS jsonb)" if db_url.startswith("postgresql") else ":p"
    columns, values = ("account, ", ":a, ") if account is not None else ("", "")
    sql = sa.text(
        f"INSERT INTO skysync_outbox ({columns}kind, ref, payload) "
        f"VALUES ({values}:k, :r, {value}) RETURNING id"
    )
    params = {"a": account, "k": kind, "r": ref, "p": json.dumps(payload)}
    with get_engine(db_url).begin() as conn:
        return int(conn.execute(sql, params).scalar_one())


def accounts_settings(db_url: str, sb: Sandbox, path: Path, **values: Any) -> Any:
    """Settings with the accounts file ``path``, sending to ``sb``."""
    return settings_for(
        db_url,
        skyhub_url=sb.base_url,
        skyhub_account_key=ACCOUNT_KEY,
        accounts_file=str(path),
        rate_limit=1000,  # the emulator's limits are off here: no pacing to wait for
        **values,
    )


@pytest.fixture
def two_accounts(db_url: str, sb: Sandbox, tmp_path: Path) -> Iterator[dict[str, Relay]]:
    """loja-sul and loja-norte, each its own account on the emulator and in an accounts file
    (loja-sul keeps 2 units back), with the relay the workers would build for each."""
    empty_tables(db_url)
    for name, (email, key) in CREDENTIALS.items():
        sb.add_account(name, email, key)
    path = tmp_path / "accounts.toml"
    path.write_text(accounts_toml("stock_buffer = 2\n"))
    settings = accounts_settings(db_url, sb, path)
    accounts = load_accounts(settings)
    relays = {name: bootstrap.build_relay(settings, accounts[name]) for name in CREDENTIALS}
    try:
        yield relays
    finally:
        for relay in relays.values():
            relay.client.close()


def test_the_same_sku_in_two_accounts_is_two_items_each_on_its_own_catalogue(
    db_url: str, sb: Sandbox, two_accounts: dict[str, Relay]
) -> None:
    for name in CREDENTIALS:
        sb.seed_products([{"sku": "CAM-1", "name": f"Camisa {name}", "price": 50.0}], account=name)
    insert_for(db_url, SUL, "stock", "CAM-1", {"qty": 10})
    insert_for(db_url, NORTE, "stock", "CAM-1", {"qty": 7})
    insert_for(db_url, SUL, "price", "CAM-1", {"price": 45.5})
    for relay in two_accounts.values():
        drain(relay.deps)

    sul = sb.state(account=SUL)["products"]["CAM-1"]
    norte = sb.state(account=NORTE)["products"]["CAM-1"]
    assert (sul["qty"], sul["price"]) == (8, 45.5)  # loja-sul keeps 2 units back
    assert (norte["qty"], norte["price"]) == (7, 50.0)  # loja-norte: its own, untouched price
    assert sb.state()["products"] == {}  # nothing reached the default account
    assert all(e["status"] != 401 for n in CREDENTIALS for e in sb.request_log(account=n))
    with session_scope(db_url) as session:
        items = {(i.account, i.sku): i.acknowledged for i in session.scalars(sa.select(Item))}
    assert items == {
        (SUL, "CAM-1"): {"qty": 8, "price": 45.5},
        (NORTE, "CAM-1"): {"qty": 7},
    }
    # loja-sul's stock and price went out in one request: one row sent, the other folded in
    assert sorted(r.state for r in rows(db_url).values()) == ["sent", "sent", "superseded"]


def test_a_refused_key_stops_only_its_own_account(
    db_url: str, sb: Sandbox, two_accounts: dict[str, Relay]
) -> None:
    for name in CREDENTIALS:
        sb.seed_products(
            [{"sku": f"K-{i}", "name": "x", "price": 9.0} for i in range(3)], account=name
        )
    sb.revoke_account(NORTE)
    sul_ids = [insert_for(db_url, SUL, "stock", f"K-{i}", {"qty": 20 + i}) for i in range(3)]
    norte_ids = [insert_for(db_url, NORTE, "stock", f"K-{i}", {"qty": 30 + i}) for i in range(3)]

    for relay in two_accounts.values():
        relay.run_batch()

    states = rows(db_url)
    assert [states[i].state for i in sul_ids] == ["sent"] * 3
    assert [sb.state(account=SUL)["products"][f"K-{i}"]["qty"] for i in range(3)] == [18, 19, 20]
    for i in norte_ids:  # waiting, untouched, with the reason
        assert states[i].state == "pending"
        assert "refused the credentials" in (states[i].reason or "")
    assert all(p.get("qty") in (None, 0) for p in sb.state(account=NORTE)["products"].values())
    with session_scope(db_url) as session:
        stopped = runs.last(session, "relay", account=NORTE)
        fine = runs.last(session, "relay", account=SUL)
        assert stopped is not None and runs.is_auth_stop(stopped.error)
        assert fine is not None and not runs.is_auth_stop(fine.error)
    # the key is fixed: loja-norte's rows go out at its next batch
    sb.restore_account(NORTE)
    with session_scope(db_url) as session:
        session.execute(sa.text("UPDATE skysync_outbox SET available_at = :t"), {"t": utcnow()})
    two_accounts[NORTE].run_batch()
    assert [sb.state(account=NORTE)["products"][f"K-{i}"]["qty"] for i in range(3)] == [30, 31, 32]


def test_a_row_naming_an_account_that_is_not_configured_is_rejected_with_its_name(
    db_url: str, sb: Sandbox, two_accounts: dict[str, Relay]
) -> None:
    sb.seed_products([{"sku": "U-1", "name": "x", "price": 9.0}], account=SUL)
    stray = insert_for(db_url, "loja-leste", "stock", "U-1", {"qty": 4})
    good = insert_for(db_url, SUL, "stock", "U-1", {"qty": 6})
    legacy = insert_for(db_url, None, "stock", "U-1", {"qty": 2})  # no account: default's

    with session_scope(db_url) as session:
        assert settle.reject_unconfigured(session, ["default", SUL, NORTE], utcnow()) == 1
    drain(two_accounts[SUL].deps)

    states = rows(db_url)
    assert states[stray].state == "rejected"
    assert states[stray].reason == (
        'account: "loja-leste" is not a configured SkyHub account '
        "(configured: default, loja-sul, loja-norte)"
    )
    assert states[good].state == "sent"  # a bad row never blocks good ones
    assert states[legacy].state == "pending"  # the default account's, untouched here
    with session_scope(db_url) as session:
        account = session.execute(
            sa.text("SELECT account FROM skysync_outbox WHERE id = :i"), {"i": legacy}
        ).scalar_one()
    assert account == "default"


def test_an_accounts_chunks_go_to_the_workers_two_at_a_time(
    db_url: str, sb: Sandbox, two_accounts: dict[str, Relay]
) -> None:
    """loja-sul's 130 keys make 5 or 6 chunks: 2 go out, the rest wait their turn, and each chunk
    that finishes sends the next; loja-norte's chunks meanwhile take turns of their own."""
    for name in CREDENTIALS:
        sb.seed_products(
            [{"sku": f"C-{i:03d}", "name": "x", "price": 9.0} for i in range(130)], account=name
        )
    for i in range(130):
        insert_for(db_url, SUL, "stock", f"C-{i:03d}", {"qty": i})
    for i in range(30):
        insert_for(db_url, NORTE, "stock", f"C-{i:03d}", {"qty": i})
    sent: dict[str, list[tuple[str, list[int]]]] = {SUL: [], NORTE: []}
    handouts = {
        name: Handout(relay.deps, lambda t, ids, n=name: sent[n].append((t, ids)))
        for name, relay in two_accounts.items()
    }
    summary = two_accounts[SUL].run_batch(dispatch=handouts[SUL])
    assert summary.chunks >= 5
    assert len(sent[SUL]) == 2
    two_accounts[NORTE].run_batch(dispatch=handouts[NORTE])
    assert len(sent[NORTE]) == 2  # its own turns, whatever loja-sul has waiting
    with session_scope(db_url) as session:
        assert chunks.waiting(session, account=SUL) == summary.chunks - 2
        assert chunks.waiting(session, account=NORTE) == 0

    done = 0
    while done < len(sent[SUL]):  # a worker finishes each chunk in turn
        token, ids = sent[SUL][done]
        two_accounts[SUL].deliver(token, ids)
        handouts[SUL].finished(token, ids)
        done += 1
        assert len(sent[SUL]) - done <= 2  # never more than two out at once
    assert done == summary.chunks
    with session_scope(db_url) as session:
        by_account = dict(
            session.execute(
                sa.text("SELECT account, state FROM skysync_outbox GROUP BY account, state")
            ).all()
        )
    assert by_account == {SUL: "sent", NORTE: "in_flight"}  # loja-norte's workers: not here
    assert all(
        sb.state(account=SUL)["products"][f"C-{i:03d}"]["qty"] == max(i - 2, 0) for i in range(130)
    )


def test_a_chunk_of_a_killed_worker_gives_its_turn_back(
    db_url: str, sb: Sandbox, two_accounts: dict[str, Relay]
) -> None:
    """The worker holding a chunk died: at its lease's end its rows go back and a new claim
    takes them; the dead chunk no longer counts as out, so the new ones are sent at once."""
    sb.seed_products(
        [{"sku": f"D-{i:03d}", "name": "x", "price": 9.0} for i in range(60)], account=SUL
    )
    for i in range(60):
        insert_for(db_url, SUL, "stock", f"D-{i:03d}", {"qty": i})
    relay = two_accounts[SUL]
    sent: list[tuple[str, list[int]]] = []
    handout = Handout(relay.deps, lambda t, ids: sent.append((t, ids)))
    relay.run_batch(dispatch=handout)
    assert len(sent) == 2  # of 3; the worker with them is killed
    with session_scope(db_url) as session:
        session.execute(sa.text("UPDATE skysync_outbox SET lease_until = :t"), {"t": utcnow()})
    sent.clear()
    relay.run_batch(dispatch=handout)  # reclaims the rows, claims them again: 3 new chunks
    assert len(sent) == 2
    for token, ids in list(sent):
        relay.deliver(token, ids)
        handout.finished(token, ids)
    for token, ids in sent[2:]:
        relay.deliver(token, ids)
        handout.finished(token, ids)
    assert len(sent) == 3
    assert {r.state for r in rows(db_url).values()} == {"sent"}


def test_an_account_added_to_the_file_is_served_without_a_restart(
    db_url: str, sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text(accounts_toml().split("[accounts.loja-norte]")[0])  # loja-sul only
    monkeypatch.setattr(bootstrap, "ACCOUNTS_CHECK_EVERY", 0.0)
    monkeypatch.setattr(bootstrap, "get_settings", lambda: settings_for(
        db_url, skyhub_url=sb.base_url, skyhub_account_key=ACCOUNT_KEY, accounts_file=str(path)
    ))  # fmt: skip
    bootstrap.reset()
    try:
        assert bootstrap.get_accounts().names() == ["default", SUL]
        with pytest.raises(bootstrap.UnknownAccount, match="loja-norte"):
            bootstrap.get_relay(NORTE)
        sul = bootstrap.get_relay(SUL)
        time.sleep(0.01)
        path.write_text(accounts_toml())
        assert bootstrap.get_accounts().names() == ["default", SUL, NORTE]
        norte = bootstrap.get_relay(NORTE)
        assert norte.account == NORTE and norte.client.email == "norte@lojas.test"
        assert bootstrap.get_relay(SUL) is sul  # unchanged: kept, with its connections
    finally:
        bootstrap.reset()


fresh_url = fresh_database_fixture("skysync_acc_migr")


SINGLE_ACCOUNT_DATA = [
    "INSERT INTO skysync_outbox (kind, ref, payload, state) VALUES "
    "('stock', 'M-1', '{\"qty\": 3}', 'sent'), ('stock', 'M-1', '{\"qty\": 4}', 'pending')",
    "INSERT INTO skysync_item (sku, acknowledged) VALUES ('M-1', '{\"qty\": 3}')",
    "INSERT INTO skysync_order (code, status) VALUES ('Loja-1', 'order_invoiced')",
    "INSERT INTO skysync_order_inbox (code, status, dedupe_key, raw) "
    "VALUES ('Loja-1', 'order_invoiced', 'Loja-1|order_invoiced', '{}')",
    "INSERT INTO skysync_run (kind, started_at) VALUES ('relay', CURRENT_TIMESTAMP)",
    "INSERT INTO skysync_request_stat (method, route, status, count) "
    "VALUES ('PUT', '/products/{sku}', '204', 5)",
    "INSERT INTO skysync_sync_error (entity_type, entity_id, error_category_code, error_code, "
    "first_seen_at, last_seen_at) VALUES ('products', 'M-1', 'c', 'e', "
    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
]
TABLES = [
    "skysync_outbox",
    "skysync_item",
    "skysync_order",
    "skysync_order_inbox",
    "skysync_run",
    "skysync_request_stat",
    "skysync_sync_error",
]


def test_the_migration_moves_single_account_data_into_default(fresh_url: str) -> None:
    migrate(fresh_url, "0010")
    with get_engine(fresh_url).begin() as conn:
        for sql in SINGLE_ACCOUNT_DATA:
            conn.exec_driver_sql(sql)
        before = {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one() for t in TABLES}
    migrate(fresh_url)
    with get_engine(fresh_url).begin() as conn:
        for table in TABLES:
            accounts = conn.exec_driver_sql(
                f"SELECT account, count(*) FROM {table} GROUP BY account"
            ).all()
            assert accounts == [("default", before[table])], table
        # the ERP keeps writing as before, and the same SKU and order now fit another account
        conn.exec_driver_sql(
            "INSERT INTO skysync_outbox (kind, ref, payload) "
            "VALUES ('stock', 'M-1', '{\"qty\": 5}')"
        )
        conn.exec_driver_sql("INSERT INTO skysync_item (account, sku) VALUES ('loja-sul', 'M-1')")
        conn.exec_driver_sql(
            "INSERT INTO skysync_order_inbox (account, code, dedupe_key, raw) "
            "VALUES ('loja-sul', 'Loja-1', 'Loja-1|order_invoiced', '{}')"
        )
    # a single-account schema cannot hold loja-sul's rows: refused, nothing dropped
    with pytest.raises(RuntimeError, match="rows of accounts other than 'default'"):
        downgrade(fresh_url, "0010")
    with get_engine(fresh_url).begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM skysync_item").scalar_one() == 2
        conn.exec_driver_sql("DELETE FROM skysync_item WHERE account = 'loja-sul'")
        conn.exec_driver_sql("DELETE FROM skysync_order_inbox WHERE account = 'loja-sul'")
    downgrade(fresh_url, "0010")
    with get_engine(fresh_url).begin() as conn:
        after = {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one() for t in TABLES}
    assert after == {**before, "skysync_outbox": before["skysync_outbox"] + 1}


def test_a_chunk_hands_its_turn_on_once_its_last_key_is_taken(
    db_url: str, sb: Sandbox, two_accounts: dict[str, Relay]
) -> None:
    """The next chunk's set-up overlaps this one's last requests: ``drained`` is called once,
    while the chunk still has requests in flight, before deliver returns."""
    sb.seed_products(
        [{"sku": f"T-{i:02d}", "name": "x", "price": 9.0} for i in range(20)], account=SUL
    )
    for i in range(20):
        insert_for(db_url, SUL, "stock", f"T-{i:02d}", {"qty": i})
    relay = two_accounts[SUL]
    sent: list[tuple[str, list[int]]] = []
    relay.run_batch(dispatch=lambda t, ids: sent.append((t, ids)))
    (token, ids), *_ = sent
    calls: list[int] = []

    def drained() -> None:  # how many of the chunk's rows were still in flight then
        with session_scope(db_url) as session:
            calls.append(
                session.execute(
                    sa.text("SELECT count(*) FROM skysync_outbox WHERE state = 'in_flight'")
                ).scalar_one()
            )

    summary = relay.deliver(token, ids, drained=drained)
    assert summary.keys == len(ids)
    assert len(calls) == 1
    assert 0 < calls[0] <= 8  # its last keys were still going out
    assert {r.state for r in rows(db_url).values()} == {"sent"}
    assert relay.deliver(token, ids, drained=lambda: calls.append(-1)).keys == 0
    assert calls[-1] == -1  # a repeat finds nothing, and hands the turn on at once


def test_reconciliation_and_repair_keep_to_their_account(
    db_url: str, sb: Sandbox, two_accounts: dict[str, Relay]
) -> None:
    """SkyHub changed loja-norte's R-1 behind skysync's back: loja-norte's reconciliation
    finds it and its repair goes to loja-norte; loja-sul, with the same SKU, finds nothing."""
    from skysync.relay.reconcile import reconcile

    for name in CREDENTIALS:
        sb.seed_products([{"sku": "R-1", "name": "x", "price": 9.0}], account=name)
        insert_for(db_url, name, "price", "R-1", {"price": 20.0 if name == SUL else 30.0})
        drain(two_accounts[name].deps)
    sb.change_product("R-1", {"price": 31.5}, account=NORTE)

    norte = reconcile(two_accounts[NORTE].deps, repair=True)
    sul = reconcile(two_accounts[SUL].deps)
    assert [(d.sku, d.field, d.erp, d.skyhub) for d in norte.drift] == [
        ("R-1", "price", 30.0, 31.5)
    ]
    assert sul.drift == [] and sul.orphans == []
    drain(two_accounts[NORTE].deps)
    assert sb.state(account=NORTE)["products"]["R-1"]["price"] == 30.0
    assert sb.state(account=SUL)["products"]["R-1"]["price"] == 20.0
    with session_scope(db_url) as session:
        corrections = session.execute(
            sa.text("SELECT account FROM skysync_outbox WHERE origin = 'reconcile'")
        ).all()
    assert corrections == [(NORTE,)]


def test_the_fast_lane_watches_and_claims_every_account(
    db_url: str, sb: Sandbox, tmp_path: Path
) -> None:
    """A stock-out of loja-norte's wakes the lane's watcher, and loja-norte's lane run claims
    it; loja-sul's lane run finds nothing of its own."""
    from skysync.relay.fast_lane import LaneWatcher

    empty_tables(db_url)
    path = tmp_path / "accounts.toml"
    path.write_text(accounts_toml())
    settings = accounts_settings(db_url, sb, path, fast_lane="stockouts")
    accounts = load_accounts(settings)
    for name, (email, key) in CREDENTIALS.items():
        sb.add_account(name, email, key)
        sb.seed_products([{"sku": "F-1", "name": "x", "price": 9.0, "qty": 5}], account=name)
    watcher = LaneWatcher(settings, lambda: None, accounts=lambda: accounts.names())
    assert not watcher._due()
    insert_for(db_url, NORTE, "stock", "F-1", {"qty": 0})
    assert watcher._due()
    relays = {name: bootstrap.build_relay(settings, accounts[name]) for name in CREDENTIALS}
    try:
        assert relays[SUL].run_fast().claimed == 0
        assert relays[NORTE].run_fast().claimed == 1
    finally:
        for relay in relays.values():
            relay.client.close()
    assert sb.state(account=NORTE)["products"]["F-1"]["qty"] == 0
    assert sb.state(account=SUL)["products"]["F-1"]["qty"] == 5
    assert not watcher._due()


@pytest.mark.parametrize("fault", ["503", "429"])
def test_an_outage_or_a_429_storm_on_one_account_leaves_the_other_flowing(
    db_url: str, sb: Sandbox, two_accounts: dict[str, Relay], fault: str
) -> None:
    """SkyHub answers every loja-norte write with 503 (an outage) or 429 (a storm): its rows
    go back, each with the reason, while loja-sul's go out with nothing in between."""
    for name in CREDENTIALS:
        sb.seed_products(
            [{"sku": f"O-{i}", "name": "x", "price": 9.0} for i in range(5)], account=name
        )
    sb.script_fault("PUT", "/products", fault, 100, account=NORTE)
    norte = [insert_for(db_url, NORTE, "stock", f"O-{i}", {"qty": 10 + i}) for i in range(5)]
    sul = [insert_for(db_url, SUL, "stock", f"O-{i}", {"qty": 20 + i}) for i in range(5)]

    for relay in two_accounts.values():
        relay.run_batch()

    states = rows(db_url)
    assert [states[i].state for i in sul] == ["sent"] * 5
    assert [sb.state(account=SUL)["products"][f"O-{i}"]["qty"] for i in range(5)] == [
        18 + i
        for i in range(5)  # loja-sul keeps 2 units back
    ]
    for i in norte:
        assert states[i].state == "pending" and states[i].last_status == int(fault)
        assert states[i].reason
    writes = [e for e in sb.request_log(account=NORTE) if e["method"] == "PUT"]
    assert writes and all(e["status"] == int(fault) for e in writes)


def test_an_account_without_an_account_manager_key_still_sends_its_own_credentials(
    sb: Sandbox, tmp_path: Path, sqlite_url: str
) -> None:
    """On an emulator an account may leave account_key out (and SKYSYNC_SKYHUB_ACCOUNT_KEY
    unset): its requests still carry its own email and key, never the emulator's default
    ones, so they reach its own catalogue."""
    path = tmp_path / "accounts.toml"
    path.write_text(accounts_toml())
    settings = settings_for(sqlite_url, skyhub_url=sb.base_url, accounts_file=str(path))
    account = load_accounts(settings)[SUL]
    assert account.account_key is None
    client = bootstrap.build_client(settings, account=account)
    try:
        assert client.email == "sul@lojas.test"
    finally:
        client.close()


def test_credentials_without_an_account_manager_key_never_go_to_skyhub(sqlite_url: str) -> None:
    """The same account pointed at SkyHub's own address is not sent at all (no emulator
    placeholder for SkyHub): skysync says what is missing instead."""
    settings = settings_for(
        sqlite_url, skyhub_email="loja@lojas.test", skyhub_api_key="KEY-LOJA-77aa"
    )
    account = load_accounts(settings)["default"]
    assert account.account_key is None and settings.skyhub_url == "https://api.skyhub.com.br"
    assert bootstrap._state.emulator_url is None
    with pytest.raises(bootstrap.NoSkyHubTarget, match="SKYSYNC_SKYHUB_ACCOUNT_KEY"):
        bootstrap.build_client(settings, account=account)
