"""Delivering one chunk: load the rows still claimed, group them by family, push each key
(first family alone, the rest on threads) under a fresh lease, and stop the whole claim at
the first 401/403 from SkyHub."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from skysync.domain.guards import buffer_stock, hold_price_drops
from skysync.domain.lanes import lane_of_key, threads_per_lane
from skysync.domain.planner import (
    DeliveryKey,
    KeyKind,
    Row,
    SkuRequest,
    carried_variations,
    coalesce,
    families,
    key_of,
    ordering_parents,
)
from skysync.logs import log_context
from skysync.relay import unit_of_work as unit
from skysync.relay.deps import RelayDeps
from skysync.relay.order_steps import deliver_order
from skysync.relay.outcome import (
    DeliveryState,
    DeliverySummary,
    Learned,
    Outcome,
    failure_outcome,
)
from skysync.relay.products import push_product
from skysync.relay.record import record_outcome
from skysync.relay.reserve import reserve_request
from skysync.relay.variations import push_variation
from skysync.skyhub.errors import AuthenticationError, PermanentError, RateLimited, RetryableError
from skysync.store import claims, runs, settle
from skysync.store import items as item_store
from skysync.store.db import Database

log = logging.getLogger("skysync.relay")

PushSku = Callable[[RelayDeps, SkuRequest], Outcome]  # one SKU's request, sent

NO_LEASE = datetime.min.replace(tzinfo=UTC)  # renewed before any request

# Seconds after a 2xx during which a chunk skips the lone first request that checks the
# credentials: a revocation in that window costs at most a request per thread, all stopped.
CREDENTIALS_SEEN_FOR = 60.0


class AuthStop:
    """The one signal that SkyHub refused the credentials under this claim. The first key to
    meet a 401/403 trips it and notes the reason on the run; every key after it (on any
    thread, or in a later chunk of the same claim, which finds the note) records its rows as
    stopped without spending a request: every request would fail the same way."""

    def __init__(self, db: Database, token: str):
        self.db = db
        self.token = token
        self._tripped = threading.Event()
        if self.reason() is not None:
            self._tripped.set()

    @property
    def tripped(self) -> bool:
        return self._tripped.is_set()

    def trip(self, reason: str) -> None:
        self._tripped.set()
        with self.db.scope() as session:
            runs.note_error(session, self.token, reason)

    def reason(self) -> str | None:
        with self.db.scope() as session:
            return runs.error_of(session, self.token)


@dataclass
class _Claimed:
    """The rows of a chunk by key, in the groups that go out together."""

    by_key: dict[DeliveryKey, list[Row]]
    groups: list[list[DeliveryKey]]  # in the chunk's order (interleaved by lane)
    lanes: list[str]  # of each group: the bucket its first request probably hits
    carried: dict[str, str]  # variation -> parent whose request carries its rows
    lease_until: dict[DeliveryKey, datetime]  # the earliest lease among each key's loaded rows


def deliver(
    deps: RelayDeps,
    token: str,
    row_ids: list[int],
    push: PushSku | None = None,
    *,
    drained: Callable[[], object] | None = None,
) -> DeliverySummary:
    """Push the rows of ``row_ids`` still claimed by ``token``; a duplicate or redelivered
    task finds them already finished and does nothing. ``push`` sends one SKU's request
    (:func:`push_one_sku` unless a test injects another, to stall a worker between its claim
    and its push). ``drained`` is called once, when the chunk's last key has been taken (only
    the requests in flight are left): the account's next chunk may start then
    (handout.py), so its set-up overlaps this chunk's last requests."""
    push = push or push_one_sku
    summary = DeliverySummary()
    if not row_ids:
        return summary
    claimed = _load_claimed(deps, token, row_ids)
    if claimed is None:
        if drained is not None:
            drained()
        return summary
    stop = AuthStop(deps.db, token)
    lock = threading.Lock()

    def run_family(keys: list[DeliveryKey]) -> None:
        for key in keys:
            if key.kind == KeyKind.SKU and key.ref in claimed.carried:
                continue  # its rows go with its parent's request
            lease = claimed.lease_until[key]
            state = deliver_key(deps, token, key, claimed.by_key[key], stop, lease, push)
            with lock:
                summary.keys += 1
                summary.count(state, [r.id for r in claimed.by_key[key]])

    # The credentials check (one request alone) is spent only where this process has not
    # seen them accepted lately: otherwise every chunk would start with one lane alone.
    check = not deps.client.accepted_within(CREDENTIALS_SEEN_FOR)
    _run_groups(
        claimed.groups, claimed.lanes, run_family, deps.concurrency, check=check, drained=drained
    )
    summary.auth_failed = stop.tripped
    unit.save_client_counts(deps)
    return summary


