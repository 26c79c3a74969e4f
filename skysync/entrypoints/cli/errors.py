"""`skysync errors ...`: SkyHub's own errors about what it accepted (/sync_errors). pull and
ignore talk to SkyHub as ``--account`` (default ``default``); list shows every account's
errors without it."""

from __future__ import annotations

import sys
from contextlib import closing

import click

from skysync.entrypoints.cli.common import Context, account_option, echo_json, pass_ctx


@click.group()
def errors() -> None:
    """SkyHub's own errors about products and orders it accepted (/sync_errors)."""


@errors.command("pull")
@account_option(every=False)
@pass_ctx
def errors_pull(ctx: Context, account: str) -> None:
    """Read the account's SkyHub errors now and store them (beat does it every
    SKYSYNC_SYNC_ERRORS_INTERVAL, for every account)."""
    from skysync.relay.sync_errors import pull_sync_errors

    relay_ = ctx.relay_of(account)
    with closing(relay_.client):
        summary = pull_sync_errors(relay_.deps)
    echo_json({"account": account, **summary.as_dict()})
    if summary.stopped:
        sys.exit(1)


@errors.command("list")
@click.option("--sku", help="Only this SKU's errors.")
@click.option("--order", "order_code", help="Only this order's errors.")
@click.option("--all", "include_closed", is_flag=True, help="Resolved and ignored ones too.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True)
@account_option(every=True)
@pass_ctx
def errors_list(
    ctx: Context,
    sku: str | None,
    order_code: str | None,
    include_closed: bool,
    limit: int,
    as_json: bool,
    account: str | None,
) -> None:
    """SkyHub's errors, newest first: open ones (neither resolved nor ignored) unless --all."""
    from skysync.reporting.reports import error_line
    from skysync.store import sync_errors

    if sku and order_code:
        raise click.UsageError("give --sku or --order, not both")
    entity_type = "products" if sku else "orders" if order_code else None
    with ctx.db.scope(readonly=True) as session:
        found = [
            {"account": e.account, **sync_errors.as_dict(e)}
            for e in sync_errors.listed(
                session,
                entity_id=sku or order_code,
                entity_type=entity_type,
                include_closed=include_closed,
                limit=limit,
                account=account,
            )
        ]
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("no errors")
    several = ctx.several_accounts
    for e in found:
        click.echo((f"{e['account']:<16} " if several else "") + error_line(e))


@errors.command("ignore")
@click.argument("ids", nargs=-1, type=int, required=True)
@account_option(every=False)
@pass_ctx
def errors_ignore(ctx: Context, ids: tuple[int, ...], account: str) -> None:
    """Ask SkyHub to ignore these errors of the account (after fixing their cause): it stops
    listing them, and they are kept here marked ignored. Errors of another account are not
    sent (exit 1, naming their account)."""
    from skysync.relay.sync_errors import ignore_sync_errors
    from skysync.reporting.reports import accounts_of_errors
    from skysync.skyhub.errors import SkyHubError

    with ctx.db.scope(readonly=True) as session:
        owners = accounts_of_errors(session, list(ids))
    others = {i: owners[i] for i in ids if i in owners and owners[i] != account}
    for error_id, owner in sorted(others.items()):
        click.echo(
            f"skysync: error {error_id} is account {owner}'s, not {account}'s: "
            f"`skysync errors ignore {error_id} --account {owner}`",
            err=True,
        )
    mine = [i for i in ids if i not in others]
    if not mine:
        sys.exit(1)
    relay_ = ctx.relay_of(account)
    with closing(relay_.client):
        try:
            ignored, unknown = ignore_sync_errors(relay_.deps, mine)
        except SkyHubError as exc:
            click.echo(f"skysync: SkyHub did not take it: {exc}", err=True)
            sys.exit(1)
    if ignored:
        click.echo(f"ignored {len(ignored)} error(s): {', '.join(map(str, ignored))}")
    if unknown:
        click.echo(f"skysync: unknown error id(s): {', '.join(map(str, unknown))}", err=True)
    if unknown or others:
        sys.exit(1)
