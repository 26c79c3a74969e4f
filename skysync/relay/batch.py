"""One batch (docs/relay.md, "How a batch goes"): reclaim expired leases, claim due rows, reject the
invalid ones, and hand the rest out in chunks by key; ``drain`` runs batches until nothing is
due."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from skysync.domain.fast_lane import LaneRule
from skysync.domain.kinds import SKU_KINDS, Kind, RowState, UnreadableJSON
from skysync.domain.lanes import interleave, lane_of_key, lead_with
from skysync.domain.pacing import catch_up_now
from skysync.domain.planner import QTY_MARKS, Folding, families, ordering_parents
from skysync.domain.validation import parse_written, plain_stock, problems, ref_problems
from skysync.logs import log_context
from skysync.relay import catalogue
from skysync.relay.deliver import deliver
from skysync.relay.deps import RelayDeps
from skysync.relay.outcome import BatchSummary, DeliverySummary
from skysync.skyhub.errors import AuthenticationError
from skysync.store import claims, outbox_reads, runs, settle
from skysync.store import items as item_store
from skysync.store.models import payload_from_stored

log = logging.getLogger("skysync.relay")

PRICE_STOCK = frozenset({Kind.PRICE, Kind.STOCK})
CHUNK_KEYS = 25  # keys per Celery task: small enough to spread over workers, big enough to batch
# Chunk k holds about CHUNK_KEYS * CHUNK_STAGGER[k % 5] keys (25 on average): workers that
# start their chunks together then do not finish them together. A worker between two chunks
# sends nothing; were they all between chunks at once, every bucket would idle meanwhile.
CHUNK_STAGGER = (1.0, 0.6, 1.4, 0.8, 1.2)


Gate = Callable[[Session], bool]


def run_batch(
    deps: RelayDeps,
    dispatch: Callable[[str, list[int]], Any] | None = None,
    *,
    lane: LaneRule | None = None,
    gate: Gate | None = None,
) -> BatchSummary | None:
    """Reclaim, claim, reject bad rows, then hand out the rest in chunks by key.

    ``dispatch(token, row_ids)`` sends a chunk to a worker (Celery); without it the chunks
    are delivered here, in this process. The run log records the batch, and why it stopped.

    With ``lane`` this is a fast-lane run (fast_lane.py): only the families of the rows the
    lane picks are claimed, and the run log records it (as ``fast_lane``) only when it
    claimed something, since the lane runs whenever a row may be waiting.

    With ``gate`` (catching up, :func:`run_catch_up`) the batch happens only if no other claim
    is under way and ``gate`` says so, asked under the claimers' lock; None when not, and then
    nothing is recorded.
    """
    token = secrets.token_hex(8)
    summary = BatchSummary(token=token)
    run_id = None if lane is not None or gate is not None else _start_run(deps, token, "relay")
    try:
        with log_context(claim_token=token):
            chunks = _claim(deps, token, summary, lane, gate)
        if chunks is None:
            return None
        if run_id is None:
            if lane is not None and not summary.claimed:
                return summary
            run_id = _start_run(deps, token, "relay" if lane is None else "fast_lane", summary)
        else:
            _note_claim(deps, run_id, summary)
        summary.chunks = len(chunks)
        if summary.auth_stop is not None:
            # SkyHub refused the credentials before any write: every key finds the reason on
            # its claim and gives its rows back untouched, without a request
            with deps.db.scope() as session:
                runs.note_error(session, token, summary.auth_stop)
        if dispatch is not None:
            for chunk in chunks:
                dispatch(token, chunk)
        else:
            summary.delivery = deliver(deps, token, [i for chunk in chunks for i in chunk])
    except Exception as exc:
        if run_id is not None:
            _finish_run(deps, run_id, summary, error=f"{type(exc).__name__}: {exc}")
        raise
    error = None
    auth_failed = summary.delivery is not None and summary.delivery.auth_failed
    if auth_failed or summary.auth_stop is not None:
        with deps.db.scope() as session:
            error = runs.error_of(session, token)
    _finish_run(deps, run_id, summary, error=error)
    return summary


def run_catch_up(
    deps: RelayDeps, dispatch: Callable[[str, list[int]], Any] | None = None
) -> BatchSummary | None:
    """A batch now if the last one left a backlog and the workers are half done with what is
    in flight (skysync/domain/pacing.py); None when not, or when another claim is under way.
    Asked by beat every SKYSYNC_CATCH_UP_INTERVAL, and by a worker each time it finishes a
    chunk; off when the interval is 0. A look without the claimers' lock first, so the usual
    answer (no backlog) costs one read-only transaction; then again under the lock, where
    claims are serialized: two looks at once never both claim. Recorded as a relay batch."""
    if deps.catch_up_interval <= 0:
        return None

    def gate(session: Session) -> bool:
        last = runs.last(session, "relay")
        return last is not None and catch_up_now(
            last_was_full=bool((last.summary or {}).get("more_due")),
            last_stopped=runs.is_auth_stop(last.error),
            keys_in_flight=claims.keys_in_flight(session),
            batch_size=deps.batch_size,
        )

    with deps.db.scope(readonly=True) as session:
        if not gate(session):
            return None
    summary = run_batch(deps, dispatch, gate=gate)
    if summary is not None:
        log.info(
            "caught up with a backlog: another batch of %s keys (the last one was full and "
            "the workers are half done)",
            summary.keys,
        )
    return summary


def _start_run(deps: RelayDeps, token: str, kind: str, summary: BatchSummary | None = None) -> int:
    with deps.db.scope() as session:
        claimed = summary.as_dict() if summary is not None else None
        return runs.start(session, token, deps.clock(), kind=kind, summary=claimed)


def _note_claim(deps: RelayDeps, run_id: int, summary: BatchSummary) -> None:
    """The claim's summary on its run before a chunk goes out: a worker that finishes one
    reads ``more_due`` there to catch up (:func:`run_catch_up`)."""
    with deps.db.scope() as session:
        runs.note_claim(session, run_id, summary.as_dict())


def _finish_run(deps: RelayDeps, run_id: int, summary: BatchSummary, *, error: str | None) -> None:
    with deps.db.scope() as session:
        runs.finish(session, run_id, deps.clock(), summary.as_dict(), error)


def _claim(
    deps: RelayDeps,
    token: str,
    summary: BatchSummary,
    lane: LaneRule | None = None,
    gate: Gate | None = None,
) -> list[list[int]] | None:
    """Claim due rows under ``token`` (after reclaiming expired leases) and chunk them so that
    a product and the variations that must follow it (:func:`ordering_parents`) share a chunk.
    Each SKU's rows are read newest first, a page at a time, and end there and then unless a
    request needs them: invalid rows ``rejected``, rows folded into a newer one ``superseded``
    (see :class:`Folding`). Only the rows the requests need go in flight, so a SKU's backlog
    costs one write per row, whatever its size.
    Order steps are each their own request, all in flight. None, claiming nothing, when
    ``gate`` is given and another claim holds the claimers' lock, or ``gate`` says no."""
    now = deps.clock()
    lease_until = now + timedelta(seconds=deps.lease_seconds)
    with deps.db.scope() as session:
        if gate is not None and not (claims.try_lock_claimers(session) and gate(session)):
            return None
        summary.reclaimed = claims.reclaim_expired(session, now)
        due = claims.pick_due(session, now=now, limit=deps.batch_size, lane=lane)
        summary.more_due = due.full
        epoch = claims.next_claim_epoch(session)
        claim = _Claim(session, token, now, lease_until, summary, epoch)
        claims.claim_orders(session, due.codes, token=token, now=now, lease_until=lease_until)
        for page in claims.iter_claimed(session, token):  # the order steps just claimed
            claim.take(page, in_flight=True)
        # each SKU's rows newest first (planner.newness): the rows no claim has read yet, then
        # those an earlier claim gave back, whatever their ids
        for page in claims.iter_pending_newest_first(session, due.skus):
            claim.take(page, in_flight=False)
        claim.flush()
        for page in claims.iter_pending_claimed_before(session, due.skus):
            claim.take(page, in_flight=False)
        claim.flush()
        by_ref = claim.folding.ids_by_ref()
        parents, in_skyhub = item_store.family_links(session, by_ref)
    # price and stock rows of SKUs skysync has never seen: SkyHub's listing says which exist
    # and which are variations of which product, before their requests are planned
    unseen = [
        ref
        for ref in by_ref
        if ref not in parents and claim.kinds.get(ref, {Kind.PRODUCT}) <= PRICE_STOCK
    ]
    try:
        learned = bool(unseen) and bool(catalogue.learn_unknown(deps, unseen))
    except AuthenticationError as exc:  # run_batch stops the batch before its first write
        learned, summary.auth_stop = False, runs.auth_stop_reason(exc)
    if learned:
        with deps.db.scope(readonly=True) as session:
            parents, in_skyhub = item_store.family_links(session, by_ref)
    summary.keys = len(by_ref)
    follows = ordering_parents(parents, claim.kinds, in_skyhub)
    return chunk_by_family(by_ref, parents, claim.first_kind, follows)


