"""`skysync item ...`: what SkyHub acknowledged per SKU, and unfreezing a linked product. A SKU
is its account's (``--account``, default ``default``): the same SKU in two accounts is two
items."""

from __future__ import annotations

import sys

import click

from skysync.domain.kinds import DEFAULT_ACCOUNT
from skysync.entrypoints.cli.common import Context, account_option, echo_json, pass_ctx


@click.group()
def item() -> None:
    """What SkyHub acknowledged per SKU, and its frozen state."""


@item.command("show")
@click.argument("sku")
@click.option("--json", "as_json", is_flag=True)
@account_option(every=False)
@pass_ctx
def item_show(ctx: Context, sku: str, as_json: bool, account: str) -> None:
    """Acknowledged values, linked/frozen state and the SKU's recent rows with their reasons."""
    from skysync.reporting import reports

    reserving = ctx.accounts[account].reserving(ctx.settings)
    with ctx.db_of(account).scope(readonly=True) as session:
        data = reports.item_report(session, sku, reserving=reserving)
    if as_json:
        echo_json(data)
        return
    if ctx.several_accounts:
        click.echo(f"account {account}:")
    for line in reports.item_lines(data):
        click.echo(line)


@item.command("unfreeze")
@click.argument("sku")
@account_option(every=False)
@pass_ctx
def item_unfreeze(ctx: Context, sku: str, account: str) -> None:
    """Let attribute changes of a linked product through again (an operator's decision: the
    marketplace may still ignore them). Withheld rows can then be requeued."""
    from skysync.store.items import unfreeze
    from skysync.store.models import utcnow

    of = "" if account == DEFAULT_ACCOUNT else f" of account {account}"
    with ctx.db_of(account).scope() as session:
        if not unfreeze(session, sku, utcnow()):
            click.echo(f"skysync: unknown SKU {sku!r}{of}", err=True)
            sys.exit(1)
    requeue = "skysync outbox requeue ID..."
    if account != DEFAULT_ACCOUNT:
        requeue += f" --account {account}"
    click.echo(
        f"{sku}{of} unfrozen: attribute changes go out again. "
        f"Requeue its withheld rows with `{requeue}`."
    )
