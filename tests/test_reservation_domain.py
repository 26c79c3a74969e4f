"""The reservation rule, pure (skysync/domain/reservation.py): which orders count against a
quantity the ERP wrote at a given time, and how an order's items become units per SKU."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from skysync.domain.reservation import OpenLine, Reserving, order_lines, reserve, reserved_qty

T = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def line(
    code: str, qty: int, *, consumed: datetime | None = None, status: str = "payment_received"
):  # type: ignore[no-untyped-def]
    return OpenLine(code=code, sku="S", qty=qty, status=status, consumed_at=consumed)


def test_an_order_counts_until_the_erp_consumed_it_no_later_than_the_quantitys_write() -> None:
    lines = [
        line("A-1", 2),  # not consumed
        line("A-2", 1, consumed=T),  # consumed in the stock row's own transaction (PG: equal)
        line("A-3", 4, consumed=T + SECOND),  # consumed after the stock row was written
        line("A-4", 8, consumed=T - SECOND),  # consumed before: the ERP's count knows it
        line("A-5", 16, status="order_canceled"),  # cancelled before consumption
    ]
    found = reserve("S", lines, T)
    assert (found.units, found.orders) == (6, (("A-1", 2), ("A-3", 4)))
    assert found.explain() == "6 reserved by orders A-1, A-3 (not yet consumed by the ERP)"
    # a quantity of unknown age: every open order counts, consumed or not
    assert reserve("S", lines, None).units == 2 + 1 + 4 + 8
    assert reserve("OTHER", lines, T).units == 0


def test_the_quantity_is_lowered_never_below_zero_and_the_buffer_comes_after() -> None:
    two = reserve("S", [line("A-1", 2)], T)
    assert (reserved_qty(5, two), reserved_qty(1, two), reserved_qty(5.0, two)) == (3, 0, 3)
    assert reserved_qty("x", two) == "x"  # validation refuses it elsewhere
    assert Reserving(stock_buffer=1).offered(5, two) == 2
    assert Reserving(stock_buffer=9).offered(5, two) == 0
    assert Reserving().offered(5, None) == 5


def test_an_orders_items_become_units_per_sku() -> None:
    items = [
        {"id": "S-1", "qty": 1},
        {"id": "S-1", "qty": 2},  # two lines of one SKU
        {"id": "S-1-P", "product_id": "S-1", "qty": 1},  # a variation: its own SKU
        {"id": 123, "qty": 2.0},  # numbers SkyHub may send as such
        {"sku": "S-2"},  # no id: the sku field; no qty: one unit
        {"id": "", "qty": 1},
        {"id": "S-3", "qty": -1},
        {"id": "S-4", "qty": 1.5},
        {"id": "S-5", "qty": True},
        "not an item",
    ]
    assert order_lines(items) == {"S-1": 3, "S-1-P": 1, "123": 2, "S-2": 1}
    assert order_lines(None) == {} and order_lines("S-1") == {}
