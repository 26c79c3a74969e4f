"""The relay: outbox rows to SkyHub. ``run_batch`` (batch.py) claims and checks rows and hands
them out in chunks; ``deliver`` (deliver.py) pushes one chunk and records every outcome
(record.py). Celery tasks (tasks.py) and the CLI (``skysync relay``/``drain``) call these; the
decisions live in skysync/domain/planner.py.

``Relay`` holds what every step shares: the settings, the SkyHub client, the database, the
clock, and the one way a request goes out (quick retries, the attempt recorded first)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from skysync.config import Settings
from skysync.domain.planner import ItemView, Row, SkuRequest
from skysync.relay import batch, deliver, fast_lane
from skysync.relay.outcome import BatchSummary, DeliverySummary, Learned, Outcome
from skysync.relay.record import record
from skysync.reporting.metrics import save_request_counts
from skysync.skyhub.client import SkyHubClient
from skysync.skyhub.errors import NotFound, RetryableError
from skysync.store import items as item_store
from skysync.store.db import session_scope
from skysync.store.models import utcnow


class Relay:
    """One relay per process: a SkyHub client, the database, and the knobs from Settings."""

    def __init__(
        self,
        settings: Settings,
        client: SkyHubClient,
        *,
        database_url: str | None = None,
        concurrency: int = 8,
        quick_retries: int = 2,
        quick_retry_delay: float = 0.5,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.settings = settings
        self.client = client
        self.url = database_url or settings.database_url
        self.concurrency = concurrency
        self.quick_retries = quick_retries
        self.quick_retry_delay = quick_retry_delay
        self.rng = rng or random.Random()
        self.clock = clock
        self.sleep = sleep

    def run_batch(self, dispatch: Callable[[str, list[int]], Any] | None = None) -> BatchSummary:
        """Reclaim, claim, reject bad rows, then hand out the rest in chunks by key (batch.py).

        ``dispatch(token, row_ids)`` sends a chunk to a worker (Celery); without it the chunks
        are delivered here, in this process.
        """
        return batch.run_batch(self, dispatch)

    def run_fast(self, dispatch: Callable[[str, list[int]], Any] | None = None) -> BatchSummary:
        """The fast lane (fast_lane.py): a batch over the families of the due rows that
        SKYSYNC_FAST_LANE picks; nothing at all while the lane is off."""
        return fast_lane.run_fast(self, dispatch)

    def deliver(self, token: str, row_ids: list[int]) -> DeliverySummary:
        """Push the rows of ``row_ids`` still claimed by ``token`` (deliver.py)."""
        return deliver.deliver(self, token, row_ids)

    def save_request_counts(self) -> None:
        """Move the client's request counts into the database, for `skysync metrics`."""
        counts = self.client.counter.take()
        if counts:
            with session_scope(self.url) as session:
                save_request_counts(session, counts)

    def _push_sku(self, request: SkuRequest) -> Outcome:
        # One SKU's request. A method, so a test can stall a worker between load and push.
        return deliver.push_sku(self, request)

    # -- what every push shares -------------------------------------------------------------
    def load_item(self, sku: str) -> ItemView:
        """What we know SkyHub has for ``sku`` (acknowledged fields, frozen, in SkyHub)."""
        with session_scope(self.url) as session:
            return item_store.view(session.get(item_store.Item, sku), sku)

    def attempt(self, learned: Learned, sku: str, fields: dict[str, Any]) -> None:
        """Before a write leaves: record it durably (its own committed transaction), so that if
        no answer is ever recorded (lost, killed, crashed), its fields count as unknown."""
        learned.attempt(sku, fields)
        with session_scope(self.url) as session:
            item_store.begin_attempt(session, sku, fields, self.clock())

    def call(self, fn: Callable[[], Any]) -> Any:
        """One SkyHub call with a few quick retries for transient failures."""
        for attempt in range(self.quick_retries + 1):
            try:
                return fn()
            except RetryableError:
                if attempt >= self.quick_retries:
                    raise
                self.sleep(self.quick_retry_delay * (2**attempt))
        raise AssertionError("unreachable")

    def exists(self, read: Callable[[str], Any], sku: str) -> bool:
        """Does SkyHub have it? (``read`` is get_product or get_variation.)"""
        try:
            self.call(lambda: read(sku))
        except NotFound:
            return False
        return True

    def record(self, token: str, rows: list[Row], outcome: Outcome) -> None:
        """Record ``outcome`` for ``rows`` in one transaction, while ``token`` holds them."""
        record(
            self.url,
            token,
            rows,
            outcome,
            now=self.clock(),
            max_attempts=self.settings.max_attempts,
            rng=self.rng,
        )
