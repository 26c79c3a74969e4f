"""The console's pages (GET): each reads its account from ``?account=``, asks the views in
``skysync/reporting/`` (the ones the command line prints) and renders a template. Nothing here
writes to the database or talks to SkyHub."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from skysync.console import forms
from skysync.console.actions import preview_repair
from skysync.console.chart import figures, minute_chart
from skysync.console.context import PAGE_SIZE, console_of, render
from skysync.domain.kinds import Kind
from skysync.domain.selection import RELEASABLE, REQUEUEABLE, TROUBLE_STATES
from skysync.reporting import reconcile as reconcile_view
from skysync.reporting import reports
from skysync.reporting.late import collect_late, late_lines
from skysync.reporting.overview import overview
from skysync.store import runs

#: Late orders listed on the orders page, of each reason (the counts are always whole).
LATE_SHOWN = 100


def overview_page(request: Request) -> Response:
    """Rows by state and kind, the oldest due row, rows sent per minute over 24 hours, the
    problems `skysync status` reports, the last runs; each account's line."""
    console = console_of(request)
    account = console.account(request.query_params)
    with console.db.scope(readonly=True) as session:
        data = overview(
            session,
            account=account,
            accounts=console.accounts.names(),
            sync_interval=console.settings.sync_interval,
            order_poll_interval=console.settings.order_poll_interval,
            now=console.clock(),
        )
    sent = data["sent_per_minute"]
    label = f"Rows of account {account} SkyHub accepted per minute, the last 24 hours (UTC)"
    return render(
        request,
        "overview.html",
        account=account,
        data=data,
        chart=minute_chart(sent["counts"], sent["since"], label=label),
        sent=figures(sent["counts"], sent["since"]),
        page="overview",
    )


def trouble_page(request: Request) -> Response:
    """Rows rejected, dead, held or withheld, filtered, newest first, a page at a time by
    keyset; and SkyHub's own open errors (of the ref, when the filter names one)."""
    console = console_of(request)
    params = request.query_params
    account = console.account(params)
    chosen = forms.selection(params, account)
    before, after = forms.row_id(params, "before"), forms.row_id(params, "after")
    with console.db.scope(readonly=True) as session:
        found = reports.rows_in_trouble(
            session, chosen, before=before, after=after, limit=PAGE_SIZE
        )
        errors = reports.open_sync_errors(session, account=account, entity_id=chosen.ref)
    return render(
        request,
        "trouble.html",
        account=account,
        found=found,
        errors=errors,
        filters=forms.filter_params(chosen),
        states=TROUBLE_STATES,
        kinds=list(Kind),
        requeueable=REQUEUEABLE,
        releasable=RELEASABLE,
        page="trouble",
    )


def sku_page(request: Request) -> Response:
    """SKU doctor: what `skysync item show` shows of a SKU, and the drift the last
    reconciliation found on it."""
    console = console_of(request)
    params = request.query_params
    return doctor(request, console.account(params), forms.text(params, "sku"))


def doctor(
    request: Request, account: str, sku: str | None, lookup: dict[str, Any] | None = None
) -> Response:
    """The SKU doctor's page for ``sku`` (none: the search box alone), with what SkyHub said
    just now (``lookup``: relay/reconcile.py ``read_now``) when it was asked."""
    console = console_of(request)
    item = drift = None
    if sku is not None:
        with console.db.for_account(account).scope(readonly=True) as session:
            item = reports.item_report(
                session, sku, reserving=console.accounts[account].reserving(console.settings)
            )
            drift = reconcile_view.drift_of(reconcile_view.last_run(session, account), sku)
    return render(
        request,
        "sku.html",
        account=account,
        sku=sku,
        item=item,
        drift=drift,
        lookup=lookup,
        page="sku",
    )


def orders_page(request: Request) -> Response:
    """The order flow: orders by status, what is late (`skysync orders late`: to ship, to
    invoice, inbox rows the ERP has not consumed in time), inbox rows the ERP has not consumed,
    the orders changed last."""
    console = console_of(request)
    account = console.account(request.query_params)
    code = forms.text(request.query_params, "code")
    if code is not None:  # the page's "show its history" box
        return _order(request, account, code)
    rules = console.settings.late_rules
    with console.db.scope(readonly=True) as session:
        flow = reports.order_flow(session, account=account)
        late = collect_late(session, rules, account=account, limit=LATE_SHOWN)
    return render(
        request,
        "orders.html",
        account=account,
        flow=flow,
        late=late,
        late_summary=late_lines(late, rules)[0],
        page="orders",
    )


def order_page(request: Request) -> Response:
    """One order's history: the inbox rows SkyHub delivered, the status steps sent back."""
    account = console_of(request).account(request.query_params)
    return _order(request, account, request.path_params["code"])


def _order(request: Request, account: str, code: str) -> Response:
    console = console_of(request)
    with console.db.for_account(account).scope(readonly=True) as session:
        data = reports.order_report(session, code)
    if data is None:
        raise HTTPException(404, f"no order {code!r} of account {account}")
    return render(request, "order.html", account=account, order=data, page="orders")


def reconcile_page(request: Request) -> Response:
    """The last reconciliation: its drift, frozen attributes, orphans and missing SKUs, the
    runs before it, and the repair."""
    console = console_of(request)
    account = console.account(request.query_params)
    with console.db.scope(readonly=True) as session:
        last = reconcile_view.last_run(session, account)
        earlier = runs.recent(session, (reconcile_view.RUN_KIND,), account=account, limit=10)
        history = [
            {"id": r.id, "started_at": r.started_at, "error": r.error, **(r.summary or {})}
            for r in earlier
        ]
    return render(
        request,
        "reconcile.html",
        account=account,
        last=last,
        history=history,
        repair=preview_repair(last, account),
        page="reconcile",
    )
