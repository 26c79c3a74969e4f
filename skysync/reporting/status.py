"""What `skysync status` reports: outbox counts, the oldest due row, the rows SkyHub's rate limit
parked, the last runs, the orders waiting for the ERP. Read-only queries, gathered into one
plain dict, and that dict in words for a terminal."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.domain.kinds import RowState
from skysync.skyhub.payloads import QUEUE_VISIBILITY_SECONDS
from skysync.store import runs
from skysync.store.models import RunLog, utcnow
from skysync.store.orders import inbox_counts
from skysync.store.outbox_reads import count_by_state, oldest_pending, parked_by_skyhub
from skysync.store.sync_errors import open_counts


def _last_run(session: Session, kind: str) -> dict[str, Any] | None:
    run = session.scalars(
        sa.select(RunLog).where(RunLog.kind == kind).order_by(RunLog.started_at.desc()).limit(1)
    ).first()
    if run is None:
        return None
    return {
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "summary": run.summary,
        "error": run.error,
    }


def _last_reconcile(session: Session) -> dict[str, Any] | None:
    """The newest reconciliation: when, and what it found."""
    run = _last_run(session, "reconcile")
    if run is None:
        return None
    summary = run["summary"] or {}
    return {
        "started_at": run["started_at"],
        "finished_at": run["finished_at"],
        "error": run["error"],
        **{
            k: summary.get(k, 0)
            for k in ("skus_compared", "drift", "frozen", "orphans", "missing", "repaired_rows")
        },
        "drift_fields": summary.get("drift_fields", {}),
    }


def _unacknowledgeable_orders(session: Session, now: datetime) -> list[int]:
    """Inbox rows of orders without a code that SkyHub's queue still delivers: seen by an
    order pull within two visibility windows (and a minute), oldest row first."""
    since = now - timedelta(seconds=2 * QUEUE_VISIBILITY_SECONDS + 60)
    query = sa.select(RunLog.summary).where(
        RunLog.kind == "pull_orders", RunLog.started_at >= since
    )
    found: set[int] = set()
    for summary in session.scalars(query):
        found.update(int(i) for i in (summary or {}).get("unacknowledgeable_rows", []))
    return sorted(found)


def collect_status(session: Session, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    oldest_due = oldest_pending(session, due_only=True, now=now)
    oldest_any = oldest_pending(session, due_only=False)
    parked, parked_until = parked_by_skyhub(session, now)
    inbox = inbox_counts(session)
    return {
        "outbox": count_by_state(session),
        "oldest_pending_age_s": round((now - oldest_due).total_seconds(), 1)
        if oldest_due
        else None,
        "oldest_pending_any_age_s": (
            round((now - oldest_any).total_seconds(), 1) if oldest_any else None
        ),
        "parked_by_skyhub": {
            "rows": parked,
            "until": parked_until.isoformat() if parked_until else None,
        },
        "last_relay": _last_run(session, "relay"),
        "last_order_pull": _last_run(session, "pull_orders"),
        "last_reconcile": _last_reconcile(session),
        "sync_errors": open_counts(session),
        "last_sync_errors_pull": _last_run(session, "pull_sync_errors"),
        "orders": {
            "unconsumed": inbox.unconsumed,
            "flagged": inbox.flagged,
            "unacknowledgeable": _unacknowledgeable_orders(session, now),
        },
    }


def health_problems(
    report: dict[str, Any],
    *,
    sync_interval: float,
    order_poll_interval: float,
    max_pending_age: float,
    now: datetime | None = None,
) -> list[str]:
    """Why an operator should look now (empty when healthy): what `skysync status` exits 1 on."""
    now = now or utcnow()
    problems = []
    held = report["outbox"].get(RowState.HELD, 0)
    if held:
        problems.append(
            f"{held} row(s) held by the price drop guard wait for an operator: "
            "`skysync outbox list --state held`, then `skysync outbox release ID...` "
            "(or the ERP writes a newer price)"
        )
    parked = report["parked_by_skyhub"]
    if parked["until"] is not None:
        wait = (datetime.fromisoformat(parked["until"]) - now).total_seconds()
        if wait > sync_interval:
            problems.append(
                f"{parked['rows']} row(s) wait on SkyHub's rate limit (a 429 whose Retry-After "
                f"asked for a long wait), the last until {parked['until']}: {wait:.0f} s from "
                f"now, past the next batch ({sync_interval:.0f} s); "
                "`skysync outbox list --state pending` shows each with SkyHub's header"
            )
    for row_id in report["orders"].get("unacknowledgeable", []):
        problems.append(
            f"SkyHub's order queue keeps delivering an order without a code (inbox row "
            f"{row_id}, flagged): it cannot be acknowledged, so it comes back every "
            f"{QUEUE_VISIBILITY_SECONDS / 60:.0f} minutes (its raw JSON is that row's `raw`); "
            "ask SkyHub to remove it from the queue"
        )
    age = report["oldest_pending_age_s"]
    if age is not None and age > max_pending_age:
        problems.append(
            f"the oldest due pending row is {age:.0f} s old (more than {max_pending_age:.0f} s)"
        )
    for key, label, interval in (
        ("last_relay", "relay batch", sync_interval),
        ("last_order_pull", "order pull", order_poll_interval),
    ):
        run = report[key]
        if run is None:
            continue
        if runs.is_auth_stop(run["error"]):
            problems.append(f"the last {label} {run['error']}")
        since = (now - datetime.fromisoformat(run["started_at"])).total_seconds()
        if since > 2 * interval:
            problems.append(
                f"no {label} for {since:.0f} s (expected every {interval:.0f} s): is beat running?"
            )
    return problems


# -- for the terminal ----------------------------------------------------------------------------


def status_lines(report: dict[str, Any], *, database: str) -> list[str]:
    """`skysync status`: a collect_status() report with its "problems" in words; ``database``
    is the DSN to show, its password masked."""
    lines = [f"database: {database}", "outbox:"]
    lines.extend(f"  {state:<11} {n}" for state, n in report["outbox"].items())
    age = report["oldest_pending_age_s"]
    lines.append(f"oldest due pending row: {'none' if age is None else f'{age:.0f} s old'}")
    parked = report["parked_by_skyhub"]
    if parked["rows"]:
        lines.append(f"waiting on SkyHub's rate limit: {parked['rows']} until {parked['until']}")
    for key, label in (("last_relay", "last relay"), ("last_order_pull", "last order pull")):
        run = report[key]
        lines.append(f"{label}: {'never' if run is None else run['started_at']}")
        if run and run["error"]:
            lines.append(f"  stopped: {run['error']}")
    orders = report["orders"]
    lines.append(
        f"orders waiting for the ERP: {orders['unconsumed']} ({orders['flagged']} flagged)"
    )
    lines.extend(_reconcile_lines(report["last_reconcile"]))
    errors = report["sync_errors"]
    lines.append(
        f"SkyHub's own errors, open: {errors['products']} about products, "
        f"{errors['orders']} about orders (skysync errors list)"
    )
    if report["problems"]:
        lines.append("UNHEALTHY:")
        lines.extend(f"  - {problem}" for problem in report["problems"])
    else:
        lines.append("healthy")
    return lines


def _reconcile_lines(rec: dict[str, Any] | None) -> list[str]:
    if rec is None:
        return ["last reconciliation: never"]
    lines = [
        f"last reconciliation: {rec['started_at']}: {rec['skus_compared']} SKUs, "
        f"{rec['drift']} drift, {rec['orphans']} orphan(s), {rec['missing']} missing, "
        f"{rec['frozen']} frozen, {rec['repaired_rows']} correction row(s)"
    ]
    if rec["error"]:
        lines.append(f"  {rec['error']}")
    return lines
