"""`skysync accounts ...`: the configured SkyHub accounts as an operator sees them."""

from __future__ import annotations

import click

from skysync.entrypoints.cli.common import Context, echo_json, pass_ctx


@click.group()
def accounts() -> None:
    """The SkyHub accounts skysync serves (SKYSYNC_ACCOUNTS_FILE and the single-account
    settings)."""


@accounts.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def accounts_list(ctx: Context, as_json: bool) -> None:
    """Each configured account: its name, e-mail, rows by state, when SkyHub last accepted one
    of its rows, its last relay batch, and whether it is stopped because SkyHub refused its
    credentials. Never a key."""
    from skysync.reporting.accounts import accounts_lines, accounts_overview

    configured = ctx.accounts
    with ctx.db.scope(readonly=True) as session:
        overview = accounts_overview(session, configured)
    if as_json:
        echo_json(overview)
        return
    for line in accounts_lines(overview):
        click.echo(line)
