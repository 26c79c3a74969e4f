"""What `skysync status` reports: outbox counts, the oldest due row, the rows SkyHub's rate limit
parked, the last runs, the orders waiting for the ERP and those late (domain/late.py); and for
each SkyHub account its rows, its last batch, its late orders and whether SkyHub refused its
credentials, and the rows rejected because they name an account that is not configured. Of one
account, or of every account (``account`` None). Read-only queries, gathered into one plain
dict, and that dict in words for a terminal."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.domain.kinds import DEFAULT_ACCOUNT, RowState
from skysync.domain.late import LateRules
from skysync.reporting.accounts import CREDENTIAL_RUNS, counts_text, run_dict
from skysync.reporting.late import counts_dict, late_problems, span
from skysync.skyhub.payloads import QUEUE_VISIBILITY_SECONDS
from skysync.store import runs
from skysync.store.late import LateCounts, late_counts, total
from skysync.store.models import OutboxRow, RunLog, utcnow
from skysync.store.orders import inbox_counts
from skysync.store.outbox_reads import (
    count_by_account_state_and_kind,
    oldest_pending,
    parked_by_skyhub,
    states_of,
)
from skysync.store.sync_errors import open_counts

# the reason of a row rejected because its account is not configured (settle.reject_unconfigured)
UNCONFIGURED_REASON = 'account: "'
# the report's key of each run that says whether SkyHub refused an account's credentials
_RUN_KEYS = {"relay": "last_relay", "pull_orders": "last_order_pull"}


def _last_run(session: Session, kind: str, account: str | None = None) -> dict[str, Any] | None:
    """The newest run of ``kind``: of ``account``, or of any account (None)."""
    query = sa.select(RunLog).where(RunLog.kind == kind)
    if account is not None:
        query = query.where(RunLog.account == account)
    return run_dict(session.scalars(query.order_by(RunLog.started_at.desc()).limit(1)).first())


def _last_reconcile(session: Session, account: str | None = None) -> dict[str, Any] | None:
    """The newest reconciliation: when, and what it found."""
    run = _last_run(session, "reconcile", account)
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


def _unacknowledgeable_orders(
    session: Session, now: datetime, account: str | None = None
) -> list[int]:
    """Inbox rows of orders without a code that SkyHub's queue still delivers: seen by an
    order pull within two visibility windows (and a minute), oldest row first."""
    since = now - timedelta(seconds=2 * QUEUE_VISIBILITY_SECONDS + 60)
    query = sa.select(RunLog.summary).where(
        RunLog.kind == "pull_orders", RunLog.started_at >= since
    )
    if account is not None:
        query = query.where(RunLog.account == account)
    found: set[int] = set()
    for summary in session.scalars(query):
        found.update(int(i) for i in (summary or {}).get("unacknowledgeable_rows", []))
    return sorted(found)


def _age(now: datetime, then: datetime | None) -> float | None:
    return round((now - then).total_seconds(), 1) if then else None


def collect_status(
    session: Session,
    now: datetime | None = None,
    *,
    account: str | None = None,
    accounts: list[str] | None = None,
    late_rules: LateRules | None = None,
    counts: Mapping[tuple[str, str, str], int] | None = None,
) -> dict[str, Any]:
    """The status of ``account`` (None: of every account together), with a part for each of
    ``accounts`` (default: ``account``, else the default account) under ``"accounts"``.
    ``late_rules``: when an order counts as late (default: the settings' defaults).
    ``counts``: the outbox's rows per (account, state, kind) when the caller read them already
    (count_by_account_state_and_kind); else they are read here, in one scan for every figure."""
    now = now or utcnow()
    if counts is None:
        counts = count_by_account_state_and_kind(session)
    parked, parked_until = parked_by_skyhub(session, now, account=account)
    inbox = inbox_counts(session, account=account)
    names = accounts if accounts is not None else [account or DEFAULT_ACCOUNT]
    late = late_counts(session, now, late_rules or LateRules(), account=account)
    return {
        "account": account,
        "outbox": states_of(counts, account),
        "oldest_pending_age_s": _age(
            now, _oldest_pending(session, counts, due_only=True, now=now, account=account)
        ),
        "oldest_pending_any_age_s": _age(
            now, _oldest_pending(session, counts, due_only=False, now=now, account=account)
        ),
        "parked_by_skyhub": {
            "rows": parked,
            "until": parked_until.isoformat() if parked_until else None,
        },
        "last_relay": _last_run(session, "relay", account),
        "last_order_pull": _last_run(session, "pull_orders", account),
        "last_reconcile": _last_reconcile(session, account),
        "sync_errors": open_counts(session, account=account),
        "last_sync_errors_pull": _last_run(session, "pull_sync_errors", account),
        "orders": {
            "unconsumed": inbox.unconsumed,
            "flagged": inbox.flagged,
            "unacknowledgeable": _unacknowledgeable_orders(session, now, account),
        },
        "late": counts_dict(total(late.values()), now),
        "accounts": _accounts(session, names, now, counts, late),
        "unconfigured_accounts": _unconfigured(session, account),
    }


def _oldest_pending(
    session: Session,
    counts: Mapping[tuple[str, str, str], int],
    *,
    due_only: bool,
    now: datetime,
    account: str | None,
) -> datetime | None:
    """The oldest pending row's created_at, of ``account`` or of every account: then the
    oldest of each account that has pending rows (``counts`` says which), each found at the
    head of its (state, account, id) index. Asked of every account at once, PostgreSQL walked
    the primary key from the oldest row looking for a pending one: 250 ms on a 1,000,000-row
    outbox whose pending rows are its newest, as they usually are."""
    if account is not None:
        return oldest_pending(session, due_only=due_only, now=now, account=account)
    pending = sorted({a for (a, state, _kind), n in counts.items() if state == "pending" and n})
    found = [oldest_pending(session, due_only=due_only, now=now, account=a) for a in pending]
    return min((when for when in found if when is not None), default=None)


def _accounts(
    session: Session,
    names: list[str],
    now: datetime,
    counts: Mapping[tuple[str, str, str], int],
    late: dict[str, LateCounts],
) -> dict[str, Any]:
    """Each account's rows by state, its oldest due row, its last relay batch and order pull,
    whether SkyHub refused its credentials in either, and its late orders."""
    found: dict[str, Any] = {}
    for name in names:
        last = {key: _last_run(session, kind, name) for kind, key in _RUN_KEYS.items()}
        found[name] = {
            "outbox": states_of(counts, name),
            "oldest_pending_age_s": _age(
                now, oldest_pending(session, due_only=True, now=now, account=name)
            ),
            **last,
            "credentials_refused": any(
                run is not None and runs.is_auth_stop(run["error"]) for run in last.values()
            ),
            "late": counts_dict(late.get(name, LateCounts()), now),
        }
    return found


def _unconfigured(session: Session, account: str | None) -> dict[str, int]:
    """Rows rejected because they name an account that was not configured, per account
    name (``account``'s only, when given)."""
    query = sa.select(OutboxRow.account, sa.func.count()).where(
        OutboxRow.state == RowState.REJECTED,
        OutboxRow.reason.like(UNCONFIGURED_REASON + "%"),
    )
    if account is not None:
        query = query.where(OutboxRow.account == account)
    query = query.group_by(OutboxRow.account).order_by(OutboxRow.account)
    return {name: n for name, n in session.execute(query)}


def health_problems(
    report: dict[str, Any],
    *,
    sync_interval: float,
    order_poll_interval: float,
    max_pending_age: float,
    now: datetime | None = None,
    late_rules: LateRules | None = None,
) -> list[str]:
    """Why an operator should look now (empty when healthy): what `skysync status` exits 1 on.
    ``late_rules``: those collect_status counted with (their thresholds are named)."""
    now = now or utcnow()
    return [
        *_held_and_parked(report, now, sync_interval),
        *_account_problems(report),
        *_order_problems(report),
        *late_problems(report, late_rules or LateRules()),
        *_age_problems(report, max_pending_age),
        *_beat_problems(report, now, sync_interval, order_poll_interval),
    ]


def _held_and_parked(report: dict[str, Any], now: datetime, sync_interval: float) -> list[str]:
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
    return problems


def _account_problems(report: dict[str, Any]) -> list[str]:
    """Accounts whose credentials SkyHub refused (named, with the run that says so), and rows
    rejected because their account is not configured."""
    problems = []
    labels = dict(CREDENTIAL_RUNS)
    for name, part in report.get("accounts", {}).items():
        for kind, key in _RUN_KEYS.items():
            run = part[key]
            if run is not None and runs.is_auth_stop(run["error"]):
                problems.append(
                    f"account {name}: the last {labels[kind]} {run['error']}: its rows wait "
                    "until its credentials are fixed (the accounts file, or SKYSYNC_SKYHUB_* "
                    "for default); the other accounts go on"
                )
    for name, n in report.get("unconfigured_accounts", {}).items():
        problems.append(
            f'{n} row(s) name account "{name}", which was not configured: rejected. Add it '
            "to the accounts file (SKYSYNC_ACCOUNTS_FILE), then "
            f"`skysync outbox requeue --state rejected --account {name}`"
        )
    return problems


def _order_problems(report: dict[str, Any]) -> list[str]:
    return [
        f"SkyHub's order queue keeps delivering an order without a code (inbox row "
        f"{row_id}, flagged): it cannot be acknowledged, so it comes back every "
        f"{QUEUE_VISIBILITY_SECONDS / 60:.0f} minutes (its raw JSON is that row's `raw`); "
        "ask SkyHub to remove it from the queue"
        for row_id in report["orders"].get("unacknowledgeable", [])
    ]


def _age_problems(report: dict[str, Any], max_pending_age: float) -> list[str]:
    age = report["oldest_pending_age_s"]
    if age is not None and age > max_pending_age:
        return [
            f"the oldest due pending row is {age:.0f} s old (more than {max_pending_age:.0f} s)"
        ]
    return []


def _beat_problems(
    report: dict[str, Any], now: datetime, sync_interval: float, order_poll_interval: float
) -> list[str]:
    """No relay batch or order pull (of any account) for two intervals: beat is down."""
    problems = []
    for key, label, interval in (
        ("last_relay", "relay batch", sync_interval),
        ("last_order_pull", "order pull", order_poll_interval),
    ):
        run = report[key]
        if run is None:
            continue
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
    lines = [f"database: {database}"]
    if report.get("account"):
        lines.append(f"account: {report['account']} (only its rows and runs)")
    lines.append("outbox:")
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
    lines.append(f"late: {_late_text(report['late'])}")
    lines.extend(_reconcile_lines(report["last_reconcile"]))
    errors = report["sync_errors"]
    lines.append(
        f"SkyHub's own errors, open: {errors['products']} about products, "
        f"{errors['orders']} about orders (skysync errors list)"
    )
    accounts = report.get("accounts", {})
    if report.get("account") or len(accounts) > 1:
        lines.extend(_account_lines(accounts))
    if report["problems"]:
        lines.append("UNHEALTHY:")
        lines.extend(f"  - {problem}" for problem in report["problems"])
    else:
        lines.append("healthy")
    return lines


def _account_lines(accounts: dict[str, Any]) -> list[str]:
    """One line per account: its rows, its last batch, and a refusal of its credentials."""
    lines = ["accounts:"]
    for name, part in accounts.items():
        last = part["last_relay"]
        line = (
            f"  {name}: {counts_text(part['outbox'])}; "
            f"last batch {'never' if last is None else last['started_at']}"
        )
        if part["credentials_refused"]:
            line += "; STOPPED: SkyHub refused its credentials, its rows wait"
        if any(part["late"][reason] for reason in ("ship", "invoice", "inbox")):
            line += f"; late: {_late_text(part['late'])}"
        lines.append(line)
    return lines


def _late_text(late: dict[str, Any]) -> str:
    """``2 to ship (1 past the expedition limit), 0 not invoiced, 1 inbox row(s) not consumed;
    the oldest unconsumed inbox row 45 min old``."""
    text = (
        f"{late['ship']} to ship ({late['ship_past_limit']} past the expedition limit), "
        f"{late['invoice']} not invoiced, {late['inbox']} inbox row(s) not consumed"
    )
    age = late["oldest_unconsumed_age_s"]
    if age is not None:
        text += f"; the oldest unconsumed inbox row {span(timedelta(seconds=age))} old"
    return text


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
