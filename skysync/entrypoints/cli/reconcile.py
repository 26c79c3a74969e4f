"""`skysync reconcile`: SkyHub's catalogue held against the ERP's latest accepted values."""

from __future__ import annotations

import sys
from contextlib import closing

import click

from skysync.entrypoints.cli.common import (
    Context,
    ProgressDisplay,
    account_option,
    echo_json,
    pass_ctx,
    progress_every_option,
)


@click.command()
@click.option("--repair", is_flag=True, help="Enqueue corrective rows for the drift found.")
@click.option("--sku", help="Only this SKU (a product, or a variation).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@progress_every_option
@account_option(every=False)
@pass_ctx
def reconcile(
    ctx: Context,
    repair: bool,
    sku: str | None,
    as_json: bool,
    progress_every: float,
    account: str,
) -> None:
    """Read SkyHub's catalogue and compare price, promotional price, stock (and the attributes
    of products not frozen) with the ERP's latest accepted values. Reports drift, frozen
    attributes, orphans (in SkyHub, never written by the ERP) and missing SKUs. Exit 0 when
    SkyHub matches, 1 when there is drift, an orphan or a missing SKU, or the run stopped.
    One account's catalogue against its own rows: --account (default: default)."""
    from skysync.relay.reconcile import reconcile as run
    from skysync.reporting.reconcile import reconcile_lines

    relay_ = ctx.relay_of(account)
    show = ProgressDisplay(terminal=sys.stderr.isatty(), every=progress_every)
    with closing(relay_.client):
        report = run(relay_.deps, sku=sku, repair=repair, progress=show)
    show.close()
    if as_json:
        echo_json({"account": account, **report.as_dict()})
    else:
        for line in reconcile_lines(report):
            click.echo(line)
    if report.error:
        click.echo(f"skysync: reconciliation {report.error}", err=True)
    if report.has_drift or report.error:
        sys.exit(1)
