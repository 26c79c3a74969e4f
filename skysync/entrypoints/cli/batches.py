"""`skysync relay` and `skysync drain`: relay batches in this process, for one account
(``--account``) or for every configured account in turn, each with its own relay (its
credentials, its limiter buckets, its rows). Without ``--account`` they first reject the
pending rows of accounts that are not configured, as beat's batch does."""

from __future__ import annotations

import sys
from contextlib import closing
from typing import Any

import click

from skysync.entrypoints.cli.common import (
    Context,
    ProgressDisplay,
    account_option,
    echo_json,
    pass_ctx,
    progress_every_option,
)


def _accounts_to_run(ctx: Context, account: str | None) -> tuple[list[str], dict[str, Any]]:
    """The accounts to run (``account``, else every configured one) and what the output says
    before them: how many rows of unconfigured accounts were rejected (every account only)."""
    if account is not None:
        return [account], {}
    from skysync.store.models import utcnow
    from skysync.store.settle import reject_unconfigured

    names = ctx.accounts.names()
    with ctx.db.scope() as session:
        rejected = reject_unconfigured(session, names, utcnow())
    if rejected:
        click.echo(
            f"skysync: {rejected} pending row(s) name an account that is not configured: "
            "rejected (`skysync status` lists them)",
            err=True,
        )
    return names, {"rejected_unconfigured": rejected}


def _shown(names: list[str], before: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """One account: its result as it always was, with its name; several: by account."""
    if len(names) == 1:
        return {"account": names[0], **results[names[0]], **before}
    return {**before, "accounts": results}


@click.command()
@account_option(every=True)
@pass_ctx
def relay(ctx: Context, account: str | None) -> None:
    """Run one relay batch in this process and print its summary: of --account, else one
    batch of every configured account in turn."""
    names, before = _accounts_to_run(ctx, account)
    results: dict[str, Any] = {}
    for name in names:
        relay_ = ctx.relay_of(name)
        with closing(relay_.client):
            results[name] = relay_.run_batch().as_dict()
    echo_json(_shown(names, before, results))


@click.command()
@click.option("--max-batches", default=1000, show_default=True, type=click.IntRange(1))
@progress_every_option
@account_option(every=True)
@pass_ctx
def drain(ctx: Context, max_batches: int, progress_every: float, account: str | None) -> None:
    """Run batches in this process until nothing is due, showing progress (rows left, rows/s,
    requests sent, ETA): of --account, else of every configured account in turn. Exit 1 when
    this drain failed (for any account): rows it handled did not go out (dead, or back to
    pending to retry), rows are still due after --max-batches, or SkyHub refused the
    credentials. Exit 0 otherwise, also when what is left is in other hands (rows in flight
    under other workers' claims, rows backing off from earlier attempts) or rows were
    rejected (bad input, fixed at the source); stderr says what is left."""
    from skysync.relay import drain as drain_outbox
    from skysync.reporting.accounts import outbox_counts

    names, before = _accounts_to_run(ctx, account)
    several = len(names) > 1
    results: dict[str, Any] = {}
    failed = False
    for name in names:
        label = f"account {name}: " if several else ""
        relay_ = ctx.relay_of(name)
        show = ProgressDisplay(terminal=sys.stderr.isatty(), every=progress_every, label=label)
        with closing(relay_.client):
            result = drain_outbox(relay_.deps, max_batches=max_batches, progress=show)
        show.close()
        with ctx.db.scope(readonly=True) as session:
            counts = outbox_counts(session, name)
        results[name] = _drain_dict(result, counts)
        for line in _drain_notes(result, account=name):
            click.echo(f"skysync: {label}{line}", err=True)
        failed = failed or result.failed
    echo_json(_shown(names, before, results))
    if failed:
        sys.exit(1)


def _drain_dict(result: Any, counts: dict[str, int]) -> dict[str, Any]:
    """One account's drain: its batches, its rows by state, and what is left, by whose."""
    left = result.account
    return {
        "batches": result.batches,
        "outbox": counts,
        "this_drain": {
            "failed": len(left.failed),
            "dead": len(left.dead),
            "retrying": len(left.retrying),
            "rejected": left.rejected,
            "stopped": result.stopped,
            "still_due": result.due,
        },
        "left_in_other_hands": {
            "in_flight": left.in_other_hands,
            "pending_not_due": left.not_due,
        },
    }


def _drain_notes(result: Any, *, account: str) -> list[str]:
    """What a drain leaves behind, in words: its own failures first, then the rest."""
    left, notes = result.account, []
    of = f" --account {account}"
    if result.stopped:
        notes.append("stopped: SkyHub refused the credentials (see `skysync status`)")
    if left.dead:
        notes.append(
            f"{len(left.dead)} row(s) this drain handled died (attempts used up): "
            f"`skysync outbox list --state dead{of}`"
        )
    if left.retrying or left.still_claimed:
        notes.append(
            f"{len(left.retrying) + len(left.still_claimed)} row(s) this drain handled "
            f"did not go out and wait to be retried: `skysync outbox list --state pending{of}`"
        )
    if result.due:
        notes.append(f"{result.due} row(s) still due after --max-batches: run drain again")
    if left.rejected:
        notes.append(
            f"{left.rejected} row(s) rejected (bad input, or refused by SkyHub for good; "
            f"not a failure of this drain): `skysync outbox list --state rejected{of}`"
        )
    if left.in_other_hands:
        notes.append(
            f"{left.in_other_hands} in-flight row(s) are held by other workers' claims "
            "(not this drain's)"
        )
    if left.not_due:
        notes.append(
            f"{left.not_due} pending row(s) not due yet, backing off from earlier attempts "
            "(not this drain's)"
        )
    return notes


COMMANDS = (relay, drain)
