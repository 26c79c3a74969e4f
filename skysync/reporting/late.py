"""`skysync orders late`: the orders late to ship or to invoice and the inbox rows the ERP has
not consumed in time, each with how late it is, and their counts per account; the same counts
for `skysync status` and its problems. A plain dict from one session, and that dict in words
for a terminal. Times are shown in Brasília time, as SkyHub dates orders."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from skysync.domain.late import LateRules, Reason
from skysync.domain.order_flow import BRASILIA
from skysync.store.late import LateCounts, LateItem, late_counts, late_items, total
from skysync.store.models import utcnow

#: What each line of `skysync orders late` starts with: the reason, and for ``ship`` whether
#: the expedition limit has passed (LATE) or is within the margin (DUE).
LABELS = {
    (Reason.SHIP, True): "LATE TO SHIP",
    (Reason.SHIP, False): "DUE TO SHIP",
    (Reason.INVOICE, True): "NOT INVOICED",
    (Reason.INBOX, True): "NOT CONSUMED",
}


def span(delta: timedelta) -> str:
    """A duration as an operator reads it: ``45 s``, ``12 min``, ``3 h 12 min``, ``26 h 3 min``
    (hours up to two days, as thresholds such as 24 h are set), then ``2 d 5 h`` (its size:
    the sign is the caller's to say)."""
    seconds = int(abs(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def brasilia(when: datetime) -> str:
    """``2026-12-08 10:00 BRT``."""
    return when.astimezone(BRASILIA).strftime("%Y-%m-%d %H:%M BRT")


def thresholds(rules: LateRules) -> dict[str, float]:
    """The thresholds in the units of their settings (SKYSYNC_LATE_*)."""
    return {
        "ship_margin_hours": rules.ship_margin.total_seconds() / 3600,
        "invoice_hours": rules.invoice_after.total_seconds() / 3600,
        "inbox_minutes": rules.inbox_after.total_seconds() / 60,
    }


def counts_dict(counts: LateCounts, now: datetime) -> dict[str, Any]:
    """An account's (or every account's) late counts, for JSON: by reason, the orders past
    their expedition limit among those to ship, and the age of the oldest unconsumed inbox
    row (None: none)."""
    oldest = counts.oldest_unconsumed_at
    return {
        "ship": counts.ship,
        "ship_past_limit": counts.ship_past_limit,
        "invoice": counts.invoice,
        "inbox": counts.inbox,
        "oldest_unconsumed_age_s": round((now - oldest).total_seconds(), 1) if oldest else None,
    }


def describe(item: LateItem, now: datetime, rules: LateRules) -> str:
    """How late one thing is, in words: ``expedition limit 2026-12-08 10:00 BRT passed 3 h 12
    min ago``, ``... due in 2 h 5 min``, ``approved ... not invoiced after 26 h 3 min``."""
    late = item.lateness
    if late.reason == Reason.SHIP:
        limit = f"expedition limit {brasilia(late.since)}"
        if late.overdue(now):
            return f"{limit} passed {span(late.late_by(now))} ago"
        return f"{limit}: due in {span(late.late_by(now))} (margin {span(rules.ship_margin)})"
    waited = span(now - late.since)
    if late.reason == Reason.INVOICE:
        return (
            f"approved {brasilia(late.since)}: not invoiced after {waited} "
            f"(limit {span(rules.invoice_after)})"
        )
    return (
        f"inbox row {item.inbox_id}, received {brasilia(late.since)}: not consumed by the ERP "
        f"after {waited} (limit {span(rules.inbox_after)})"
    )


def item_dict(item: LateItem, now: datetime, rules: LateRules) -> dict[str, Any]:
    late = item.lateness
    return {
        "reason": str(late.reason),
        "account": item.account,
        "code": item.code,
        "status": item.status,
        "inbox_id": item.inbox_id,
        "since": late.since.isoformat(),
        "deadline": late.deadline.isoformat(),
        "overdue": late.overdue(now),
        "late_by_s": round(late.late_by(now).total_seconds(), 1),
        "label": LABELS[(late.reason, late.overdue(now))],
        "text": describe(item, now, rules),
    }


def collect_late(
    session: Session,
    rules: LateRules,
    *,
    now: datetime | None = None,
    account: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Everything late of ``account`` (None: of every account): the counts (in all and per
    account that has anything unconsumed or late) and the items, at most ``limit`` of each
    reason (``complete`` says whether that was all of them)."""
    now = now or utcnow()
    per_account = late_counts(session, now, rules, account=account)
    items = late_items(session, now, rules, account=account, limit=limit)
    summed = total(per_account.values())
    return {
        "checked_at": now.isoformat(),
        "account": account,
        "thresholds": thresholds(rules),
        "late": summed.total,
        "counts": counts_dict(summed, now),
        "accounts": {name: counts_dict(c, now) for name, c in sorted(per_account.items())},
        "items": [item_dict(item, now, rules) for item in items],
        "complete": len(items) == summed.total,
    }


# -- for the terminal ----------------------------------------------------------------------------


def _summary(counts: dict[str, Any], rules: LateRules) -> str:
    soon = counts["ship"] - counts["ship_past_limit"]
    return (
        f"{counts['ship']} to ship ({counts['ship_past_limit']} past the expedition limit, "
        f"{soon} due within {span(rules.ship_margin)}), "
        f"{counts['invoice']} not invoiced after {span(rules.invoice_after)}, "
        f"{counts['inbox']} inbox row(s) not consumed after {span(rules.inbox_after)}"
    )


def late_lines(report: dict[str, Any], rules: LateRules) -> list[str]:
    """`skysync orders late`: a summary line, then one line per late thing (its label, its
    account, the order code, its status and how late), in columns."""
    when = brasilia(datetime.fromisoformat(report["checked_at"]))
    if not report["late"]:
        return [
            f"nothing late at {when} (expedition limits within {span(rules.ship_margin)}, "
            f"invoices after {span(rules.invoice_after)}, inbox rows after "
            f"{span(rules.inbox_after)})"
        ]
    lines = [f"late at {when}: {_summary(report['counts'], rules)}"]
    columns = ("label", "account", "code", "status")
    cells = [[str(item[key] or "?") for key in columns] for item in report["items"]]
    widths = [max(len(row[n]) for row in cells) for n in range(len(columns))]
    for row, item in zip(cells, report["items"], strict=True):
        padded = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join([*padded, item["text"]]))
    if not report["complete"]:
        shown = len(report["items"])
        lines.append(f"... and {report['late'] - shown} more not listed (raise --limit)")
    return lines


def late_problems(report: dict[str, Any], rules: LateRules) -> list[str]:
    """`skysync status`'s problems about late orders: one per reason that has any, per
    account when several are reported (``report``: collect_status's, whose ``accounts``
    parts each carry ``late``)."""
    accounts = report.get("accounts", {})
    if len(accounts) > 1:
        parts = [(name, part["late"]) for name, part in accounts.items()]
    else:
        parts = [(report.get("account"), report["late"])]
    problems = []
    for name, counts in parts:
        prefix = f"account {name}: " if len(accounts) > 1 else ""
        command = "skysync orders late" + (f" --account {name}" if name else "")
        if counts["ship"]:
            soon = counts["ship"] - counts["ship_past_limit"]
            problems.append(
                f"{prefix}{counts['ship']} order(s) paid and not shipped are late: "
                f"{counts['ship_past_limit']} past their expedition limit, {soon} due within "
                f"{span(rules.ship_margin)} (`{command}`)"
            )
        if counts["invoice"]:
            problems.append(
                f"{prefix}{counts['invoice']} approved order(s) not invoiced after "
                f"{span(rules.invoice_after)} (`{command}`)"
            )
        if counts["inbox"]:
            age = timedelta(seconds=counts["oldest_unconsumed_age_s"] or 0)
            problems.append(
                f"{prefix}{counts['inbox']} inbox row(s) not consumed by the ERP after "
                f"{span(rules.inbox_after)}, the oldest {span(age)} old: is the ERP reading "
                f"orders? (`{command}`)"
            )
    return problems
