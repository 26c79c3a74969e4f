"""The request pacer shared by every worker: one budget per SkyHub account, endpoint and method,
kept in Redis when ``SKYSYNC_REDIS_URL`` is set (every process on every machine draws from the
same budget) and in memory otherwise (one process: the embedded default).

Algorithm: GCRA (the generic cell rate algorithm, "leaky bucket as a meter"). Each bucket keeps
one number, the theoretical arrival time (TAT) of the next request; a request may go when
``TAT - tolerance <= now`` and pushes TAT forward by ``1/rate``. With no burst tolerance the
requests leave evenly spaced ``1/rate`` apart, so at 8.5/s no one-second window ever holds more
than 9, SkyHub's limit, and fractional rates are honoured exactly. In Redis the check-and-set is
one Lua script using the Redis server's clock, so it is atomic and immune to clock skew between
worker machines.

Why not the ``limits`` package: its Redis moving window let 16 requests through in one second at
a limit of 8/s under 16 concurrent threads (``bench/limiter_accuracy.py``), which SkyHub answers
with 429s. Its in-memory window was exact, but one algorithm for both storages is simpler.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Protocol

_GCRA_LUA = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - tolerance > now then
  return tat - tolerance - now
end
local new_tat = tat + interval
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return 0
"""

# The same, reserving: the next free place whether due now or not, and how long to wait for it
# (-1, nothing taken, when that is longer than ARGV[3] microseconds): the tickets of
# RateLimiter.acquire.
_GCRA_RESERVE_LUA = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
if wait > max_wait then return -1 end
local new_tat = tat + interval
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return wait
"""


class RateLimitTimeout(Exception):
    """No request slot came free within the wait the caller allowed."""


class RateLimiterUnavailable(Exception):
    """The shared limiter's storage (Redis) cannot be reached."""


def account_namespace(skyhub_url: str, email: str | None) -> str:
    """A stable, non-identifying key per SkyHub account (the email is not written to Redis)."""
    digest = hashlib.sha256(f"{skyhub_url}|{email or ''}".encode()).hexdigest()[:16]
    return f"skysync:rl:{digest}"


class _Store(Protocol):
    def take(self, key: str, interval_us: int, tolerance_us: int) -> float:
        """0 when a slot was taken, else the seconds to wait before asking again."""

    def reserve(self, key: str, interval_us: int, tolerance_us: int, max_wait_us: int) -> float:
        """Take the next free slot; the seconds until it (-1: none within ``max_wait_us``)."""

    def reset(self, prefix: str) -> None: ...


class _MemoryStore:
    def __init__(self) -> None:
        self._tat: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, key: str, interval_us: int, tolerance_us: int) -> float:
        with self._lock:
            now = time.monotonic_ns() // 1000
            tat = max(self._tat.get(key, 0), now)
            if tat - tolerance_us > now:
                return (tat - tolerance_us - now) / 1e6
            self._tat[key] = tat + interval_us
            return 0.0

    def reserve(self, key: str, interval_us: int, tolerance_us: int, max_wait_us: int) -> float:
        with self._lock:
            now = time.monotonic_ns() // 1000
            tat = max(self._tat.get(key, 0), now)
            wait = max(0, tat - tolerance_us - now)
            if wait > max_wait_us:
                return -1.0
            self._tat[key] = tat + interval_us
            return wait / 1e6

    def reset(self, prefix: str) -> None:
        with self._lock:
            for key in [k for k in self._tat if k.startswith(prefix)]:
                del self._tat[key]


