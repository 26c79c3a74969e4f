"""How a key's delivery ended (``Outcome``), what its requests taught us on the way
(``Learned``), and what a batch or a chunk did (the summaries).

Outcomes per key (docs/relay.md, "How a batch goes"):

========================  ==================================================================
2xx                       newest row ``sent`` (its reason lists withheld fields, if any),
                          older rows ``superseded`` by it
nothing left to send      newest row ``withheld`` with the reason, older rows superseded
429                       waited out inside the client; if it persists, or SkyHub asks for
                          a longer wait than the client's cap, the rows go back to pending
                          due when SkyHub said (a second by default), not counted
5xx, timeout, no answer   a few quick retries here, then all rows back to pending with
                          exponential backoff, one attempt counted per row; ``dead`` when the
                          newest row has used max_attempts (a fresh value gets a full budget)
422 on attributes         the rows that carried the attributes ``rejected`` with SkyHub's
                          text; price/stock go again alone in the same batch
other 4xx                 all rows of the request ``rejected`` with SkyHub's text
401/403                   rows back to pending, not counted; the batch stops (every request
                          would fail) and the reason is on the rows and in ``skysync status``
parent not in SkyHub yet  the variation's rows wait (pending, not counted) with the reason
========================  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from skysync.domain.guards import GUARDED_PRICES
from skysync.domain.kinds import RowState
from skysync.domain.planner import Decision, SkuRequest
from skysync.skyhub.errors import (
    AuthenticationError,
    PermanentError,
    RateLimited,
    SkyHubError,
)
from skysync.store import runs


@dataclass
class Ack:
    """SkyHub accepted these fields for this SKU."""

    sku: str
    sent: dict[str, Any]
    sources: dict[str, int]
    parent_sku: str | None = None


@dataclass
class Learned:
    """What a key's requests taught us before its outcome was known; recorded with the outcome
    in one transaction, whatever the outcome turns out to be."""

    acks: list[Ack] = field(default_factory=list)
    exists: dict[str, bool] = field(default_factory=dict)
    linked: set[str] = field(default_factory=set)
    # fields sent without a clear answer may have been applied: forget their acknowledged value
    attempted: dict[str, set[str]] = field(default_factory=dict)
    # rows SkyHub refused (attributes) while the rest of the request went out: id -> reason
    refused: dict[int, str] = field(default_factory=dict)
    # rows the price drop guard held back while the rest went out: id -> reason
    held: dict[int, str] = field(default_factory=dict)
    # per SKU, the rows carrying the request's price fields (held or not): they replace older
    # held rows once the request is settled
    prices: dict[str, dict[str, int]] = field(default_factory=dict)
    # fields SkyHub already had, with the row that asked for them (counts as applied)
    unchanged: dict[str, dict[str, int]] = field(default_factory=dict)
    # what went out otherwise than the rows asked, and why (a promotion capped at the price)
    notes: list[str] = field(default_factory=list)

    def attempt(self, sku: str, fields: dict[str, Any]) -> None:
        self.attempted.setdefault(sku, set()).update(fields)

    def note_prices(self, request: SkuRequest) -> None:
        found = {n: request.sources[n] for n in GUARDED_PRICES if n in request.sources}
        if found:
            self.prices.setdefault(request.sku, {}).update(found)

    def note_unchanged(self, sku: str, sources: dict[str, int]) -> None:
        if sources:
            self.unchanged.setdefault(sku, {}).update(sources)

    def ending(self, outcome: Outcome) -> Outcome:
        """``outcome``, carrying what was learned on the way to it."""
        return replace(outcome, learned=self)


class DeliveryState(StrEnum):
    """How a key's delivery ended: the rows' final state (``SENT``, ``WITHHELD``, ``REJECTED``,
    the :class:`RowState` of the same value: :data:`SETTLED_AS`), or why they go back to
    pending. The values are what the batch summaries count (Flower, the runs table)."""

    SENT = "sent"
    WITHHELD = "withheld"
    REJECTED = "rejected"
    RETRY = "retry"  # transient: back to pending with backoff, an attempt counted
    WAIT = "wait"  # rate limit or a parent on its way: back to pending, not counted
    AUTH = "auth"  # SkyHub refused the credentials: back to pending, the batch stops
    # never an Outcome's: the key's rows were no longer held by the claim, nothing recorded
    LOST_CLAIM = "lost_claim"


#: The row state an outcome that settles the rows gives the row speaking for the request.
SETTLED_AS: dict[DeliveryState, RowState] = {
    DeliveryState.SENT: RowState.SENT,
    DeliveryState.WITHHELD: RowState.WITHHELD,
    DeliveryState.REJECTED: RowState.REJECTED,
}


@dataclass
class Outcome:
    """How one key (or one order step) ended."""

    state: DeliveryState
    reason: str | None = None
    status: int | None = None
    error: str | None = None
    delay: float = 0.0
    order_status: tuple[str, str] | None = None  # (code, status) after a step went out
    blocks_later: bool = False  # later steps of the same order must wait for this one
    learned: Learned = field(default_factory=Learned)


def failure_outcome(exc: SkyHubError) -> Outcome:
    """What a SkyHub error means for the rows of the request it answered (the table above)."""
    if isinstance(exc, RateLimited):
        delay = max(1.0, exc.retry_after or 0.0)
        return Outcome(
            state=DeliveryState.WAIT, reason=f"rate limited: {exc}", status=429, delay=delay
        )
    if isinstance(exc, AuthenticationError):
        return Outcome(
            state=DeliveryState.AUTH,
            reason=f"{runs.auth_stop_reason(exc)}; fix them and the rows go out",
            status=exc.status,
        )
    if isinstance(exc, PermanentError):
        return Outcome(
            state=DeliveryState.REJECTED,
            reason=f"SkyHub refused it: {exc}",
            error=str(exc),
            status=exc.status,
            blocks_later=True,
        )
    return Outcome(
        state=DeliveryState.RETRY,
        reason=str(exc),
        error=str(exc),
        status=exc.status,
        blocks_later=True,
    )


def sent_outcome(learned: Learned, decision: Decision) -> Outcome:
    """The request went out: ``sent``, naming what went and what was withheld, if anything was,
    and what went otherwise than the rows asked (``learned.notes``)."""
    sent_fields = sorted(k for ack in learned.acks for k in ack.sent)
    parts = []
    if decision.withheld:
        sent = ", ".join(dict.fromkeys(sent_fields)) or "nothing new"
        parts.append(f"sent {sent}; withheld {decision.reason()}")
    parts += learned.notes
    reason = "; ".join(parts) or None
    return learned.ending(Outcome(state=DeliveryState.SENT, reason=reason))


def withheld_outcome(learned: Learned, reason: str | None) -> Outcome:
    """Nothing went out: ``withheld`` with ``reason``, and what the values were made of
    (``learned.notes``: a quantity the reservation lowered, say)."""
    parts = [reason] if reason else []
    return learned.ending(
        Outcome(state=DeliveryState.WITHHELD, reason="; ".join(parts + learned.notes) or None)
    )


#: Key outcomes that leave the rows not delivered: back to pending (or dead) by this claim.
UNSETTLED = frozenset({DeliveryState.RETRY, DeliveryState.WAIT, DeliveryState.AUTH})


@dataclass
class DeliverySummary:
    keys: int = 0
    by_outcome: dict[DeliveryState, int] = field(default_factory=dict)
    auth_failed: bool = False
    # ids of the rows of keys whose outcome left them undelivered (UNSETTLED): what `drain`
    # looks at again in the end. Only failures, so it stays small; not in as_dict.
    unsettled: list[int] = field(default_factory=list)

    def count(self, outcome: DeliveryState, row_ids: list[int] | None = None) -> None:
        self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + 1
        if outcome in UNSETTLED and row_ids:
            self.unsettled.extend(row_ids)

    def as_dict(self) -> dict[str, Any]:
        # plain strings: the dict goes to Celery's result, Flower and the runs table
        by_outcome = {str(state): n for state, n in self.by_outcome.items()}
        return {"keys": self.keys, **by_outcome, "auth_failed": self.auth_failed}


@dataclass
class BatchSummary:
    token: str | None
    reclaimed: int = 0
    claimed: int = 0
    rejected: int = 0
    superseded: int = 0  # at claim time: folded into a newer row of the same SKU
    keys: int = 0
    chunks: int = 0
    more_due: bool = False  # the claim hit SKYSYNC_BATCH_SIZE: a backlog is left (pacing.py)
    auth_stop: str | None = None  # SkyHub refused the credentials before the first write
    delivery: DeliverySummary | None = None

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "delivery"}
        if self.delivery is not None:
            data["delivery"] = self.delivery.as_dict()
        return data
