"""The stock reservation on the relay's path (``SKYSYNC_RESERVE_OPEN_ORDERS``; the rule is pure,
in :mod:`skysync.domain.reservation`; docs/orders.md).

Before a SKU's request goes out, each quantity it carries (its own, its variations') becomes the
ERP's quantity less the units of the orders that quantity cannot know of. A quantity that a row
skysync wrote carries (a reconciliation's correction, an order's reservation row) repeats an
ERP value: it is replaced by the ERP's newest quantity a claim took (a newer ERP row folded into
the same request included), and the reservation counts from the time the ERP wrote that one,
never from the time skysync repeated it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from skysync.domain.planner import ItemView, SkuRequest
from skysync.domain.reservation import reserve, reserved_qty
from skysync.relay import unit_of_work as unit
from skysync.relay.deps import RelayDeps
from skysync.store import orders as order_store
from skysync.store import outbox_reads


def reserve_request(
    deps: RelayDeps, request: SkuRequest, item: ItemView
) -> tuple[SkuRequest, list[str]]:
    """``request`` with its quantities reserved, and a note per SKU the reservation lowered
    (``qty: ERP 5 − 2 reserved by order A-1 (not yet consumed by the ERP)``). Unchanged when
    the reservation is off or the request carries no quantity."""
    if not deps.reserve_open_orders:
        return request, []
    # sku -> (the quantity, its row, the parent whose product row may carry it)
    targets: dict[str, tuple[Any, int, str | None]] = {}
    if "qty" in request.fields:
        targets[request.sku] = (request.fields["qty"], request.sources["qty"], item.parent_sku)
    for vsku, variation in request.variations.items():
        source = request.variation_sources.get(vsku, {}).get("qty")
        if "qty" in variation and source is not None:
            targets[vsku] = (variation["qty"], source, request.sku)
    if not targets:
        return request, []
    quantities: dict[str, Any] = {}
    notes: list[str] = []
    with unit.session(deps) as session:
        # sku -> (the ERP's quantity, when the ERP wrote it)
        erp_values: dict[str, tuple[Any, datetime | None]] = {}
        for sku, (value, source, parent) in targets.items():
            written = request.written_at.get(source)
            if source in request.made_by_skysync:
                erp = outbox_reads.latest_erp_qty(session, sku, parent)
                if erp is not None:
                    value, written = erp.qty, erp.written_at
            erp_values[sku] = (value, written)
        lines = order_store.open_lines(session, targets, since=_earliest(erp_values.values()))
        for sku, (value, written) in erp_values.items():
            reservation = reserve(sku, lines, written)
            quantities[sku] = reserved_qty(value, reservation)
            if reservation.units:
                prefix = "" if sku == request.sku else f"{sku}: "
                notes.append(f"{prefix}qty: ERP {value} − {reservation.explain()}")
    fields = dict(request.fields)
    if request.sku in quantities:
        fields["qty"] = quantities[request.sku]
    variations = {
        vsku: ({**v, "qty": quantities[vsku]} if vsku in quantities else v)
        for vsku, v in request.variations.items()
    }
    return replace(request, fields=fields, variations=variations), notes


def _earliest(values: Iterable[tuple[Any, datetime | None]]) -> datetime | None:
    """The earliest write time among the quantities (None when one is of unknown age: then
    every open order may count)."""
    times = [written for _value, written in values]
    if not times or any(t is None for t in times):
        return None
    return min(t for t in times if t is not None)
