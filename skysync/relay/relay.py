"""The relay: outbox rows to SkyHub. ``run_batch`` (batch.py) claims and checks rows and hands
them out in chunks; ``deliver`` (deliver.py) pushes one chunk and records every outcome
(record.py). Celery tasks (tasks.py) and the CLI (``skysync relay``/``drain``) call these; the
decisions live in skysync/domain/planner.py.

``Relay`` is the entry point that the tasks, the CLI and the tests hold: it builds, once, what
every step uses (:class:`~skysync.relay.deps.RelayDeps`: the SkyHub client, the database, the
clock, the knobs from Settings), and hands it to the relay's functions, which take nothing
else."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from skysync.accounts import Account
from skysync.config import Settings
from skysync.relay import batch, deliver, fast_lane
from skysync.relay.deliver import PushSku
from skysync.relay.deps import RelayDeps
from skysync.relay.outcome import BatchSummary, DeliverySummary
from skysync.skyhub.client import SkyHubClient
from skysync.store.db import Database
from skysync.store.models import utcnow


class Relay:
    """One relay per process: the settings, and the dependencies built from them (``deps``)."""

    def __init__(
        self,
        settings: Settings,
        client: SkyHubClient,
        *,
        database: Database | None = None,
        database_url: str | None = None,
        concurrency: int = 8,
        quick_retries: int = 2,
        quick_retry_delay: float = 0.5,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        account: Account | None = None,
    ):
        self.settings = settings
        self.deps = RelayDeps.from_settings(
            settings,
            client,
            database=database,
            database_url=database_url,
            concurrency=concurrency,
            quick_retries=quick_retries,
            quick_retry_delay=quick_retry_delay,
            rng=rng,
            clock=clock,
            sleep=sleep,
            account=account,
        )

    @property
    def account(self) -> str:
        """The name of the SkyHub account this relay works for."""
        return self.deps.account

    @property
    def client(self) -> SkyHubClient:
        return self.deps.client

    @property
    def db(self) -> Database:
        return self.deps.db

    @property
    def url(self) -> str:
        return self.deps.url

    @property
    def concurrency(self) -> int:
        return self.deps.concurrency

    def clock(self) -> datetime:
        return self.deps.clock()

    def run_batch(self, dispatch: Callable[[str, list[int]], Any] | None = None) -> BatchSummary:
        """Reclaim, claim, reject bad rows, then hand out the rest in chunks by key (batch.py).

        ``dispatch(token, row_ids)`` sends a chunk to a worker (Celery); without it the chunks
        are delivered here, in this process.
        """
        summary = batch.run_batch(self.deps, dispatch)
        assert summary is not None  # only a gated batch may not happen
        return summary

    def run_catch_up(
        self, dispatch: Callable[[str, list[int]], Any] | None = None
    ) -> BatchSummary | None:
        """A batch now if the last one left a backlog and the workers are half done with what
        is in flight (batch.py, skysync/domain/pacing.py); None when not, or when another
        claim is under way."""
        return batch.run_catch_up(self.deps, dispatch)

    def run_fast(self, dispatch: Callable[[str, list[int]], Any] | None = None) -> BatchSummary:
        """The fast lane (fast_lane.py): a batch over the families of the due rows that
        SKYSYNC_FAST_LANE picks; nothing at all while the lane is off."""
        return fast_lane.run_fast(self.deps, dispatch)

    def deliver(
        self,
        token: str,
        row_ids: list[int],
        push: PushSku | None = None,
        *,
        drained: Callable[[], object] | None = None,
    ) -> DeliverySummary:
        """Push the rows of ``row_ids`` still claimed by ``token`` (deliver.py); ``drained``
        once its last key is taken."""
        return deliver.deliver(self.deps, token, row_ids, push, drained=drained)
