"""Never a promotional price above the price on SkyHub (pure: no database, no network).

Each row is checked on its own (``promotional_price <= price``, validation.py), but a row that
carries only a price changes what an older promotional price means: ``{"price": 100,
"promotional_price": 90}`` then ``{"price": 50}`` would leave SkyHub at 50/90, a "promotion"
above the price, whether the two rows fold into one request or go in two batches, and whether
the new price comes in a ``price`` or a ``product`` row.

The policy: SkyHub holds the ERP's latest price P and, when the ERP gave one, its latest
promotional price Q **capped at P**: ``min(Q, P)``. A promotion that a newer price made
impossible is sent equal to the price (no discount): SkyHub refuses a null promotional price
since 2025 (skyhub-api.md section 3), so it cannot be cleared, only made equal. The ERP's Q
still stands (an absent key means no change): once a newer price rises above it again, Q is sent
again. The row's reason names what happened.

* :func:`fit_promotion` makes one SKU's decision (what :func:`~skysync.domain.planner.decide`
  chose to send) hold that, taking what SkyHub last acknowledged into account. When the
  request carries a price but not the promotion, the ERP's promotion is read lazily through
  ``erp_value`` (the row ``last_applied`` names), only when SkyHub's acknowledged values cannot
  tell it: the promotion SkyHub holds is unknown, or may itself be capped.
* :func:`capped` is the value the policy puts on SkyHub; reconciliation expects it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from skysync.domain.planner import Decision, ItemView, SkuRequest
from skysync.domain.validation import is_number

PRICE = "price"
PROMO = "promotional_price"

ErpValue = Callable[[str], Any]  # field -> the ERP's latest applied value for this SKU, or None


def _num(value: Any) -> float | None:
    return float(value) if is_number(value) else None


def _same(a: Any, b: Any) -> bool:
    x, y = _num(a), _num(b)
    return x is not None and y is not None and math.isclose(x, y, rel_tol=0.0, abs_tol=1e-9)


def _text(value: Any) -> str:
    number = _num(value)
    return f"{number:g}" if number is not None else repr(value)


def capped(promotion: Any, price: Any) -> Any:
    """The promotional price SkyHub should hold: the ERP's ``promotion``, at most ``price``."""
    p, q = _num(price), _num(promotion)
    if p is None or q is None or q <= p:
        return promotion
    return price


def fit_promotion(
    request: SkuRequest,
    item: ItemView,
    decision: Decision,
    erp_value: ErpValue | None = None,
) -> Decision:
    """``decision`` such that SkyHub, once it applies the request over what it acknowledged,
    holds ``promotional_price <= price``, and the ERP's promotion capped at the price.

    What SkyHub will hold is the acknowledged values with ``decision.send`` over them. When the
    promotional price has to change for that (capped, restored, or unknown on SkyHub while the
    price changes), it is added to what is sent, and a note says why when it is not the ERP's
    own value. ``erp_value(name)`` gives the ERP's latest applied value of a field (its
    ``last_applied`` row's), asked only when nothing else tells it."""
    lookup: ErpValue = erp_value or (lambda _name: None)
    send = dict(decision.send)
    acknowledged = item.acknowledged if item.in_skyhub else {}
    held_price = acknowledged.get(PRICE)
    held_promo = acknowledged.get(PROMO)
    notes: list[str] = []

    price = _price_skyhub_will_hold(send, held_price, item, lookup)
    if _num(price) is None:
        return decision
    newer = "the newer price" if PRICE in decision.send else "the price"

    # the ERP's promotion: this request's, when decide() let it through or found it unchanged
    fresh = PROMO in send or PROMO in decision.unchanged
    wanted = request.fields.get(PROMO) if fresh else None
    if wanted is None:
        if PRICE in send:
            wanted = _stored_promotion(item, held_promo, held_price, price, lookup)
        elif _above(held_promo, price):
            # the price is not changing, yet SkyHub holds a promotion above it
            notes.append(
                f"{PROMO} {_text(held_promo)} that SkyHub held is above the price "
                f"{_text(price)}: sent as {_text(price)}"
            )
            wanted = held_promo
    if _num(wanted) is None:
        return decision
    target = capped(wanted, price)
    if _above(wanted, price):
        if not notes:
            notes.append(
                f"{PROMO} {_text(wanted)} is above {newer} {_text(price)}: sent as "
                f"{_text(target)}, equal to the price (SkyHub cannot clear a promotion)"
            )
    elif not fresh and _above(target, held_promo):
        notes.append(f"{PROMO} {_text(target)} sent again: {newer} {_text(price)} is above it")
    if PROMO in send or held_promo is None or not _same(held_promo, target):
        send[PROMO] = target
    if send == decision.send and not notes:
        return decision
    return _with(decision, send, notes)


def _price_skyhub_will_hold(
    send: dict[str, Any], held_price: Any, item: ItemView, lookup: ErpValue
) -> Any:
    """The price SkyHub holds once it applies ``send``. When SkyHub's price is unknown (a write
    of it got no answer) and a promotion goes, the ERP's latest price goes with it (added to
    ``send``), so that the pair SkyHub holds is known."""
    price = send.get(PRICE, held_price)
    if PROMO in send and _num(price) is None and PRICE in item.last_applied:
        price = lookup(PRICE)
        if _num(price) is not None:
            send[PRICE] = price
    return price


def _above(a: Any, b: Any) -> bool:
    x, y = _num(a), _num(b)
    return x is not None and y is not None and x > y and not _same(x, y)


def _stored_promotion(
    item: ItemView, held_promo: Any, held_price: Any, price: Any, lookup: ErpValue
) -> Any:
    """The ERP's promotion from before this request (which carries a price but none). What
    SkyHub acknowledged tells it without a read when it was not capped (below the price it
    held) or when the new price caps it anyway (the ERP's is never below what SkyHub holds);
    otherwise it is read from the row that carried it. None: the ERP never gave one."""
    q, p, new = _num(held_promo), _num(held_price), _num(price)
    if q is not None and ((p is not None and q < p) or (new is not None and new <= q)):
        return held_promo
    stored = lookup(PROMO) if PROMO in item.last_applied else None
    if _num(stored) is not None:
        return stored
    return held_promo if q is not None else None


def _with(decision: Decision, send: Mapping[str, Any], notes: list[str]) -> Decision:
    withheld = {k: v for k, v in decision.withheld.items() if k not in send}
    unchanged = {k: v for k, v in decision.unchanged.items() if k not in send}
    return replace(
        decision,
        send=dict(send),
        withheld=withheld,
        unchanged=unchanged,
        notes=[*decision.notes, *notes],
    )
