"""Recording an outcome: the rows' new state and everything learned about the items (what SkyHub
acknowledged, which SKUs exist or are linked, an order's status), in one transaction."""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from skysync.domain.guards import replaced_held
from skysync.domain.kinds import RowState
from skysync.domain.planner import Row, backoff_delay
from skysync.domain.reservation import CANCELLED, Reserving
from skysync.relay.deps import RelayDeps
from skysync.relay.outcome import SETTLED_AS, DeliveryState, Learned, Outcome
from skysync.skyhub.retry_after import bounded_wait
from skysync.store import items as item_store
from skysync.store import orders as order_store
from skysync.store import reservations, settle
from skysync.store.db import Database

log = logging.getLogger("skysync.relay")


class _ClaimLost(Exception):
    """Some of the rows were no longer held by the claim: the whole transaction rolls back."""


def record_outcome(deps: RelayDeps, token: str, rows: list[Row], outcome: Outcome) -> None:
    """Record ``outcome`` for ``rows`` in one transaction, while ``token`` holds them."""
    record(
        deps.db,
        token,
        rows,
        outcome,
        now=deps.clock(),
        max_attempts=deps.max_attempts,
        max_wait=deps.retry_after_max,
        rng=deps.rng,
        reserving=deps.reserving,
    )


def record(
    db: Database,
    token: str,
    rows: list[Row],
    outcome: Outcome,
    *,
    now: datetime,
    max_attempts: int,
    rng: random.Random,
    max_wait: float,
    reserving: Reserving | None = None,
) -> None:
    """Write the rows' new state and everything learned about the items, in one transaction,
    and only while this claim still holds every one of the rows: a worker whose lease ran
    out (its rows reclaimed by another batch) writes no acknowledgement, link or order
    status, since the claim that took over decides from what it saw itself.

    The rows' own updates are the check: each updates a row only while the claim holds it in
    flight (and locks it until the commit), so when they updated fewer rows than were pushed,
    the claim lost some, and everything is rolled back. (The same as locking the rows first
    and counting them, without the extra statement; the rows are still written, and locked,
    before the items, as before.)

    ``max_wait`` bounds how far the outcome may put rows off without counting an attempt
    (SKYSYNC_SKYHUB_RETRY_AFTER_MAX): the client already keeps SkyHub's Retry-After within
    it; here it is the last guard before a wait becomes a date.

    With ``reserving``, a cancellation skysync sent frees its order's units: their SKUs get
    their reservation rows in the same transaction (store/reservations.py)."""
    ids = [r.id for r in rows]
    try:
        # not flushed: the attempt record before the request was (see Database.scope)
        with db.scope(flush_wal=False) as session:
            settled = _settle_rows(session, token, rows, outcome, now, max_attempts, rng, max_wait)
            if settled < len(ids):
                raise _ClaimLost
            epochs = {r.id: r.epoch for r in rows}
            _record_learned(session, outcome, now, epochs)
            if outcome.order_status is not None:
                order_store.record_status(session, *outcome.order_status, now)
                code, status = outcome.order_status
                if reserving is not None and status in CANCELLED:
                    skus = order_store.line_skus(session, code)
                    reservations.enqueue_corrections(session, skus, reserving)
            if outcome.state in (DeliveryState.SENT, DeliveryState.WITHHELD):
                _replace_held(session, outcome.learned.prices, now, epochs)
    except _ClaimLost:
        log.warning("rows %s are no longer held by this claim; outcome not recorded", ids)


def _settle_rows(
    session: Session,
    token: str,
    rows: list[Row],
    outcome: Outcome,
    now: datetime,
    max_attempts: int,
    rng: random.Random,
    max_wait: float,
) -> int:
    """Every row's new state, while ``token`` holds it; returns how many of ``rows`` it held."""
    refused = outcome.learned.refused
    # rows whose attributes SkyHub refused (422) while the rest of the request went out
    settled = _set_aside(
        session, token, rows, refused, now, state=RowState.REJECTED, last_status=422
    )
    done = outcome.state in (DeliveryState.SENT, DeliveryState.WITHHELD)
    # the price guard's holds stand once the rest went out; otherwise every row goes back
    # together and the guard decides again (a row refused above stays rejected)
    held = outcome.learned.held if done else {}
    held = {i: reason for i, reason in held.items() if i not in refused}
    settled += _set_aside(session, token, rows, held, now, state=RowState.HELD)
    rest = [r for r in rows if r.id not in refused and r.id not in held]
    if not rest:
        return settled
    settle = Settle(session, token, rest, outcome, now)
    if done:
        return settled + settle.done()
    if outcome.state == DeliveryState.REJECTED:
        return settled + settle.rejected()
    if outcome.state == DeliveryState.RETRY:
        return settled + settle.retry(max_attempts, rng)
    return settled + settle.waiting(max_wait)  # wait, auth


