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
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from skysync.config import Settings
from skysync.domain.order_flow import TARGET_STATUS, check_step
from skysync.domain.planner import (
    FLOWING_FIELDS,
    ItemView,
    Row,
    SkuRequest,
    carried_variations,
    coalesce,
    decide,
    families,
    key_of,
    variation_request,
)
from skysync.domain.validation import problems
from skysync.logs import log_context
from skysync.relay.outcome import (
    Ack,
    BatchSummary,
    DeliverySummary,
    Learned,
    Outcome,
    failure_outcome,
    sent_outcome,
)
from skysync.relay.record import record
from skysync.reporting.metrics import save_request_counts
from skysync.skyhub.client import SkyHubClient
from skysync.skyhub.errors import (
    AuthenticationError,
    NotFound,
    PermanentError,
    RateLimited,
    RetryableError,
    SkyHubError,
    Unprocessable,
)
from skysync.store import items as item_store
from skysync.store import orders as order_store
from skysync.store import outbox
from skysync.store.db import session_scope
from skysync.store.models import SKU_KINDS, OutboxRow, RunLog, utcnow

log = logging.getLogger("skysync.relay")

CHUNK_KEYS = 25  # keys per Celery task: small enough to spread over workers, big enough to batch


def _waiting_for_parent(parent_sku: str) -> Outcome:
    return Outcome(
        state="wait",
        delay=5.0,
        reason=f"waiting for parent product {parent_sku!r} to reach SkyHub",
    )


