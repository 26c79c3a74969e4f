"""`skysync item ...`: what SkyHub acknowledged per SKU, and unfreezing a linked product."""

from __future__ import annotations

import sys

import click

from skysync.entrypoints.cli.common import Context, echo_json, pass_ctx


@click.group()
def item() -> None:
    """What SkyHub acknowledged per SKU, and its frozen state."""


@item.command("show")
@click.argument("sku")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def item_show(ctx: Context, sku: str, as_json: bool) -> None:
    """Acknowledged values, linked/frozen state and the SKU's recent rows with their reasons."""
    from skysync.reporting import reports

    with ctx.db.scope(readonly=True) as session:
        data = reports.item_report(session, sku)
    if as_json:
        echo_json(data)
        return
    for line in reports.item_lines(data):
        click.echo(line)


@item.command("unfreeze")
@click.argument("sku")
@pass_ctx
def item_unfreeze(ctx: Context, sku: str) -> None:
    """Let attribute changes of a linked product through again (an operator's decision: the
    marketplace may still ignore them). Withheld rows can then be requeued."""
    from skysync.store.items import unfreeze
    from skysync.store.models import utcnow

    with ctx.db.scope() as session:
        if not unfreeze(session, sku, utcnow()):
            click.echo(f"skysync: unknown SKU {sku!r}", err=True)
            sys.exit(1)
    click.echo(
        f"{sku} unfrozen: attribute changes go out again. "
        f"Requeue its withheld rows with `skysync outbox requeue ID...`."
    )