def _load_claimed(deps: RelayDeps, token: str, row_ids: list[int]) -> _Claimed | None:
    """The rows still claimed by ``token``, by key, grouped by family (orders alone; a
    variation with its parent only where the order matters: :func:`ordering_parents`); a
    variation whose parent's request carries it goes in that request. None if none is left."""
    by_key: dict[DeliveryKey, list[Row]] = {}
    lease_until: dict[DeliveryKey, datetime] = {}
    with deps.db.scope() as session:
        loaded = claims.load_claimed(session, token, row_ids)
        for r in loaded:
            row = Row(
                r.id,
                r.kind,
                r.ref,
                r.payload,
                r.attempts,
                r.released_at is not None,
                epoch=r.claim_epoch or 0,
                written_at=r.created_at,
                origin=r.origin,
            )
            key = key_of(row)
            by_key.setdefault(key, []).append(row)
            lease = r.lease_until or NO_LEASE
            lease_until[key] = min(lease_until.get(key, lease), lease)
        sku_refs = [key.ref for key in by_key if key.kind == KeyKind.SKU]
        parents, in_skyhub = item_store.family_links(session, sku_refs)
    if not loaded:
        return None
    kinds = {ref: {r.kind for r in by_key[_sku(ref)]} for ref in sku_refs}
    follows = ordering_parents(parents, kinds, in_skyhub)
    groups = [[_sku(ref) for ref in fam] for fam in families(sku_refs, follows)]
    groups += [[key] for key in by_key if key.kind == KeyKind.ORDER]

    # In the chunk's own order: batch.py interleaved it by lane (skysync/domain/lanes.py).
    position = {row_id: i for i, row_id in enumerate(row_ids)}
    groups.sort(key=lambda g: min(position.get(r.id, 0) for key in g for r in by_key[key]))
    lanes = [
        lane_of_key(by_key[g[0]][0].kind, variation=parents.get(g[0].ref) is not None)
        for g in groups
    ]
    carried = carried_variations({ref: by_key[_sku(ref)] for ref in sku_refs}, parents)
    for variation, parent in carried.items():
        own, carrier = _sku(variation), _sku(parent)
        by_key[carrier] = by_key[carrier] + by_key[own]
        lease_until[carrier] = min(lease_until[carrier], lease_until[own])
    return _Claimed(by_key, groups, lanes, carried, lease_until)


def _sku(ref: str) -> DeliveryKey:
    return DeliveryKey(KeyKind.SKU, ref)


# Threads of a chunk per lane (bucket): SkyHub's 9/s at 200 ms a request needs 2 in flight, 4
# still keep pace at 440 ms, and an account's two chunks at once (handout.py) double it. More
# only sleep on the bucket's limiter: hundreds of them, with many accounts on one worker, cost
# CPU and delay each other's requests past their slots (which SkyHub may then count 10 in a
# second). A chunk with four buckets still gets SKYSYNC's 8.
THREADS_PER_LANE = 4


def _run_groups(
    groups: list[list[DeliveryKey]],
    lanes: list[str],
    run_family: Callable[[list[DeliveryKey]], None],
    concurrency: int,
    *,
    check: bool = True,
    drained: Callable[[], object] | None = None,
) -> None:
    """With ``check``, the first family goes alone: if SkyHub refuses the credentials, that
    one request is all the batch spends; the rest are released untouched. Then the others, on
    threads: each lane (bucket) has threads of its own that take only its families while it
    has any, then help the lane with the most left; so threads waiting on one bucket's
    limiter never hold up another bucket's requests (docs/relay.md, "Every bucket at once")."""
    first = 1 if check else 0
    if check:
        run_family(groups[0])
    queues: dict[str, deque[list[DeliveryKey]]] = {}
    for group, lane in zip(groups[first:], lanes[first:], strict=True):
        queues.setdefault(lane, deque()).append(group)
    workers = max(1, min(concurrency, len(groups) - first, THREADS_PER_LANE * len(queues)))
    homes = [
        lane
        for lane, n in threads_per_lane({k: len(q) for k, q in queues.items()}, workers).items()
        for _ in range(n)
    ]
    last = _Once(drained)
    if len(homes) <= 1:
        rest = groups[first:]
        for i, group in enumerate(rest):
            if i == len(rest) - 1:
                last()
            run_family(group)
        last()
        return
    lock = threading.Lock()

    def take(home: str) -> list[DeliveryKey] | None:
        with lock:
            queue = queues[home] if queues[home] else max(queues.values(), key=len)
            group = queue.popleft() if queue else None
            drained_now = not any(queues.values())
        if drained_now:  # outside the lock; once, whichever thread gets there first
            last()
        return group

    def work(home: str) -> None:
        while (group := take(home)) is not None:
            run_family(group)

    with ThreadPoolExecutor(len(homes), thread_name_prefix="skysync-push") as pool:
        # each thread runs in a copy of this context: log lines keep the task id
        jobs = [pool.submit(contextvars.copy_context().run, work, home) for home in homes]
        for future in jobs:
            future.result()