class _Claim:
    """The rows of one claim as they are read: each checked, folded, and ended or put in
    flight, written a few thousand rows at a time (never a statement per row, never one that
    grows with the backlog)."""

    def __init__(
        self,
        session: Session,
        token: str,
        now: datetime,
        lease_until: datetime,
        summary: BatchSummary,
        epoch: int | None = None,
    ):
        self.session = session
        self.epoch = epoch
        self.token = token
        self.now = now
        self.lease_until = lease_until
        self.summary = summary
        self.folding = Folding()
        self.first_kind: dict[str, str] = {}  # of each ref: which bucket its key probably hits
        self.kinds: dict[str, set[str]] = {}  # of each ref's rows in flight (ordering_parents)
        self._needed: list[int] = []
        self._folded: dict[int, list[int]] = {}  # winner -> rows folded into it
        self._buffered = 0
        self._good_refs: dict[str, bool] = {}  # refs checked so far (ref_problems)

    def take(self, page: list[claims.ClaimedRow], *, in_flight: bool) -> None:
        """``in_flight``: rows already claimed (order steps); else pending SKU rows, each
        SKU's newest first, payloads as stored (:data:`claims.PendingRow`)."""
        self.summary.claimed += len(page)
        for row_id, kind, ref, stored in page:
            marks = None
            payload: Any  # JSON as the ERP wrote it, or UnreadableJSON
            # most rows of a stock backlog are a bare {"qty": n}: good as they read
            plain = None if in_flight else plain_stock(kind, stored)
            if plain is not None and self._good_ref(ref):
                payload, marks = plain, QTY_MARKS
            else:
                payload = payload_from_stored(stored)
                row = (row_id, kind, ref, payload)
                if not self._valid(row, in_flight=in_flight, stored=stored):
                    continue
            if kind == "product" and payload.get("variations"):
                # remember the variations' parent before chunking, so a variation's own rows
                # travel with their parent's
                skus = [v["sku"] for v in payload["variations"]]
                item_store.register_variations(self.session, ref, skus, self.now)
            self.first_kind.setdefault(ref, kind)
            if self.folding.keep(row_id, kind, ref, payload, marks):
                self.kinds.setdefault(ref, set()).add(kind)
                if not in_flight:
                    self._needed.append(row_id)
                    self._buffered += 1
            else:
                self._folded.setdefault(self.folding.winner(ref), []).append(row_id)
                self._buffered += 1
            if self._buffered >= claims.SUPERSEDE_CHUNK:
                self.flush()

    def _good_ref(self, ref: str) -> bool:
        good = self._good_refs.get(ref)
        if good is None:
            good = self._good_refs[ref] = not ref_problems(ref)
        return good

    def _valid(self, row: claims.ClaimedRow, *, in_flight: bool, stored: Any = None) -> bool:
        """Reject the row if it fails validation, with its reasons; a bad row never blocks
        the others. The reasons quote numbers as ``stored`` (the payload's JSON text) writes
        them: read again for that, only once the row is known to be bad."""
        row_id, kind, ref, payload = row
        try:
            found = problems(kind, ref, payload)
        except Exception as exc:  # a payload we cannot even judge must not block others
            found = [f"payload: cannot be checked ({type(exc).__name__})"]
        if not found:
            return True
        if isinstance(stored, str) and not isinstance(payload, UnreadableJSON):
            with contextlib.suppress(Exception):  # else the first reading's reasons stand
                found = problems(kind, ref, parse_written(stored)) or found
        reason = "invalid: " + "; ".join(found)
        rejected: dict[str, Any] = {"state": RowState.REJECTED, "now": self.now, "reason": reason}
        if in_flight:
            settle.finish(self.session, [row_id], self.token, **rejected)
        else:
            claims.settle_pending(
                self.session, [row_id], token=self.token, epoch=self.epoch, **rejected
            )
        self.summary.rejected += 1
        log.warning(
            "row %s (%s %s) rejected: %s",
            row_id,
            kind,
            ref,
            found,
            extra={"sku" if kind in SKU_KINDS else "order": ref},
        )
        return False

    def flush(self) -> None:
        """Write what was decided so far: needed rows in flight, folded rows superseded."""
        session, token, now = self.session, self.token, self.now
        claims.claim_rows(
            session,
            self._needed,
            token=token,
            now=now,
            lease_until=self.lease_until,
            epoch=self.epoch,
        )
        self.summary.superseded += claims.supersede_pending(
            session, self._folded, token=token, now=now, epoch=self.epoch
        )
        self._needed, self._folded, self._buffered = [], {}, 0


