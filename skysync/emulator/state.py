"""The state object every room of one account shares, and the lock that guards it (one lock
for the whole emulator: every account's state holds the same).

The lock is never held while sleeping (latency, hangs), so a slow request never stalls the
others.  Methods and functions whose name ends in ``_locked`` expect the caller to hold it.
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict, deque
from typing import Any

from skysync.emulator.config import SandboxConfig

_LOG_CAPACITY = 100_000  # keeps a long-running CLI emulator from growing without bound


class EmulatorState:
    """Everything one account holds: catalogue, orders and queue, rate windows, faults, log.

    Every account's state shares the emulator's config, lock and stopping event (given here);
    a state made alone gets its own.
    """

    def __init__(
        self,
        config: SandboxConfig,
        lock: threading.Lock | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.lock = lock if lock is not None else threading.Lock()
        # Set while stopping: sleeps (latency, hangs) end at once.
        self.stopping = stopping if stopping is not None else threading.Event()
        self.clear()

    def clear(self) -> None:
        """Forget everything but the config (the caller holds the lock, or nobody shares yet)."""
        # catalogue
        self.products: dict[str, dict[str, Any]] = {}
        # listing order: a product's serial is given when it is created and never reused, so a
        # cursor ("after serial N") neither skips nor repeats products created or deleted
        # while a client pages
        self.product_serial: dict[str, int] = {}
        self.next_serial = 0
        self.linked_at: dict[str, float | None] = {}
        self.variations: dict[str, dict[str, Any]] = {}
        self.variation_parent: dict[str, str] = {}
        self.frozen_writes: list[dict[str, Any]] = []
        # SkyHub's own errors about accepted products and orders, per entity type
        self.sync_errors: dict[str, list[dict[str, Any]]] = {"products": [], "orders": []}
        # orders
        self.orders: dict[str, dict[str, Any]] = {}
        self.queue: OrderedDict[str, float] = OrderedDict()  # code -> visible from (monotonic)
        self.order_serial = 0
        # limits and faults
        self.windows: dict[tuple[str, str], deque[float]] = {}
        self.scripted: list[list[Any]] = []
        self.rng = random.Random(self.config.seed)
        # request log
        self.log: deque[dict[str, Any]] = deque(maxlen=_LOG_CAPACITY)
        self.counts: dict[str, int] = {}
