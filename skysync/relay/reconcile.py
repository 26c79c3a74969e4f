"""Reconciliation: read SkyHub's catalogue and hold it against the ERP's latest accepted values
(the decisions are in :mod:`skysync.domain.reconcile`; the SQL in ``skysync/store``).

1. ``GET /products?per_page=100`` and then the ``next`` cursor, page by page, through the shared
   rate limiter in the ``products:GET`` bucket (its own 9/s at SkyHub: reads never take the
   budget of writes). Each product comes with its variations.
2. Per page, one transaction: what skysync expects of every listed SKU, the differences, and the
   SKUs the ERP never wrote (orphans). A drifted field's acknowledged value is forgotten, so the
   relay never withholds the ERP's next value for it as "unchanged" against a belief SkyHub
   proved false.
3. After the last page, the SKUs skysync believes SkyHub holds and the listing lacked: each
   product is read once more (``GET /products/{sku}``) before it is called missing.
4. With ``repair``: one corrective ``product`` row per product through the outbox, marked
   ``origin = 'reconcile'``; the relay sends it like any ERP row. Frozen attributes, orphans and
   SKUs with a newer row on its way are never repaired.
5. The run log, ``skysync status`` and the metrics get the summary.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from skysync.domain.reconcile import (
    REMOTE_ONLY,
    Difference,
    Expected,
    ItemFacts,
    Listed,
    Missing,
    ReconcileProgress,
    ReconcileReport,
    build_expected,
    compare,
    corrections,
    listed_skus,
)
from skysync.domain.reservation import Reservation, reserve
from skysync.domain.validation import ValidationFailed
from skysync.relay import unit_of_work as unit
from skysync.relay.catalogue import listing_pages
from skysync.relay.deps import RelayDeps
from skysync.skyhub.client import ProductPage
from skysync.skyhub.errors import AuthenticationError, NotFound, SkyHubError
from skysync.store import items as item_store
from skysync.store import orders as order_store
from skysync.store import outbox, outbox_reads, runs
from skysync.store.request_stats import save_request_counts

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


log = logging.getLogger("skysync.reconcile")

PER_PAGE = 100  # SkyHub's maximum page size
RUN_KIND = "reconcile"


class _Run:
    """One reconciliation's working state."""

    def __init__(self, deps: RelayDeps, report: ReconcileReport) -> None:
        self.deps = deps
        self.report = report
        self.seen: set[str] = set()
        self.kept: dict[str, Expected] = {}  # expectations of the SKUs that drifted

    def compare_listed(self, listed: list[Listed], read_at: datetime) -> None:
        """One page (or one product read on its own): compare, note orphans, forget beliefs
        SkyHub proved false. One transaction."""
        report = self.report
        fresh = [entry for entry in listed if entry.sku not in self.seen]
        self.seen.update(entry.sku for entry in fresh)
        with self.deps.db.scope() as session:
            expected = _expectations(session, [e.sku for e in fresh], read_at)
            # no expectation: skysync does not know it, or only learned that SkyHub has it
            # (relay/catalogue.py) without the ERP ever writing a value for it
            unknown = {e.sku for e in fresh if e.sku not in expected or not expected[e.sku].fields}
            written = outbox_reads.written_refs(session, unknown) if unknown else set()
            reserved = _reservations(self.deps, session, expected)
            now = self.deps.clock()
            for entry in fresh:
                wanted = expected.get(entry.sku)
                if entry.sku in unknown and entry.sku not in written:
                    if entry.parent_sku not in written:
                        report.orphans.append(entry.sku)
                    continue
                if wanted is None:
                    continue
                report.skus_compared += 1
                report.busy_fields += len(wanted.busy & set(wanted.fields))
                differences = compare(
                    wanted,
                    entry,
                    stock_buffer=self.deps.stock_buffer,
                    reservation=reserved.get(entry.sku),
                )
                report.add(differences)
                drifted = [d.field for d in differences if not d.frozen]
                if drifted:
                    self.kept[entry.sku] = wanted
                    item_store.forget(session, entry.sku, drifted, now)


