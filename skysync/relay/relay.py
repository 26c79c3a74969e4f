"""The relay: outbox rows to SkyHub. ``run_batch`` (batch.py) claims and checks rows and hands
them out in chunks; ``deliver`` (deliver.py) pushes one chunk and records every outcome
(record.py). Celery tasks (tasks.py) and the CLI (``skysync relay``/``drain``) call these; the
decisions live in skysync/domain/planner.py.

``Relay`` holds what every step shares: the settings, the SkyHub client, the database, the
clock, and the one way a request goes out (quick retries, the attempt recorded first).

A SKU's push is one unit of work up to its first request (``Relay.request_scope``): the item
reads it decides from, and the attempt record, in one transaction that commits (flushed) just
before the request leaves; the items it read stay locked meanwhile, so what was decided from
them still holds when the attempt is recorded."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from skysync.config import Settings
from skysync.domain.planner import ItemView, Row, SkuRequest
from skysync.domain.reconcile import value_in
from skysync.relay import batch, deliver, fast_lane
from skysync.relay.outcome import BatchSummary, DeliverySummary, Learned, Outcome
from skysync.relay.record import record
from skysync.skyhub.client import SkyHubClient
from skysync.skyhub.errors import DeadlineExceeded, NotFound, RetryableError
from skysync.store import items as item_store
from skysync.store import outbox_reads
from skysync.store.db import session_scope
from skysync.store.models import utcnow
from skysync.store.request_stats import save_request_counts

T = TypeVar("T")


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
        # per push thread: the open unit of work of the SKU it is pushing (request_scope)
        self._local = threading.local()
        # time.monotonic() before which no catalogue is read to learn new SKUs (catalogue.py:
        # the last one was too long to read)
        self.discovery_paused_until = 0.0

    def run_batch(self, dispatch: Callable[[str, list[int]], Any] | None = None) -> BatchSummary:
        """Reclaim, claim, reject bad rows, then hand out the rest in chunks by key (batch.py).

        ``dispatch(token, row_ids)`` sends a chunk to a worker (Celery); without it the chunks
        are delivered here, in this process.
        """
        summary = batch.run_batch(self, dispatch)
        assert summary is not None  # only a gated batch may not happen
        return summary

    def run_catch_up(
        self, dispatch: Callable[[str, list[int]], Any] | None = None
    ) -> BatchSummary | None:
        """A batch now if the last one left a backlog and the workers are half done with what
        is in flight (batch.py, skysync/domain/pacing.py); None when not, or when another
        claim is under way."""
        return batch.run_catch_up(self, dispatch)

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
    @contextmanager
    def request_scope(self) -> Iterator[None]:
        """One SKU's push: its reads (:meth:`load_item`, :meth:`session`) and its attempt
        records go in one transaction, opened by the first of them and committed (flushed) by
        :meth:`call` before each SkyHub call, or when the push ends. Three transactions per
        request were one: the read, the attempt, each with its own connection checkout."""
        self._local.active = True
        try:
            yield
        except BaseException as exc:
            self._end_unit(exc)
            raise
        else:
            self._end_unit(None)
        finally:
            self._local.active = False

    @contextmanager
    def session(self) -> Iterator[Session]:
        """This thread's open unit of work inside :meth:`request_scope` (opened on first use),
        else a transaction of its own. Never a second connection while one is open: the open
        one holds locks (on SQLite, the write lock) that a second would wait for."""
        if not getattr(self._local, "active", False):
            with session_scope(self.url) as session:
                yield session
            return
        unit: tuple[AbstractContextManager[Session], Session] | None
        unit = getattr(self._local, "unit", None)
        if unit is None:
            scope = session_scope(self.url)
            unit = self._local.unit = (scope, scope.__enter__())
        yield unit[1]

    def _end_unit(self, exc: BaseException | None) -> None:
        """Commit this thread's open unit of work (roll it back with ``exc``), if any."""
        unit = getattr(self._local, "unit", None)
        if unit is None:
            return
        self._local.unit = None
        if exc is None:
            unit[0].__exit__(None, None, None)
        else:
            unit[0].__exit__(type(exc), exc, exc.__traceback__)

    def load_item(self, sku: str) -> ItemView:
        """What we know SkyHub has for ``sku`` (acknowledged fields, frozen, in SkyHub), read
        fresh for each request and locked until its attempt is recorded (request_scope)."""
        with self.session() as session:
            return item_store.view(item_store.lock(session, sku), sku)

    def erp_value(self, item: ItemView) -> Callable[[str], Any]:
        """The ERP's latest applied value of a field of ``item``, read (in this push's unit of
        work) from the row ``last_applied`` names for it; None when there is none. Asked only
        when SkyHub's acknowledged values cannot tell it (skysync/domain/promotions.py)."""

        def lookup(name: str) -> Any:
            row_id = item.last_applied.get(name)
            if row_id is None:
                return None
            with self.session() as session:
                found = outbox_reads.accepted_rows(session, [row_id]).get(row_id)
            if found is None:
                return None
            present, value = value_in(found, item.sku, name)
            return value if present else None

        return lookup

    def attempt(self, learned: Learned, sku: str, fields: dict[str, Any]) -> None:
        """Before a write leaves: record it durably (committed, flushed, before :meth:`call`
        sends anything), so that if no answer is ever recorded (lost, killed, crashed), its
        fields count as unknown."""
        learned.attempt(sku, fields)
        with self.session() as session:
            item_store.begin_attempt(session, sku, fields, self.clock())

    def call(self, fn: Callable[[], T]) -> T:
        """One SkyHub call with a few quick retries for transient failures. The open unit of
        work (the reads and attempt records before it) commits first: the attempt is durable
        before the request leaves, and no lock or connection is held across the network.

        An answer that outlasted its deadline is not retried on the spot: a SkyHub that
        trickled one answer is likely to trickle the next, and three deadlines in a row would
        hold the task towards its time limit. The rows go back with backoff instead."""
        self._end_unit(None)
        for attempt in range(self.quick_retries + 1):
            try:
                return fn()
            except DeadlineExceeded:
                raise
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
            max_wait=self.settings.skyhub_retry_after_max,
            rng=self.rng,
        )
