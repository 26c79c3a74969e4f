"""Benchmark: does a limiter keep its promise under concurrency? 16 threads hammer one bucket for
8 s; we report the granted rate and the most grants inside any one-second window (SkyHub refuses
the 10th request inside a second).

    .venv/bin/python -m bench.limiter_accuracy

Compares skysync's GCRA limiter (memory and Redis) with the `limits` package's moving window
(memory and Redis), which issue #4 asked us to prefer unless a benchmark showed it could not
keep the pace. Redis: 127.0.0.1:6379, db 12 (flushed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from skysync.skyhub.ratelimit import RateLimiter

REDIS = "redis://127.0.0.1:6379/12"


def hammer(take: Callable[[], None], threads: int = 16, seconds: float = 8.0) -> list[float]:
    grants: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        end = time.time() + seconds
        while time.time() < end:
            take()
            with lock:
                grants.append(time.time())
            time.sleep(0.2)  # a request's latency

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sorted(grants)


def max_in_window(times: list[float], window: float = 1.0) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def report(name: str, grants: list[float], limit: float) -> None:
    rate = (len(grants) - 1) / (grants[-1] - grants[0])
    print(f"{name:<34} limit {limit:>4}/s  granted {rate:5.2f}/s  "
          f"max in any 1 s: {max_in_window(grants):>2}")  # fmt: skip


def main() -> None:
    redis.Redis.from_url(REDIS).flushdb()
    for storage in ("memory://", REDIS):
        limiter = RateLimiter(8.5, storage_url=storage, namespace=f"bench:{time.time()}")
        report(f"skysync GCRA ({storage.split(':')[0]})",
               hammer(lambda lim=limiter: lim.acquire("b")), 8.5)  # fmt: skip
    try:
        from limits import RateLimitItemPerSecond
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter
    except ImportError:
        print("limits not installed: pip install limits to compare")
        return
    item = RateLimitItemPerSecond(8, 1)
    for storage in ("memory://", REDIS):
        lim = MovingWindowRateLimiter(storage_from_string(storage))
        ns = f"bench:{time.time()}"

        def take(lim: MovingWindowRateLimiter = lim, ns: str = ns) -> None:
            while not lim.hit(item, ns):
                reset = lim.get_window_stats(item, ns).reset_time
                time.sleep(max(0.005, reset - time.time()))

        report(f"limits moving window ({storage.split(':')[0]})", hammer(take), 8)
    redis.Redis.from_url(REDIS).flushdb()


if __name__ == "__main__":
    main()
