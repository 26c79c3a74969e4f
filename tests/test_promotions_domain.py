"""Never a promotional price above the price (skysync/domain/promotions.py, and reconciliation's
side in skysync/domain/reconcile.py): pure decisions, no database, no network.

The policy: SkyHub holds the ERP's latest price P and its latest promotional price Q capped at
P, ``min(Q, P)``; a promotion a newer price made impossible is sent equal to the price (SkyHub
cannot clear one), and comes back when a newer price rises above it again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skysync.domain.guards import hold_price_drops
from skysync.domain.planner import ItemView, Row, SkuRequest, coalesce, decide
from skysync.domain.promotions import capped, fit_promotion
from skysync.domain.reconcile import Believed, Expected, Listed, compare, corrections

SKU = "F-1"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def price(row_id: int, value: float, promo: float | None = None) -> Row:
    payload: dict[str, Any] = {"price": value}
    if promo is not None:
        payload["promotional_price"] = promo
    return Row(row_id, "price", SKU, payload)


def product(row_id: int, **payload: Any) -> Row:
    return Row(row_id, "product", SKU, payload)


def stock(row_id: int, qty: int) -> Row:
    return Row(row_id, "stock", SKU, {"qty": qty})


def item(acknowledged: dict[str, Any], last_applied: dict[str, int] | None = None) -> ItemView:
    return ItemView(SKU, in_skyhub=True, acknowledged=acknowledged, last_applied=last_applied or {})


class Lookup:
    """The ERP's applied values, as the relay reads them from ``last_applied``'s rows; counts
    how often it was asked."""

    def __init__(self, **values: Any) -> None:
        self.values = values
        self.asked: list[str] = []

    def __call__(self, name: str) -> Any:
        self.asked.append(name)
        return self.values.get(name)


def fitted(request: SkuRequest, known: ItemView, lookup: Lookup | None = None) -> Any:
    return fit_promotion(request, known, decide(request, known), lookup)


# --------------------------------------------------------------------------- the named cases


def test_one_batch_the_coalesced_request_holds_the_promotion_at_the_price() -> None:
    request = coalesce([price(1, 100, 90), price(2, 50)])
    assert request.fields == {"price": 50, "promotional_price": 90}  # as folded, row by row

    decision = fitted(request, item({"price": 120}, {"price": 0}))

    assert decision.send == {"price": 50, "promotional_price": 50}
    assert decision.notes == [
        "promotional_price 90 is above the newer price 50: sent as 50, equal to the price "
        "(SkyHub cannot clear a promotion)"
    ]


def test_two_batches_the_acknowledged_promotion_is_capped_without_a_read() -> None:
    lookup = Lookup(promotional_price=90)
    known = item({"price": 100, "promotional_price": 90}, {"price": 1, "promotional_price": 1})

    decision = fitted(coalesce([price(2, 50)]), known, lookup)

    assert decision.send == {"price": 50, "promotional_price": 50}
    assert "promotional_price 90 is above the newer price 50" in decision.notes[0]
    assert lookup.asked == []  # the new price caps what SkyHub holds, whatever the ERP's was


def test_a_product_row_carrying_the_newer_price() -> None:
    known = item({"price": 100, "promotional_price": 90}, {"price": 1, "promotional_price": 1})
    decision = fitted(coalesce([product(2, name="Novo", price=50)]), known)

    assert decision.send == {"name": "Novo", "price": 50, "promotional_price": 50}


def test_a_product_row_after_the_promotion_in_the_same_batch() -> None:
    request = coalesce([price(1, 100, 90), product(2, price=50, qty=3)])
    decision = fitted(request, item({"price": 120, "qty": 1}))

    assert decision.send == {"price": 50, "promotional_price": 50, "qty": 3}


# --------------------------------------------------------------------------- later prices


def test_a_price_above_the_capped_promotion_again_brings_the_erps_promotion_back() -> None:
    lookup = Lookup(promotional_price=90)
    known = item({"price": 50, "promotional_price": 50}, {"price": 2, "promotional_price": 1})

    decision = fitted(coalesce([price(3, 120)]), known, lookup)

    assert decision.send == {"price": 120, "promotional_price": 90}
    assert decision.notes == ["promotional_price 90 sent again: the newer price 120 is above it"]
    assert lookup.asked == ["promotional_price"]


def test_a_promotion_below_the_price_it_had_is_the_erps_own_and_is_not_read() -> None:
    lookup = Lookup(promotional_price=80)
    known = item({"price": 100, "promotional_price": 80}, {"price": 1, "promotional_price": 1})

    decision = fitted(coalesce([price(2, 120)]), known, lookup)

    assert decision.send == {"price": 120}
    assert decision.notes == []
    assert lookup.asked == []


def test_a_price_still_above_the_promotion_changes_nothing_else() -> None:
    known = item({"price": 100, "promotional_price": 80}, {"price": 1, "promotional_price": 1})
    decision = fitted(coalesce([price(2, 85)]), known)
    assert decision.send == {"price": 85}


def test_promotion_unknown_on_skyhub_is_read_and_sent_with_a_new_price() -> None:
    # a write of the promotion got no answer: SkyHub may hold it, so it goes with the price
    lookup = Lookup(promotional_price=90)
    known = item({"price": 100}, {"price": 1, "promotional_price": 1})

    decision = fitted(coalesce([price(2, 50)]), known, lookup)

    assert decision.send == {"price": 50, "promotional_price": 50}


def test_no_promotion_ever_means_none_is_sent() -> None:
    lookup = Lookup()
    decision = fitted(coalesce([price(2, 50)]), item({"price": 100}, {"price": 1}), lookup)
    assert decision.send == {"price": 50}
    assert lookup.asked == []


def test_an_unchanged_promotion_above_the_newer_price_is_sent_capped_not_withheld() -> None:
    known = item({"price": 100, "promotional_price": 90}, {"price": 1, "promotional_price": 1})
    request = coalesce([price(3, 100, 90), price(4, 50)])

    decision = fitted(request, known)

    assert decision.send == {"price": 50, "promotional_price": 50}
    assert "promotional_price" not in decision.withheld
    assert "promotional_price" not in decision.unchanged


def test_a_promotion_alone_above_the_price_skyhub_holds_is_capped() -> None:
    known = item({"price": 50, "promotional_price": 40}, {"price": 2, "promotional_price": 2})
    decision = fitted(coalesce([product(3, promotional_price=60)]), known)

    assert decision.send == {"promotional_price": 50}
    assert "promotional_price 60 is above the price 50" in decision.notes[0]


def test_a_promotion_sent_while_the_price_is_unknown_takes_the_erps_price_along() -> None:
    lookup = Lookup(price=50)
    known = item({}, {"price": 2})
    decision = fitted(coalesce([product(3, promotional_price=60)]), known, lookup)

    assert decision.send == {"price": 50, "promotional_price": 50}


def test_a_promotion_above_the_price_skyhub_held_is_fixed_with_the_next_request() -> None:
    # SkyHub ended at 50/90 before this was fixed: the next request of the SKU mends it
    known = item({"price": 50, "promotional_price": 90, "qty": 1}, {"promotional_price": 1})
    decision = fitted(coalesce([stock(5, 3)]), known)

    assert decision.send == {"qty": 3, "promotional_price": 50}
    assert decision.notes == [
        "promotional_price 90 that SkyHub held is above the price 50: sent as 50"
    ]


def test_a_new_product_is_created_with_its_promotion_capped() -> None:
    request = coalesce([product(1, name="N", price=100, promotional_price=90), price(2, 50)])
    decision = fitted(request, ItemView(SKU))
    assert decision.send == {"name": "N", "price": 50, "promotional_price": 50}


def test_the_price_drop_guard_holding_the_price_caps_the_promotion_at_the_price_skyhub_holds() -> (
    None
):
    known = item({"price": 100}, {"price": 1})
    request = coalesce([price(2, 200, 190), price(3, 30)])
    request, held = hold_price_drops(request, known, 50)
    assert set(held) == {3}

    decision = fitted(request, known)

    assert decision.send == {"promotional_price": 100}
    assert "promotional_price 190 is above the price 100" in decision.notes[0]


def test_capped() -> None:
    assert capped(90, 50) == 50
    assert capped(40, 50) == 40
    assert capped(50, 50) == 50
    assert capped(None, 50) is None
    assert capped(90, None) == 90


# --------------------------------------------------------------------------- the invariant

PRICES = st.sampled_from([10, 50, 90, 100, 120])
PROMOS = st.sampled_from([9, 45, 90, 95])


@st.composite
def erp_rows(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A price row (with or without a promotion), a product row carrying a price and/or a
    promotion, or a stock row; each valid on its own (its promotion at most its price)."""
    kind = draw(st.sampled_from(["price", "product", "stock"]))
    if kind == "stock":
        return kind, {"qty": draw(st.integers(0, 3))}
    value = draw(PRICES) if kind == "price" else draw(st.none() | PRICES)
    promo = draw(st.none() | PROMOS)
    if value is not None and promo is not None and promo > value:
        promo = None
    payload: dict[str, Any] = {"name": "N"} if kind == "product" else {}
    if value is not None:
        payload["price"] = value
    if promo is not None:
        payload["promotional_price"] = promo
    return kind, payload