def chunk_by_family(
    by_ref: dict[str, list[int]],
    parents: Mapping[str, str | None],
    first_kind: Mapping[str, str] | None = None,
    follows: Mapping[str, str | None] | None = None,
) -> list[list[int]]:
    """Row ids in chunks of about CHUNK_KEYS keys (see CHUNK_STAGGER); a family (a product
    and the variations that must follow it: ``follows``, from :func:`ordering_parents`;
    ``parents`` when not given) is never split across chunks, so one worker sends it in
    order. A variation that need not follow its parent is a family of its own, in its own
    bucket. The families are interleaved by the bucket their first request probably hits
    (``first_kind``: the kind of each ref's first row; docs/relay.md, "Every bucket at once"),
    so that every chunk carries work for every bucket and the workers keep them all busy at
    the same time."""
    kinds = first_kind or {}

    def lane(family: list[str]) -> str:
        head = family[0]
        return lane_of_key(kinds.get(head, "stock"), variation=parents.get(head) is not None)

    ordered = interleave(families(by_ref, parents if follows is None else follows), lane)
    cut: list[list[list[str]]] = []
    keys_in_current = 0
    for family in ordered:
        limit = round(CHUNK_KEYS * CHUNK_STAGGER[(len(cut) - 1) % len(CHUNK_STAGGER)])
        if not cut or keys_in_current + len(family) > limit:
            cut.append([])
            keys_in_current = 0
        cut[-1].append(family)
        keys_in_current += len(family)
    lanes = list(dict.fromkeys(lane(family) for family in ordered))
    chunks = [lead_with(chunk, lane, lanes, k) for k, chunk in enumerate(cut)]
    return [[i for family in chunk for ref in family for i in by_ref[ref]] for chunk in chunks]


