"""The relay: outbox rows to SkyHub. ``run_batch`` claims and checks rows and hands them out in
chunks; ``deliver`` pushes one chunk and records every outcome. Celery tasks (tasks.py) and
the CLI (``skysync relay``/``drain``) call these; the decisions live in planner.py.
"""

from __future__ import annotations

import contextvars
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from skysync.config import Settings
from skysync.domain.planner import (
    ItemView,
    Row,
    SkuRequest,
    carried_variations,
    coalesce,
    families,
    key_of,
)
from skysync.domain.validation import problems
from skysync.logs import log_context
from skysync.relay.order_steps import deliver_order
from skysync.relay.outcome import (
    BatchSummary,
    DeliverySummary,
    Learned,
    Outcome,
    failure_outcome,
)
from skysync.relay.products import push_product
from skysync.relay.record import record
from skysync.relay.variations import push_variation
from skysync.reporting.metrics import save_request_counts
from skysync.skyhub.client import SkyHubClient
from skysync.skyhub.errors import (
    AuthenticationError,
    NotFound,
    PermanentError,
    RateLimited,
    RetryableError,
)
from skysync.store import items as item_store
from skysync.store import outbox
from skysync.store.db import session_scope
from skysync.store.models import SKU_KINDS, OutboxRow, RunLog, utcnow

log = logging.getLogger("skysync.relay")

CHUNK_KEYS = 25  # keys per Celery task: small enough to spread over workers, big enough to batch


