"""One SKU's push as one unit of work, and the one way a request goes out (quick retries, the
attempt recorded first).

A SKU's push is one unit of work up to its first request (:func:`request_scope`): the item
reads it decides from, and the attempt record, in one transaction that commits (flushed) just
before the request leaves; the items it read stay locked meanwhile, so what was decided from
them still holds when the attempt is recorded."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from skysync.domain.planner import ItemView
from skysync.domain.reconcile import value_in
from skysync.relay.deps import RelayDeps
from skysync.relay.outcome import Learned
from skysync.skyhub.errors import DeadlineExceeded, NotFound, RetryableError
from skysync.store import items as item_store
from skysync.store import outbox_reads
from skysync.store.request_stats import save_request_counts

T = TypeVar("T")


@contextmanager
def request_scope(deps: RelayDeps) -> Iterator[None]:
    """One SKU's push: its reads (:func:`load_item`, :func:`session`) and its attempt records
    go in one transaction, opened by the first of them and committed (flushed) by :func:`call`
    before each SkyHub call, or when the push ends. Three transactions per request were one:
    the read, the attempt, each with its own connection checkout."""
    deps.local.active = True
    try:
        yield
    except BaseException as exc:
        _end_unit(deps, exc)
        raise
    else:
        _end_unit(deps, None)
    finally:
        deps.local.active = False


@contextmanager
def session(deps: RelayDeps) -> Iterator[Session]:
    """This thread's open unit of work inside :func:`request_scope` (opened on first use), else
    a transaction of its own. Never a second connection while one is open: the open one holds
    locks (on SQLite, the write lock) that a second would wait for."""
    local = deps.local
    if not getattr(local, "active", False):
        with deps.db.scope() as own:
            yield own
        return
    unit: tuple[AbstractContextManager[Session], Session] | None
    unit = getattr(local, "unit", None)
    if unit is None:
        scope = deps.db.scope()
        unit = local.unit = (scope, scope.__enter__())
    yield unit[1]


def _end_unit(deps: RelayDeps, exc: BaseException | None) -> None:
    """Commit this thread's open unit of work (roll it back with ``exc``), if any."""
    unit = getattr(deps.local, "unit", None)
    if unit is None:
        return
    deps.local.unit = None
    if exc is None:
        unit[0].__exit__(None, None, None)
    else:
        unit[0].__exit__(type(exc), exc, exc.__traceback__)


def load_item(deps: RelayDeps, sku: str) -> ItemView:
    """What we know SkyHub has for ``sku`` (acknowledged fields, frozen, in SkyHub), read fresh
    for each request and locked until its attempt is recorded (request_scope)."""
    with session(deps) as s:
        return item_store.view(item_store.lock(s, sku), sku)


def erp_value(deps: RelayDeps, item: ItemView) -> Callable[[str], Any]:
    """The ERP's latest applied value of a field of ``item``, read (in this push's unit of
    work) from the row ``last_applied`` names for it; None when there is none. Asked only when
    SkyHub's acknowledged values cannot tell it (skysync/domain/promotions.py)."""

    def lookup(name: str) -> Any:
        row_id = item.last_applied.get(name)
        if row_id is None:
            return None
        with session(deps) as s:
            found = outbox_reads.accepted_rows(s, [row_id]).get(row_id)
        if found is None:
            return None
        present, value = value_in(found, item.sku, name)
        return value if present else None

    return lookup


def record_attempt(deps: RelayDeps, learned: Learned, sku: str, fields: dict[str, Any]) -> None:
    """Before a write leaves: record it durably (committed, flushed, before :func:`call` sends
    anything), so that if no answer is ever recorded (lost, killed, crashed), its fields count
    as unknown."""
    learned.attempt(sku, fields)
    with session(deps) as s:
        item_store.begin_attempt(s, sku, fields, deps.clock())


def call(deps: RelayDeps, fn: Callable[[], T]) -> T:
    """One SkyHub call with a few quick retries for transient failures. The open unit of work
    (the reads and attempt records before it) commits first: the attempt is durable before the
    request leaves, and no lock or connection is held across the network.

    An answer that outlasted its deadline is not retried on the spot: a SkyHub that trickled
    one answer is likely to trickle the next, and three deadlines in a row would hold the task
    towards its time limit. The rows go back with backoff instead."""
    _end_unit(deps, None)
    for attempt in range(deps.quick_retries + 1):
        try:
            return fn()
        except DeadlineExceeded:
            raise
        except RetryableError:
            if attempt >= deps.quick_retries:
                raise
            deps.sleep(deps.quick_retry_delay * (2**attempt))
    raise AssertionError("unreachable")


def exists(deps: RelayDeps, read: Callable[[str], Any], sku: str) -> bool:
    """Does SkyHub have it? (``read`` is get_product or get_variation.)"""
    try:
        call(deps, lambda: read(sku))
    except NotFound:
        return False
    return True


def save_client_counts(deps: RelayDeps) -> None:
    """Move the client's request counts into the database, for `skysync metrics`."""
    counts = deps.client.counter.take()
    if counts:
        with deps.db.scope() as s:
            save_request_counts(s, counts)