@dataclass(frozen=True)
class DrainProgress:
    """How a drain is going, after each batch: what `skysync drain` shows while it works."""

    batches: int
    done: int  # rows that stopped being due since the drain began
    left: int  # rows still due
    requests: int  # requests sent to SkyHub
    elapsed: float  # seconds

    def line(self) -> str:
        rate = self.done / self.elapsed if self.elapsed > 0 else 0.0
        if not self.left:
            eta = "0 s"
        elif rate > 0:
            eta = f"{self.left / rate:.0f} s"
        else:
            eta = "unknown"
        return (
            f"drain: {self.left} rows left, {self.done} done ({rate:,.0f} rows/s), "
            f"{self.requests} requests sent, {self.batches} batches, ETA {eta}"
        )


@dataclass(frozen=True)
class DrainResult:
    """How a drain ended: its batches, the outbox's counts by state, and what is left, told
    apart by whose it is (:class:`outbox_reads.DrainAccount`): rows this drain handled that did not
    go out are its failures; rows in flight under other claims are other workers' business."""

    batches: int
    counts: dict[str, int]
    account: outbox_reads.DrainAccount
    stopped: bool  # SkyHub refused the credentials
    due: int  # rows still due when it ended (it ran out of --max-batches)

    @property
    def failed(self) -> bool:
        """Whether this drain failed: stopped, rows left due, or rows it handled did not go
        out (dead, or back to pending to retry). Rejected rows are bad input, not a failure
        of the drain; rows in other claims' hands are not its own."""
        return self.stopped or self.due > 0 or bool(self.account.failed)


