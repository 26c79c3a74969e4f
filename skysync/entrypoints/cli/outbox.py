"""`skysync enqueue` and `skysync outbox ...`: write one change, list rows, requeue the dead,
release the held. ``--account``: enqueue writes for that account (default: ``default``);
list, requeue and release keep to it, and act on every account's rows without it."""

from __future__ import annotations

import sys

import click

from skysync.domain.kinds import DEFAULT_ACCOUNT, Kind, RowState, values
from skysync.entrypoints.cli.common import Context, account_option, echo_json, pass_ctx


def _of(account: str | None) -> str:
    """`` (account NAME)`` after a message, for any account but the default one."""
    return f" (account {account})" if account and account != DEFAULT_ACCOUNT else ""


@click.command()
@click.argument("kind")
@click.argument("ref")
@click.argument("payload")
@account_option(every=False)
@pass_ctx
def enqueue(ctx: Context, kind: str, ref: str, payload: str, account: str) -> None:
    """Validate one change and write it to the outbox.

    KIND is product, price, stock or order_*; REF the SKU or order code; PAYLOAD a JSON object,
    e.g. skysync enqueue price SKU-1 '{"price": 99.9}'.
    """
    from skysync.domain.validation import ValidationFailed, parse_payload_text
    from skysync.store.outbox import enqueue as write_row

    try:
        with ctx.db_of(account).scope() as session:
            row = write_row(session, kind, ref, parse_payload_text(payload))
            row_id = row.id
    except ValidationFailed as exc:
        click.echo(f"skysync: {kind} {ref!r} not enqueued:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)
    click.echo(f"enqueued outbox row {row_id}: {kind} {ref}{_of(account)}")


@click.group()
def outbox() -> None:
    """Inspect and requeue outbox rows."""


@outbox.command("list")
@click.option("--state", type=click.Choice(values(RowState)))
@click.option("--kind", type=click.Choice(values(Kind)))
@click.option("--ref", help="SKU or order code.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True)
@account_option(every=True)
@pass_ctx
def outbox_list(
    ctx: Context,
    state: str | None,
    kind: str | None,
    ref: str | None,
    limit: int,
    as_json: bool,
    account: str | None,
) -> None:
    """The newest rows first, with their state and reason (and their account, when more than
    one is configured)."""
    from skysync.reporting import reports

    with ctx.db.scope(readonly=True) as session:
        rows = reports.outbox_rows(
            session,
            state=RowState(state) if state else None,
            kind=kind,
            ref=ref,
            limit=limit,
            account=account,
        )
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no rows")
    several = ctx.several_accounts
    for r in rows:
        line = f"{r['id']:>8} "
        if several:
            line += f"{r['account']:<16} "
        line += f"{r['state']:<10} {r['kind']:<24} {r['ref']:<24} tries={r['attempts']}"
        if r["origin"] != "erp":
            line += f" [{r['origin']}]"
        click.echo(line + (f"  {r['reason']}" if r["reason"] else ""))


@outbox.command("requeue")
@click.argument("ids", nargs=-1, type=int)
@click.option(
    "--state",
    type=click.Choice([s.value for s in (RowState.DEAD, RowState.REJECTED, RowState.WITHHELD)]),
)
@account_option(every=True)
@pass_ctx
def outbox_requeue(
    ctx: Context, ids: tuple[int, ...], state: str | None, account: str | None
) -> None:
    """Put dead (or rejected, withheld) rows back to pending with their attempts reset:
    `skysync outbox requeue 12 13` or `skysync outbox requeue --state dead`; with --account,
    only that account's rows."""
    from skysync.store.models import utcnow
    from skysync.store.settle import requeue

    if not ids and not state:
        raise click.UsageError("give row IDS or --state")
    with ctx.db.scope() as session:
        as_state = RowState(state) if state else None
        n = requeue(session, ids=list(ids) or None, state=as_state, now=utcnow(), account=account)
    click.echo(f"requeued {n} row(s){_of(account)}")


@outbox.command("release")
@click.argument("ids", nargs=-1, type=int, required=True)
@account_option(every=True)
@pass_ctx
def outbox_release(ctx: Context, ids: tuple[int, ...], account: str | None) -> None:
    """Let rows the price drop guard held back go out: `skysync outbox release 12 13`. Each goes
    back to pending, due now, and the guard lets it through (once: a newer row is guarded as
    usual). With --account, rows of another account are refused. Exit 1 if some ID is not a
    held row (of that account) (the others are released)."""
    from skysync.reporting.reports import accounts_of_rows
    from skysync.store.models import utcnow
    from skysync.store.settle import release_held

    wanted = list(dict.fromkeys(ids))
    refused: dict[int, str] = {}
    with ctx.db.scope() as session:
        if account is not None:
            owners = accounts_of_rows(session, wanted)
            refused = {
                i: f"is account {owners[i]}'s, not {account}'s"
                for i in wanted
                if i in owners and owners[i] != account
            }
        refused |= release_held(session, [i for i in wanted if i not in refused], utcnow())
    released = len(wanted) - len(refused)
    click.echo(f"released {released} row(s): they go out with the next batch")
    for row_id, why in sorted(refused.items()):
        click.echo(f"skysync: row {row_id} not released: {why}", err=True)
    if refused:
        sys.exit(1)
