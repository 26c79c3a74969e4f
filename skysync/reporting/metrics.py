"""Prometheus metrics about the data (Flower's own /metrics covers the tasks): read from the
database on every scrape, so one `skysync metrics` process sees what every worker did.

    skysync metrics --port 9108     # GET http://host:9108/metrics
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy.orm import Session

from skysync.domain.kinds import DEFAULT_ACCOUNT, Kind, RowState
from skysync.domain.late import LateRules, Reason
from skysync.store import runs
from skysync.store.db import Database
from skysync.store.late import LateCounts, late_counts, total
from skysync.store.models import utcnow
from skysync.store.orders import inbox_counts, reserved_totals
from skysync.store.outbox_reads import count_by_account_state_and_kind, oldest_pending
from skysync.store.request_stats import request_counts
from skysync.store.sync_errors import open_counts

# The label of rows that name an account skysync is not configured for (rejected, each with
# its reason): one label for all of them, so the metrics' cardinality stays that of the
# configured accounts.
UNCONFIGURED = "(unconfigured)"


class DataCollector(Collector):
    """Everything `skysync_*`, gathered in one read-only transaction per scrape. Every family
    carries an ``account`` label: one value per configured account (``accounts()``, asked on
    every scrape, so an account added to the accounts file shows at the next one), and
    :data:`UNCONFIGURED` for rows naming any other. ``late_rules``: when an order counts as
    late (SKYSYNC_LATE_*; default: the settings' defaults)."""

    def __init__(
        self,
        db: Database,
        accounts: Callable[[], list[str]] | None = None,
        late_rules: LateRules | None = None,
    ):
        self.db = db
        self.accounts = accounts or (lambda: [DEFAULT_ACCOUNT])
        self.late_rules = late_rules or LateRules()

    def collect(self) -> Iterator[Metric]:
        accounts = list(self.accounts())
        with self.db.scope(readonly=True) as session:
            yield from _outbox_metrics(session, utcnow(), accounts)
            yield from _relay_metrics(session, accounts)
            yield from _request_metrics(session, accounts)
            yield from _order_metrics(session, accounts)
            yield from _late_metrics(session, utcnow(), accounts, self.late_rules)
            yield from _reconcile_metrics(session, accounts)
            yield from _sync_error_metrics(session, accounts)
            yield from _reservation_metrics(session, accounts)


def _label(account: str, accounts: list[str]) -> str:
    return account if account in accounts else UNCONFIGURED


def _outbox_metrics(session: Session, now: datetime, accounts: list[str]) -> Iterable[Metric]:
    """Rows by account, state and kind (every pair of each account, 0 included), dead and
    rejected totals, and the age of the oldest due row: what tells ops whether the outbox
    keeps up."""
    rows = GaugeMetricFamily(
        "skysync_outbox_rows",
        "Outbox rows by account, state and kind.",
        labels=["account", "state", "kind"],
    )
    counts = {(a, str(s), str(k)): 0 for a in accounts for s in RowState for k in Kind}
    for (account, state, kind), n in count_by_account_state_and_kind(session).items():
        key = (_label(account, accounts), state, kind)
        counts[key] = counts.get(key, 0) + n
    for labels, n in counts.items():
        rows.add_metric(list(labels), n)
    yield rows
    for state in (RowState.DEAD, RowState.REJECTED):
        family = GaugeMetricFamily(
            f"skysync_outbox_{state}_rows", f"Outbox rows in state {state}.", labels=["account"]
        )
        for account in dict.fromkeys(a for a, _s, _k in counts):
            total = sum(n for (a, s, _k), n in counts.items() if a == account and s == state)
            family.add_metric([account], total)
        yield family
    oldest = GaugeMetricFamily(
        "skysync_outbox_oldest_due_pending_age_seconds",
        "Age of the oldest pending row that is due (0 when none).",
        labels=["account"],
    )
    for account in accounts:
        first = oldest_pending(session, due_only=True, now=now, account=account)
        oldest.add_metric([account], (now - first).total_seconds() if first else 0.0)
    yield oldest


def _relay_metrics(session: Session, accounts: list[str]) -> Iterable[Metric]:
    """Each account's last relay batch: when, how long, and whether SkyHub refused the
    credentials."""
    started = GaugeMetricFamily(
        "skysync_last_relay_timestamp_seconds",
        "When the last relay batch started.",
        labels=["account"],
    )
    took = GaugeMetricFamily(
        "skysync_last_relay_duration_seconds",
        "How long the last relay batch took.",
        labels=["account"],
    )
    refused = GaugeMetricFamily(
        "skysync_last_relay_auth_failed",
        "1 when SkyHub refused the account's credentials in its last batch.",
        labels=["account"],
    )
    for account in accounts:
        last = runs.last(session, "relay", account=account)
        started.add_metric([account], last.started_at.timestamp() if last else 0.0)
        seconds = 0.0
        if last is not None and last.finished_at is not None:
            seconds = (last.finished_at - last.started_at).total_seconds()
        took.add_metric([account], seconds)
        stopped = last is not None and runs.is_auth_stop(last.error)
        refused.add_metric([account], 1.0 if stopped else 0.0)
    yield from (started, took, refused)


def _request_metrics(session: Session, accounts: list[str]) -> Iterable[Metric]:
    """Requests to SkyHub by account, method, endpoint and status, counted by every worker."""
    requests = CounterMetricFamily(
        "skysync_skyhub_requests",
        "Requests to SkyHub by account, method, endpoint and status ('error': no answer).",
        labels=["account", "method", "route", "status"],
    )
    totals: dict[tuple[str, str, str, str], int] = {}
    limited = dict.fromkeys(accounts, 0)
    for (account, method, route, status), n in request_counts(session).items():
        key = (_label(account, accounts), method, route, status)
        totals[key] = totals.get(key, 0) + n
        if status == "429":
            limited[key[0]] = limited.get(key[0], 0) + n
    for labels, n in totals.items():
        requests.add_metric(list(labels), n)
    yield requests
    rate_limited = CounterMetricFamily(
        "skysync_skyhub_rate_limited", "Requests SkyHub answered with 429.", labels=["account"]
    )
    for account, n in limited.items():
        rate_limited.add_metric([account], n)
    yield rate_limited


def _order_metrics(session: Session, accounts: list[str]) -> Iterable[Metric]:
    """Orders waiting for the ERP, and the malformed ones among them."""
    waiting = GaugeMetricFamily(
        "skysync_orders_waiting_for_erp",
        "Inbox rows the ERP has not consumed.",
        labels=["account"],
    )
    flagged = GaugeMetricFamily(
        "skysync_orders_flagged",
        "Unconsumed inbox rows SkyHub sent malformed.",
        labels=["account"],
    )
    for account in accounts:
        inbox = inbox_counts(session, account=account)
        waiting.add_metric([account], inbox.unconsumed)
        flagged.add_metric([account], inbox.flagged)
    yield from (waiting, flagged)


def _late_metrics(
    session: Session, now: datetime, accounts: list[str], rules: LateRules
) -> Iterable[Metric]:
    """Late orders by reason (every reason of each account, 0 included), those past their
    expedition limit, and the age of the oldest inbox row the ERP has not consumed: an ERP
    that stopped reading orders shows as that age growing."""
    late = GaugeMetricFamily(
        "skysync_orders_late",
        "Late orders by reason: ship (paid, not shipped, the expedition limit within the "
        "margin or past), invoice (approved, not invoiced in time), inbox (inbox rows the ERP "
        "has not consumed in time).",
        labels=["account", "reason"],
    )
    past = GaugeMetricFamily(
        "skysync_orders_past_expedition_limit",
        "Orders paid and not shipped whose expedition limit has passed (of reason ship).",
        labels=["account"],
    )
    oldest = GaugeMetricFamily(
        "skysync_inbox_oldest_unconsumed_age_seconds",
        "Age of the oldest inbox row the ERP has not consumed (0 when none).",
        labels=["account"],
    )
    found: dict[str, list[LateCounts]] = {account: [] for account in accounts}
    for account, counts in late_counts(session, now, rules).items():
        found.setdefault(_label(account, accounts), []).append(counts)
    for account, parts in found.items():
        part = total(parts)
        for reason in Reason:
            late.add_metric([account, str(reason)], getattr(part, reason.value))
        past.add_metric([account], part.ship_past_limit)
        first = part.oldest_unconsumed_at
        oldest.add_metric([account], (now - first).total_seconds() if first else 0.0)
    yield from (late, past, oldest)


_RECONCILE_COUNTS = (
    ("skysync_orphan_skus", "orphans", "SKUs SkyHub has that the ERP never wrote."),
    ("skysync_missing_skus", "missing", "SKUs the ERP wrote that SkyHub lacks."),
    ("skysync_frozen_drift_fields", "frozen", "Frozen attributes SkyHub holds otherwise."),
)


def _reconcile_metrics(session: Session, accounts: list[str]) -> Iterable[Metric]:
    """What each account's last reconciliation found: drifted fields by name, orphans,
    missing SKUs, and when it ran (0 when it never did)."""
    drift = GaugeMetricFamily(
        "skysync_drift_fields",
        "Fields where SkyHub differs from the ERP's latest accepted value (last reconciliation).",
        labels=["account", "field"],
    )
    counts = {
        name: GaugeMetricFamily(name, text + " (last reconciliation)", labels=["account"])
        for name, _key, text in _RECONCILE_COUNTS
    }
    when = GaugeMetricFamily(
        "skysync_last_reconcile_timestamp_seconds",
        "When the last reconciliation finished (0: never).",
        labels=["account"],
    )
    for account in accounts:
        last = runs.last(session, "reconcile", account=account)
        summary = (last.summary or {}) if last is not None else {}
        for name, n in sorted((summary.get("drift_fields") or {}).items()):
            drift.add_metric([account, name], n)
        for name, key, _text in _RECONCILE_COUNTS:
            counts[name].add_metric([account], summary.get(key, 0))
        finished = last.finished_at.timestamp() if last is not None and last.finished_at else 0.0
        when.add_metric([account], finished)
    yield drift
    yield from counts.values()
    yield when


def _sync_error_metrics(session: Session, accounts: list[str]) -> Iterable[Metric]:
    """SkyHub's own errors still open (neither resolved nor ignored), per entity type."""
    errors = GaugeMetricFamily(
        "skysync_skyhub_sync_errors",
        "SkyHub's own errors about accepted products and orders, still open.",
        labels=["account", "entity_type"],
    )
    for account in accounts:
        for entity_type, n in open_counts(session, account=account).items():
            errors.add_metric([account, entity_type], n)
    yield errors


def registry_for(
    db: Database,
    accounts: Callable[[], list[str]] | None = None,
    late_rules: LateRules | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DataCollector(db, accounts, late_rules))
    return registry


def serve(
    db: Database,
    port: int,
    address: str = "127.0.0.1",
    accounts: Callable[[], list[str]] | None = None,
    late_rules: LateRules | None = None,
) -> None:
    """Serve /metrics until interrupted."""
    import threading

    from prometheus_client import start_http_server

    registry = registry_for(db, accounts, late_rules)
    server, thread = start_http_server(port, addr=address, registry=registry)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        thread.join(timeout=5)


def _reservation_metrics(session: Session, accounts: list[str]) -> Iterable[Metric]:
    """The stock reservation (SKYSYNC_RESERVE_OPEN_ORDERS): units held back for orders the ERP
    has not consumed, and the SKUs and orders holding them. Counted whether the reservation
    is on or not: the units an ERP that has not read its orders still offers."""
    units = GaugeMetricFamily(
        "skysync_reserved_units",
        "Units of orders the ERP has not consumed (held back with SKYSYNC_RESERVE_OPEN_ORDERS).",
        labels=["account"],
    )
    skus = GaugeMetricFamily(
        "skysync_reserved_skus",
        "SKUs with units in orders the ERP has not consumed.",
        labels=["account"],
    )
    orders = GaugeMetricFamily(
        "skysync_reserved_orders",
        "Orders with units the ERP has not consumed.",
        labels=["account"],
    )
    for account in accounts:
        totals = reserved_totals(session, account=account)
        units.add_metric([account], totals.units)
        skus.add_metric([account], totals.skus)
        orders.add_metric([account], totals.orders)
    yield from (units, skus, orders)
