"""The relay's pure decisions (skysync/domain/planner.py): no database, no network, no clock.

coalesce folds one SKU's rows, decide diffs them against what SkyHub acknowledged and what the
marketplace froze, backoff_delay spaces retries, families orders parents before variations.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skysync.domain.planner import (
    FLOWING_FIELDS,
    Decision,
    ItemView,
    KeyKind,
    Row,
    backoff_delay,
    carried_variations,
    coalesce,
    decide,
    families,
    frozen_reason,
    key_of,
    ordering_parents,
)

SKU = "SKU-1"
LINKED_AT = datetime(2026, 11, 2, 10, 30, tzinfo=UTC)


def product(row_id: int, **payload: object) -> Row:
    return Row(row_id, "product", SKU, payload)


def price(row_id: int, value: float, promo: float | None = None) -> Row:
    payload: dict[str, object] = {"price": value}
    if promo is not None:
        payload["promotional_price"] = promo
    return Row(row_id, "price", SKU, payload)


def stock(row_id: int, qty: int) -> Row:
    return Row(row_id, "stock", SKU, {"qty": qty})


# --------------------------------------------------------------------------- coalesce


def test_coalesce_later_rows_win_field_by_field() -> None:
    request = coalesce(
        [
            product(1, name="Old name", price=10.0, qty=5, brand="Acme"),
            price(2, 12.5),
            stock(3, 7),
            product(4, name="New name"),
        ]
    )
    assert request.fields == {"name": "New name", "price": 12.5, "qty": 7, "brand": "Acme"}
    assert request.sources == {"name": 4, "price": 2, "qty": 3, "brand": 1}
    assert request.row_ids == [1, 2, 3, 4]
    assert request.has_product_row


def test_coalesce_orders_rows_by_id_not_by_arrival() -> None:
    request = coalesce([price(9, 30.0), price(3, 10.0), price(6, 20.0)])
    assert request.fields == {"price": 30.0}
    assert request.sources == {"price": 9}
    assert request.row_ids == [3, 6, 9]


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_coalesce_blank_values_never_erase(blank: object) -> None:
    request = coalesce(
        [
            product(1, name="Camiseta", description="Algodão", ean="7891234567895"),
            product(2, name=blank, description=blank, brand="Acme"),
        ]
    )
    assert request.fields == {
        "name": "Camiseta",
        "description": "Algodão",
        "ean": "7891234567895",
        "brand": "Acme",
    }
    # The field still points at the row that set it, not at the blank one.
    assert request.sources == {"name": 1, "description": 1, "ean": 1, "brand": 2}


def test_coalesce_blank_only_field_is_absent() -> None:
    request = coalesce([product(1, name="A", description=None), product(2, description="")])
    assert "description" not in request.fields
    assert "description" not in request.sources


def test_coalesce_zero_is_a_value() -> None:
    request = coalesce([stock(1, 5), stock(2, 0)])
    assert request.fields == {"qty": 0}
    assert request.sources == {"qty": 2}


def test_coalesce_price_and_stock_become_one_request() -> None:
    request = coalesce([price(1, 10.0, promo=9.0), stock(2, 4), price(3, 11.0)])
    assert request.fields == {"price": 11.0, "promotional_price": 9.0, "qty": 4}
    assert request.sources == {"price": 3, "promotional_price": 1, "qty": 2}
    assert not request.has_product_row
    assert request.winner_id == 3


def test_coalesce_winner_is_the_newest_row() -> None:
    request = coalesce([stock(12, 1), price(40, 2.0), product(7, name="x")])
    assert request.winner_id == 40
    assert request.sku == SKU


def test_coalesce_merges_variations_by_sku() -> None:
    request = coalesce(
        [
            product(1, variations=[
                {"sku": "V-P", "qty": 3, "ean": "111"},
                {"sku": "V-M", "qty": 1},
            ]),
            product(2, variations=[
                {"sku": "V-P", "qty": 8, "ean": None},
                {"sku": "V-G", "qty": 2},
            ]),
        ]
    )  # fmt: skip
    assert request.variations == {
        "V-P": {"sku": "V-P", "qty": 8, "ean": "111"},
        "V-M": {"sku": "V-M", "qty": 1},
        "V-G": {"sku": "V-G", "qty": 2},
    }
    # per field: V-P's qty came from row 2, its ean from row 1 (row 2's null erases nothing)
    assert request.variation_sources == {
        "V-P": {"qty": 2, "ean": 1},
        "V-M": {"qty": 1},
        "V-G": {"qty": 2},
    }
    assert "variations" not in request.fields


def test_coalesce_blank_variations_change_nothing() -> None:
    request = coalesce(
        [product(1, variations=[{"sku": "V1", "qty": 1}]), product(2, variations=None)]
    )
    assert request.variations == {"V1": {"sku": "V1", "qty": 1}}


def test_coalesce_needs_rows() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        coalesce([])


@given(
    st.lists(
        st.one_of(
            st.builds(lambda p: ("price", {"price": p}), st.floats(0.01, 1e6)),
            st.builds(
                lambda p, q: ("price", {"price": p, "promotional_price": q}),
                st.floats(0.01, 1e6),
                st.one_of(st.none(), st.just(""), st.floats(0.01, 1e6)),
            ),
            st.builds(lambda q: ("stock", {"qty": q}), st.integers(0, 10_000)),
        ),
        min_size=1,
        max_size=30,
    ),
    st.randoms(use_true_random=False),
)
def test_coalesce_property_last_non_blank_value_per_field(
    steps: list[tuple[str, dict[str, object]]], rnd: random.Random
) -> None:
    rows = [Row(i + 1, kind, SKU, payload) for i, (kind, payload) in enumerate(steps)]
    expected: dict[str, object] = {}
    expected_sources: dict[str, int] = {}
    for row in rows:
        for name, value in row.payload.items():
            if value is not None and value != "":
                expected[name] = value
                expected_sources[name] = row.id
    shuffled = list(rows)
    rnd.shuffle(shuffled)  # coalesce orders by id itself
    request = coalesce(shuffled)
    assert request.fields == expected
    assert request.sources == expected_sources
    assert request.winner_id == len(rows)
    assert request.row_ids == [r.id for r in rows]


# --------------------------------------------------------------------------- decide


def test_decide_new_item_sends_everything() -> None:
    request = coalesce([product(1, name="A", price=10.0, qty=2)])
    decision = decide(request, ItemView(sku=SKU))
    assert decision.send == {"name": "A", "price": 10.0, "qty": 2}
    assert decision.withheld == {}
    assert not decision.nothing_to_send


def test_decide_drops_unchanged_fields_when_in_skyhub() -> None:
    request = coalesce([price(5, 10.0), stock(6, 3)])
    item = ItemView(sku=SKU, in_skyhub=True, acknowledged={"price": 10.0, "qty": 2})
    decision = decide(request, item)
    assert decision.send == {"qty": 3}
    assert decision.withheld == {"price": "unchanged: SkyHub already has this value"}
    assert "price" in decision.reason()
    assert "unchanged" in decision.reason()


def test_decide_resends_acknowledged_values_when_not_in_skyhub() -> None:
    """SkyHub lost the product (or never had it): what we once acknowledged means nothing."""
    request = coalesce([price(5, 10.0)])
    item = ItemView(sku=SKU, in_skyhub=False, acknowledged={"price": 10.0})
    assert decide(request, item).send == {"price": 10.0}


def test_decide_all_unchanged_is_nothing_to_send() -> None:
    request = coalesce([price(5, 10.0), stock(6, 2)])
    item = ItemView(sku=SKU, in_skyhub=True, acknowledged={"price": 10.0, "qty": 2})
    decision = decide(request, item)
    assert decision.nothing_to_send
    assert decision.reason() == "price, qty: unchanged: SkyHub already has this value"


def test_decide_withholds_a_field_a_newer_row_already_applied() -> None:
    request = coalesce([price(5, 10.0), stock(6, 3)])
    item = ItemView(
        sku=SKU, in_skyhub=True, acknowledged={"price": 11.0}, last_applied={"price": 8}
    )
    decision = decide(request, item)
    assert decision.send == {"qty": 3}
    assert decision.withheld == {"price": "row 8 already applied a newer value"}
    assert "price" in decision.reason()
    assert "row 8" in decision.reason()


def test_decide_same_row_applied_again_is_not_stale() -> None:
    """A row that was applied (answer lost) and is retried resends its own value."""
    request = coalesce([price(5, 10.0)])
    item = ItemView(sku=SKU, in_skyhub=True, acknowledged={"price": 9.0}, last_applied={"price": 5})
    assert decide(request, item).send == {"price": 10.0}


def test_decide_frozen_sends_price_and_stock_withholds_attributes() -> None:
    request = coalesce(
        [
            product(1, name="Novo nome", description="Nova", images=["https://x/1.jpg"]),
            price(2, 15.0, promo=12.0),
            stock(3, 0),
        ]
    )
    item = ItemView(sku=SKU, in_skyhub=True, frozen=True, frozen_since=LINKED_AT)
    decision = decide(request, item)
    assert decision.send == {"price": 15.0, "promotional_price": 12.0, "qty": 0}
    assert set(decision.withheld) == {"name", "description", "images"}
    for why in decision.withheld.values():
        assert "frozen" in why
        assert "2026-11-02T10:30:00" in why
    reason = decision.reason()
    for name in ("name", "description", "images"):
        assert name in reason
    assert "frozen" in reason


def test_decide_frozen_keyword_overrides_item() -> None:
    request = coalesce([product(1, name="x", qty=1)])
    item = ItemView(sku=SKU, in_skyhub=True)
    decision = decide(request, item, frozen=True)
    assert decision.send == {"qty": 1}
    assert decision.withheld["name"].startswith("frozen")
    unfrozen = decide(request, ItemView(sku=SKU, in_skyhub=True, frozen=True), frozen=False)
    assert unfrozen.send == {"name": "x", "qty": 1}


def test_decide_frozen_withholds_variation_attributes_but_lets_their_price_and_stock_flow() -> None:
    variations = [
        {"sku": "V1", "qty": 4, "price": 55.0, "images": ["https://x/1.jpg"], "ean": "789"},
        {"sku": "V2", "specifications": [{"key": "cor", "value": "azul"}]},
    ]
    request = coalesce([product(1, variations=variations, price=20.0)])
    item = ItemView(sku=SKU, in_skyhub=True, frozen=True, frozen_since=LINKED_AT)
    decision = decide(request, item)
    assert decision.send == {"price": 20.0, "variations": [{"sku": "V1", "qty": 4, "price": 55.0}]}
    for name in ("variations[V1].images", "variations[V1].ean", "variations[V2].specifications"):
        assert decision.withheld[name].startswith("frozen"), decision.withheld
        assert name in decision.reason()
    assert "variations[V1].qty" not in decision.reason()


def test_decide_frozen_product_whose_variations_carry_only_attributes_sends_none() -> None:
    request = coalesce([product(1, variations=[{"sku": "V1", "ean": "789"}])])
    item = ItemView(sku=SKU, in_skyhub=True, frozen=True, frozen_since=LINKED_AT)
    decision = decide(request, item)
    assert decision.nothing_to_send
    assert "variations[V1].ean: frozen" in decision.reason()


def test_product_payload_sku_equal_to_ref_is_not_a_field_to_send() -> None:
    request = coalesce([product(1, sku=SKU, name="x")])
    assert request.fields == {"name": "x"}


def test_decide_sends_variations_when_not_frozen() -> None:
    request = coalesce([product(1, variations=[{"sku": "V1", "qty": 4}, {"sku": "V2", "qty": 0}])])
    decision = decide(request, ItemView(sku=SKU))
    assert decision.send == {"variations": [{"sku": "V1", "qty": 4}, {"sku": "V2", "qty": 0}]}


def test_decide_frozen_reason_without_a_date() -> None:
    item = ItemView(sku=SKU, frozen=True)
    assert "frozen" in frozen_reason(item)
    assert "unknown" in frozen_reason(item)


def test_decide_stale_wins_over_frozen_and_unchanged() -> None:
    request = coalesce([product(1, name="A"), price(2, 10.0)])
    item = ItemView(
        sku=SKU,
        in_skyhub=True,
        frozen=True,
        acknowledged={"price": 10.0},
        last_applied={"name": 3, "price": 4},
    )
    decision = decide(request, item)
    assert decision.nothing_to_send
    assert decision.withheld == {
        "name": "row 3 already applied a newer value",
        "price": "row 4 already applied a newer value",
    }


def test_decision_reason_names_every_field_grouped() -> None:
    decision = Decision(
        send={},
        withheld={
            "name": "frozen: x",
            "qty": "unchanged: y",
            "brand": "frozen: x",
            "price": "row 9 already applied a newer value",
        },
    )
    reason = decision.reason()
    assert "brand, name: frozen: x" in reason
    assert "qty: unchanged: y" in reason
    assert "price: row 9 already applied a newer value" in reason
    assert reason.count(";") == 2


def test_flowing_fields_are_price_promo_and_qty() -> None:
    assert frozenset({"price", "promotional_price", "qty"}) == FLOWING_FIELDS


# --------------------------------------------------------------------------- backoff


def test_backoff_grows_exponentially_then_caps() -> None:
    ceilings = [backoff_delay(n, base=30.0, cap=3600.0, rng=_Max()) for n in range(1, 10)]
    assert ceilings == [30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]


def test_backoff_jitter_spans_half_to_full_ceiling() -> None:
    assert backoff_delay(3, base=10.0, rng=_Min()) == pytest.approx(20.0)
    assert backoff_delay(3, base=10.0, rng=_Max()) == pytest.approx(40.0)
    rng = random.Random(1)
    delays = [backoff_delay(4, base=10.0, cap=1e9, rng=rng) for _ in range(500)]
    assert all(40.0 <= d <= 80.0 for d in delays)
    assert max(delays) - min(delays) > 30.0  # the jitter really spreads


def test_backoff_zero_or_negative_attempts_use_the_base() -> None:
    assert backoff_delay(0, base=30.0, rng=_Max()) == 30.0
    assert backoff_delay(-3, base=30.0, rng=_Max()) == 30.0


def test_backoff_is_deterministic_with_a_seeded_random() -> None:
    first = [backoff_delay(n, rng=random.Random(42)) for n in range(1, 12)]
    second = [backoff_delay(n, rng=random.Random(42)) for n in range(1, 12)]
    assert first == second
    a, b = random.Random(7), random.Random(7)
    assert [backoff_delay(3, rng=a) for _ in range(5)] == [
        backoff_delay(3, rng=b) for _ in range(5)
    ]


@given(
    attempts=st.integers(-5, 100),
    base=st.floats(0.01, 600.0),
    cap=st.floats(0.01, 86_400.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_backoff_property_within_half_and_full_ceiling(
    attempts: int, base: float, cap: float, seed: int
) -> None:
    delay = backoff_delay(attempts, base=base, cap=cap, rng=random.Random(seed))
    ceiling = min(cap, base * 2 ** max(0, attempts - 1))
    assert delay <= cap
    assert ceiling * 0.5 <= delay <= ceiling


def test_backoff_is_capped_for_any_attempt_count() -> None:
    assert backoff_delay(2000, base=30.0, cap=3600.0, rng=_Max()) == 3600.0


class _Max(random.Random):
    def random(self) -> float:
        return 1.0


class _Min(random.Random):
    def random(self) -> float:
        return 0.0


# --------------------------------------------------------------------------- families


def test_families_parent_before_its_variations() -> None:
    parent_of = {"V1": "P", "V2": "P", "P": None}
    assert families(["V1", "P", "V2"], parent_of) == [["P", "V1", "V2"]]


def test_families_unrelated_keys_are_alone() -> None:
    assert families(["A", "B", "C"], {}) == [["A"], ["B"], ["C"]]
    assert families(["A", "B"], {"A": None, "B": None}) == [["A"], ["B"]]


def test_families_variation_without_its_parent_is_alone() -> None:
    parent_of = {"V1": "P", "V2": "Q", "Q": None}
    assert families(["V1", "V2", "Q"], parent_of) == [["V1"], ["Q", "V2"]]


def test_families_mixed_and_deduplicated() -> None:
    parent_of = {"V1": "P", "V2": "P", "W1": "R"}
    result = families(["V2", "X", "V1", "P", "W1", "X"], parent_of)
    assert result == [["P", "V2", "V1"], ["X"], ["W1"]]
    flat = [ref for family in result for ref in family]
    assert sorted(flat) == sorted({"V2", "X", "V1", "P", "W1"})


@given(
    st.dictionaries(
        st.sampled_from([f"S{i}" for i in range(12)]),
        st.one_of(st.none(), st.sampled_from([f"S{i}" for i in range(12)])),
        max_size=12,
    ).map(lambda d: {k: v for k, v in d.items() if v != k and (v is None or d.get(v) is None)}),
    st.lists(st.sampled_from([f"S{i}" for i in range(12)]), max_size=20),
)
def test_families_property_every_key_once_parent_first(
    parent_of: dict[str, str | None], refs: list[str]
) -> None:
    result = families(refs, parent_of)
    flat = [ref for family in result for ref in family]
    assert sorted(flat) == sorted(set(refs))
    present = set(refs)
    for family in result:
        head = family[0]
        for member in family[1:]:
            assert parent_of.get(member) == head
        assert parent_of.get(head) not in present


def test_a_parent_and_its_variation_both_on_skyhub_need_no_order_for_stock_and_price() -> None:
    """Issue 19, part 4: updates to a parent and a variation that SkyHub both has are
    independent (different buckets, no order between them); only creation needs the parent
    first. A fashion catalogue: stock on both, or prices on the parent and stock on the
    variation."""
    parent_of = {"P": None, "V": "P"}
    both = {"P", "V"}
    for kinds in (
        {"P": {"stock"}, "V": {"stock"}},
        {"P": {"price"}, "V": {"stock"}},
        {"P": {"price", "stock"}, "V": {"stock"}},
        {"P": {"stock"}, "V": {"price", "stock"}},
    ):
        follows = ordering_parents(parent_of, kinds, both)
        assert follows == {"P": None, "V": None}, kinds
        assert families(["P", "V"], follows) == [["P"], ["V"]]


def test_a_parent_goes_before_its_variation_where_order_matters() -> None:
    """The parent first when either is not on SkyHub yet (creation), when either carries a
    product row (it may create the parent or carry the variation, and learns whether the
    parent is frozen), and when both carry a price (a variation inherits the price it does
    not set)."""
    parent_of = {"P": None, "V": "P"}
    stock = {"P": {"stock"}, "V": {"stock"}}
    cases = [
        (stock, {"V"}),  # the parent not on SkyHub: created first
        (stock, {"P"}),  # the variation not on SkyHub
        (stock, set()),
        ({"P": {"product", "stock"}, "V": {"stock"}}, {"P", "V"}),
        ({"P": {"stock"}, "V": {"product"}}, {"P", "V"}),
        ({"P": {"price"}, "V": {"price", "stock"}}, {"P", "V"}),
    ]
    for kinds, in_skyhub in cases:
        follows = ordering_parents(parent_of, kinds, in_skyhub)
        assert follows == parent_of, (kinds, in_skyhub)
        assert families(["V", "P"], follows) == [["P", "V"]]


def test_key_of_separates_skus_and_orders() -> None:
    assert key_of(Row(1, "price", "A-1", {})) == ("sku", "A-1")
    assert key_of(Row(2, "product", "A-1", {})) == ("sku", "A-1")
    assert key_of(Row(3, "order_invoice", "A-1", {})) == ("order", "A-1")
    key = key_of(Row(4, "order_cancel", "O-9", {}))
    assert (key.kind, key.ref) == (KeyKind.ORDER, "O-9")
    assert {key: 1}[("order", "O-9")] == 1  # a tuple still: hashes and compares as one


def test_variation_rows_fold_into_their_parents_request_field_by_field() -> None:
    snapshot = product(1, variations=[{"sku": "V1", "qty": 7, "price": 55.0}])
    stock = Row(2, "stock", "V1", {"qty": 9})
    older_price = Row(0, "price", "V1", {"price": 40.0})
    request = coalesce([stock, snapshot, older_price], sku=SKU)
    assert request.variations == {"V1": {"sku": "V1", "qty": 9, "price": 55.0}}
    assert request.variation_sources == {"V1": {"qty": 2, "price": 1}}
    assert request.row_ids == [0, 1, 2]
    assert request.has_product_row


def test_carried_variations_only_when_the_parents_rows_list_them() -> None:
    rows_by_ref = {
        SKU: [product(1, variations=[{"sku": "V1", "qty": 1}])],
        "V1": [Row(2, "stock", "V1", {"qty": 2})],
        "V2": [Row(3, "stock", "V2", {"qty": 3})],
        "LONE": [Row(4, "stock", "LONE", {"qty": 3})],
    }
    parents = {"V1": SKU, "V2": SKU, "LONE": "ELSEWHERE"}
    assert carried_variations(rows_by_ref, parents) == {"V1": SKU}
