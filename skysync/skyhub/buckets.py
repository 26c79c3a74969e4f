"""SkyHub's rate-limit policy and our request accounting: which bucket a request counts
against (SkyHub limits per account, endpoint family and method), the pace we keep in each, and
the per-endpoint request counts the metrics report."""

from __future__ import annotations

import threading

_ORDER_ACTIONS = ("invoice", "shipments", "delivery", "cancel", "shipment_exception", "approval")


def bucket_for(method: str, path: str) -> str:
    """The SkyHub rate-limit bucket of a request: endpoint family and method
    (skyhub-api.md §5: products, variations, order actions, queues at 9/s; the rest 1/s)."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    head = parts[0] if parts else ""
    if head == "products" and len(parts) >= 3 and parts[2] == "variations":
        return f"variations:{method}"
    if head in ("products", "variations", "queues"):
        return f"{head}:{method}"
    if head == "orders":
        if method == "GET":
            return "orders:GET:one" if len(parts) >= 2 else "orders:GET:list"
        if len(parts) >= 3 and parts[2] in _ORDER_ACTIONS:
            return f"orders/{parts[2]}:{method}"
        return f"orders:{method}"
    return f"other:{head}:{method}"


# The buckets SkyHub allows 9/s (skyhub-api.md §5); every other one gets 1/s.
FAST_BUCKETS = frozenset(
    {
        "products:GET", "products:POST", "products:PUT", "products:DELETE",
        "variations:POST", "variations:PUT", "variations:DELETE",
        "queues:GET", "queues:DELETE", "orders:POST",
        *(f"orders/{action}:POST" for action in _ORDER_ACTIONS),
    }
)  # fmt: skip


# SkyHub allows 1/s on the slow buckets. Pacing at exactly 1/s leaves no room for network
# jitter: a first request that arrives late and a second that arrives early are less than a
# second apart at SkyHub, which answers 429. The same margin as 8.5 under 9/s.
SLOW_BUCKET_RATE = 0.9


def bucket_rate(bucket: str, rate: float) -> float:
    """Our pace for a bucket: ``rate`` for SkyHub's 9/s buckets, at most SLOW_BUCKET_RATE for
    the 1/s ones (order reads, variation reads, everything else)."""
    return rate if bucket in FAST_BUCKETS else min(rate, SLOW_BUCKET_RATE)


def route_of(path: str) -> str:
    """The endpoint template of a path, for metrics: /products/A%20B -> /products/{sku}."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if not parts:
        return "/"
    head, rest = parts[0], parts[1:]
    if head == "queues" and rest[:1] == ["orders"]:
        return "/queues/orders" + ("/{code}" if len(rest) > 1 else "")
    if head in ("products", "variations") and rest:
        tail = "/variations" if head == "products" and rest[1:2] == ["variations"] else ""
        return f"/{head}/{{sku}}{tail}"
    if head == "orders" and rest:
        return "/orders/{code}" + (f"/{rest[1]}" if len(rest) > 1 else "")
    return "/" + "/".join(parts)


class RequestCounter:
    """Requests by (method, route, status), kept in memory until the relay saves them."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()
        self.total = 0  # every request since this client began (never taken): drain's progress

    def add(self, method: str, path: str, status: int | None) -> None:
        key = (method, route_of(path), "error" if status is None else str(status))
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            self.total += 1

    def take(self) -> dict[tuple[str, str, str], int]:
        """Everything counted since the last take."""
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts
