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

# The same, reserving: a request that may not go now takes the next free slot anyway and learns
# how long to wait for it (-1, nothing taken, when that is longer than ARGV[3] microseconds).
# One call per request however many wait on the bucket: with "ask, sleep, ask again", every
# slot woke every waiter and all but one asked in vain (16 threads on a bucket made 15 wasted
# calls per request).
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


# A sleeper woken later than this share of the interval after its slot takes another slot
# (RateLimiter.acquire); at most MAX_LATE_RETRIES times, then it goes.
LATE = 0.3
MAX_LATE_RETRIES = 3


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
        clock: Callable[[], float] = time.monotonic,
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
        self._clock = clock

    def _params(self, bucket: str) -> tuple[int, int]:
        interval = round(1_000_000 / self._rate_for(bucket))
        return interval, interval * (self.burst - 1)

    def try_acquire(self, bucket: str) -> float:
        """Take a slot now and return 0, or return how many seconds until one may be free."""
        interval, tolerance = self._params(bucket)
        return self._store.take(f"{self.namespace}:{bucket}", interval, tolerance)

    def acquire(self, bucket: str, *, max_wait: float = 120.0) -> float:
        """Take the next free slot of ``bucket`` (one call to the store, whoever else waits)
        and sleep until it; return the seconds spent waiting. RateLimitTimeout, with nothing
        taken, when that slot is more than ``max_wait`` seconds away.

        A sleeper woken well after its slot (a busy process: another thread held the
        interpreter) does not go then: the request of the next slot may be leaving on time, and
        SkyHub would get the two closer together than the pace, ten in one second at 8.5/s. It
        takes the next free slot instead (:data:`LATE`), and the slot it missed stays empty."""
        interval, tolerance = self._params(bucket)
        key = f"{self.namespace}:{bucket}"
        waited = 0.0
        for _ in range(MAX_LATE_RETRIES + 1):
            left = max_wait - waited
            delay = self._store.reserve(key, interval, tolerance, round(left * 1_000_000))
            if delay < 0:
                raise RateLimitTimeout(f"no request slot for {bucket} within {max_wait:.0f} s")
            if delay <= 0:
                return waited
            woke = self._clock() + delay
            self._sleep(delay)
            late = self._clock() - woke
            waited += delay + max(0.0, late)
            if late <= LATE * interval / 1e6:
                return waited
        return waited

    def reset(self) -> None:
        """Forget every bucket of this namespace (tests, benchmarks)."""
        self._store.reset(self.namespace)
