"""Reconciliation's pure decisions (skysync/domain/reconcile.py): no database, no network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from skysync.domain.reconcile import (
    AcceptedRow,
    Believed,
    Expected,
    ItemFacts,
    Missing,
    ReconcileProgress,
    build_expected,
    compare,
    corrections,
    listed_skus,
    same,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def facts(sku: str = "A", **kw: object) -> ItemFacts:
    values: dict[str, object] = {
        "sku": sku,
        "parent_sku": None,
        "acknowledged": {},
        "last_applied": {},
        "attempt": {},
        "frozen": False,
        "frozen_since": None,
        "unfrozen": False,
    }
    values.update(kw)
    return ItemFacts(**values)  # type: ignore[arg-type]


def test_same_treats_numbers_as_skyhub_does() -> None:
    assert same(10, 10.0)
    assert same([{"code": "A", "price": 1}], [{"code": "A", "price": 1.0}])
    assert not same(True, 1)
    assert not same(10.0, "10.0")
    assert not same(["a", "b"], ["b", "a"])


def test_listed_skus_carry_variations_with_the_parents_link() -> None:
    product = {
        "sku": "P",
        "qty": 1,
        "associations": [{"platform": "B2W", "status": "linked"}],
        "variations": [{"sku": "P-1", "qty": 2}, {"qty": 3}],
    }
    found = listed_skus(product)
    assert [(e.sku, e.parent_sku, e.linked) for e in found] == [
        ("P", None, True),
        ("P-1", "P", True),
    ]


def test_expected_values_come_from_the_rows_last_applied_names() -> None:
    rows = {
        5: AcceptedRow(5, "P", {"name": "Caneca", "variations": [{"sku": "P-1", "qty": 4}]}, T0),
        9: AcceptedRow(9, "P-1", {"qty": 7}, T0 + timedelta(hours=1)),
    }
    parent = build_expected(
        facts("P", last_applied={"name": 5}), rows, [], [], read_at=T0 + timedelta(days=1)
    )
    child = build_expected(
        facts("P-1", parent_sku="P", last_applied={"qty": 9}),
        rows,
        [],
        [],
        read_at=T0 + timedelta(days=1),
    )
    assert parent.fields == {"name": Believed("Caneca", 5, T0)}
    assert child.fields == {"qty": Believed(7, 9, T0 + timedelta(hours=1))}


def test_busy_fields_are_not_compared() -> None:
    rows = {1: AcceptedRow(1, "A", {"price": 10.0, "qty": 1, "name": "x"}, T0)}
    applied = {"price": 1, "qty": 1, "name": 1}
    later = T0 + timedelta(minutes=5)
    open_price = build_expected(facts(last_applied=applied), rows, [], ["price"], read_at=later)
    assert open_price.busy == {"price", "promotional_price"}
    open_product = build_expected(facts(last_applied=applied), rows, [], ["product"], read_at=later)
    assert {"price", "qty", "name"} <= open_product.busy
    attempt = build_expected(
        facts(last_applied=applied, attempt={"qty": 3}), rows, [], [], read_at=later
    )
    assert attempt.busy == {"qty"}
    read_before = build_expected(facts(last_applied=applied), rows, [], [], read_at=T0)
    assert read_before.busy == {"price", "qty", "name"}  # recorded while the page was read


def test_frozen_products_take_their_withheld_attributes_from_later_rows() -> None:
    rows = {1: AcceptedRow(1, "A", {"name": "old", "price": 5.0}, T0)}
    later_rows = [
        AcceptedRow(4, "A", {"name": "new", "price": 6.0}, T0 + timedelta(hours=2)),
        AcceptedRow(3, "A", {"name": "before the freeze"}, T0 - timedelta(hours=1)),
    ]
    expected = build_expected(
        facts(
            last_applied={"name": 1, "price": 1}, frozen=True, frozen_since=T0 + timedelta(hours=1)
        ),
        rows,
        later_rows,
        [],
        read_at=T0 + timedelta(days=1),
    )
    assert expected.fields["name"] == Believed("new", 4, T0 + timedelta(hours=2))
    assert expected.fields["price"].value == 5.0  # price flows: last_applied says


def test_compare_marks_attributes_of_a_linked_product_frozen() -> None:
    expected = Expected(
        "A",
        fields={"name": Believed("new", 1, T0), "qty": Believed(2, 1, T0)},
    )
    linked = listed_skus(
        {"sku": "A", "name": "old", "qty": 3, "associations": [{"status": "linked"}]}
    )[0]
    found = {d.field: d.frozen for d in compare(expected, linked)}
    assert found == {"name": True, "qty": False}
    unfrozen = Expected("A", fields=expected.fields, unfrozen=True)
    assert {d.field: d.frozen for d in compare(unfrozen, linked)} == {"name": False, "qty": False}


def test_corrections_one_product_row_per_family_frozen_never() -> None:
    expected = {
        "P": Expected("P", fields={"price": Believed(9.0, 1, T0), "name": Believed("n", 1, T0)}),
        "P-1": Expected("P-1", parent_sku="P", fields={"qty": Believed(4, 2, T0)}),
        "P-2": Expected("P-2", parent_sku="P", fields={"qty": Believed(1, 2, T0)}),
    }
    linked = listed_skus(
        {"sku": "P", "price": 1.0, "name": "other", "associations": [{"status": "linked"}]}
    )[0]
    drift = compare(expected["P"], linked)
    child = listed_skus({"sku": "P", "variations": [{"sku": "P-1", "qty": 0}]})[1]
    drift += compare(expected["P-1"], child)
    fixes = corrections(drift, [Missing("P-2", "P")], expected)
    assert len(fixes) == 1
    fix = fixes[0]
    assert (fix.kind, fix.ref) == ("product", "P")
    assert fix.payload == {
        "price": 9.0,
        "variations": [{"sku": "P-1", "qty": 4}, {"sku": "P-2", "qty": 1}],
    }
    assert dict(fix.fields) == {"P": ("price",), "P-1": ("qty",), "P-2": ("qty",)}


def test_progress_line_and_eta() -> None:
    line = ReconcileProgress(pages=2, pages_total=10, skus=200, drift=3, elapsed=4.0).line()
    assert line == "reconcile: 2/10 pages read, 200 SKUs compared, 3 drift so far, ETA 16 s"
    assert ReconcileProgress(1, None, 5, 0, 1.0).line().endswith("ETA unknown")
