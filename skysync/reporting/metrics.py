"""Prometheus metrics about the data (Flower's own /metrics covers the tasks): read from the
database on every scrape, so one `skysync metrics` process sees what every worker did.

    skysync metrics --port 9108     # GET http://host:9108/metrics
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy.orm import Session

from skysync.domain.kinds import RowState
from skysync.store import runs
from skysync.store.db import Database
from skysync.store.models import utcnow
from skysync.store.orders import inbox_counts
from skysync.store.outbox_reads import count_by_state_and_kind, oldest_pending
from skysync.store.request_stats import request_counts
from skysync.store.sync_errors import open_counts


class DataCollector(Collector):
    """Everything `skysync_*`, gathered in one read-only transaction per scrape."""

    def __init__(self, db: Database):
        self.db = db

    def collect(self) -> Iterator[Metric]:
        with self.db.scope(readonly=True) as session:
            yield from _outbox_metrics(session, utcnow())
            yield from _relay_metrics(session)
            yield from _request_metrics(session)
            yield from _order_metrics(session)
            yield from _reconcile_metrics(session)
            yield from _sync_error_metrics(session)


def _outbox_metrics(session: Session, now: datetime) -> Iterable[Metric]:
    """Rows by state and kind (every pair, 0 included), dead and rejected totals, and the age
    of the oldest due row: what tells ops whether the outbox keeps up."""
    rows = GaugeMetricFamily(
        "skysync_outbox_rows", "Outbox rows by state and kind.", labels=["state", "kind"]
    )
    counts = count_by_state_and_kind(session)
    for (state, kind), n in counts.items():
        rows.add_metric([state, kind], n)
    yield rows
    for state in (RowState.DEAD, RowState.REJECTED):
        total = sum(n for (s, _k), n in counts.items() if s == state)
        yield GaugeMetricFamily(
            f"skysync_outbox_{state}_rows", f"Outbox rows in state {state}.", value=total
        )
    oldest = oldest_pending(session, due_only=True, now=now)
    yield GaugeMetricFamily(
        "skysync_outbox_oldest_due_pending_age_seconds",
        "Age of the oldest pending row that is due (0 when none).",
        value=(now - oldest).total_seconds() if oldest else 0.0,
    )


def _relay_metrics(session: Session) -> Iterable[Metric]:
    """The last relay batch: when, how long, and whether SkyHub refused the credentials."""
    last = runs.last(session, "relay")
    started = last.started_at.timestamp() if last else 0.0
    duration = (
        (last.finished_at - last.started_at).total_seconds() if last and last.finished_at else 0.0
    )
    yield GaugeMetricFamily(
        "skysync_last_relay_timestamp_seconds", "When the last relay batch started.", started
    )
    yield GaugeMetricFamily(
        "skysync_last_relay_duration_seconds", "How long the last relay batch took.", duration
    )
    yield GaugeMetricFamily(
        "skysync_last_relay_auth_failed",
        "1 when SkyHub refused the credentials in the last batch.",
        value=1.0 if last is not None and runs.is_auth_stop(last.error) else 0.0,
    )


def _request_metrics(session: Session) -> Iterable[Metric]:
    """Requests to SkyHub by method, endpoint and status, counted by every worker."""
    requests = CounterMetricFamily(
        "skysync_skyhub_requests",
        "Requests to SkyHub by method, endpoint and status ('error': no answer).",
        labels=["method", "route", "status"],
    )
    limited = 0
    for (method, route, status), n in request_counts(session).items():
        requests.add_metric([method, route, status], n)
        if status == "429":
            limited += n
    yield requests
    yield CounterMetricFamily(
        "skysync_skyhub_rate_limited", "Requests SkyHub answered with 429.", value=limited
    )


def _order_metrics(session: Session) -> Iterable[Metric]:
    """Orders waiting for the ERP, and the malformed ones among them."""
    inbox = inbox_counts(session)
    yield GaugeMetricFamily(
        "skysync_orders_waiting_for_erp", "Inbox rows the ERP has not consumed.", inbox.unconsumed
    )
    yield GaugeMetricFamily(
        "skysync_orders_flagged", "Unconsumed inbox rows SkyHub sent malformed.", inbox.flagged
    )


def _reconcile_metrics(session: Session) -> Iterable[Metric]:
    """What the last reconciliation found: drifted fields by name, orphans, missing SKUs, and
    when it ran (0 when it never did)."""
    last = runs.last(session, "reconcile")
    summary = (last.summary or {}) if last is not None else {}
    drift = GaugeMetricFamily(
        "skysync_drift_fields",
        "Fields where SkyHub differs from the ERP's latest accepted value (last reconciliation).",
        labels=["field"],
    )
    for name, n in sorted((summary.get("drift_fields") or {}).items()):
        drift.add_metric([name], n)
    yield drift
    for name, key, text in (
        ("skysync_orphan_skus", "orphans", "SKUs SkyHub has that the ERP never wrote."),
        ("skysync_missing_skus", "missing", "SKUs the ERP wrote that SkyHub lacks."),
        ("skysync_frozen_drift_fields", "frozen", "Frozen attributes SkyHub holds otherwise."),
    ):
        yield GaugeMetricFamily(name, text + " (last reconciliation)", value=summary.get(key, 0))
    yield GaugeMetricFamily(
        "skysync_last_reconcile_timestamp_seconds",
        "When the last reconciliation finished (0: never).",
        value=last.finished_at.timestamp() if last is not None and last.finished_at else 0.0,
    )


def _sync_error_metrics(session: Session) -> Iterable[Metric]:
    """SkyHub's own errors still open (neither resolved nor ignored), per entity type."""
    errors = GaugeMetricFamily(
        "skysync_skyhub_sync_errors",
        "SkyHub's own errors about accepted products and orders, still open.",
        labels=["entity_type"],
    )
    for entity_type, n in open_counts(session).items():
        errors.add_metric([entity_type], n)
    yield errors


def registry_for(db: Database) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DataCollector(db))
    return registry


def serve(db: Database, port: int, address: str = "127.0.0.1") -> None:
    """Serve /metrics until interrupted."""
    import threading

    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=address, registry=registry_for(db))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        thread.join(timeout=5)