def _reservations(
    deps: RelayDeps, session: Session, expected: Mapping[str, Expected]
) -> dict[str, Reservation]:
    """With SKYSYNC_RESERVE_OPEN_ORDERS: the units open orders hold back from each expected
    quantity, counted from when the ERP wrote it (as the relay counts them). One read of the
    page's order lines; the ERP's row only for the SKUs some order holds."""
    if not deps.reserve_open_orders:
        return {}
    skus = [sku for sku, e in expected.items() if "qty" in e.fields]
    lines = order_store.open_lines(session, skus)
    found: dict[str, Reservation] = {}
    for sku in sorted({line.sku for line in lines}):
        erp = outbox_reads.latest_erp_qty(session, sku, expected[sku].parent_sku)
        found[sku] = reserve(sku, lines, erp.written_at if erp is not None else None)
    return found


def _expectations(session: Session, skus: list[str], read_at: datetime) -> dict[str, Expected]:
    """What skysync expects SkyHub to hold for each of ``skus`` it knows."""
    facts = item_store.reconcile_facts(session, skus)
    if not facts:
        return {}
    rows = outbox_reads.accepted_rows(
        session, (i for f in facts.values() for i in f.last_applied.values())
    )
    frozen = [f for f in facts.values() if f.frozen and f.frozen_since is not None]
    later = []
    if frozen:
        since = min(f.frozen_since for f in frozen if f.frozen_since is not None)
        later = outbox_reads.product_rows_finished_since(
            session, {f.parent_sku or f.sku for f in frozen}, since
        )
    refs = set(facts) | {f.parent_sku for f in facts.values() if f.parent_sku}
    open_ = outbox_reads.open_kinds(session, refs)
    return {sku: _expected(f, rows, later, open_, read_at) for sku, f in facts.items()}


def _expected(
    facts: ItemFacts,
    rows: Mapping[int, Any],
    later: list[Any],
    open_: Mapping[str, set[str]],
    read_at: datetime,
) -> Expected:
    kinds = set(open_.get(facts.sku, set()))
    if facts.parent_sku and "product" in open_.get(facts.parent_sku, set()):
        kinds.add("product")  # the parent's product row may carry this variation's fields
    mine = [r for r in later if r.ref in (facts.sku, facts.parent_sku)]
    return build_expected(facts, rows, mine, kinds, read_at=read_at)


def reconcile(
    deps: RelayDeps,
    *,
    sku: str | None = None,
    repair: bool = False,
    per_page: int = PER_PAGE,
    progress: Callable[[ReconcileProgress], None] | None = None,
) -> ReconcileReport:
    """Hold SkyHub's catalogue (or one ``sku``) against the ERP's latest accepted values;
    with ``repair``, enqueue corrective rows. The run is recorded in the run log."""
    report = ReconcileReport(started_at=deps.clock(), sku=sku, repair=repair)
    run = _Run(deps, report)
    try:
        if sku is None:
            _read_catalogue(run, per_page, progress)
            _find_missing(run)
        else:
            _read_one(run, sku)
        if repair:
            _repair(run)
    except AuthenticationError as exc:
        report.error = runs.auth_stop_reason(exc)
    except SkyHubError as exc:
        report.error = f"stopped: {exc}"
    report.finished_at = deps.clock()
    with deps.db.scope() as session:
        save_request_counts(session, deps.client.counter.take())
        runs.add(
            session,
            RUN_KIND,
            started_at=report.started_at,
            finished_at=report.finished_at,
            summary=report.summary(),
            error=report.error,
        )
    log.info(
        "reconciliation: %d SKUs compared over %d pages; %d drift, %d frozen, %d orphans, "
        "%d missing, %d rows enqueued%s",
        report.skus_compared,
        report.pages,
        len(report.drift),
        len(report.frozen),
        len(report.orphans),
        len(report.missing),
        len(report.repaired),
        f"; {report.error}" if report.error else "",
    )
    return report


