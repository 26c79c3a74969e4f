"""Guardrails against costly mistakes, decided before a SKU's request goes out (pure: no I/O).

- The stock buffer keeps units back: SkyHub gets ``max(qty - buffer, 0)``, for products and for
  the variations a request carries.
- The price drop guard holds back a price or promotional price more than N percent below the
  last price SkyHub acknowledged for the SKU: the row that carries it waits as ``held`` with a
  reason naming both prices, the request's other fields still go. An operator's release
  (``skysync outbox release``) lets that row through once; a newer row with that field
  replaces it (see :func:`replaced_held`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from skysync.domain.planner import ItemView, Row, SkuRequest, newness_in
from skysync.domain.validation import is_number

GUARDED_PRICES = ("price", "promotional_price")


def _buffered(value: Any, buffer: int) -> Any:
    return max(int(value) - buffer, 0) if is_number(value) else value


def buffer_stock(request: SkuRequest, buffer: int) -> SkuRequest:
    """The request with every quantity (its own and its variations') lowered by ``buffer``,
    never below 0. What SkyHub acknowledges is then the buffered value, so an unchanged ERP
    quantity stays unchanged."""
    if buffer <= 0:
        return request
    fields = dict(request.fields)
    if "qty" in fields:
        fields["qty"] = _buffered(fields["qty"], buffer)
    variations = {
        sku: ({**v, "qty": _buffered(v["qty"], buffer)} if "qty" in v else v)
        for sku, v in request.variations.items()
    }
    return replace(request, fields=fields, variations=variations)


def _number(value: Any) -> float | None:
    return float(value) if is_number(value) else None


def hold_price_drops(
    request: SkuRequest, item: ItemView, percent: float | None
) -> tuple[SkuRequest, dict[int, str]]:
    """The request without the prices the guard holds back, and each holding row's reason.

    The reference is the last price SkyHub acknowledged for this SKU; with none (a new SKU) or
    the guard off, nothing is held. A row an operator released is let through."""
    reference = _number(item.acknowledged.get("price")) if item.in_skyhub else None
    if percent is None or reference is None or reference <= 0:
        return request, {}
    floor = reference * (1 - percent / 100)
    found: dict[int, list[str]] = {}
    held_names: set[str] = set()
    for name in GUARDED_PRICES:
        value = _number(request.fields.get(name))
        source = request.sources.get(name)
        if value is None or source is None or source in request.released or value >= floor:
            continue
        drop = (1 - value / reference) * 100
        held_names.add(name)
        found.setdefault(source, []).append(
            f"{name} {value:g} is {drop:.0f}% below {reference:g}, the last price SkyHub "
            f"acknowledged (guard: {percent:g}%)"
        )
    if not found:
        return request, {}
    fields = {k: v for k, v in request.fields.items() if k not in held_names}
    sources = {k: v for k, v in request.sources.items() if k not in held_names}
    reasons = {
        row_id: (
            f"held by the price drop guard: {'; '.join(lines)}; "
            f"release it with `skysync outbox release {row_id}`, or write a newer row"
        )
        for row_id, lines in found.items()
    }
    return replace(request, fields=fields, sources=sources), reasons


def replaced_held(
    held: Sequence[Row], sources: Mapping[str, int], epochs: Mapping[int, int] | None = None
) -> dict[int, int]:
    """Held rows that a newer row replaces: each price field the held row carries has a newer
    value (``sources``: field -> the row that carries the request's value, held or not;
    ``epochs``: their claim epochs, for :func:`newness`). Returns held row id -> the newest
    replacing row."""
    order = partial(newness_in, epochs or {})
    replaced: dict[int, int] = {}
    for row in held:
        payload = row.payload if isinstance(row.payload, Mapping) else {}
        names = [n for n in GUARDED_PRICES if payload.get(n) not in (None, "")]
        newer = [sources[n] for n in names if n in sources and order(sources[n]) > row.order]
        if names and len(newer) == len(names):
            replaced[row.id] = max(newer, key=order)
    return replaced