class Simulation:
    """The relay's decisions over a SkyHub that applies what it is sent, with what skysync
    records (acknowledged values, the row each field came from) as record.py does."""

    def __init__(self) -> None:
        self.rows: dict[int, Row] = {0: product(0, name="N", price=200)}
        self.skyhub: dict[str, Any] = {"name": "N", "price": 200}
        self.acknowledged: dict[str, Any] = dict(self.skyhub)
        self.last_applied: dict[str, int] = {"name": 0, "price": 0}
        self.pending: list[Row] = []
        self.erp: dict[str, Any] = {"price": 200}

    def write(self, kind: str, payload: dict[str, Any]) -> None:
        row = Row(len(self.rows), kind, SKU, payload)
        self.rows[row.id] = row
        self.pending.append(row)
        self.erp.update({k: v for k, v in payload.items() if k in ("price", "promotional_price")})

    def lookup(self, name: str) -> Any:
        row_id = self.last_applied.get(name)
        return None if row_id is None else self.rows[row_id].payload.get(name)

    def batch(self, fate: str) -> None:
        """``fate``: ok; lost (SkyHub applied it, the answer was lost); failed (not applied,
        no answer). Without an answer the rows go back and fold with the next batch."""
        if not self.pending:
            return
        request = coalesce(self.pending)
        known = ItemView(
            SKU,
            in_skyhub=True,
            acknowledged=dict(self.acknowledged),
            last_applied=dict(self.last_applied),
        )
        decision = fit_promotion(request, known, decide(request, known), self.lookup)
        for name, source in decision.unchanged.items():
            self.last_applied[name] = max(source, self.last_applied.get(name, 0))
        send = decision.send
        if fate in ("ok", "lost"):
            self.skyhub.update(send)
        if fate != "ok" and send:
            for name in send:
                self.acknowledged.pop(name, None)
            return
        for name, value in send.items():
            self.acknowledged[name] = value
            source = request.sources.get(name)
            if source is not None:
                self.last_applied[name] = max(source, self.last_applied.get(name, 0))
        self.pending = []


