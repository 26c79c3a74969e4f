"""Orders in: SkyHub's order queue into ``skysync_order_inbox`` for the ERP.

One run loops ``GET /queues/orders`` until the queue is empty (bounded per run). Each order is
stored raw, with its status, and the order's current state is kept in ``skysync_order``; the
transaction commits, and only then ``DELETE /queues/orders/{code}`` acknowledges it. So:

* a crash or a failed acknowledgement means SkyHub delivers the order again later; the inbox's
  unique ``dedupe_key`` (code + status) keeps that from making a second row;
* an order that cannot be parsed (no status, fields of the wrong type) is stored raw and flagged
  with the problem, acknowledged, and counted by ``skysync status``: never dropped, never left to
  block the queue. One without even a code cannot be acknowledged; it is stored once and then
  recognised by its content (its bookkeeping fields aside, :data:`VOLATILE_FIELDS`) each time
  SkyHub redelivers it, every visibility window, for ever: each run lists its inbox row
  (``unacknowledgeable_rows``), and ``skysync status`` names it while it keeps coming back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.domain.reservation import Reserving
from skysync.skyhub.client import SkyHubClient
from skysync.skyhub.errors import AuthenticationError, SkyHubError
from skysync.skyhub.payloads import QueuedOrder
from skysync.store import orders as order_store
from skysync.store import reservations, runs
from skysync.store.db import Database
from skysync.store.models import utcnow
from skysync.store.request_stats import save_request_counts

log = logging.getLogger("skysync.orders")

MAX_ORDERS_PER_RUN = 500

#: Fields of an order that SkyHub's bookkeeping may change between two deliveries of the same
#: order state: left out of the identity of an order without a code, which is delivered again
#: and again (it cannot be acknowledged) and must stay one inbox row.
VOLATILE_FIELDS = frozenset({"updated_at", "sync_status", "available_to_sync"})


@dataclass
class PullSummary:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    flagged: int = 0
    acknowledged: int = 0
    ack_failed: int = 0
    unacknowledgeable: int = 0
    unacknowledgeable_rows: list[int] = field(default_factory=list)  # their inbox rows
    reservation_rows: int = 0  # stock rows the orders' reservations wrote
    stopped: str | None = None
    codes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["codes"] = self.codes[:50]
        return data


def dedupe_key(queued: QueuedOrder) -> str:
    """One inbox row per order state: the code and status, or the content when unparseable."""
    if queued.problem is None and queued.code and queued.status_code:
        # updated_at tells a second, later shipment_exception from a redelivery of the first
        updated = queued.raw.get("updated_at") if isinstance(queued.raw, dict) else None
        return f"{queued.code}|{queued.status_code}|{updated or ''}"
    content = queued.raw
    if not queued.code and isinstance(content, dict):
        content = {k: v for k, v in content.items() if k not in VOLATILE_FIELDS}
    raw = json.dumps(content, sort_keys=True, ensure_ascii=False, default=str)
    return f"{queued.code or '?'}|malformed|{hashlib.sha256(raw.encode()).hexdigest()[:24]}"


def store_order(session: Session, queued: QueuedOrder, now: datetime) -> bool:
    """Write one queued order; False when this order state was already stored."""
    return order_store.store_received(
        session,
        dedupe_key=dedupe_key(queued),
        code=queued.code,
        status=queued.status_code,
        raw=queued.raw,
        problem=queued.problem,
        now=now,
    )


def pull_orders(
    db: Database,
    client: SkyHubClient,
    *,
    max_orders: int = MAX_ORDERS_PER_RUN,
    reserving: Reserving | None = None,
) -> PullSummary:
    """Drain SkyHub's order queue into the inbox (one run). Records the run for `status`.
    With ``reserving`` (SKYSYNC_RESERVE_OPEN_ORDERS), an order that changes what its SKUs may
    offer writes their reservation rows in the transaction that stores it
    (store/reservations.py)."""
    summary = PullSummary()
    started = utcnow()
    error: str | None = None
    try:
        _pull(db, client, summary, max_orders, reserving)
    except AuthenticationError as exc:
        error = runs.auth_stop_reason(exc)
        summary.stopped = error
    except SkyHubError as exc:
        # Stored orders are safe; the rest stay in SkyHub's queue for the next run.
        error = f"stopped: {exc}"
        summary.stopped = error
    with db.scope() as session:
        save_request_counts(session, client.counter.take())
        runs.add(
            session,
            "pull_orders",
            started_at=started,
            finished_at=utcnow(),
            summary=summary.as_dict(),
            error=error,
        )
    return summary


def _pull(
    db: Database,
    client: SkyHubClient,
    summary: PullSummary,
    max_orders: int,
    reserving: Reserving | None,
) -> None:
    seen_unackable: set[str] = set()
    while summary.received < max_orders:
        queued = client.next_queued_order()
        if queued is None:
            return
        summary.received += 1
        try:
            with db.scope() as session:
                stored = store_order(session, queued, utcnow())
                if stored and reserving is not None and queued.code:
                    skus = order_store.line_skus(session, queued.code)
                    summary.reservation_rows += len(
                        reservations.enqueue_corrections(session, skus, reserving)
                    )
        except sa.exc.IntegrityError:
            stored = False  # another puller stored this same order state a moment ago
        if stored:
            summary.stored += 1
            if queued.problem:
                summary.flagged += 1
                log.warning("order %s stored raw and flagged: %s", queued.code, queued.problem)
        else:
            summary.duplicates += 1
        if not queued.code:
            # Nothing to acknowledge it by; SkyHub hides it for a while, then sends it again.
            summary.unacknowledgeable += 1
            seen = json.dumps(queued.raw, sort_keys=True, ensure_ascii=False, default=str)
            if seen in seen_unackable:
                return  # the queue came round to it again: only such orders left this run
            seen_unackable.add(seen)
            with db.scope(readonly=True) as session:
                row_id = order_store.inbox_id(session, dedupe_key(queued))
            if row_id is not None and row_id not in summary.unacknowledgeable_rows:
                summary.unacknowledgeable_rows.append(row_id)
            continue
        summary.codes.append(queued.code)
        try:
            client.ack_order(queued.code)
            summary.acknowledged += 1
        except AuthenticationError:
            raise
        except SkyHubError as exc:
            # Stored already: SkyHub delivers it again later and the dedupe key absorbs it.
            summary.ack_failed += 1
            log.warning("acknowledging order %s failed (%s); it will come again", queued.code, exc)
