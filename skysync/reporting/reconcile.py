"""What `skysync reconcile` prints on a terminal: a ReconcileReport in words (its JSON is the
report's own ``as_dict()``); and the last run as the run log keeps it (the console's
reconciliation page and SKU doctor)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from skysync.domain.reconcile import Difference, ReconcileReport
from skysync.store import runs

RUN_KIND = "reconcile"  # relay/reconcile.py writes it (relay/ imports no reporting/)


def reconcile_lines(report: ReconcileReport) -> list[str]:
    """The counts, each drift and frozen attribute, orphans, missing SKUs and the repairs."""
    lines = [
        f"{report.skus_compared} SKUs compared over {report.pages} page(s); "
        f"{len(report.drift)} drift, {len(report.frozen)} frozen, {len(report.orphans)} orphan(s), "
        f"{len(report.missing)} missing"
    ]
    frozen_title = "frozen (reported, never repaired)"
    for title, found in (("drift", report.drift), (frozen_title, report.frozen)):
        if found:
            lines.append(f"{title}:")
        for d in found:
            lines.extend(_difference_lines(d))
    if report.orphans:
        names = ", ".join(report.orphans)
        lines.append(f"orphans (SkyHub has them, the ERP never wrote them): {names}")
    if report.missing:
        names = ", ".join(m.sku for m in report.missing)
        lines.append(f"missing (the ERP wrote them, SkyHub lacks them): {names}")
    for r in report.repaired:
        lines.append(f"enqueued correction row {r['row_id']} ({r['kind']} {r['ref']})")
    for r in report.not_repaired:
        lines.append(f"not repaired: {r['ref']}: {r['reason']}")
    if report.busy_fields:
        lines.append(f"{report.busy_fields} field(s) not compared: a write for them is on its way")
    return lines


def _difference_lines(d: Difference) -> list[str]:
    since = d.since.isoformat(timespec="seconds") if d.since else "unknown"
    lines = [
        f"  {d.sku:<24} {d.field:<18} ERP {_value(d.erp)}  SkyHub {_value(d.skyhub)}  "
        f"(believed since {since}, row {d.row_id})"
    ]
    if d.note:
        lines.append(f"  {'':<24} {d.note}")
    return lines


def _value(v: Any) -> str:
    return "(none)" if v is None else json.dumps(v, ensure_ascii=False)[:60]


def last_run(session: Session, account: str) -> dict[str, Any] | None:
    """The account's last reconciliation as the run log keeps it: when, the error that stopped
    it, its counts and the first of its drift, orphans and missing SKUs (the run log keeps 50
    of each: ``ReconcileReport.summary``). None: it never ran."""
    run = runs.last(session, RUN_KIND, account=account)
    if run is None:
        return None
    summary = dict(run.summary or {})
    return {
        "id": run.id,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "error": run.error,
        "sku": summary.get("sku"),
        "pages": summary.get("pages", 0),
        "skus_compared": summary.get("skus_compared", 0),
        "drift": summary.get("drift", 0),
        "drift_fields": summary.get("drift_fields", {}),
        "frozen": summary.get("frozen", 0),
        "orphans": summary.get("orphans", 0),
        "missing": summary.get("missing", 0),
        "busy_fields": summary.get("busy_fields", 0),
        "repair": summary.get("repair", False),
        "repaired_rows": summary.get("repaired_rows", 0),
        "not_repaired": summary.get("not_repaired", 0),
        "drift_sample": summary.get("drift_sample", []),
        "orphan_sample": summary.get("orphan_sample", []),
        "missing_sample": summary.get("missing_sample", []),
    }


def drift_of(last: dict[str, Any] | None, sku: str) -> list[dict[str, Any]]:
    """The drift ``last`` (a last_run()) found on ``sku``, as far as the run log kept it."""
    return [d for d in (last or {}).get("drift_sample", []) if d.get("sku") == sku]
