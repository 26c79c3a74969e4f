"""The ``skysync`` command line. Each command parses its input, builds Settings once, and calls
a service function; the work itself lives in the modules named by the commands, and what a
terminal shows of a view in ``skysync/reporting/``.

One module per group of commands: ``outbox`` (enqueue, outbox list/requeue/release), ``item``,
``orders``, ``errors`` (SkyHub's own), ``reconcile``, ``accounts`` (the SkyHub accounts),
``batches`` (relay and drain in this process), ``operations`` (the daemon and its parts,
status, the database); ``common`` holds what they share, the ``--account`` option among it.

Exit codes: 0 success; 1 the command ran and found a problem (invalid row, unhealthy status),
or the database is not migrated or not reachable; 2 bad usage or bad configuration.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from skysync import __version__
from skysync.entrypoints.cli import (
    accounts,
    batches,
    errors,
    item,
    operations,
    orders,
    outbox,
    reconcile,
)
from skysync.entrypoints.cli.common import Context
from skysync.entrypoints.cli.operations import erp_role_sql

__all__ = ["cli", "erp_role_sql", "main"]


class _Commands(click.Group):
    """Every command: a database that is not migrated or not reachable is said in one line
    (exit 1), not with a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            from skysync.store.db import database_problem

            shared = ctx.find_object(Context)
            loaded = shared._settings if shared is not None else None
            problem = database_problem(exc, loaded.database_url if loaded else None)
            if problem is None:
                raise
            click.echo(f"skysync: {problem}", err=True)
            sys.exit(1)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="skysync")
@click.pass_context
def cli(click_ctx: click.Context) -> None:
    """skysync: keeps a SkyHub account in step with the ERP's outbox table."""
    click_ctx.ensure_object(Context)  # one for every command (and _Commands, which masks)


for _command in (
    outbox.enqueue,
    outbox.outbox,
    item.item,
    orders.orders,
    errors.errors,
    reconcile.reconcile,
    accounts.accounts,
    *batches.COMMANDS,
    *operations.COMMANDS,
):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="skysync")