def drain(
    deps: RelayDeps,
    *,
    max_batches: int = 1000,
    pause: float = 0.0,
    progress: Callable[[DrainProgress], None] | None = None,
) -> DrainResult:
    """Run batches in this process until nothing is due, or SkyHub refused the credentials;
    ``progress`` hears how it goes after each batch. Returns how it ended (:class:`DrainResult`).

    Each batch's rows are delivered on a thread of their own while the next batch is claimed
    (never a key in flight, so never the same rows), as workers take chunks while beat claims:
    a claim is mostly the database's work and a delivery mostly this process's, so a backlog
    drains in about the longer of the two, not their sum. At most one batch is being delivered
    while one is claimed. On SQLite, which writes one transaction at a time, each batch is
    delivered before the next is claimed."""
    due_at_start = _count_due(deps)
    pace = _Pace(deps, due_at_start)
    # SQLite writes one transaction at a time: a claim would only hold up the delivery's writes
    overlap = not deps.db.is_sqlite
    batches = 0
    tokens: list[str] = []
    unsettled: list[int] = []  # rows a delivery left undelivered, looked at again in the end
    stopped = False
    due = due_at_start
    with ThreadPoolExecutor(1, thread_name_prefix="skysync-drain") as pool:
        delivering: tuple[str, Future[DeliverySummary]] | None = None
        while batches < max_batches:
            summary, chunks = _claim_for_drain(deps)
            batches += 1
            if summary.token is not None:
                tokens.append(summary.token)
            stopped = _delivered(deps, delivering, summary.token if chunks else None, unsettled)
            # refused credentials in this batch's own claim (its catalogue read): no next batch
            stopped = stopped or summary.auth_stop is not None
            delivering = None
            if chunks and summary.token is not None:
                ids = [i for chunk in chunks for i in chunk]
                delivering = (summary.token, pool.submit(deliver, deps, summary.token, ids))
            due = _count_due(deps)
            if stopped or due == 0 or not overlap:
                # the last delivery may give rows back due now (a variation whose parent was
                # on its way): look again once it is done
                stopped = _delivered(deps, delivering, None, unsettled) or stopped
                delivering = None
                due = _count_due(deps)
            if progress is not None:
                progress(pace.now(batches, due))
            if stopped or due == 0:
                break
            if pause:
                deps.sleep(pause)
        stopped = _delivered(deps, delivering, None, unsettled) or stopped
    with deps.db.scope() as session:
        counts = outbox_reads.count_by_state(session)
        account = outbox_reads.drain_account(session, tokens, unsettled, deps.clock())
    return DrainResult(batches, counts, account, stopped, due)


def _claim_for_drain(deps: RelayDeps) -> tuple[BatchSummary, list[list[int]]]:
    """One batch claimed, its chunks kept here (the drain delivers them itself)."""
    chunks: list[list[int]] = []

    def collect(_token: str, ids: list[int]) -> None:
        chunks.append(ids)

    summary = run_batch(deps, collect)
    assert summary is not None  # only a gated batch may not happen
    return summary, chunks


class _Pace:
    """How far a drain has come since it began (:class:`DrainProgress`)."""

    def __init__(self, deps: RelayDeps, due_at_start: int):
        self.deps = deps
        self.due_at_start = due_at_start
        self.started = time.monotonic()
        self.requests_before = deps.client.counter.total

    def now(self, batches: int, due: int) -> DrainProgress:
        return DrainProgress(
            batches=batches,
            done=max(0, self.due_at_start - due),
            left=due,
            requests=self.deps.client.counter.total - self.requests_before,
            elapsed=time.monotonic() - self.started,
        )


def _count_due(deps: RelayDeps) -> int:
    with deps.db.scope() as session:
        return outbox_reads.count_due(session, deps.clock())


def _delivered(
    deps: RelayDeps,
    delivering: tuple[str, Future[DeliverySummary]] | None,
    next_token: str | None,
    unsettled: list[int],
) -> bool:
    """Wait for a batch's delivery, adding the rows it left undelivered to ``unsettled``; True
    if SkyHub refused the credentials during it. Then the batch claimed meanwhile
    (``next_token``) is stopped the same way before it spends a request: its keys find the
    reason on their claim and give their rows back untouched."""
    if delivering is None:
        return False
    token, future = delivering
    delivered = future.result()
    unsettled.extend(delivered.unsettled)
    if not delivered.auth_failed:
        return False
    if next_token is not None:
        with deps.db.scope() as session:
            reason = runs.error_of(session, token) or "SkyHub refused the credentials"
            runs.note_error(session, next_token, reason)
    return True
