"""What the console's overview shows of one account: its rows by state and kind, its oldest due
row, the rows SkyHub accepted per minute over the last 24 hours, its last batches,
reconciliations, order pulls and console actions; and beside it the problems exactly as
`skysync status` sees them (of every account: a refused key elsewhere or rows naming an
unknown account are problems whichever account is on screen) and each account's line.

One scan of the outbox counts every row (``count_by_account_state_and_kind``, shared by both
status reports); everything else walks an index. Read-only, one plain dict."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from skysync.domain.kinds import Kind, RowState
from skysync.reporting.accounts import run_dict
from skysync.reporting.status import collect_status, health_problems
from skysync.store import runs
from skysync.store.models import utcnow
from skysync.store.outbox_reads import count_by_account_state_and_kind, sent_per_minute

CHART_MINUTES = 24 * 60
# The runs the overview lists, newest first: (run kinds, heading, how many).
RUN_LISTS = (
    (("relay", "fast_lane"), "Relay batches", 8),
    (("reconcile",), "Reconciliations", 5),
    (("pull_orders",), "Order pulls", 5),
    (("pull_sync_errors",), "Pulls of SkyHub's errors", 3),
    ((runs.CONSOLE_ACTION,), "Console actions", 8),
)


def overview(
    session: Session,
    *,
    account: str,
    accounts: list[str],
    sync_interval: float,
    order_poll_interval: float,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The overview of ``account``, with the problems of every account of ``accounts``."""
    now = now or utcnow()
    counts = count_by_account_state_and_kind(session)
    whole = collect_status(session, now, accounts=accounts, counts=counts)
    mine = collect_status(session, now, account=account, accounts=[account], counts=counts)
    problems = health_problems(
        whole,
        sync_interval=sync_interval,
        order_poll_interval=order_poll_interval,
        max_pending_age=2 * sync_interval,  # `skysync status`'s default
        now=now,
    )
    # the chart's first minute starts 24 h before the current minute ends
    since = now.replace(second=0, microsecond=0) - timedelta(minutes=CHART_MINUTES - 1)
    sent = sent_per_minute(session, account, since, CHART_MINUTES)
    by_kind = {
        state: {kind: counts.get((account, state, kind), 0) for kind in Kind} for state in RowState
    }
    return {
        "account": account,
        "status": mine,
        "accounts": whole["accounts"],
        "problems": problems,
        "rows": by_kind,
        "kinds": [str(k) for k in Kind if any(by_kind[s][k] for s in RowState)],
        "total_rows": sum(n for row in by_kind.values() for n in row.values()),
        "sent_per_minute": {"since": since, "counts": sent},
        "runs": [
            {
                "title": title,
                "runs": [
                    {"id": run.id, "kind": run.kind, **(run_dict(run) or {})}
                    for run in runs.recent(session, kinds, account=account, limit=limit)
                ],
            }
            for kinds, title, limit in RUN_LISTS
        ],
    }
