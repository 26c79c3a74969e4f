"""Convergence of the REAL relay against the REAL emulator over HTTP, under faults.

A hypothesis strategy interleaves ERP writes (price and stock rows for 3 SKUs that a product row
created), relay batches, scripted faults on ``PUT /products/`` (5xx, timeouts, answers lost after
the change was applied, 429) and "time passes" (backed-off rows become due). Afterwards every
row is made due and drained until none is pending or in flight, and the invariants of
docs/relay.md ("Guarantees, checked by the tests") are checked:

(a) SkyHub (the emulator) ends with the ERP's latest valid price and qty for every SKU;
(b) no stale overwrite, in the emulator's own request log: once a value from row N was
    acknowledged (2xx) for a field, no later 2xx request for that SKU carried an older row's
    value (every written value is unique per SKU and field, so a value names its row);
(c) nothing lost: every valid row ends sent, superseded or withheld; a bad row is rejected.

The emulator is started once per module; each example uses a fresh SKU prefix (uuid) and
empties the outbox and item tables, instead of resetting the emulator.

The scenario tests at the end pin down single situations (a revert after a lost answer,
variation values carried by product rows) step by step: each was a bug this suite found.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

import pytest
import sqlalchemy as sa
from conftest import empty_tables
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skysync.config import load_settings
from skysync.emulator import Sandbox, SandboxConfig
from skysync.relay import Relay, drain
from skysync.skyhub.client import SkyHubClient
from skysync.store.db import session_scope
from skysync.store.models import OutboxRow, utcnow

CREDENTIALS = {
    "email": "loja@example.com",
    "api_key": "convergence-api-key",
    "account_key": "convergence-account-key",
}
FAULTS = ("500", "503", "lost", "timeout", "429")
SKUS_PER_EXAMPLE = 3
FINAL_OK = ("sent", "superseded", "withheld")

PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """One emulator for the module: answers hang 0.3 s on a timeout fault, no rate limits (the
    scripted 429 faults exercise that path), products linked at once as on SkyHub."""
    config = SandboxConfig(hang_seconds=0.3, rate_limits_enabled=False, seed=3, **CREDENTIALS)
    with Sandbox(config) as sb:
        yield sb


def _fast_sleep(seconds: float) -> None:
    # The client waits out a 429 until the next one-second window; keep the test quick.
    time.sleep(min(seconds, 0.005))


@contextlib.contextmanager
def make_relay(url: str, sb: Sandbox, **setting_overrides: Any) -> Iterator[Relay]:
    values: dict[str, Any] = {"database_url": url, "max_attempts": 50, "lease_seconds": 30}
    values.update(setting_overrides)
    client = SkyHubClient(sb.base_url, timeout=0.2, sleep=_fast_sleep, **CREDENTIALS)
    relay = Relay(
        load_settings(**values),
        client,
        database_url=url,
        concurrency=4,
        quick_retries=2,
        quick_retry_delay=0.01,
        rng=random.Random(0),
    )
    try:
        yield relay
    finally:
        client.close()


def clear_scripted_faults(sb: Sandbox) -> None:
    """Drop any scripted fault left over (sb.reset would also drop the products). Using them up
    with requests was flaky: a "lost" fault on a missing product still answers 404."""
    sb.clear_faults()


# --------------------------------------------------------------------------- the ERP's side


@dataclass
class Erp:
    """Writes outbox rows like the ERP and remembers what it wrote."""

    url: str
    skus: list[str]
    latest: dict[tuple[str, str], Any] = field(default_factory=dict)
    row_of_value: dict[tuple[str, str], dict[Any, int]] = field(default_factory=dict)
    invalid_rows: set[int] = field(default_factory=set)
    all_rows: list[int] = field(default_factory=list)

    def write(self, kind: str, sku: str, payload: dict[str, Any], *, valid: bool = True) -> int:
        with session_scope(self.url) as session:
            row = OutboxRow(kind=kind, ref=sku, payload=payload)
            session.add(row)
            session.flush()
            row_id = row.id
        self.all_rows.append(row_id)
        if not valid:
            self.invalid_rows.add(row_id)
            return row_id
        for name in ("price", "qty"):
            if name in payload:
                self.latest[(sku, name)] = payload[name]
                self.row_of_value.setdefault((sku, name), {})[payload[name]] = row_id
        return row_id

    def unique(self, sku: str, name: str, value: Any, low: float, high: float) -> Any:
        """``value``, moved to the nearest value this SKU never had for ``name``."""
        used = self.row_of_value.get((sku, name), {})
        if name == "qty":
            free = [q for q in range(int(low), int(high) + 1) if q not in used]
            assert free, "the strategy wrote more stock rows than there are quantities"
            return min(free, key=lambda q: (abs(q - value), q))
        while value in used:
            value = math.nextafter(value, high if value < high else low)
        return value


def make_due(url: str) -> None:
    """Time passes: every pending row (backing off or not) is due now."""
    with session_scope(url) as session:
        session.execute(
            sa.update(OutboxRow)
            .where(OutboxRow.state == "pending")
            .values(available_at=utcnow() - timedelta(hours=1))
        )


def open_rows(url: str) -> int:
    with session_scope(url) as session:
        return session.execute(
            sa.select(sa.func.count())
            .select_from(OutboxRow)
            .where(OutboxRow.state.in_(("pending", "in_flight")))
        ).scalar_one()


def converge(url: str, relay: Relay, *, rounds: int = 60) -> None:
    """Make everything due and drain, until no row is pending or in flight."""
    for _ in range(rounds):
        make_due(url)
        drain(relay.deps)
        if open_rows(url) == 0:
            return
    pytest.fail(f"the outbox did not converge in {rounds} rounds")


def rows_by_id(url: str) -> dict[int, OutboxRow]:
    with session_scope(url) as session:
        return {r.id: r for r in session.scalars(sa.select(OutboxRow))}


def sku_of(entry: dict[str, Any]) -> str | None:
    """The product SKU a logged write was about (POST /products or PUT /products/{sku})."""
    parts = entry["path"].split("?", 1)[0].strip("/").split("/")
    if entry["method"] == "POST" and parts == ["products"]:
        body = entry.get("body") or {}
        return (body.get("product") or {}).get("sku")
    if entry["method"] == "PUT" and len(parts) == 2 and parts[0] == "products":
        return unquote(parts[1])
    return None


# --------------------------------------------------------------------------- the strategy

Step = tuple[Any, ...]

write_price = st.tuples(
    st.just("price"),
    st.integers(0, SKUS_PER_EXAMPLE - 1),
    st.one_of(
        st.integers(1, 1000), st.floats(1, 1000), st.floats(1, 1000).map(lambda v: round(v, 2))
    ),
)
write_stock = st.tuples(st.just("stock"), st.integers(0, SKUS_PER_EXAMPLE - 1), st.integers(0, 50))
write_bad = st.tuples(
    st.just("bad"),
    st.integers(0, SKUS_PER_EXAMPLE - 1),
    st.sampled_from(
        [("price", {"price": 0}), ("price", {"price": "12.50"}), ("stock", {"qty": -1})]
    ),
)
batch = st.tuples(st.just("batch"))
fault = st.tuples(st.just("fault"), st.sampled_from(FAULTS), st.integers(1, 2))
time_passes = st.tuples(st.just("time"))

steps_strategy = st.lists(
    st.one_of(write_price, write_stock, batch, fault, time_passes, write_bad),
    min_size=1,
    max_size=30,
)


def run_example(url: str, sb: Sandbox, steps: list[Step], *, unique_values: bool = True) -> None:
    """``unique_values``: every value written is new for its SKU, so each acknowledged value
    maps back to its row and (b) can be checked. Without it, values repeat (10, 20, 30; stock
    0, 1, 2), which exercises "unchanged" withholding; then (a) and (c) are checked."""
    empty_tables(url)
    clear_scripted_faults(sb)
    prefix = f"cv-{uuid.uuid4().hex[:10]}"
    skus = [f"{prefix}-{i}" for i in range(SKUS_PER_EXAMPLE)]
    erp = Erp(url, skus)
    start = len(sb.request_log())
    with make_relay(url, sb) as relay:
        for i, sku in enumerate(skus):
            erp.write("product", sku, {"name": f"Produto {i}", "price": 1000.5 + i, "qty": 60 + i})
        for step in steps:
            kind = step[0]
            if kind == "price":
                sku = skus[step[1]]
                price = (
                    erp.unique(sku, "price", step[2], 1, 1000)
                    if unique_values
                    else (10.0, 20.0, 30.0)[int(step[2]) % 3]
                )
                erp.write("price", sku, {"price": price})
            elif kind == "stock":
                sku = skus[step[1]]
                qty = erp.unique(sku, "qty", step[2], 0, 50) if unique_values else step[2] % 3
                erp.write("stock", sku, {"qty": qty})
            elif kind == "bad":
                bad_kind, payload = step[2]
                erp.write(bad_kind, skus[step[1]], payload, valid=False)
            elif kind == "batch":
                relay.run_batch()
            elif kind == "fault":
                sb.script_fault("PUT", "/products/", step[1], step[2])
            elif kind == "time":
                make_due(url)
        converge(url, relay)
    log = sb.request_log()[start:]
    products = sb.state()["products"]

    # (c) nothing lost: every row ended, valid ones sent/superseded/withheld, bad ones rejected.
    rows = rows_by_id(url)
    assert sorted(rows) == sorted(erp.all_rows)
    for row_id, row in rows.items():
        if row_id in erp.invalid_rows:
            assert row.state == "rejected", (row_id, row.state, row.reason)
        else:
            assert row.state in FINAL_OK, (row_id, row.kind, row.state, row.reason)
        if row.state != "sent":
            assert row.reason, (row_id, row.state)

    # (a) the emulator holds the ERP's latest valid values.
    for sku in skus:
        assert sku in products, f"{sku} never reached the emulator"
        for name in ("price", "qty"):
            assert products[sku][name] == erp.latest[(sku, name)], (sku, name, products[sku])

    if not unique_values:
        return
    # (b) monotonic per SKU and field over the acknowledged (2xx) writes, in arrival order.
    acked: dict[tuple[str, str], int] = {}
    for entry in log:
        sku = sku_of(entry)
        if sku not in skus or entry["status"] is None or not 200 <= entry["status"] < 300:
            continue
        body = entry["body"]["product"]
        for name in ("price", "qty"):
            if name not in body:
                continue
            value = body[name]
            known = erp.row_of_value[(sku, name)]
            assert value in known, f"{sku} {name}={value!r} was never written by the ERP"
            row_id = known[value]
            newest = acked.get((sku, name), 0)
            assert row_id >= newest, (
                f"stale overwrite: {sku} {name} from row {row_id} acknowledged after the value "
                f"of row {newest}"
            )
            acked[(sku, name)] = row_id


# --------------------------------------------------------------------------- properties


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(steps=steps_strategy)
def test_relay_converges_on_sqlite(sqlite_url: str, sandbox: Sandbox, steps: list[Step]) -> None:
    run_example(sqlite_url, sandbox, steps)


@pytest.mark.slow
@settings(PROPERTY_SETTINGS, max_examples=8)
@given(steps=steps_strategy)
def test_relay_converges_on_postgresql(pg_url: str, sandbox: Sandbox, steps: list[Step]) -> None:
    run_example(pg_url, sandbox, steps)


@pytest.mark.slow
@settings(PROPERTY_SETTINGS, max_examples=25)
@given(steps=steps_strategy)
def test_relay_converges_with_repeated_values(
    sqlite_url: str, sandbox: Sandbox, steps: list[Step]
) -> None:
    """Values come back (a price goes 10, 20, 10): "unchanged" must never let an older row
    overwrite a newer equal one."""
    run_example(sqlite_url, sandbox, steps, unique_values=False)


# --------------------------------------------------------------------------- scenarios


@pytest.fixture
def unlinked_sandbox() -> Iterator[Sandbox]:
    """An emulator whose products are never linked by themselves: attributes and variations
    keep flowing, as before the marketplace takes a product."""
    config = SandboxConfig(rate_limits_enabled=False, link_delay=None, seed=5, **CREDENTIALS)
    with Sandbox(config) as sb:
        yield sb


def fresh(url: str, sb: Sandbox) -> str:
    empty_tables(url)
    clear_scripted_faults(sb)
    return f"sc-{uuid.uuid4().hex[:10]}"


def test_price_reverted_after_a_lost_answer_reaches_skyhub(
    sqlite_url: str, sandbox: Sandbox
) -> None:
    """The ERP sets 10, then 20, then back to 10. The write of 20 was applied by SkyHub but
    every answer was lost, so it was never acknowledged; the revert to 10 must still be sent,
    since SkyHub now holds 20. (SkyHub's final value is the ERP's latest valid value.)"""
    sku = fresh(sqlite_url, sandbox)
    erp = Erp(sqlite_url, [sku])
    with make_relay(sqlite_url, sandbox) as relay:
        erp.write("product", sku, {"name": "Produto", "price": 10.0, "qty": 5})
        relay.run_batch()
        assert sandbox.state()["products"][sku]["price"] == 10.0

        erp.write("price", sku, {"price": 20.0})
        sandbox.script_fault("PUT", f"/products/{sku}", "lost", 3)  # 1 try + 2 quick retries
        relay.run_batch()
        assert sandbox.state()["products"][sku]["price"] == 20.0  # applied, never answered
        assert rows_by_id(sqlite_url)[2].state == "pending"

        erp.write("price", sku, {"price": 10.0})
        converge(sqlite_url, relay)

    rows = rows_by_id(sqlite_url)
    assert sandbox.state()["products"][sku]["price"] == 10.0, (
        f"SkyHub kept 20.0 although the ERP's latest price is 10.0; row 3 ended "
        f"{rows[3].state!r}: {rows[3].reason}"
    )


def test_retried_product_row_does_not_overwrite_a_newer_variation_stock(
    sqlite_url: str, unlinked_sandbox: Sandbox
) -> None:
    """Row 2 (product P, variation V qty 4) and row 3 (stock V qty 9) fold into one request for
    V (qty 9), which fails and backs off with both rows. When they are retried V must end on
    9, never back on 4."""
    sb = unlinked_sandbox
    parent = fresh(sqlite_url, sb)
    variation = f"{parent}-V"
    erp = Erp(sqlite_url, [parent, variation])
    with make_relay(sqlite_url, sb) as relay:
        erp.write(
            "product",
            parent,
            {"name": "Camiseta", "price": 50.0, "variations": [{"sku": variation, "qty": 3}]},
        )
        relay.run_batch()
        assert sb.state()["variations"][variation]["qty"] == 3

        erp.write("product", parent, {"variations": [{"sku": variation, "qty": 4}]})
        erp.write("stock", variation, {"qty": 9})
        sb.script_fault("PUT", f"/variations/{variation}", "500", 3)  # row 2's three tries
        relay.run_batch()
        rows = rows_by_id(sqlite_url)
        assert (rows[2].state, rows[3].state) == ("pending", "pending")
        assert [b["variation"] for b in bodies(sb, variation)] == [{"qty": 9}] * 3

        converge(sqlite_url, relay)

    assert sb.state()["variations"][variation]["qty"] == 9, (
        "the retry of product row 2 put the variation's stock back to 4 after row 3 set 9"
    )
    assert [b["variation"]["qty"] for b in bodies(sb, variation)] == [9, 9, 9, 9], (
        "V got a request other than the latest value"
    )


def test_variation_field_keeps_the_row_that_set_it(
    sqlite_url: str, unlinked_sandbox: Sandbox
) -> None:
    """Rows: 2 product P (V qty 4), 3 stock V qty 9, 4 product P (V ean only). The latest qty
    for V is 9 (row 4 says nothing about qty), so SkyHub must end with 9."""
    sb = unlinked_sandbox
    parent = fresh(sqlite_url, sb)
    variation = f"{parent}-V"
    erp = Erp(sqlite_url, [parent, variation])
    with make_relay(sqlite_url, sb) as relay:
        erp.write(
            "product",
            parent,
            {"name": "Camiseta", "price": 50.0, "variations": [{"sku": variation, "qty": 3}]},
        )
        relay.run_batch()
        erp.write("product", parent, {"variations": [{"sku": variation, "qty": 4}]})
        erp.write("stock", variation, {"qty": 9})
        erp.write("product", parent, {"variations": [{"sku": variation, "ean": "7891234567895"}]})
        converge(sqlite_url, relay)

    rows = rows_by_id(sqlite_url)
    assert sb.state()["variations"][variation]["ean"] == "7891234567895"
    assert sb.state()["variations"][variation]["qty"] == 9, (
        f"row 3 (qty 9) ended {rows[3].state!r}: {rows[3].reason}"
    )


def bodies(sb: Sandbox, variation: str) -> list[Any]:
    return [e["body"] for e in sb.request_log() if e["path"] == f"/variations/{variation}"]
