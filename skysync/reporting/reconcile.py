"""What `skysync reconcile` prints on a terminal: a ReconcileReport in words (its JSON is the
report's own ``as_dict()``)."""

from __future__ import annotations

import json
from typing import Any

from skysync.domain.reconcile import Difference, ReconcileReport


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
