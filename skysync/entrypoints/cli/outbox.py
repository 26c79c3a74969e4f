"""`skysync enqueue` and `skysync outbox ...`: write one change, list rows, requeue the dead,
release the held."""

from __future__ import annotations

import sys

import click

from skysync.domain.kinds import Kind, RowState, values
from skysync.entrypoints.cli.common import Context, echo_json, pass_ctx


@click.command()
@click.argument("kind")
@click.argument("ref")
@click.argument("payload")
@pass_ctx
def enqueue(ctx: Context, kind: str, ref: str, payload: str) -> None:
    """Validate one change and write it to the outbox.

    KIND is product, price, stock or order_*; REF the SKU or order code; PAYLOAD a JSON object,
    e.g. skysync enqueue price SKU-1 '{"price": 99.9}'.
    """
    from skysync.domain.validation import ValidationFailed, parse_payload_text
    from skysync.store.outbox import enqueue as write_row

    try:
        with ctx.db.scope() as session:
            row = write_row(session, kind, ref, parse_payload_text(payload))
            row_id = row.id
    except ValidationFailed as exc:
        click.echo(f"skysync: {kind} {ref!r} not enqueued:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)
    click.echo(f"enqueued outbox row {row_id}: {kind} {ref}")


@click.group()
def outbox() -> None:
    """Inspect and requeue outbox rows."""


@outbox.command("list")
@click.option("--state", type=click.Choice(values(RowState)))
@click.option("--kind", type=click.Choice(values(Kind)))
@click.option("--ref", help="SKU or order code.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def outbox_list(
    ctx: Context, state: str | None, kind: str | None, ref: str | None, limit: int, as_json: bool
) -> None:
    """The newest rows first, with their state and reason."""
    from skysync.reporting import reports

    with ctx.db.scope(readonly=True) as session:
        rows = reports.outbox_rows(
            session, state=RowState(state) if state else None, kind=kind, ref=ref, limit=limit
        )
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no rows")
    for r in rows:
        line = f"{r['id']:>8} {r['state']:<10} {r['kind']:<24} {r['ref']:<24} tries={r['attempts']}"
        if r["origin"] != "erp":
            line += f" [{r['origin']}]"
        click.echo(line + (f"  {r['reason']}" if r["reason"] else ""))


@outbox.command("requeue")
@click.argument("ids", nargs=-1, type=int)
@click.option(
    "--state",
    type=click.Choice([s.value for s in (RowState.DEAD, RowState.REJECTED, RowState.WITHHELD)]),
)
@pass_ctx
def outbox_requeue(ctx: Context, ids: tuple[int, ...], state: str | None) -> None:
    """Put dead (or rejected, withheld) rows back to pending with their attempts reset:
    `skysync outbox requeue 12 13` or `skysync outbox requeue --state dead`."""
    from skysync.store.models import utcnow
    from skysync.store.settle import requeue

    if not ids and not state:
        raise click.UsageError("give row IDS or --state")
    with ctx.db.scope() as session:
        as_state = RowState(state) if state else None
        n = requeue(session, ids=list(ids) or None, state=as_state, now=utcnow())
    click.echo(f"requeued {n} row(s)")


@outbox.command("release")
@click.argument("ids", nargs=-1, type=int, required=True)
@pass_ctx
def outbox_release(ctx: Context, ids: tuple[int, ...]) -> None:
    """Let rows the price drop guard held back go out: `skysync outbox release 12 13`. Each goes
    back to pending, due now, and the guard lets it through (once: a newer row is guarded as
    usual). Exit 1 if some ID is not a held row (the others are released)."""
    from skysync.store.models import utcnow
    from skysync.store.settle import release_held

    with ctx.db.scope() as session:
        refused = release_held(session, list(dict.fromkeys(ids)), utcnow())
    released = len(set(ids)) - len(refused)
    click.echo(f"released {released} row(s): they go out with the next batch")
    for row_id, why in sorted(refused.items()):
        click.echo(f"skysync: row {row_id} not released: {why}", err=True)
    if refused:
        sys.exit(1)