class _RedisStore:
    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._script = self._redis.register_script(_GCRA_LUA)
        self._reserve = self._redis.register_script(_GCRA_RESERVE_LUA)
        self._errors: tuple[type[Exception], ...] = (redis.RedisError,)

    def take(self, key: str, interval_us: int, tolerance_us: int) -> float:
        try:
            wait_us = self._script(keys=[key], args=[interval_us, tolerance_us])
        except self._errors as exc:
            raise RateLimiterUnavailable(f"rate limiter storage: {type(exc).__name__}") from exc
        return int(wait_us) / 1e6

    def reserve(self, key: str, interval_us: int, tolerance_us: int, max_wait_us: int) -> float:
        try:
            wait_us = self._reserve(keys=[key], args=[interval_us, tolerance_us, max_wait_us])
        except self._errors as exc:
            raise RateLimiterUnavailable(f"rate limiter storage: {type(exc).__name__}") from exc
        return -1.0 if int(wait_us) < 0 else int(wait_us) / 1e6

    def reset(self, prefix: str) -> None:
        try:
            for key in self._redis.scan_iter(match=f"{prefix}*", count=500):
                self._redis.delete(key)
        except self._errors as exc:
            raise RateLimiterUnavailable(f"rate limiter storage: {type(exc).__name__}") from exc


class RateLimiter:
    """``acquire(bucket)`` blocks until a request to that bucket may go out.

    ``rate_for(bucket)`` gives a bucket's own rate in requests per second (SkyHub allows 1/s on
    some endpoints); by default every bucket runs at ``rate``. ``burst`` is how many requests may
    leave back to back after a quiet spell (1: always evenly spaced).
    """

    def __init__(
        self,
        rate: float,
        *,
        storage_url: str | None = None,
        namespace: str = "skysync:rl:local",
        rate_for: Callable[[str], float] | None = None,
        burst: int = 1,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.namespace = namespace
        self.burst = max(1, burst)
        self.shared = bool(storage_url and not storage_url.startswith("memory"))
        self._store: _Store = _RedisStore(storage_url) if self.shared else _MemoryStore()  # type: ignore[arg-type]
        self._rate_for = rate_for or (lambda _bucket: rate)
        self._sleep = sleep

    def _params(self, bucket: str) -> tuple[int, int]:
        interval = round(1_000_000 / self._rate_for(bucket))
        return interval, interval * (self.burst - 1)

    def try_acquire(self, bucket: str) -> float:
        """Take a slot now and return 0, or return how many seconds until one may be free."""
        interval, tolerance = self._params(bucket)
        return self._store.take(f"{self.namespace}:{bucket}", interval, tolerance)

    def acquire(self, bucket: str, *, max_wait: float = 120.0) -> float:
        """Block until a slot for ``bucket`` is taken; return the seconds spent waiting.
        RateLimitTimeout when none comes within ``max_wait`` seconds.

        Two steps. A ticket first: the next place in the bucket's queue, reserved in one call
        (a second GCRA key, ``:queue``), says when to wake. Then the slot itself, taken by the
        GCRA check as before (granted only once ``1/rate`` has passed since the last grant,
        from the time it is granted). The ticket spares the waiters a stampede: without it every
        slot woke every waiter and all but one asked in vain (16 threads on a bucket made 15
        wasted calls a request). The check keeps the grants apart however late a sleeper
        wakes: a late one pushes the next grant back instead of going right before it."""
        interval, tolerance = self._params(bucket)
        key = f"{self.namespace}:{bucket}"
        budget = round(max_wait * 1_000_000)
        ticket = self._store.reserve(f"{key}:queue", interval, tolerance, budget)
        if ticket < 0:
            raise RateLimitTimeout(f"no request slot for {bucket} within {max_wait:.0f} s")
        waited = ticket
        if ticket > 0:
            self._sleep(ticket)
        while True:
            delay = self._store.take(key, interval, tolerance)
            if delay <= 0.0:
                return waited
            if waited + delay > max_wait:
                raise RateLimitTimeout(f"no request slot for {bucket} within {max_wait:.0f} s")
            self._sleep(delay)
            waited += delay

    def reset(self) -> None:
        """Forget every bucket of this namespace (tests, benchmarks)."""
        self._store.reset(self.namespace)