def _linked(product: dict[str, Any]) -> bool:
    associations = product.get("associations") or []
    return any(isinstance(a, dict) and a.get("status") == "linked" for a in associations)


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
            self._record(token, rows, Outcome(state="auth", reason=reason))
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
                return self._deliver_order(token, rows)
            outcome = self._push_sku(coalesce(rows, sku=key[1]))
        except AuthenticationError as exc:
            outcome = failure_outcome(exc)
            auth_failed.set()
            self._note_auth_failure(token, outcome.reason or "")
        except Exception as exc:  # a bug must not lose rows: they go back with the error
            log.exception("unexpected error delivering %s rows %s", key[1], ids)
            outcome = Outcome(state="retry", reason=f"internal error: {type(exc).__name__}: {exc}")
        self._record(token, rows, outcome)
        log.info(
            "%s %s: %s%s",
            key[0],
            key[1],
            outcome.state,
            f" ({outcome.reason})" if outcome.reason else "",
        )
        return outcome.state

    # -- one SKU --------------------------------------------------------------------------
    def _load_item(self, sku: str) -> ItemView:
        with session_scope(self.url) as session:
            return item_store.view(session.get(item_store.Item, sku), sku)

    def _attempt(self, learned: Learned, sku: str, fields: dict[str, Any]) -> None:
        """Before a write leaves: record it durably (its own committed transaction), so that if
        no answer is ever recorded (lost, killed, crashed), its fields count as unknown."""
        learned.attempt(sku, fields)
        with session_scope(self.url) as session:
            item_store.begin_attempt(session, sku, fields, self.clock())

    def _call(self, fn: Callable[[], Any]) -> Any:
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
        item = self._load_item(request.sku)
        learned = Learned()
        try:
            if item.is_variation:
                return self._push_variation(request, item, learned)
            return self._push_product(request, item, learned)
        except (RateLimited, RetryableError, PermanentError) as exc:
            # (AuthenticationError goes up: it stops the whole batch, see _deliver_key)
            # Price/stock did not get through after SkyHub refused some attributes: the rows
            # stay together (a refused row may be the one carrying the price), so they are
            # retried, or refused, as one.
            learned.refused.clear()
            return learned.ending(failure_outcome(exc))

    def _push_product(self, request: SkuRequest, item: ItemView, learned: Learned) -> Outcome:
        sku = request.sku
        attrs = [k for k in request.fields if k not in FLOWING_FIELDS]
        if (
            request.has_product_row
            and (attrs or request.variations or not item.in_skyhub)
            and (not item.frozen)
        ):
            # Learn whether SkyHub has the product and whether the marketplace froze it, before
            # spending a write on attributes that would be ignored.
            try:
                remote = self._call(lambda: self.client.get_product(sku))
            except NotFound:
                remote = None
            learned.exists[sku] = remote is not None
            item = replace(item, in_skyhub=remote is not None)
            if remote is not None and _linked(remote):
                learned.linked.add(sku)
                if not item.unfrozen:
                    item = replace(item, frozen=True, frozen_since=self.clock())
        decision = decide(request, item)
        learned.note_unchanged(sku, decision.unchanged)
        if decision.nothing_to_send:
            return learned.ending(Outcome(state="withheld", reason=decision.reason()))
        send = dict(decision.send)
        variations = send.pop("variations", None)
        if not item.in_skyhub and request.has_product_row:
            body = {"sku": sku, **send}
            if variations:
                body["variations"] = variations
            parts = [variation_request(request, v) for v in variations or []]
            try:
                self._attempt(learned, sku, send)
                for part in parts:
                    self._attempt(learned, part.sku, part.fields)
                self._call(lambda: self.client.create_product(body))
                learned.acks.append(Ack(sku, send, request.sources))
                for part in parts:
                    learned.acks.append(Ack(part.sku, part.fields, part.sources, parent_sku=sku))
                return sent_outcome(learned, decision)
            except Unprocessable:
                # "Already exists" (a lost answer to our own POST, or a product created
                # elsewhere meanwhile) means update it; any other 422 stands as SkyHub said it.
                if not self._exists(self.client.get_product, sku):
                    raise
                learned.exists[sku] = True
        if send:
            try:
                self._attempt(learned, sku, send)
                self._call(lambda: self.client.update_product(sku, send))
            except NotFound:
                if request.has_product_row:
                    raise
                return self._push_unknown_as_variation(request, send, learned, decision)
            except Unprocessable as exc:
                send, variations = self._refused_attributes(request, send, variations, learned, exc)
                if send:
                    self._attempt(learned, sku, send)
                    self._call(lambda: self.client.update_product(sku, send))
                elif not variations:
                    reason = decision.reason() if decision.withheld else None
                    return learned.ending(
                        Outcome(
                            state="withheld",
                            reason=reason or "nothing left to send once SkyHub refused the rest",
                        ),
                    )
            if send:
                learned.acks.append(Ack(sku, send, request.sources))
        for v in variations or []:
            self._push_variation_entry(sku, variation_request(request, v), learned)
        return sent_outcome(learned, decision)

    @staticmethod
    def _refused_attributes(
        request: SkuRequest,
        send: dict[str, Any],
        variations: list[dict[str, Any]] | None,
        learned: Learned,
        exc: Unprocessable,
    ) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
        """SkyHub refused a write that carried attributes: the rows that carried them are
        rejected with SkyHub's text, and price/stock (of the product and its variations) go
        again on their own (returned; possibly nothing). A refusal of price/stock alone stands
        (re-raised)."""
        flowing = {k: v for k, v in send.items() if k in FLOWING_FIELDS}
        attributes = sorted(k for k in send if k not in FLOWING_FIELDS)
        if not attributes:
            raise exc
        carriers = sorted({request.sources[k] for k in attributes})
        for row_id in carriers:
            mine = [k for k in attributes if request.sources[k] == row_id]
            learned.refused[row_id] = (
                f"SkyHub refused {', '.join(mine)}: {exc}; "
                "price and stock are not held back by it (sent without these fields)"
            )
        kept = [
            {"sku": v["sku"], **{k: x for k, x in v.items() if k in FLOWING_FIELDS}}
            for v in variations or []
        ]
        return flowing, [v for v in kept if len(v) > 1]

    def _push_variation_entry(self, parent: str, part: SkuRequest, learned: Learned) -> None:
        """One variation of a product row: created under its parent, or updated with the
        fields that changed and that no newer row (a stock row for it, say) already set."""
        vsku = part.sku
        known = self._load_item(vsku)
        part_decision = decide(part, known, frozen=False)
        learned.note_unchanged(vsku, part_decision.unchanged)
        fields = part_decision.send
        sources = part.sources
        if known.in_skyhub:
            if not fields:
                return
            try:
                self._attempt(learned, vsku, fields)
                self._call(lambda: self.client.update_variation(vsku, fields))
                learned.acks.append(Ack(vsku, fields, sources, parent_sku=parent))
                return
            except NotFound:
                pass
        variation = {"sku": vsku, **fields}
        try:
            self._attempt(learned, vsku, fields)
            self._call(lambda: self.client.create_variation(parent, variation))
        except Unprocessable:
            if not self._exists(self.client.get_variation, vsku):
                raise
            self._call(lambda: self.client.update_variation(vsku, fields))
        learned.acks.append(Ack(vsku, fields, sources, parent_sku=parent))

    def _push_unknown_as_variation(
        self, request: SkuRequest, send: dict[str, Any], learned: Learned, decision: Any
    ) -> Outcome:
        """A price/stock row for a SKU we never saw, that SkyHub has no product for: it may be a
        variation created outside skysync."""
        sku = request.sku
        try:
            self._attempt(learned, sku, send)
            self._call(lambda: self.client.update_variation(sku, send))
        except NotFound:
            return learned.ending(
                Outcome(
                    state="rejected",
                    status=404,
                    reason=(
                        f"SkyHub has no product or variation with SKU {sku!r}: "
                        "send a product row that creates it first"
                    ),
                ),
            )
        learned.acks.append(Ack(sku, send, request.sources))
        return sent_outcome(learned, decision)

    def _push_variation(self, request: SkuRequest, item: ItemView, learned: Learned) -> Outcome:
        parent_sku = item.parent_sku or ""
        parent = self._load_item(parent_sku)
        frozen = parent.frozen or item.frozen
        if frozen and not item.frozen:
            item = replace(item, frozen=True, frozen_since=parent.frozen_since)
        decision = decide(request, item, frozen=frozen)
        learned.note_unchanged(request.sku, decision.unchanged)
        if decision.nothing_to_send:
            return learned.ending(Outcome(state="withheld", reason=decision.reason()))
        send = {k: v for k, v in decision.send.items() if k != "variations"}
        waiting = self._parent_on_its_way(parent_sku)
        if not parent.in_skyhub and waiting:
            return learned.ending(_waiting_for_parent(parent_sku))
        try:
            self._attempt(learned, request.sku, send)
            self._call(lambda: self.client.update_variation(request.sku, send))
        except NotFound:
            if self._parent_on_its_way(parent_sku):
                return learned.ending(_waiting_for_parent(parent_sku))
            raise
        learned.acks.append(Ack(request.sku, send, request.sources, parent_sku=parent_sku))
        return sent_outcome(learned, decision)

    def _exists(self, read: Callable[[str], Any], sku: str) -> bool:
        """Does SkyHub have it? (``read`` is get_product or get_variation.)"""
        try:
            self._call(lambda: read(sku))
        except NotFound:
            return False
        return True

    def _parent_on_its_way(self, parent_sku: str) -> bool:
        with session_scope(self.url) as session:
            return outbox.has_open_rows(session, parent_sku, ("product",))

    # -- orders ---------------------------------------------------------------------------
    def _deliver_order(self, token: str, rows: list[Row]) -> str:
        """Order steps go out one by one in id order and never overtake an earlier step of the
        same order that has not gone yet (pending, refused by SkyHub, or dead), unless they are
        a newer row of that same kind: the fix. A step held back goes in the same batch as soon
        as the fix went out."""
        code = rows[0].ref
        claimed = {r.id for r in rows}
        with session_scope(self.url) as session:
            open_steps = order_store.unresolved_steps(session, code, exclude=claimed)
            current = order_store.current_status(session, code)
        last = "sent"
        remaining = list(rows)
        held: dict[int, order_store.Step] = {}
        progress = True
        while remaining and progress:
            progress = False
            still: list[Row] = []
            for row in remaining:
                blocker = next(
                    (b for b in open_steps if b.id < row.id and b.kind != row.kind), None
                )
                if blocker is not None:
                    held[row.id] = blocker
                    still.append(row)
                    continue
                held.pop(row.id, None)
                outcome = self._push_order_step(row, current)
                self._record(token, [row], outcome)
                last = outcome.state
                if outcome.state == "auth":
                    rest = [r for r in remaining if r.id > row.id] + still
                    if rest:
                        self._record(token, rest, Outcome(state="auth", reason=outcome.reason))
                    raise AuthenticationError(outcome.reason or "", status=outcome.status)
                if outcome.state == "sent":
                    current = outcome.order_status[1] if outcome.order_status else current
                    # a newer row of a blocker's kind went out: that blocker is resolved
                    before = len(open_steps)
                    open_steps = [b for b in open_steps if b.kind != row.kind or b.id > row.id]
                    progress = progress or len(open_steps) < before
                elif outcome.blocks_later or outcome.state in ("wait", "retry"):
                    open_steps.append(order_store.Step(row.id, row.kind, outcome.state))
            remaining = still
        for row in remaining:
            blocker = held[row.id]
            last = "wait"
            self._record(
                token,
                [row],
                Outcome(
                    state="wait",
                    delay=5.0,
                    reason=f"waiting for row {blocker.id} ({blocker.kind}, {blocker.state}) "
                    "to go first",
                ),
            )
        return last

    def _push_order_step(self, row: Row, current: str | None) -> Outcome:
        code, payload = row.ref, row.payload
        target = TARGET_STATUS[row.kind]
        check = check_step(row.kind, current)
        if check.verdict == "done":
            return Outcome(state="sent", reason=check.reason, order_status=(code, target))
        if check.verdict == "refuse":
            # Refused here, no request spent; it does not hold later steps back.
            return Outcome(state="rejected", reason=f"refused locally: {check.reason}")
        actions: dict[str, Callable[[], None]] = {
            "order_invoice": lambda: self.client.invoice_order(
                code, payload["key"], payload.get("issue_date")
            ),
            "order_shipment": lambda: self.client.ship_order(code, payload),
            "order_delivery": lambda: self.client.deliver_order(code, payload["delivered_date"]),
            "order_cancel": lambda: self.client.cancel_order(code),
            "order_shipment_exception": lambda: self.client.shipment_exception(
                code, payload["occurrence_date"], payload["observation"]
            ),
        }
        try:
            self._call(actions[row.kind])
        except Unprocessable as exc:
            # After a lost answer our own repeat gets a 422: read the order to tell "already
            # done" from a real refusal. A read that fails says nothing: try again later.
            try:
                already = self._order_has_status(code, target)
            except AuthenticationError:
                raise
            except (RateLimited, RetryableError) as read_exc:
                outcome = failure_outcome(read_exc)
                outcome.reason = (
                    f"SkyHub answered {exc}; reading the order to see whether the step already "
                    f"took effect failed ({read_exc}), so it is tried again later"
                )
                return outcome
            except PermanentError:
                already = False
            if already:
                return Outcome(
                    state="sent",
                    reason=f"order was already {target} in SkyHub ({exc.message})",
                    order_status=(code, target),
                )
            return failure_outcome(exc)
        except SkyHubError as exc:
            return failure_outcome(exc)
        return Outcome(state="sent", order_status=(code, target))

    def _order_has_status(self, code: str, status: str) -> bool:
        """After a 422: is the order already in the status we asked for (a repeat)? Raises the
        read's SkyHubError when the order could not be read."""
        order = self._call(lambda: self.client.get_order(code))
        current = order.get("status") if isinstance(order, dict) else None
        if isinstance(current, dict):
            current = current.get("code")
        return current == status

    # -- recording ------------------------------------------------------------------------
    def _record(self, token: str, rows: list[Row], outcome: Outcome) -> None:
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
