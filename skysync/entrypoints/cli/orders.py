"""`skysync orders ...`: SkyHub's order queue pulled into the inbox, and the orders known."""

from __future__ import annotations

import sys
from contextlib import closing

import click

from skysync.entrypoints.cli.common import Context, echo_json, pass_ctx, relay_or_exit


@click.group()
def orders() -> None:
    """Orders from SkyHub's queue, and the status steps sent back."""


@orders.command("pull")
@click.option("--max-orders", default=500, show_default=True, type=click.IntRange(1))
@pass_ctx
def orders_pull(ctx: Context, max_orders: int) -> None:
    """Drain SkyHub's order queue into the inbox once, in this process."""
    from skysync.relay.pull_orders import pull_orders

    relay_ = relay_or_exit(ctx.settings)
    with closing(relay_.client):
        summary = pull_orders(relay_.db, relay_.client, max_orders=max_orders)
    echo_json(summary.as_dict())
    if summary.stopped:
        sys.exit(1)


@orders.command("list")
@click.option("--status", help="Current status code, e.g. payment_received.")
@click.option(
    "--unconsumed", is_flag=True, help="Only orders with inbox rows the ERP has not read."
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def orders_list(
    ctx: Context, status: str | None, unconsumed: bool, limit: int, as_json: bool
) -> None:
    """Orders skysync knows, newest first, with their current status."""
    from skysync.reporting import reports

    with ctx.db.scope(readonly=True) as session:
        found = reports.orders(session, status=status, unconsumed=unconsumed, limit=limit)
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("no orders")
    for o in found:
        flag = f"  FLAGGED: {o['parse_error']}" if o["parse_error"] else ""
        click.echo(
            f"{o['code']:<40} {o['status'] or '?':<20} from {o['status_source'] or '?':<8} "
            f"unread={o['unconsumed_inbox_rows']}{flag}"
        )


@orders.command("show")
@click.argument("code")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def orders_show(ctx: Context, code: str, as_json: bool) -> None:
    """One order: its inbox history and the status steps sent back, with their states."""
    from skysync.reporting import reports

    with ctx.db.scope(readonly=True) as session:
        data = reports.order_report(session, code)
    if data is None:
        click.echo(f"skysync: unknown order {code!r}", err=True)
        sys.exit(1)
    if as_json:
        echo_json(data)
        return
    click.echo(f"{code}: {data['status'] or 'status unknown'} (from {data['status_source']})")
    click.echo("  received from SkyHub:")
    for r in data["inbox"]:
        read = f"read by the ERP {r['consumed_at']}" if r["consumed_at"] else "not read yet"
        flag = f"  FLAGGED: {r['parse_error']}" if r["parse_error"] else ""
        click.echo(f"    {r['id']:>8} {r['status'] or '?':<20} {r['received_at']}  {read}{flag}")
    click.echo("  steps sent back:")
    for r in data["steps"]:
        click.echo(f"    {r['id']:>8} {r['kind']:<26} {r['state']:<10} {r['reason'] or ''}")
