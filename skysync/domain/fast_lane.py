"""Which outbox rows the fast lane takes (docs/fast-lane.md). Pure: the SQL form of the same
rule is :func:`skysync.store.claims.lane_filter`, and a test holds the two to each other.

The lane never decides anything else: the rows it picks go through the relay like any batch
(claim, coalesce, freeze/diff, push under the shared limiter, record)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from skysync.domain.kinds import Kind, Origin


class LaneMode(StrEnum):
    """``SKYSYNC_FAST_LANE``."""

    OFF = "off"
    STOCKOUTS = "stockouts"  # stock rows with qty <= the threshold
    ALL = "all"  # every price and stock row


@dataclass(frozen=True)
class LaneRule:
    """The lane's choice of rows: a mode and the stock-out threshold."""

    mode: LaneMode
    threshold: int = 0

    @property
    def on(self) -> bool:
        return self.mode is not LaneMode.OFF

    @property
    def kinds(self) -> tuple[Kind, ...]:
        """The kinds whose INSERT can wake the lane."""
        if self.mode is LaneMode.ALL:
            return (Kind.PRICE, Kind.STOCK)
        if self.mode is LaneMode.STOCKOUTS:
            return (Kind.STOCK,)
        return ()

    def picks(self, kind: str, payload: Any, origin: str = Origin.ERP) -> bool:
        """Does the lane take this row? (A stock row whose qty is not a number is not a
        stock-out: the batch rejects it with its reason.) A reservation row (an order took
        units the marketplace may still offer: docs/orders.md) is taken in either mode: the
        quantity it sends is the ERP's less the order's units, not the one it carries."""
        if kind not in self.kinds:
            return False
        if self.mode is LaneMode.ALL or origin == Origin.RESERVATION:
            return True
        qty = payload.get("qty") if isinstance(payload, dict) else None
        if isinstance(qty, bool) or not isinstance(qty, int | float):
            return False
        return qty <= self.threshold
