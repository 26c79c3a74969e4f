"""Variation pushes: a variation row of its own (it waits for its parent to reach SkyHub), a
variation carried by its product row (created under the parent or updated), and a price/stock
row for a SKU SkyHub has no product for (maybe a variation made outside skysync)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from skysync.domain.guards import hold_price_drops
from skysync.domain.planner import Decision, ItemView, SkuRequest, decide
from skysync.domain.promotions import fit_promotion
from skysync.relay import unit_of_work as unit
from skysync.relay.deps import RelayDeps
from skysync.relay.outcome import (
    Ack,
    DeliveryState,
    Learned,
    Outcome,
    sent_outcome,
    withheld_outcome,
)
from skysync.skyhub.errors import NotFound, Unprocessable
from skysync.store import outbox_reads


def push_variation(
    deps: RelayDeps, request: SkuRequest, item: ItemView, learned: Learned
) -> Outcome:
    """A variation's own rows: frozen when its parent is, and waiting (not counted) while the
    parent product is still on its way to SkyHub, rather than spending a request on a 404."""
    parent_sku = item.parent_sku or ""
    parent = unit.load_item(deps, parent_sku)
    frozen = parent.frozen or item.frozen
    if frozen and not item.frozen:
        item = replace(item, frozen=True, frozen_since=parent.frozen_since)
    decision = decide(request, item, frozen=frozen)
    decision = fit_promotion(request, item, decision, unit.erp_value(deps, item))
    learned.note_unchanged(request.sku, decision.unchanged)
    learned.notes += decision.notes
    if decision.nothing_to_send:
        return withheld_outcome(learned, decision.reason())
    send = {k: v for k, v in decision.send.items() if k != "variations"}
    if not parent.in_skyhub and _parent_on_its_way(deps, parent_sku):
        return learned.ending(_waiting_for_parent(parent_sku))
    try:
        unit.record_attempt(deps, learned, request.sku, send)
        unit.call(deps, lambda: deps.client.update_variation(request.sku, send))
    except NotFound:
        if _parent_on_its_way(deps, parent_sku):
            return learned.ending(_waiting_for_parent(parent_sku))
        raise
    learned.acks.append(Ack(request.sku, send, request.sources, parent_sku=parent_sku))
    return sent_outcome(learned, decision)


def push_variation_entry(deps: RelayDeps, parent: str, part: SkuRequest, learned: Learned) -> None:
    """One variation of a product row: created under its parent, or updated with the
    fields that changed and that no newer row (a stock row for it, say) already set."""
    vsku = part.sku
    known = unit.load_item(deps, vsku)
    learned.note_prices(part)
    part, held = hold_price_drops(part, known, deps.price_drop_guard)
    learned.held.update(held)
    part_decision = decide(part, known, frozen=False)
    part_decision = fit_promotion(part, known, part_decision, unit.erp_value(deps, known))
    learned.note_unchanged(vsku, part_decision.unchanged)
    learned.notes += [f"{vsku}: {note}" for note in part_decision.notes]
    fields = part_decision.send
    sources = part.sources
    if known.in_skyhub:
        if not fields:
            return
        try:
            unit.record_attempt(deps, learned, vsku, fields)
            unit.call(deps, lambda: deps.client.update_variation(vsku, fields))
            learned.acks.append(Ack(vsku, fields, sources, parent_sku=parent))
            return
        except NotFound:
            pass
    variation = {"sku": vsku, **fields}
    try:
        unit.record_attempt(deps, learned, vsku, fields)
        unit.call(deps, lambda: deps.client.create_variation(parent, variation))
    except Unprocessable:
        if not unit.exists(deps, deps.client.get_variation, vsku):
            raise
        unit.call(deps, lambda: deps.client.update_variation(vsku, fields))
    learned.acks.append(Ack(vsku, fields, sources, parent_sku=parent))


def push_unknown_as_variation(
    deps: RelayDeps, request: SkuRequest, send: dict[str, Any], learned: Learned, decision: Decision
) -> Outcome:
    """A price/stock row for a SKU we never saw, that SkyHub has no product for: it may be a
    variation created outside skysync."""
    sku = request.sku
    try:
        unit.record_attempt(deps, learned, sku, send)
        unit.call(deps, lambda: deps.client.update_variation(sku, send))
    except NotFound:
        return learned.ending(
            Outcome(
                state=DeliveryState.REJECTED,
                status=404,
                reason=(
                    f"SkyHub has no product or variation with SKU {sku!r}: "
                    "send a product row that creates it first"
                ),
            )
        )
    learned.acks.append(Ack(sku, send, request.sources))
    return sent_outcome(learned, decision)


def _parent_on_its_way(deps: RelayDeps, parent_sku: str) -> bool:
    with unit.session(deps) as session:  # the push's own transaction (unit_of_work.request_scope)
        return outbox_reads.has_open_rows(session, parent_sku, ("product",))


def _waiting_for_parent(parent_sku: str) -> Outcome:
    return Outcome(
        state=DeliveryState.WAIT,
        delay=5.0,
        reason=f"waiting for parent product {parent_sku!r} to reach SkyHub",
    )
