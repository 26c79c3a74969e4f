"""`skysync orders ...`: SkyHub's order queue pulled into the inbox, the orders known, and those
late. An order is its account's: pull and show act on ``--account`` (default ``default``), list
and late show every account's orders without it."""

from __future__ import annotations

import sys
from contextlib import closing

import click

from skysync.entrypoints.cli.common import Context, account_option, echo_json, pass_ctx


@click.group()
def orders() -> None:
    """Orders from SkyHub's queue, the status steps sent back, and what is late."""


@orders.command("pull")
@click.option("--max-orders", default=500, show_default=True, type=click.IntRange(1))
@account_option(every=False)
@pass_ctx
def orders_pull(ctx: Context, max_orders: int, account: str) -> None:
    """Drain the account's SkyHub order queue into the inbox once, in this process."""
    from skysync.relay.pull_orders import pull_orders

    relay_ = ctx.relay_of(account)
    with closing(relay_.client):
        summary = pull_orders(
            relay_.db, relay_.client, max_orders=max_orders, reserving=relay_.deps.reserving
        )
    echo_json({"account": account, **summary.as_dict()})
    if summary.stopped:
        sys.exit(1)


@orders.command("list")
@click.option("--status", help="Current status code, e.g. payment_received.")
@click.option(
    "--unconsumed", is_flag=True, help="Only orders with inbox rows the ERP has not read."
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True)
@account_option(every=True)
@pass_ctx
def orders_list(
    ctx: Context,
    status: str | None,
    unconsumed: bool,
    limit: int,
    as_json: bool,
    account: str | None,
) -> None:
    """Orders skysync knows, newest first, with their current status (and their account, when
    more than one is configured)."""
    from skysync.reporting import reports

    with ctx.db.scope(readonly=True) as session:
        found = reports.orders(
            session, status=status, unconsumed=unconsumed, limit=limit, account=account
        )
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("no orders")
    several = ctx.several_accounts
    for o in found:
        flag = f"  FLAGGED: {o['parse_error']}" if o["parse_error"] else ""
        owner = f"{o['account']:<16} " if several else ""
        click.echo(
            f"{owner}{o['code']:<40} {o['status'] or '?':<20} from {o['status_source'] or '?':<8} "
            f"unread={o['unconsumed_inbox_rows']}{flag}"
        )


@orders.command("show")
@click.argument("code")
@click.option("--json", "as_json", is_flag=True)
@account_option(every=False)
@pass_ctx
def orders_show(ctx: Context, code: str, as_json: bool, account: str) -> None:
    """One order: its inbox history and the status steps sent back, with their states."""
    from skysync.reporting import reports

    with ctx.db_of(account).scope(readonly=True) as session:
        data = reports.order_report(session, code)
    if data is None:
        click.echo(f"skysync: unknown order {code!r} (account {account})", err=True)
        sys.exit(1)
    if as_json:
        echo_json(data)
        return
    if ctx.several_accounts:
        click.echo(f"account {account}:")
    click.echo(f"{code}: {data['status'] or 'status unknown'} (from {data['status_source']})")
    click.echo("  received from SkyHub:")
    for r in data["inbox"]:
        read = f"read by the ERP {r['consumed_at']}" if r["consumed_at"] else "not read yet"
        flag = f"  FLAGGED: {r['parse_error']}" if r["parse_error"] else ""
        click.echo(f"    {r['id']:>8} {r['status'] or '?':<20} {r['received_at']}  {read}{flag}")
    click.echo("  steps sent back:")
    for r in data["steps"]:
        click.echo(f"    {r['id']:>8} {r['kind']:<26} {r['state']:<10} {r['reason'] or ''}")


@orders.command("late")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--limit",
    default=200,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="The most lines of each reason (the counts are always complete).",
)
@account_option(every=True)
@pass_ctx
def orders_late(ctx: Context, as_json: bool, limit: int, account: str | None) -> None:
    """Orders late to ship or to invoice, and orders the ERP has not read in time.

    One line each, with the order code, its account, its status and how late: orders paid and
    not shipped whose expedition limit has passed (LATE TO SHIP) or is within
    SKYSYNC_LATE_SHIP_MARGIN_HOURS (DUE TO SHIP), approved orders not invoiced after
    SKYSYNC_LATE_INVOICE_HOURS (NOT INVOICED), and inbox rows the ERP has not consumed after
    SKYSYNC_LATE_INBOX_MINUTES (NOT CONSUMED); times in Brasília time.

    Exits 0 when nothing is late, 1 otherwise: cron or a monitor can run it."""
    from skysync.reporting.late import collect_late, late_lines

    rules = ctx.settings.late_rules
    with ctx.db.scope(readonly=True) as session:
        report = collect_late(session, rules, account=account, limit=limit)
    if as_json:
        echo_json(report)
    else:
        for line in late_lines(report, rules):
            click.echo(line)
    if report["late"]:
        sys.exit(1)
