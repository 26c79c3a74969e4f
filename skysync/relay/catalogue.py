"""Learning a catalogue made outside skysync: which SKUs SkyHub has, and which are variations of
which product.

skysync learns a SKU's place in the catalogue as it writes it: a product row creates the
product with its variations, and their item rows say so. A seller who comes from another
integrator, or who made the catalogue in SkyHub's portal, writes only price and stock rows, for
SKUs skysync has never seen. Each of those was first tried as a product: a variation's stock
paid a 404 in the products bucket before it went to ``PUT /variations``, for every row, since
nothing remembered it (issue 19, part 4: 90 parents with a stock row each and one on their
variation took 270 requests, 180 of them in one bucket, 0.47 of what the two buckets allow).

So when a batch claims price or stock rows of SKUs skysync has no item for, it first reads
SkyHub's listing (``GET /products``, 100 products a page with their variations, through the
rate limiter's read bucket, which the writes do not use) to its end, and remembers every SKU
listed: that SkyHub has it, and its parent. The whole listing, not until the batch's SKUs are
found: the next batches' SKUs are then known too (stopping early made a backlog of 10,000 such
SKUs read the first pages again in each of its 20 batches, 1,050 pages instead of 100).
The batch then sends each variation's rows to ``/variations`` and each product's to
``/products``, at the same time (planner.ordering_parents). SKUs the whole listing did not show
are remembered as checked and absent, so they do not start another listing; they go as before.

A listing longer than ``SKYSYNC_DISCOVERY_MAX_PAGES`` pages (300: about 33 s at SkyHub's 9
pages a second, a catalogue of 30,000 products) is not read at all: its first page says how
long it is, and its SKUs are remembered; the process does not ask again for an hour. A failed
read is logged and the batch goes on as before; refused credentials stop the batch before any
write, as a refused write does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection, Iterator
from functools import partial

from skysync.domain.reconcile import listed_skus
from skysync.relay import unit_of_work as unit
from skysync.relay.deps import RelayDeps
from skysync.skyhub.client import ProductPage
from skysync.skyhub.errors import AuthenticationError, SkyHubError
from skysync.store import items as item_store

log = logging.getLogger("skysync.relay")

PER_PAGE = 100
TOO_LONG_PAUSE = 3600.0  # seconds before a process looks again at a catalogue too long to read


def listing_pages(deps: RelayDeps, per_page: int = PER_PAGE) -> Iterator[ProductPage]:
    """Every page of SkyHub's listing (``GET /products``, following its ``next`` cursor), each
    read when asked for, through the limiter's read bucket with the relay's quick retries."""
    cursor: str | None = None
    while True:
        page = unit.call(deps, partial(deps.client.list_products, per_page=per_page, cursor=cursor))
        yield page
        if not page.next_cursor or not page.products:
            return
        cursor = page.next_cursor


def learn_unknown(deps: RelayDeps, unknown: Collection[str]) -> set[str]:
    """Read SkyHub's listing (to its end, at most SKYSYNC_DISCOVERY_MAX_PAGES pages) and
    remember every SKU it showed; returns those of ``unknown`` it found."""
    wanted = set(unknown)
    max_pages = deps.discovery_max_pages
    if not wanted or max_pages <= 0 or time.monotonic() < deps.discovery.until:
        return set()
    listed: dict[str, str | None] = {}
    pages = 0
    complete = False
    try:
        for page in listing_pages(deps):
            pages += 1
            for product in page.products:
                for entry in listed_skus(product):
                    listed[entry.sku] = entry.parent_sku
            if not page.next_cursor or not page.products:
                complete = True
                break
            total_pages = math.ceil(page.total / PER_PAGE) if isinstance(page.total, int) else 0
            if pages == 1 and total_pages > max_pages:
                # not worth asking again at every batch: this process looks again in an hour
                deps.discovery.until = time.monotonic() + TOO_LONG_PAUSE
                log.warning(
                    "%d SKUs skysync has not seen yet: SkyHub's catalogue is %d pages long, "
                    "more than SKYSYNC_DISCOVERY_MAX_PAGES (%d), so it is not read to learn "
                    "them; each goes to /products first, then /variations if SkyHub has no "
                    "such product (this process asks again in an hour)",
                    len(wanted - listed.keys()),
                    total_pages,
                    max_pages,
                )
                break
            if pages >= max_pages:
                break
    except AuthenticationError:
        raise  # the batch stops as a refused write stops it: its rows go back untouched
    except SkyHubError as exc:
        log.warning("could not read SkyHub's catalogue to learn %d new SKUs: %s", len(wanted), exc)
    absent = wanted - listed.keys() if complete else set()
    with deps.db.scope() as session:
        item_store.learn_listed(session, listed, absent, deps.clock())
    found = wanted & listed.keys()
    log.info(
        "learned SkyHub's catalogue from %d page(s): %d SKUs listed (%d variations); %d of %d "
        "new SKUs found, %d absent",
        pages,
        len(listed),
        sum(1 for parent in listed.values() if parent is not None),
        len(found),
        len(wanted),
        len(absent),
    )
    return found