class Relay:
    """One relay per process: a SkyHub client, the database, and the knobs from Settings."""

    def __init__(
        self,
        settings: Settings,
        client: SkyHubClient,
        *,
        database_url: str | None = None,
        concurrency: int = 8,
        quick_retries: int = 2,
        quick_retry_delay: float = 0.5,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.settings = settings
        self.client = client
        self.url = database_url or settings.database_url
        self.concurrency = concurrency
        self.quick_retries = quick_retries
        self.quick_retry_delay = quick_retry_delay
        self.rng = rng or random.Random()
        self.clock = clock
        self.sleep = sleep

    # -- batch ----------------------------------------------------------------------------
    def run_batch(self, dispatch: Callable[[str, list[int]], Any] | None = None) -> BatchSummary:
        """Reclaim, claim, reject bad rows, then hand out the rest in chunks by key.

        ``dispatch(token, row_ids)`` sends a chunk to a worker (Celery); without it the chunks
        are delivered here, in this process.
        """
        token = secrets.token_hex(8)
        now = self.clock()
        summary = BatchSummary(token=token)
        with session_scope(self.url) as session:
            run = RunLog(kind="relay", claim_token=token, started_at=now, summary={})
            session.add(run)
            session.flush()
            run_id = run.id
        try:
            with log_context(claim_token=token):
                chunks = self._claim(token, summary)
            summary.chunks = len(chunks)
            if dispatch is not None:
                for chunk in chunks:
                    dispatch(token, chunk)
            else:
                summary.delivery = self.deliver(token, [i for chunk in chunks for i in chunk])
        except Exception as exc:
            self._finish_run(run_id, summary, error=f"{type(exc).__name__}: {exc}")
            raise
        error = None
        if summary.delivery is not None and summary.delivery.auth_failed:
            error = self._auth_error(token)
        self._finish_run(run_id, summary, error=error)
        return summary

    def _claim(self, token: str, summary: BatchSummary) -> list[list[int]]:
        now = self.clock()
        lease_until = now + timedelta(seconds=self.settings.lease_seconds)
        with session_scope(self.url) as session:
            summary.reclaimed = outbox.reclaim_expired(session, now)
            claimed = outbox.claim_due(
                session,
                token=token,
                now=now,
                lease_until=lease_until,
                limit=self.settings.batch_size,
            )
            summary.claimed = len(claimed)
            valid: list[OutboxRow] = []
            for row in claimed:
                try:
                    found = problems(row.kind, row.ref, row.payload)
                except Exception as exc:  # a payload we cannot even judge must not block others
                    found = [f"payload: cannot be checked ({type(exc).__name__})"]
                if found:
                    outbox.finish(
                        session,
                        [row.id],
                        token,
                        state="rejected",
                        now=now,
                        reason="invalid: " + "; ".join(found),
                    )
                    summary.rejected += 1
                    log.warning(
                        "row %s (%s %s) rejected: %s",
                        row.id,
                        row.kind,
                        row.ref,
                        found,
                        extra={"sku" if row.kind in SKU_KINDS else "order": row.ref},
                    )
                else:
                    valid.append(row)
            for row in valid:
                variations = row.payload.get("variations") if row.kind == "product" else None
                if variations:
                    item_store.register_variations(
                        session, row.ref, [v["sku"] for v in variations], now
                    )
            by_ref: dict[str, list[int]] = {}
            for row in valid:
                by_ref.setdefault(row.ref, []).append(row.id)
            parents = item_store.parents_of(session, by_ref)
        summary.keys = len(by_ref)
        chunks: list[list[int]] = []
        current: list[int] = []
        keys_in_current = 0
        for family in families(by_ref, parents):
            if current and keys_in_current + len(family) > CHUNK_KEYS:
                chunks.append(current)
                current, keys_in_current = [], 0
            for ref in family:
                current.extend(by_ref[ref])
            keys_in_current += len(family)
        if current:
            chunks.append(current)
        return chunks

    def _finish_run(self, run_id: int, summary: BatchSummary, *, error: str | None) -> None:
        with session_scope(self.url) as session:
            run = session.get(RunLog, run_id)
            if run is not None:
                run.finished_at = self.clock()
                run.summary = summary.as_dict()
                run.error = error or run.error  # keep a stop a chunk already recorded

    def _auth_error(self, token: str) -> str | None:
        with session_scope(self.url) as session:
            return session.scalars(
                sa.select(RunLog.error).where(RunLog.claim_token == token)
            ).first()

    def _note_auth_failure(self, token: str, reason: str) -> None:
        with session_scope(self.url) as session:
            session.execute(
                sa.update(RunLog)
                .where(RunLog.claim_token == token, RunLog.error.is_(None))
                .values(error=reason)
            )

    # -- delivery -------------------------------------------------------------------------
    def deliver(self, token: str, row_ids: list[int]) -> DeliverySummary:
        """Push the rows of ``row_ids`` still claimed by ``token``; a duplicate or redelivered
        task finds them already finished and does nothing."""
        summary = DeliverySummary()
        if not row_ids:
            return summary
        with session_scope(self.url) as session:
            rows = [
                Row(r.id, r.kind, r.ref, r.payload, r.attempts)
                for r in outbox.load_claimed(session, token, row_ids)
            ]
            by_key: dict[tuple[str, str], list[Row]] = {}
            for row in rows:
                by_key.setdefault(key_of(row), []).append(row)
            sku_refs = [ref for (cls, ref) in by_key if cls == "sku"]
            parents = item_store.parents_of(session, sku_refs)
        stopped_before = self._auth_error(token) is not None
        if not rows:
            return summary
        groups = [[("sku", ref) for ref in fam] for fam in families(sku_refs, parents)]
        groups += [[key] for key in by_key if key[0] == "order"]
        auth_failed = threading.Event()
        if stopped_before:
            auth_failed.set()
        lock = threading.Lock()
        carried = carried_variations({ref: by_key[("sku", ref)] for ref in sku_refs}, parents)
        for variation, parent in carried.items():
            by_key[("sku", parent)] = by_key[("sku", parent)] + by_key[("sku", variation)]

        def run_family(keys: list[tuple[str, str]]) -> None:
            for key in keys:
                if key[0] == "sku" and key[1] in carried:
                    continue  # its rows go with its parent's request
                outcome = self._deliver_key(token, key, by_key[key], auth_failed)
                with lock:
                    summary.keys += 1
                    summary.count(outcome)

        # The first family goes alone: if SkyHub refuses the credentials, that one request is
        # all the batch spends; the rest are released untouched.
        run_family(groups[0])
        rest = groups[1:]
        workers = max(1, min(self.concurrency, len(rest)))
        if workers == 1:
            for group in rest:
                run_family(group)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="skysync-push") as pool:
                # each thread runs in a copy of this context: log lines keep the task id
                jobs = [pool.submit(contextvars.copy_context().run, run_family, g) for g in rest]
                for future in jobs:
                    future.result()
        summary.auth_failed = auth_failed.is_set()
        self.save_request_counts()
        return summary

    def save_request_counts(self) -> None:
        """Move the client's request counts into the database, for `skysync metrics`."""
        counts = self.client.counter.take()
        if counts:
            with session_scope(self.url) as session:
                save_request_counts(session, counts)

    def _deliver_key(
        self,
        token: str,
        key: tuple[str, str],
        rows: list[Row],
        auth_failed: threading.Event,
    ) -> str:
        field = "order" if key[0] == "order" else "sku"
        with log_context(claim_token=token, **{field: key[1]}):
            return self._deliver_key_in_context(token, key, rows, auth_failed)

    def _deliver_key_in_context(
        self,
        token: str,
        key: tuple[str, str],
        rows: list[Row],
        auth_failed: threading.Event,
    ) -> str:
        ids = [r.id for r in rows]
        if auth_failed.is_set():
            reason = self._auth_error(token) or "SkyHub refused the credentials"
            self.record(token, rows, Outcome(state="auth", reason=reason))
            return "auth"
        # A fresh lease for this key's requests; none if another claim took the rows meanwhile
        # (this task waited past its lease): then that claim sends them, not us.
        with session_scope(self.url) as session:
            renewed = outbox.renew_lease(
                session,
                ids,
                token,
                self.clock() + timedelta(seconds=self.settings.lease_seconds),
            )
        if renewed < len(ids):
            log.warning("rows %s are no longer held by this claim; skipped", ids)
            return "lost_claim"
        try:
            if key[0] == "order":
                ended = deliver_order(self, token, rows)
                if ended.state != "auth":
                    return ended.state
                raise AuthenticationError(ended.reason or "", status=ended.status)
            outcome = self._push_sku(coalesce(rows, sku=key[1]))
        except AuthenticationError as exc:
            outcome = failure_outcome(exc)
            auth_failed.set()
            self._note_auth_failure(token, outcome.reason or "")
        except Exception as exc:  # a bug must not lose rows: they go back with the error
            log.exception("unexpected error delivering %s rows %s", key[1], ids)
            outcome = Outcome(state="retry", reason=f"internal error: {type(exc).__name__}: {exc}")
        self.record(token, rows, outcome)
        log.info(
            "%s %s: %s%s",
            key[0],
            key[1],
            outcome.state,
            f" ({outcome.reason})" if outcome.reason else "",
        )
        return outcome.state

    # -- one SKU --------------------------------------------------------------------------
    def load_item(self, sku: str) -> ItemView:
        with session_scope(self.url) as session:
            return item_store.view(session.get(item_store.Item, sku), sku)

    def attempt(self, learned: Learned, sku: str, fields: dict[str, Any]) -> None:
        """Before a write leaves: record it durably (its own committed transaction), so that if
        no answer is ever recorded (lost, killed, crashed), its fields count as unknown."""
        learned.attempt(sku, fields)
        with session_scope(self.url) as session:
            item_store.begin_attempt(session, sku, fields, self.clock())

    def call(self, fn: Callable[[], Any]) -> Any:
        """One SkyHub call with a few quick retries for transient failures."""
        for attempt in range(self.quick_retries + 1):
            try:
                return fn()
            except RetryableError:
                if attempt >= self.quick_retries:
                    raise
                self.sleep(self.quick_retry_delay * (2**attempt))
        raise AssertionError("unreachable")

    def _push_sku(self, request: SkuRequest) -> Outcome:
        item = self.load_item(request.sku)
        learned = Learned()
        try:
            if item.is_variation:
                return push_variation(self, request, item, learned)
            return push_product(self, request, item, learned)
        except (RateLimited, RetryableError, PermanentError) as exc:
            # (AuthenticationError goes up: it stops the whole batch, see _deliver_key)
            # Price/stock did not get through after SkyHub refused some attributes: the rows
            # stay together (a refused row may be the one carrying the price), so they are
            # retried, or refused, as one.
            learned.refused.clear()
            return learned.ending(failure_outcome(exc))

    def exists(self, read: Callable[[str], Any], sku: str) -> bool:
        """Does SkyHub have it? (``read`` is get_product or get_variation.)"""
        try:
            self.call(lambda: read(sku))
        except NotFound:
            return False
        return True

    # -- recording ------------------------------------------------------------------------
    def record(self, token: str, rows: list[Row], outcome: Outcome) -> None:
        """Record ``outcome`` for ``rows`` (see record.record)."""
        record(
            self.url,
            token,
            rows,
            outcome,
            now=self.clock(),
            max_attempts=self.settings.max_attempts,
            rng=self.rng,
        )


def drain(
    relay: Relay, *, max_batches: int = 1000, pause: float = 0.0
) -> tuple[int, dict[str, int]]:
    """Run batches in this process until nothing is due. Returns (batches, final counts)."""
    batches = 0
    while batches < max_batches:
        summary = relay.run_batch()
        batches += 1
        if summary.delivery is not None and summary.delivery.auth_failed:
            break
        with session_scope(relay.url) as session:
            due = session.execute(
                sa.select(sa.func.count())
                .select_from(OutboxRow)
                .where(OutboxRow.state == "pending", OutboxRow.available_at <= relay.clock())
            ).scalar_one()
        if summary.claimed == 0 and due == 0:
            break
        if due == 0:
            break
        if pause:
            relay.sleep(pause)
    with session_scope(relay.url) as session:
        counts = outbox.count_by_state(session)
    return batches, counts