steps = st.lists(
    st.one_of(
        erp_rows().map(lambda r: ("write", r)),
        st.sampled_from(["ok", "ok", "lost", "failed"]).map(lambda f: ("batch", f)),
    ),
    max_size=30,
)


@pytest.mark.slow
@settings(max_examples=300)
@given(steps)
def test_skyhub_never_holds_a_promotion_above_the_price_and_ends_on_the_erps_values(
    script: list[tuple[str, Any]],
) -> None:
    sim = Simulation()
    for step, arg in script:
        if step == "write":
            sim.write(*arg)
        else:
            sim.batch(arg)
        held = sim.skyhub
        assert capped(held.get("promotional_price"), held["price"]) == held.get(
            "promotional_price"
        ), (held, script)
    sim.batch("ok")

    assert sim.skyhub["price"] == sim.erp["price"]
    if "promotional_price" in sim.erp:
        wanted = capped(sim.erp["promotional_price"], sim.erp["price"])
        assert sim.skyhub.get("promotional_price") == wanted, (sim.skyhub, sim.erp)
    else:
        assert "promotional_price" not in sim.skyhub


# --------------------------------------------------------------------------- reconciliation


def believed(value: Any, row_id: int) -> Believed:
    return Believed(value, row_id, T0)


def listed(**fields: Any) -> Listed:
    return Listed(SKU, None, fields, linked=False)


def test_reconcile_expects_the_erps_promotion_capped_at_its_newer_price() -> None:
    expected = Expected(
        SKU, fields={"price": believed(50, 2), "promotional_price": believed(90, 1)}
    )
    assert compare(expected, listed(price=50, promotional_price=50)) == []

    (drift,) = compare(expected, listed(price=50, promotional_price=90))
    assert (drift.field, drift.erp, drift.skyhub, drift.row_id) == ("promotional_price", 50, 90, 2)
    assert "promotional_price 90 is above its newer price 50" in (drift.note or "")
    # the repair resends the price: the relay caps the promotion again from the ERP's own
    (fix,) = corrections([drift], [], {SKU: expected})
    assert fix.payload == {"price": 50}


def test_reconcile_leaves_a_capped_promotion_alone_while_its_price_is_on_its_way() -> None:
    expected = Expected(
        SKU,
        fields={"price": believed(50, 2), "promotional_price": believed(90, 1)},
        busy=frozenset({"price"}),
    )
    assert compare(expected, listed(price=100, promotional_price=90)) == []


def test_reconcile_reports_a_promotion_above_the_price_the_erp_never_wrote() -> None:
    expected = Expected(SKU, fields={"price": believed(50, 2)})

    (drift,) = compare(expected, listed(price=50, promotional_price=90))

    assert (drift.field, drift.erp, drift.skyhub) == ("promotional_price", 50, 90)
    (fix,) = corrections([drift], [], {SKU: expected})
    assert fix.payload == {"promotional_price": 50}


def test_reconcile_a_drifted_price_under_the_promotion_is_one_drift() -> None:
    expected = Expected(
        SKU, fields={"price": believed(100, 1), "promotional_price": believed(90, 1)}
    )
    (drift,) = compare(expected, listed(price=50, promotional_price=90))
    assert (drift.field, drift.erp) == ("price", 100)
