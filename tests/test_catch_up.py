"""Catching up with a backlog (docs/relay.md, "Catching up"; skysync/domain/pacing.py): after a
batch that claimed all it could, another follows as soon as the keys in flight are down to half
a batch, until a batch comes back short of its limit. In this process, on both databases; the
same through a real worker and beat is in tests/test_celery.py."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from conftest import empty_tables
from relay_helpers import insert, relay_for, rows, sandbox_config

from skysync.domain.pacing import catch_up_now
from skysync.emulator import Sandbox
from skysync.relay import Relay
from skysync.store import runs
from skysync.store.claims import CLAIM_LOCK_ID
from skysync.store.db import get_engine, session_scope


def decide(**kw: Any) -> bool:
    values: dict[str, Any] = {
        "last_was_full": True,
        "last_stopped": False,
        "keys_in_flight": 0,
        "batch_size": 10,
    }
    return catch_up_now(**(values | kw))


def test_the_decision() -> None:
    assert decide()
    assert decide(keys_in_flight=5)  # half a batch left in flight: claim the next now
    assert not decide(keys_in_flight=6)  # more: the workers have enough queued
    assert not decide(last_was_full=False)  # no backlog: the 15-minute batch takes the rest
    assert not decide(last_stopped=True)  # SkyHub refused the credentials
    assert decide(batch_size=1, keys_in_flight=0) and not decide(batch_size=1, keys_in_flight=1)


def claim(relay: Relay, *, catch_up: bool = False) -> tuple[Any, list[list[int]]]:
    """A batch (or a catch-up) whose chunks are kept here instead of sent."""
    chunks: list[list[int]] = []
    keep = chunks.append

    def dispatch(_token: str, ids: list[int]) -> None:
        keep(ids)

    if catch_up:
        return relay.run_catch_up(dispatch=dispatch), chunks
    return relay.run_batch(dispatch=dispatch), chunks


def test_a_full_batch_is_followed_once_half_of_it_is_sent_and_not_before(
    db_url: str, sb: Sandbox
) -> None:
    skus = [f"CU-{i:02d}" for i in range(10)]
    ids = {sku: insert(db_url, "product", sku, {"name": sku, "price": 10.0}) for sku in skus}
    with relay_for(db_url, sb, settings_kw={"batch_size": 4}) as relay:
        first, chunks = claim(relay)
        assert first.keys == 4 and first.more_due, first
        # 4 keys in flight, more than half a batch: the workers have enough
        assert claim(relay, catch_up=True)[0] is None
        mine = [i for chunk in chunks for i in chunk]
        relay.deliver(first.token, mine[:2])  # two keys sent, two still in flight
        second, chunks = claim(relay, catch_up=True)
        assert second is not None and second.keys == 4 and second.more_due, second
        relay.deliver(first.token, mine[2:])
        relay.deliver(second.token, [i for chunk in chunks for i in chunk])
        third, chunks = claim(relay, catch_up=True)
        assert third is not None and third.keys == 2 and not third.more_due, third
        relay.deliver(third.token, [i for chunk in chunks for i in chunk])
        # the backlog is gone: a catch-up does nothing, even with a new row due
        late = insert(db_url, "price", "CU-00", {"price": 11.0})
        assert claim(relay, catch_up=True)[0] is None
    got = rows(db_url)
    assert all(got[i].state == "sent" for i in ids.values()), got
    assert got[late].state == "pending"  # left for the next regular batch
    with session_scope(db_url) as session:
        last = runs.last(session, "relay")
        assert last is not None and last.summary["more_due"] is False


def test_no_catching_up_after_skyhub_refused_the_credentials(db_url: str) -> None:
    """Every request would fail the same way until an operator fixes the credentials."""
    for i in range(6):
        insert(db_url, "product", f"CA-{i}", {"name": "x", "price": 10.0})
    config = sandbox_config(email="real@x", api_key="real-key", account_key="real-account")
    with Sandbox(config) as sb, relay_for(db_url, sb, settings_kw={"batch_size": 2}) as relay:
        relay.run_batch()  # delivered here: the first request meets a 401
        with session_scope(db_url) as session:
            last = runs.last(session, "relay")
            assert last is not None and runs.is_auth_stop(last.error), last and last.error
            assert last.summary["more_due"] is True
        assert claim(relay, catch_up=True)[0] is None
        assert len(sb.request_log()) == 1


@pytest.mark.parametrize("interval, entry", [(30.0, True), (0.0, False)])
def test_beat_looks_for_a_backlog_unless_switched_off(
    monkeypatch: pytest.MonkeyPatch, interval: float, entry: bool
) -> None:
    from skysync.celery_app import make_app
    from skysync.config import get_settings

    monkeypatch.setenv("SKYSYNC_CATCH_UP_INTERVAL", str(interval))
    get_settings.cache_clear()
    try:
        schedule = make_app().conf.beat_schedule
    finally:
        get_settings.cache_clear()
    assert ("relay-catch-up" in schedule) is entry
    if entry:
        assert schedule["relay-catch-up"]["task"] == "skysync.relay_catch_up"
        assert schedule["relay-catch-up"]["schedule"].total_seconds() == interval


def test_a_look_while_another_claim_holds_the_lock_claims_nothing_and_does_not_wait(
    pg_url: str, sb: Sandbox
) -> None:
    """PostgreSQL: a worker's look takes the claimers' lock only if it is free, so it never
    waits behind a claim under way (that claim takes the backlog's next batch itself)."""
    empty_tables(pg_url)
    for i in range(6):
        insert(pg_url, "product", f"CL-{i}", {"name": "x", "price": 10.0})
    with relay_for(pg_url, sb, settings_kw={"batch_size": 2}) as relay:
        first, chunks = claim(relay)
        assert first is not None and first.more_due
        relay.deliver(first.token, [i for chunk in chunks for i in chunk])
        with get_engine(pg_url).connect() as other, other.begin():
            # the default account's claimers' lock (each account has its own)
            lock = sa.text("SELECT pg_advisory_xact_lock(:k, hashtext('default'))")
            other.execute(lock, {"k": CLAIM_LOCK_ID})
            assert claim(relay, catch_up=True)[0] is None  # at once, not after the lock
        second, _ = claim(relay, catch_up=True)  # the lock is free again
        assert second is not None and second.keys == 2