def _read_catalogue(
    run: _Run, per_page: int, progress: Callable[[ReconcileProgress], None] | None
) -> None:
    """Every page of GET /products, following ``next``; the next page is read while this one
    is compared, so the listing's rate limit, not the comparison, sets the pace."""
    report = run.report
    started = time.monotonic()
    pages_total: int | None = None
    for read_at, page in _prefetched_pages(run.deps, per_page):
        report.pages += 1
        if pages_total is None and isinstance(page.total, int):
            pages_total = max(1, math.ceil(page.total / per_page))
        run.compare_listed([e for p in page.products for e in listed_skus(p)], read_at)
        if progress is not None:
            progress(
                ReconcileProgress(
                    pages=report.pages,
                    pages_total=pages_total,
                    skus=report.skus_compared,
                    drift=len(report.drift) + len(report.orphans),
                    elapsed=time.monotonic() - started,
                )
            )


_END = object()


def _prefetched_pages(deps: RelayDeps, per_page: int) -> Iterator[tuple[datetime, ProductPage]]:
    """(when it was read, page) for every page, read one page ahead on a thread of its own; a
    failure to read is raised here, in the caller's thread."""
    pages: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def read() -> None:
        listing = listing_pages(deps, per_page)
        try:
            while not stop.is_set():
                read_at = deps.clock()
                page = next(listing, None)
                if page is None:
                    break
                pages.put((read_at, page))
        except BaseException as exc:  # handed to the caller, raised there
            pages.put(exc)
            return
        pages.put(_END)

    reader = threading.Thread(target=read, name="reconcile-pages", daemon=True)
    reader.start()
    try:
        while True:
            item = pages.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting to put a page nobody will take
            with contextlib.suppress(queue.Empty):
                pages.get(timeout=0.1)
        reader.join()


def _read_product(run: _Run, sku: str) -> dict[str, Any] | None:
    """GET /products/{sku}; None when SkyHub does not have it."""
    deps = run.deps
    try:
        return unit.call(deps, lambda: deps.client.get_product(sku))
    except NotFound:
        return None


def _find_missing(run: _Run) -> None:
    """SKUs skysync believes SkyHub holds that the listing lacked: a product is read once more
    before it is called missing (a listing may miss one created or deleted meanwhile)."""
    with run.deps.db.scope(readonly=True) as session:
        candidates = [
            (s, p) for s, p in item_store.believed_in_skyhub(session) if s not in run.seen
        ]
    candidates.sort(key=lambda c: c[1] is not None)  # products first: a variation comes with one
    for sku, parent in candidates:
        if sku in run.seen:
            continue  # read with its parent below
        if parent is None:
            read_at = run.deps.clock()
            product = _read_product(run, sku)
            if product is not None:
                run.compare_listed(listed_skus(product), read_at)
                if sku in run.seen:
                    continue
        run.report.missing.append(Missing(sku, parent))


def _read_one(run: _Run, sku: str) -> None:
    """``--sku``: the product, or the variation within its parent."""
    with run.deps.db.scope(readonly=True) as session:
        facts = item_store.reconcile_facts(session, [sku]).get(sku)
    parent = facts.parent_sku if facts is not None else None
    read_at = run.deps.clock()
    product = _read_product(run, parent or sku)
    run.report.pages = 1
    listed = [e for e in listed_skus(product or {}) if e.sku == sku]
    if listed:
        run.compare_listed(listed, read_at)
    elif facts is not None and (facts.last_applied or facts.acknowledged):
        run.report.missing.append(Missing(sku, parent))