class _Once:
    """``callback`` at most once, whichever thread gets there first (None: nothing)."""

    def __init__(self, callback: Callable[[], object] | None) -> None:
        self.callback = callback
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            callback, self.callback = self.callback, None
        if callback is not None:
            callback()


def deliver_key(
    deps: RelayDeps,
    token: str,
    key: DeliveryKey,
    rows: list[Row],
    stop: AuthStop,
    lease_until: datetime,
    push: PushSku,
) -> DeliveryState:
    """One key's rows, with the key on every log line; returns the outcome's state."""
    with log_context(claim_token=token, **{key.kind.value: key.ref}):
        return _deliver_key(deps, token, key, rows, stop, lease_until, push)


def _deliver_key(
    deps: RelayDeps,
    token: str,
    key: DeliveryKey,
    rows: list[Row],
    stop: AuthStop,
    lease_until: datetime,
    push: PushSku,
) -> DeliveryState:
    """Push one key's rows and record how it ended, unless the claim was stopped (the rows
    go back untouched) or lost (another claim took the rows and sends them)."""
    if stop.tripped:
        reason = stop.reason() or "SkyHub refused the credentials"
        record_outcome(deps, token, rows, Outcome(state=DeliveryState.AUTH, reason=reason))
        return DeliveryState.AUTH
    if not _renew_lease(deps, token, rows, lease_until):
        log.warning("rows %s are no longer held by this claim; skipped", [r.id for r in rows])
        return DeliveryState.LOST_CLAIM
    # order steps are recorded one by one as they end; a SKU's rows together, below
    recorded = key.kind == KeyKind.ORDER
    try:
        if recorded:
            outcome = deliver_order(deps, token, rows)
        else:
            outcome = push(deps, coalesce(rows, sku=key.ref))
    except Exception as exc:  # a bug must not lose rows: they go back with the error
        log.exception("unexpected error delivering %s rows %s", key.ref, [r.id for r in rows])
        outcome = Outcome(
            state=DeliveryState.RETRY, reason=f"internal error: {type(exc).__name__}: {exc}"
        )
        recorded = False
    if outcome.state == DeliveryState.AUTH:
        stop.trip(outcome.reason or "")
    elif recorded:
        return outcome.state
    if not recorded:
        record_outcome(deps, token, rows, outcome)
    suffix = f" ({outcome.reason})" if outcome.reason else ""
    log.info("%s %s: %s%s", key.kind.value, key.ref, outcome.state.value, suffix)
    return outcome.state


def _renew_lease(deps: RelayDeps, token: str, rows: list[Row], lease_until: datetime) -> bool:
    """Make sure this key's requests go out under a lease with time to spare; False if another
    claim took the rows meanwhile (this task waited past its lease): then that claim sends
    them, not us.

    While more than half the lease is left, nothing is written: no other claim can have taken
    rows whose lease has not run out (only an expired lease is reclaimed), and the outcome is
    recorded only if the claim still holds them. Otherwise the lease of the key's rows in
    flight is renewed: a write before the request, so it is not done for every key of every
    chunk."""
    lease = timedelta(seconds=deps.lease_seconds)
    now = deps.clock()
    if lease_until - now > lease / 2:
        return True
    ids = [r.id for r in rows]
    with deps.db.scope() as session:
        held = settle.renew_lease(session, ids, token, now + lease)
        return held == len(ids)


def push_one_sku(deps: RelayDeps, request: SkuRequest) -> Outcome:
    """One SKU's request, a variation's or a product's, and what a SkyHub error means for it.
    The quantities come first: the reservation for orders the ERP has not consumed
    (relay/reserve.py, when SKYSYNC_RESERVE_OPEN_ORDERS is on), then the stock buffer; then the
    price drop guard (rows it holds back go to ``held``; the rest of the request goes on). Its
    reads and attempt records share one transaction per request (unit_of_work.request_scope)."""
    with unit.request_scope(deps):
        return _guard_and_push(deps, request)


def _guard_and_push(deps: RelayDeps, request: SkuRequest) -> Outcome:
    item = unit.load_item(deps, request.sku)
    learned = Learned()
    request, learned.notes = reserve_request(deps, request, item)
    request = buffer_stock(request, deps.stock_buffer)
    learned.note_prices(request)
    request, held = hold_price_drops(request, item, deps.price_drop_guard)
    learned.held.update(held)
    try:
        if item.is_variation:
            return push_variation(deps, request, item, learned)
        return push_product(deps, request, item, learned)
    except AuthenticationError as exc:
        # The claim stops: the rows go back as they were, nothing learned is recorded.
        return failure_outcome(exc)
    except (RateLimited, RetryableError, PermanentError) as exc:
        # Price/stock did not get through after SkyHub refused some attributes: the rows
        # stay together (a refused row may be the one carrying the price), so they are
        # retried, or refused, as one; so are the rows the price guard held back (the guard
        # decides again on the retry).
        learned.refused.clear()
        learned.held.clear()
        return learned.ending(failure_outcome(exc))
