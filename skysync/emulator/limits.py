"""Rate limits: SkyHub's per (bucket, method) sliding one-second windows, and the 429 answer.

``rate_limit=None`` keeps SkyHub's own limits (9/s and 1/s buckets); a rate R replaces every
9/s limit by R and scales the 1/s ones by R/9.  A refused request does not use up the window.
"""

from __future__ import annotations

import math
from collections import deque

from skysync.emulator.config import SandboxConfig
from skysync.emulator.replies import Reply, error_reply
from skysync.emulator.routes import Route
from skysync.emulator.state import EmulatorState


def route_rate(config: SandboxConfig, route: Route) -> float:
    """Requests per second the route's bucket allows under `config`."""
    if config.rate_limit is None:
        return float(route.base_limit)
    if route.base_limit >= 9:
        return float(config.rate_limit)
    return config.rate_limit * route.base_limit / 9.0


def admit_locked(state: EmulatorState, route: Route, now: float) -> bool:
    """Sliding one-second window per (bucket, method); refused requests are not counted."""
    cfg = state.config
    if not cfg.rate_limits_enabled:
        return True
    rate = route_rate(cfg, route)
    if rate >= 1:
        capacity, window = math.floor(rate + 1e-9), 1.0
    else:
        # Below one per second: one request per 1/rate seconds.
        capacity, window = 1, 1.0 / rate
    accepted = state.windows.setdefault((route.bucket, route.method), deque())
    while accepted and accepted[0] <= now - window:
        accepted.popleft()
    if len(accepted) >= capacity:
        return False
    accepted.append(now)
    return True


def peak_per_second(times: list[float]) -> int:
    """The most of ``times`` (request log ``t`` values) that fall in any one-second window:
    how benchmarks and the compose test read a request log against SkyHub's per-second limits."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def too_many_requests(config: SandboxConfig) -> Reply:
    """SkyHub's 429, with ``Retry-After`` when the config asks for it."""
    reply = error_reply(429, "Limite de requisições excedido (too many requests)")
    if config.retry_after_header:
        value = config.retry_after_seconds
        reply.headers["Retry-After"] = value if isinstance(value, str) else f"{value:g}"
    return reply
