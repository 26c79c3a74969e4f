"""The request pacer shared by every worker: one moving one-second window per SkyHub account,
endpoint and method, kept in Redis when ``SKYSYNC_REDIS_URL`` is set (so every process on every
machine draws from the same budget) and in memory otherwise (one process: the embedded default).

Built on the ``limits`` package (moving window strategy). Its windows hold whole requests, so a
fractional rate is applied as the whole number below it: the default 8.5/s paces at 8 requests
in any one-second window, under SkyHub's 9/s even when network jitter bunches arrivals. Rates
below 1/s become one request per ``round(1/rate)`` seconds.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter


class RateLimitTimeout(Exception):
    """No request slot came free within the wait the caller allowed."""


def window_item(rate: float) -> RateLimitItem:
    """The ``limits`` item for ``rate`` requests per second (see the module docstring)."""
    if rate >= 1:
        return RateLimitItemPerSecond(math.floor(rate), 1)
    return RateLimitItemPerSecond(1, max(1, round(1 / rate)))


def account_namespace(skyhub_url: str, email: str | None) -> str:
    """A stable, non-identifying key per SkyHub account (the email is not written to Redis)."""
    digest = hashlib.sha256(f"{skyhub_url}|{email or ''}".encode()).hexdigest()[:16]
    return f"skysync:rl:{digest}"


class RateLimiter:
    """``acquire(bucket)`` blocks until a request to that bucket may go out.

    ``rate_for(bucket)`` gives a bucket's own rate (SkyHub allows 1/s on some endpoints);
    by default every bucket runs at ``rate``.
    """

    def __init__(
        self,
        rate: float,
        *,
        storage_url: str | None = None,
        namespace: str = "skysync:rl:local",
        rate_for: Callable[[str], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.rate = rate
        self.namespace = namespace
        self.storage_url = storage_url or "memory://"
        self._limiter = MovingWindowRateLimiter(storage_from_string(self.storage_url))
        self._items: dict[str, RateLimitItem] = {}
        self._rate_for = rate_for or (lambda _bucket: rate)
        self._sleep = sleep

    def _item(self, bucket: str) -> RateLimitItem:
        item = self._items.get(bucket)
        if item is None:
            item = self._items[bucket] = window_item(self._rate_for(bucket))
        return item

    def try_acquire(self, bucket: str) -> float:
        """Take a slot now and return 0, or return how many seconds until one may be free."""
        item = self._item(bucket)
        if self._limiter.hit(item, self.namespace, bucket):
            return 0.0
        stats = self._limiter.get_window_stats(item, self.namespace, bucket)
        return max(0.005, stats.reset_time - time.time())

    def acquire(self, bucket: str, *, max_wait: float = 120.0) -> float:
        """Block until a slot for ``bucket`` is taken; return the seconds spent waiting."""
        waited = 0.0
        while True:
            delay = self.try_acquire(bucket)
            if delay == 0.0:
                return waited
            if waited + delay > max_wait:
                raise RateLimitTimeout(f"no request slot for {bucket} within {max_wait:.0f} s")
            self._sleep(delay)
            waited += delay

    def reset(self) -> None:
        """Forget every window (tests and the emulator-backed demo)."""
        self._limiter.storage.reset()
