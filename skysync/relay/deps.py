"""What the relay's functions use, and nothing more: the SkyHub client, the database, the
clock, the random source, the sleep, and the few settings they read. Built once per process
(``RelayDeps.from_settings``, by the ``Relay`` facade); imports nothing of the relay, so every
relay module can take it without importing each other.

Frozen: a test that wants another clock builds another one (``dataclasses.replace``). Two
things in it change while it lives, each in an object of its own: the push threads' open units
of work (unit_of_work.py) and the catalogue reading's pause (catalogue.py)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from skysync.config import Settings

if TYPE_CHECKING:
    from skysync.accounts import Account
from skysync.domain.fast_lane import LaneRule
from skysync.domain.reservation import Reserving
from skysync.skyhub.client import SkyHubClient
from skysync.store.db import Database
from skysync.store.models import utcnow


@dataclass
class DiscoveryPause:
    """time.monotonic() before which no catalogue is read to learn new SKUs (catalogue.py: the
    last one was too long to read)."""

    until: float = 0.0


@dataclass(frozen=True)
class RelayDeps:
    client: SkyHubClient
    db: Database
    # from Settings: what the relay reads of it
    batch_size: int
    lease_seconds: float
    catch_up_interval: float
    max_attempts: int
    retry_after_max: float
    stock_buffer: int
    price_drop_guard: float | None
    # SKYSYNC_RESERVE_OPEN_ORDERS: quantities less the units of unconsumed orders
    reserve_open_orders: bool
    discovery_max_pages: int
    lane_rule: LaneRule
    # chunks of this account with the workers at once (handout.py)
    chunks_at_once: int
    clock: Callable[[], datetime] = utcnow
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep
    # requests at once per chunk, and the quick retries of one call (unit_of_work.call)
    concurrency: int = 8
    quick_retries: int = 2
    quick_retry_delay: float = 0.5
    # per push thread: the open unit of work of the SKU it is pushing (unit_of_work.py)
    local: threading.local = field(default_factory=threading.local, compare=False)
    discovery: DiscoveryPause = field(default_factory=DiscoveryPause, compare=False)

    @property
    def account(self) -> str:
        """The SkyHub account this relay works for: its client's credentials, its rows."""
        return self.db.account

    @property
    def reserving(self) -> Reserving | None:
        """The stock reservation with this account's buffer; None when it is off."""
        if not self.reserve_open_orders:
            return None
        return Reserving(stock_buffer=self.stock_buffer)

    @property
    def url(self) -> str:
        """The database's URL (for what needs a connection of its own, such as LISTEN)."""
        return self.db.url

    @classmethod
    def from_settings(
        cls,
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
    ) -> RelayDeps:
        """``account``: whose rows (the database seen as that account's), and its overrides of
        the stock buffer and the price drop guard (None: the single-account settings')."""
        db = database or Database.for_url(database_url or settings.database_url)
        return cls(
            client=client,
            db=db if account is None else db.for_account(account.name),
            clock=clock,
            rng=rng or random.Random(),
            sleep=sleep,
            concurrency=concurrency,
            quick_retries=quick_retries,
            quick_retry_delay=quick_retry_delay,
            batch_size=settings.batch_size,
            lease_seconds=settings.lease_seconds,
            catch_up_interval=settings.catch_up_interval,
            max_attempts=settings.max_attempts,
            retry_after_max=settings.skyhub_retry_after_max,
            stock_buffer=(
                settings.stock_buffer
                if account is None
                else account.effective_stock_buffer(settings)
            ),
            price_drop_guard=(
                settings.price_drop_guard
                if account is None
                else account.effective_price_drop_guard(settings)
            ),
            reserve_open_orders=settings.reserve_open_orders,
            discovery_max_pages=settings.discovery_max_pages,
            chunks_at_once=settings.chunks_per_account,
            lane_rule=settings.lane_rule,
        )
