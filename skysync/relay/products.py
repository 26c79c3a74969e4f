"""A product's request: created when SkyHub lacks it, updated otherwise; when SkyHub refuses the
attributes (422), the rows that carried them are rejected and price/stock go again alone."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from skysync.domain.planner import (
    FLOWING_FIELDS,
    Decision,
    ItemView,
    SkuRequest,
    decide,
    variation_request,
)
from skysync.domain.promotions import fit_promotion
from skysync.relay import unit_of_work as unit
from skysync.relay.deps import RelayDeps
from skysync.relay.outcome import (
    Ack,
    Learned,
    Outcome,
    sent_outcome,
    withheld_outcome,
)
from skysync.relay.variations import push_unknown_as_variation, push_variation_entry
from skysync.skyhub.errors import NotFound, Unprocessable


def push_product(deps: RelayDeps, request: SkuRequest, item: ItemView, learned: Learned) -> Outcome:
    """Send what changed for a product (and the variations its product row carries): create it
    if SkyHub lacks it, else update it; a price/stock row for a SKU SkyHub has no product for
    may be a variation made outside skysync."""
    sku = request.sku
    item = _learn_remote_state(deps, request, item, learned)
    decision = fit_promotion(request, item, decide(request, item), unit.erp_value(deps, item))
    learned.note_unchanged(sku, decision.unchanged)
    learned.notes += decision.notes
    if decision.nothing_to_send:
        return withheld_outcome(learned, decision.reason())
    send = dict(decision.send)
    variations = send.pop("variations", None)
    creating = not item.in_skyhub and request.has_product_row
    if creating and _create_product(deps, request, send, variations, learned):
        return sent_outcome(learned, decision)
    if send:
        try:
            _update_product(deps, sku, send, learned)
        except NotFound:
            if request.has_product_row:
                raise
            return push_unknown_as_variation(deps, request, send, learned, decision)
        except Unprocessable as exc:
            send, variations = refused_attributes(request, send, variations, learned, exc)
            if send:
                _update_product(deps, sku, send, learned)
            elif not variations:
                reason = decision.reason() if decision.withheld else None
                reason = reason or "nothing left to send once SkyHub refused the rest"
                return withheld_outcome(learned, reason)
        if send:
            learned.acks.append(Ack(sku, send, request.sources))
    for v in variations or []:
        push_variation_entry(deps, sku, variation_request(request, v), learned)
    return sent_outcome(learned, decision)


def _learn_remote_state(
    deps: RelayDeps, request: SkuRequest, item: ItemView, learned: Learned
) -> ItemView:
    """Before spending a write on attributes that would be ignored, learn whether SkyHub has the
    product and whether the marketplace froze it (linked). Only a product row that carries
    attributes or variations, or a product SkyHub may lack, is worth the read."""
    sku = request.sku
    attrs = [k for k in request.fields if k not in FLOWING_FIELDS]
    if not (
        request.has_product_row
        and (attrs or request.variations or not item.in_skyhub)
        and (not item.frozen)
    ):
        return item
    try:
        remote = unit.call(deps, lambda: deps.client.get_product(sku))
    except NotFound:
        remote = None
    learned.exists[sku] = remote is not None
    item = replace(item, in_skyhub=remote is not None)
    if remote is not None and _linked(remote):
        learned.linked.add(sku)
        if not item.unfrozen:
            item = replace(item, frozen=True, frozen_since=deps.clock())
    return item


def _create_product(
    deps: RelayDeps,
    request: SkuRequest,
    send: dict[str, Any],
    variations: list[dict[str, Any]] | None,
    learned: Learned,
) -> bool:
    """Create the product with its variations in one POST. False when SkyHub says it already
    exists (a lost answer to our own POST, or a product created elsewhere meanwhile): then it
    is updated instead. Any other 422 stands as SkyHub said it (raised)."""
    sku = request.sku
    body = {"sku": sku, **send}
    fitted = [_new_variation(request, v) for v in variations or []]
    parts = [part for part, _notes in fitted]
    if parts:
        body["variations"] = [{"sku": part.sku, **part.fields} for part in parts]
    try:
        unit.record_attempt(deps, learned, sku, send)
        for part in parts:
            unit.record_attempt(deps, learned, part.sku, part.fields)
        unit.call(deps, lambda: deps.client.create_product(body))
    except Unprocessable:
        if not unit.exists(deps, deps.client.get_product, sku):
            raise
        learned.exists[sku] = True
        return False
    learned.acks.append(Ack(sku, send, request.sources))
    for part, notes in fitted:
        learned.acks.append(Ack(part.sku, part.fields, part.sources, parent_sku=sku))
        learned.notes += [f"{part.sku}: {note}" for note in notes]
    return True


def _new_variation(request: SkuRequest, variation: dict[str, Any]) -> tuple[SkuRequest, list[str]]:
    """A variation created with its product: its own fields, its promotion capped at its price
    (skysync/domain/promotions.py), and the notes saying so."""
    part = variation_request(request, variation)
    fitted = fit_promotion(part, ItemView(part.sku), Decision(send=dict(part.fields), withheld={}))
    return replace(part, fields=fitted.send), fitted.notes


def _update_product(deps: RelayDeps, sku: str, send: dict[str, Any], learned: Learned) -> None:
    unit.record_attempt(deps, learned, sku, send)
    unit.call(deps, lambda: deps.client.update_product(sku, send))


def refused_attributes(
    request: SkuRequest,
    send: dict[str, Any],
    variations: list[dict[str, Any]] | None,
    learned: Learned,
    exc: Unprocessable,
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """SkyHub refused a write that carried attributes: the rows that carried them are
    rejected with SkyHub's text, and price/stock (of the product and its variations) go
    again on their own (returned; possibly nothing). A refusal of price/stock alone stands
    (re-raised)."""
    flowing = {k: v for k, v in send.items() if k in FLOWING_FIELDS}
    attributes = sorted(k for k in send if k not in FLOWING_FIELDS)
    if not attributes:
        raise exc
    carriers = sorted({request.sources[k] for k in attributes})
    for row_id in carriers:
        mine = [k for k in attributes if request.sources[k] == row_id]
        learned.refused[row_id] = (
            f"SkyHub refused {', '.join(mine)}: {exc}; "
            "price and stock are not held back by it (sent without these fields)"
        )
    kept = [
        {"sku": v["sku"], **{k: x for k, x in v.items() if k in FLOWING_FIELDS}}
        for v in variations or []
    ]
    return flowing, [v for v in kept if len(v) > 1]


def _linked(product: dict[str, Any]) -> bool:
    associations = product.get("associations") or []
    return any(isinstance(a, dict) and a.get("status") == "linked" for a in associations)