def _repair(run: _Run) -> None:
    """One corrective row per product, each in its own transaction; never for a SKU that has a
    newer row on its way (the ERP's value wins)."""
    report, deps = run.report, run.deps
    gone = {m.sku for m in report.missing}
    if gone:
        with deps.db.scope(readonly=True) as session:
            run.kept.update(_expectations(session, sorted(gone), deps.clock()))
    for fix in corrections(report.drift, report.missing, run.kept):
        skus = sorted(fix.fields)
        with deps.db.scope() as session:
            busy = outbox_reads.open_kinds(session, [fix.ref, *skus])
            if busy:
                report.not_repaired.append(
                    {"ref": fix.ref, "reason": "a newer row for it is on its way: it wins"}
                )
                continue
            try:
                row = outbox.enqueue_correction(session, fix.kind, fix.ref, fix.payload)
            except ValidationFailed as exc:
                report.not_repaired.append({"ref": fix.ref, "reason": "; ".join(exc.problems)})
                continue
            now = deps.clock()
            item_store.mark_gone(session, [s for s in skus if s in gone], now)
            for name_sku, names in fix.fields.items():
                item_store.forget(session, name_sku, names, now)
            report.repaired.append(
                {"row_id": row.id, "kind": fix.kind, "ref": fix.ref, "fields": dict(fix.fields)}
            )


def read_now(deps: RelayDeps, sku: str) -> dict[str, Any]:
    """One SKU as SkyHub holds it now, beside what skysync expects it to hold: one GET
    /products/{sku} (a variation: its parent's) through the shared rate limiter, compared as
    reconciliation compares (the same expectations, stock buffer and open orders), and nothing
    written but the request count: no run, no belief forgotten, no correction. For an operator
    asking "why does SkyHub still show the old price?" (the console's SKU doctor).

    Returns ``{"sku", "read_at", "in_skyhub", "parent_sku", "fields": [{"name", "erp",
    "acknowledged", "skyhub", "differs", "frozen", "note"}], "error"}``; ``error`` says why
    SkyHub could not be read (the rest is then empty)."""
    read_at = deps.clock()
    with deps.db.scope(readonly=True) as session:
        facts = item_store.reconcile_facts(session, [sku]).get(sku)
        acknowledged = dict(facts.acknowledged) if facts is not None else {}
    parent = facts.parent_sku if facts is not None else None
    found: dict[str, Any] = {
        "sku": sku,
        "read_at": read_at.isoformat(),
        "parent_sku": parent,
        "in_skyhub": False,
        "fields": [],
        "error": None,
    }
    try:
        product = deps.client.get_product(parent or sku)
    except NotFound:
        product = None
    except SkyHubError as exc:
        found["error"] = str(exc)
        product = None
    finally:
        with deps.db.scope() as session:
            save_request_counts(session, deps.client.counter.take())
    listed = next((e for e in listed_skus(product or {}) if e.sku == sku), None)
    if listed is None:
        return found
    with deps.db.scope(readonly=True) as session:
        wanted = _expectations(session, [sku], read_at).get(sku)
        reserved = _reservations(deps, session, {sku: wanted} if wanted is not None else {})
    differences: dict[str, Difference] = {}
    if wanted is not None:
        for d in compare(
            wanted, listed, stock_buffer=deps.stock_buffer, reservation=reserved.get(sku)
        ):
            differences[d.field] = d
    expected = dict(wanted.fields) if wanted is not None else {}
    names = sorted(
        (set(expected) | set(acknowledged) | set(listed.fields) | set(differences)) - REMOTE_ONLY
    )
    found["in_skyhub"] = True
    found["parent_sku"] = listed.parent_sku
    found["linked"] = listed.linked
    found["fields"] = [
        {
            "name": name,
            "erp": expected[name].value if name in expected else None,
            "erp_row": expected[name].row_id if name in expected else None,
            "acknowledged": acknowledged.get(name),
            "skyhub": listed.fields.get(name),
            "differs": name in differences,
            "frozen": name in differences and differences[name].frozen,
            "note": differences[name].note if name in differences else None,
            "busy": wanted is not None and name in wanted.busy,
        }
        for name in names
    ]
    return found
