"""Lanes: keeping every SkyHub rate-limit bucket busy at once, as pure functions.

SkyHub limits each endpoint and method on its own (``PUT /products/{sku}`` 9/s,
``PUT /variations/{sku}`` 9/s, each order action 9/s...). A batch that sends all its product
writes and then all its variation writes takes twice as long as SkyHub requires. So the work
is sorted into lanes, one per bucket its first write will probably count against
(:func:`lane_of_key`), and the lanes are interleaved (:func:`interleave`) when a batch is cut
into chunks and when a chunk's keys are handed to threads; each lane also gets threads of its
own (:func:`threads_per_lane`), so that threads waiting on one bucket's limiter never hold up
the requests of another.

Order is kept where it matters: a family (a parent and its variations) is one unit, its parent
first, and each lane keeps its own order. Between lanes there is none: updates of existing
products, variations and orders do not depend on each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from skysync.domain.kinds import Kind

T = TypeVar("T")

# The path segment of each order step (skyhub-api.md §4).
ORDER_ACTIONS: Mapping[str, str] = {
    Kind.ORDER_INVOICE: "invoice",
    Kind.ORDER_SHIPMENT: "shipments",
    Kind.ORDER_DELIVERY: "delivery",
    Kind.ORDER_CANCEL: "cancel",
    Kind.ORDER_SHIPMENT_EXCEPTION: "shipment_exception",
}


def lane_of_key(kind: str, *, variation: bool) -> str:
    """The bucket (named as :func:`skysync.skyhub.buckets.bucket_for` names it) that a key's
    write will probably count against. ``kind`` is the kind of the key's first row (an order's
    first step goes first); ``variation`` says skysync knows the SKU as a variation.

    Probably: a product SkyHub lacks is created (``products:POST``), a price row for a SKU
    nobody registered may turn out to be a variation. Guessing wrong costs only some overlap,
    never order or correctness."""
    action = ORDER_ACTIONS.get(kind)
    if action is not None:
        return f"orders/{action}:POST"
    return "variations:PUT" if variation else "products:PUT"


def interleave(items: Sequence[T], lane_of: Callable[[T], str]) -> list[T]:
    """``items`` with each lane's items spread evenly over the whole list, each lane in its own
    order: 4 A and 2 B become A B A A B A. Any stretch of the result then holds work for every
    lane in proportion, so chunks cut from it, and threads taking from it in order, keep all
    buckets busy until the end instead of one after the other."""
    lanes: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        lanes.setdefault(lane_of(item), []).append(index)
    placed: list[tuple[float, int, int]] = []
    for rank, indexes in enumerate(lanes.values()):
        count = len(indexes)
        placed += [((i + 0.5) / count, rank, index) for i, index in enumerate(indexes)]
    return [items[index] for _, _, index in sorted(placed)]


def threads_per_lane(lane_sizes: Mapping[str, int], workers: int) -> dict[str, int]:
    """Share ``workers`` threads among lanes (name -> units of work): one each first (as far as
    they go, larger lanes first), the rest in proportion to the work. A lane's own threads take
    only its work while it has some, so no lane waits for threads that wait on another bucket."""
    lanes = sorted((n, name) for name, n in lane_sizes.items() if n > 0)
    lanes.reverse()  # largest first; ties by name, descending: deterministic
    share = {name: 0 for _, name in lanes}
    first = lanes[: max(0, workers)]
    for _, name in first:
        share[name] = 1
    left = max(0, workers) - len(first)
    while left > 0:
        # the lane with the most work per thread so far, but never more threads than work
        room = [(n / share[name], n, name) for n, name in lanes if share[name] < n]
        if not room:
            break
        _, _, name = max(room)
        share[name] += 1
        left -= 1
    return share


def lead_with(
    items: Sequence[T], lane_of: Callable[[T], str], lanes: Sequence[str], k: int
) -> list[T]:
    """``items`` turned round (a cyclic shift: the interleaving holds) to begin with an item of
    lane ``lanes[k % len(lanes)]``, if it has one. Chunk ``k`` of a batch leads with the k-th
    lane: the workers start their chunks together, each with one request alone (the
    credentials check), and these then go to different buckets instead of queueing on one."""
    if not lanes:
        return list(items)
    wanted = lanes[k % len(lanes)]
    start = next((i for i, item in enumerate(items) if lane_of(item) == wanted), 0)
    return [*items[start:], *items[:start]]