def _record_learned(
    session: Session, outcome: Outcome, now: datetime, epochs: dict[int, int]
) -> None:
    """What the requests taught us about the items, whatever the rows' fate (``epochs``: the
    claim epoch of each row of the request, which orders them with the rows applied before)."""
    learned: Learned = outcome.learned
    for sku, exists in learned.exists.items():
        item_store.mark_exists(session, sku, exists, now)
    for sku in learned.linked:
        item_store.mark_linked(session, sku, now)
    if outcome.state == DeliveryState.RETRY:
        # No clear answer: the change may or may not be in SkyHub. Forget what we thought
        # SkyHub had for those fields, so no later value is skipped as "unchanged".
        for sku, names in learned.attempted.items():
            item_store.forget(session, sku, names, now)
    for sku, sources in learned.unchanged.items():
        item_store.mark_applied(session, sku, sources, now, epochs=epochs)
    for ack in learned.acks:
        item_store.record_ack(
            session, ack.sku, ack.sent, ack.sources, now, epochs=epochs, parent_sku=ack.parent_sku
        )


def _set_aside(
    session: Session,
    token: str,
    rows: list[Row],
    reasons: dict[int, str],
    now: datetime,
    *,
    state: RowState,
    **values: Any,
) -> int:
    """Rows of the request that end on their own (SkyHub refused their attributes; the price
    guard held them until an operator releases them or a newer row replaces them): each takes
    ``state`` with its own reason, and the others settle by the request's outcome. Returns
    how many of them the claim still held."""
    settled = 0
    for r in rows:
        if r.id in reasons:
            settled += settle.finish(
                session, [r.id], token, state=state, now=now, reason=reasons[r.id], **values
            )
    return settled


def _replace_held(
    session: Session, prices: dict[str, dict[str, int]], now: datetime, epochs: dict[int, int]
) -> None:
    """Older held rows whose every price field this request carried a newer value of (sent,
    or held itself) are superseded by the newest of those rows."""
    for sku, sources in prices.items():
        held = settle.held_rows(session, sku)
        for row_id, by in replaced_held(held, sources, epochs).items():
            settle.supersede_held(session, row_id, by, now)


class Settle:
    """The rows of one request (a key's rows folded into one) after its outcome: the newest row
    speaks for the value, older rows were folded into it. Each ending returns how many of the
    rows the claim still held (and so took the ending)."""

    def __init__(
        self, session: Session, token: str, rows: list[Row], outcome: Outcome, now: datetime
    ):
        self.session = session
        self.token = token
        self.outcome = outcome
        self.now = now
        self.ids = [r.id for r in rows]
        self.newest = max(rows, key=lambda r: r.order)
        self.older = [i for i in self.ids if i != self.newest.id]

    def done(self) -> int:
        """``sent`` or ``withheld``: the newest row takes the outcome, older rows are
        ``superseded`` by it (their values were folded in, or are older than it)."""
        out, winner = self.outcome, self.newest.id
        state = SETTLED_AS[out.state]
        held = self._finish([winner], state=state, reason=out.reason, last_status=out.status)
        return held + self._finish(
            self.older,
            state=RowState.SUPERSEDED,
            superseded_by=winner,
            reason=f"folded into row {winner}",
        )

    def rejected(self) -> int:
        """SkyHub (or a local check) refused the request: every row of it is ``rejected``, the
        older ones pointing at the newest, whose text is SkyHub's."""
        out, winner = self.outcome, self.newest.id
        held = self._finish(
            [winner],
            state=RowState.REJECTED,
            reason=out.reason,
            last_error=out.error,
            last_status=out.status,
        )
        return held + self._finish(
            self.older,
            state=RowState.REJECTED,
            reason=f"folded into row {winner}, which was refused: {out.reason}",
            last_status=out.status,
        )

    def retry(self, max_attempts: int, rng: random.Random) -> int:
        """No clear answer: back to pending with backoff, one attempt counted per row, or
        ``dead`` once the budget is used. The budget is the newest value's: older rows folded
        in (however often they failed) do not make a fresh value die early."""
        out = self.outcome
        attempts = self.newest.attempts + 1
        if attempts >= max_attempts:
            return self._finish(
                self.ids,
                count_attempt=True,
                state=RowState.DEAD,
                reason=f"gave up after {attempts} attempts; last error: {out.reason}",
                last_error=out.error,
                last_status=out.status,
            )
        delay = backoff_delay(attempts, rng=rng)
        return settle.release(
            self.session,
            self.ids,
            self.token,
            now=self.now,
            available_at=self.now + timedelta(seconds=delay),
            count_attempt=True,
            reason=f"attempt {attempts} failed, retrying in {delay:.0f} s: {out.reason}",
            last_error=out.error,
            last_status=out.status,
        )

    def waiting(self, max_wait: float) -> int:
        """``wait`` or ``auth``: not the rows' fault, so back to pending, not counted, due when
        the outcome says (a rate-limit window, a parent on its way, the credentials fixed),
        never more than ``max_wait`` from now."""
        out = self.outcome
        return settle.release(
            self.session,
            self.ids,
            self.token,
            now=self.now,
            available_at=self.now + timedelta(seconds=bounded_wait(out.delay, max_wait)),
            count_attempt=False,
            reason=out.reason or out.state.value,
            last_status=out.status,
        )

    def _finish(self, ids: list[int], **values: Any) -> int:
        return settle.finish(self.session, ids, self.token, now=self.now, **values)
