"""The ``skysync`` command line. Each command parses its input, builds Settings once, and calls
a service function; the work itself lives in the modules named by the commands.

Exit codes: 0 success; 1 the command ran and found a problem (invalid row, unhealthy status),
or the database is not migrated or not reachable; 2 bad usage or bad configuration.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import time
from contextlib import closing
from typing import Any

import click

from skysync import __version__
from skysync.config import ConfigError, Settings, load_settings, mask_dsn
from skysync.domain.kinds import Kind, RowState, values

ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class Context:
    """Lazily built Settings shared by the commands of one invocation."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings()
            except ConfigError as exc:
                click.echo(f"skysync: {exc}", err=True)
                sys.exit(2)
            from skysync.logs import configure_logging

            configure_logging(self._settings.log_level, secrets=self._settings.secret_values())
        return self._settings


pass_ctx = click.make_pass_decorator(Context, ensure=True)


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


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@cli.command()
@pass_ctx
def migrate(ctx: Context) -> None:
    """Create or upgrade the tables (alembic upgrade head)."""
    from skysync.store.db import current_revision
    from skysync.store.db import migrate as run_migrations

    url = ctx.settings.database_url
    run_migrations(url)
    click.echo(f"database {mask_dsn(url)} at revision {current_revision(url)}")


@cli.command("check-config")
@pass_ctx
def check_config(ctx: Context) -> None:
    """Print the effective settings (secrets masked) and exit 2 if any is invalid."""
    _echo_json(ctx.settings.masked())


@cli.command()
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
    from skysync.store.db import session_scope
    from skysync.store.outbox import enqueue as write_row

    try:
        with session_scope(ctx.settings.database_url) as session:
            row = write_row(session, kind, ref, parse_payload_text(payload))
            row_id = row.id
    except ValidationFailed as exc:
        click.echo(f"skysync: {kind} {ref!r} not enqueued:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)
    click.echo(f"enqueued outbox row {row_id}: {kind} {ref}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--max-pending-age",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds a due row may wait before status exits 1 [default: 2 x SKYSYNC_SYNC_INTERVAL].",
)
@pass_ctx
def status(ctx: Context, as_json: bool, max_pending_age: float | None) -> None:
    """Outbox rows by state, the oldest due row, the last runs, orders waiting for the ERP.

    Exits 1 when something needs an operator: the oldest due row is older than
    --max-pending-age, SkyHub's rate limit (a long Retry-After) parked rows past the next
    batch, SkyHub refused the credentials in the last batch or pull, or no batch ran for two
    intervals (beat is down). Cron or a monitor can alert on that."""
    from skysync.reporting.status import collect_status, health_problems
    from skysync.store.db import session_scope

    settings = ctx.settings
    with session_scope(settings.database_url, readonly=True) as session:
        report = collect_status(session)
    problems = health_problems(
        report,
        sync_interval=settings.sync_interval,
        order_poll_interval=settings.order_poll_interval,
        max_pending_age=max_pending_age
        if max_pending_age is not None
        else 2 * settings.sync_interval,
    )
    report["healthy"] = not problems
    report["problems"] = problems
    if as_json:
        _echo_json(report)
        if problems:
            sys.exit(1)
        return
    click.echo(f"database: {mask_dsn(ctx.settings.database_url)}")
    click.echo("outbox:")
    for state, n in report["outbox"].items():
        click.echo(f"  {state:<11} {n}")
    age = report["oldest_pending_age_s"]
    click.echo(f"oldest due pending row: {'none' if age is None else f'{age:.0f} s old'}")
    parked = report["parked_by_skyhub"]
    if parked["rows"]:
        click.echo(f"waiting on SkyHub's rate limit: {parked['rows']} until {parked['until']}")
    for key, label in (("last_relay", "last relay"), ("last_order_pull", "last order pull")):
        run = report[key]
        click.echo(f"{label}: {'never' if run is None else run['started_at']}")
        if run and run["error"]:
            click.echo(f"  stopped: {run['error']}")
    orders = report["orders"]
    click.echo(f"orders waiting for the ERP: {orders['unconsumed']} ({orders['flagged']} flagged)")
    rec = report["last_reconcile"]
    if rec is None:
        click.echo("last reconciliation: never")
    else:
        click.echo(
            f"last reconciliation: {rec['started_at']}: {rec['skus_compared']} SKUs, "
            f"{rec['drift']} drift, {rec['orphans']} orphan(s), {rec['missing']} missing, "
            f"{rec['frozen']} frozen, {rec['repaired_rows']} correction row(s)"
        )
        if rec["error"]:
            click.echo(f"  {rec['error']}")
    errors = report["sync_errors"]
    click.echo(
        f"SkyHub's own errors, open: {errors['products']} about products, "
        f"{errors['orders']} about orders (skysync errors list)"
    )
    if problems:
        click.echo("UNHEALTHY:")
        for problem in problems:
            click.echo(f"  - {problem}")
        sys.exit(1)
    click.echo("healthy")


def _relay_or_exit(settings: Settings) -> Any:
    from skysync.bootstrap import NoSkyHubTarget, build_relay

    try:
        return build_relay(settings)
    except NoSkyHubTarget as exc:
        click.echo(f"skysync: {exc}", err=True)
        sys.exit(2)


@cli.command()
@pass_ctx
def relay(ctx: Context) -> None:
    """Run one relay batch in this process and print its summary."""
    relay_ = _relay_or_exit(ctx.settings)
    with closing(relay_.client):
        summary = relay_.run_batch()
    _echo_json(summary.as_dict())


_progress_every = click.option(
    "--progress-every",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds between progress lines in the log when not on a terminal.",
)


class _DrainDisplay:
    """On a terminal, one progress line rewritten in place after each batch; elsewhere (a
    cron job, a container log) a log line every ``every`` seconds."""

    def __init__(self, *, terminal: bool, every: float) -> None:
        self.terminal, self.every = terminal, every
        self.last = float("-inf")
        self.shown = False

    def __call__(self, progress: Any) -> None:
        if self.terminal:
            click.echo("\r" + progress.line() + "\x1b[K", err=True, nl=False)
            self.shown = True
        elif time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            logging.getLogger("skysync").info(progress.line())

    def close(self) -> None:
        if self.shown:
            click.echo("", err=True)


@cli.command()
@click.option("--max-batches", default=1000, show_default=True, type=click.IntRange(1))
@_progress_every
@pass_ctx
def drain(ctx: Context, max_batches: int, progress_every: float) -> None:
    """Run batches in this process until nothing is due, showing progress (rows left, rows/s,
    requests sent, ETA). Exit 1 when this drain failed: rows it handled did not go out (dead,
    or back to pending to retry), rows are still due after --max-batches, or SkyHub refused
    the credentials. Exit 0 otherwise, also when what is left is in other hands (rows in
    flight under other workers' claims, rows backing off from earlier attempts) or rows were
    rejected (bad input, fixed at the source); stderr says what is left."""
    from skysync.relay import drain as drain_outbox

    relay_ = _relay_or_exit(ctx.settings)
    show = _DrainDisplay(terminal=sys.stderr.isatty(), every=progress_every)
    with closing(relay_.client):
        result = drain_outbox(relay_, max_batches=max_batches, progress=show)
    show.close()
    account = result.account
    _echo_json(
        {
            "batches": result.batches,
            "outbox": result.counts,
            "this_drain": {
                "failed": len(account.failed),
                "dead": len(account.dead),
                "retrying": len(account.retrying),
                "rejected": account.rejected,
                "stopped": result.stopped,
                "still_due": result.due,
            },
            "left_in_other_hands": {
                "in_flight": account.in_other_hands,
                "pending_not_due": account.not_due,
            },
        }
    )
    for line in _drain_notes(result):
        click.echo(f"skysync: {line}", err=True)
    if result.failed:
        sys.exit(1)


def _drain_notes(result: Any) -> list[str]:
    """What a drain leaves behind, in words: its own failures first, then the rest."""
    account, notes = result.account, []
    if result.stopped:
        notes.append("stopped: SkyHub refused the credentials (see `skysync status`)")
    if account.dead:
        notes.append(
            f"{len(account.dead)} row(s) this drain handled died (attempts used up): "
            "`skysync outbox list --state dead`"
        )
    if account.retrying or account.still_claimed:
        notes.append(
            f"{len(account.retrying) + len(account.still_claimed)} row(s) this drain handled "
            "did not go out and wait to be retried: `skysync outbox list --state pending`"
        )
    if result.due:
        notes.append(f"{result.due} row(s) still due after --max-batches: run drain again")
    if account.rejected:
        notes.append(
            f"{account.rejected} row(s) rejected (bad input, or refused by SkyHub for good; "
            "not a failure of this drain): `skysync outbox list --state rejected`"
        )
    if account.in_other_hands:
        notes.append(
            f"{account.in_other_hands} in-flight row(s) are held by other workers' claims "
            "(not this drain's)"
        )
    if account.not_due:
        notes.append(
            f"{account.not_due} pending row(s) not due yet, backing off from earlier attempts "
            "(not this drain's)"
        )
    return notes


@cli.command()
@click.option("--repair", is_flag=True, help="Enqueue corrective rows for the drift found.")
@click.option("--sku", help="Only this SKU (a product, or a variation).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@_progress_every
@pass_ctx
def reconcile(
    ctx: Context, repair: bool, sku: str | None, as_json: bool, progress_every: float
) -> None:
    """Read SkyHub's catalogue and compare price, promotional price, stock (and the attributes
    of products not frozen) with the ERP's latest accepted values. Reports drift, frozen
    attributes, orphans (in SkyHub, never written by the ERP) and missing SKUs. Exit 0 when
    SkyHub matches, 1 when there is drift, an orphan or a missing SKU, or the run stopped."""
    from skysync.relay.reconcile import reconcile as run

    relay_ = _relay_or_exit(ctx.settings)
    show = _DrainDisplay(terminal=sys.stderr.isatty(), every=progress_every)
    with closing(relay_.client):
        report = run(relay_, sku=sku, repair=repair, progress=show)
    show.close()
    if as_json:
        _echo_json(report.as_dict())
    else:
        _print_reconcile(report)
    if report.error:
        click.echo(f"skysync: reconciliation {report.error}", err=True)
    if report.has_drift or report.error:
        sys.exit(1)


def _print_reconcile(report: Any) -> None:
    def value(v: Any) -> str:
        return "(none)" if v is None else json.dumps(v, ensure_ascii=False)[:60]

    click.echo(
        f"{report.skus_compared} SKUs compared over {report.pages} page(s); "
        f"{len(report.drift)} drift, {len(report.frozen)} frozen, {len(report.orphans)} orphan(s), "
        f"{len(report.missing)} missing"
    )
    frozen_title = "frozen (reported, never repaired)"
    for title, found in (("drift", report.drift), (frozen_title, report.frozen)):
        if found:
            click.echo(f"{title}:")
        for d in found:
            since = d.since.isoformat(timespec="seconds") if d.since else "unknown"
            click.echo(
                f"  {d.sku:<24} {d.field:<18} ERP {value(d.erp)}  SkyHub {value(d.skyhub)}  "
                f"(believed since {since}, row {d.row_id})"
            )
            if d.note:
                click.echo(f"  {'':<24} {d.note}")
    if report.orphans:
        names = ", ".join(report.orphans)
        click.echo(f"orphans (SkyHub has them, the ERP never wrote them): {names}")
    if report.missing:
        names = ", ".join(m.sku for m in report.missing)
        click.echo(f"missing (the ERP wrote them, SkyHub lacks them): {names}")
    for r in report.repaired:
        click.echo(f"enqueued correction row {r['row_id']} ({r['kind']} {r['ref']})")
    for r in report.not_repaired:
        click.echo(f"not repaired: {r['ref']}: {r['reason']}")
    if report.busy_fields:
        click.echo(f"{report.busy_fields} field(s) not compared: a write for them is on its way")


@cli.command()
@pass_ctx
def trigger(ctx: Context) -> None:
    """Ask the workers for a relay batch now (instead of waiting for beat)."""
    ctx.settings  # noqa: B018 - validate the configuration before touching the broker
    from skysync.tasks import relay_batch

    result = relay_batch.delay()
    click.echo(f"relay batch queued as task {result.id}")


@cli.command()
@click.option("--demo", is_flag=True, help="Seed demo rows into an empty outbox.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option("--emulator-port", default=8710, show_default=True, type=int)
@pass_ctx
def run(ctx: Context, demo: bool, concurrency: int, emulator_port: int) -> None:
    """The daemon in one process: a Celery worker with embedded beat (and, without SkyHub
    credentials, the built-in SkyHub emulator)."""
    from skysync.entrypoints.embedded import run_daemon

    run_daemon(ctx.settings, demo=demo, concurrency=concurrency, emulator_port=emulator_port)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--port", default=5555, show_default=True, type=int)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; 0.0.0.0 for every one (compose does, inside its container).",
)
@click.pass_context
def flower(click_ctx: click.Context, port: int, address: str) -> None:
    """Flower (the Celery dashboard) behind basic auth from SKYSYNC_FLOWER_BASIC_AUTH
    ("user:password"); it refuses to start without. Extra options go to Flower."""
    import os

    settings = click_ctx.ensure_object(Context).settings
    if settings.flower_basic_auth is None:
        click.echo(
            "skysync: refusing to start Flower without authentication: set "
            'SKYSYNC_FLOWER_BASIC_AUTH="user:password"',
            err=True,
        )
        sys.exit(2)
    # Flower reads FLOWER_* variables: the password stays out of the process's command line.
    os.environ["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    from skysync.celery_app import app

    app.start(["flower", f"--port={port}", f"--address={address}", *click_ctx.args])


def _stop_on_sigterm() -> None:
    """`docker stop` (and systemd, and Kubernetes) send SIGTERM: stop as on Ctrl-C, closing the
    server cleanly, and exit 0 rather than being killed by the signal (exit 143)."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@cli.command()
@click.option("--port", default=9108, show_default=True, type=int)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; 0.0.0.0 for every one (no authentication: mind who reaches it).",
)
@pass_ctx
def metrics(ctx: Context, port: int, address: str) -> None:
    """Serve Prometheus metrics about the outbox, SkyHub requests and orders at /metrics."""
    from skysync.reporting.metrics import serve

    click.echo(f"serving metrics on http://{address}:{port}/metrics", err=True)
    _stop_on_sigterm()
    serve(ctx.settings.database_url, port, address)


@cli.group()
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
    from skysync.store.db import session_scope

    with session_scope(ctx.settings.database_url, readonly=True) as session:
        rows = reports.outbox_rows(session, state=state, kind=kind, ref=ref, limit=limit)
    if as_json:
        _echo_json(rows)
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
    from skysync.store.db import session_scope
    from skysync.store.models import utcnow
    from skysync.store.settle import requeue

    if not ids and not state:
        raise click.UsageError("give row IDS or --state")
    with session_scope(ctx.settings.database_url) as session:
        n = requeue(session, ids=list(ids) or None, state=state, now=utcnow())
    click.echo(f"requeued {n} row(s)")


@outbox.command("release")
@click.argument("ids", nargs=-1, type=int, required=True)
@pass_ctx
def outbox_release(ctx: Context, ids: tuple[int, ...]) -> None:
    """Let rows the price drop guard held back go out: `skysync outbox release 12 13`. Each goes
    back to pending, due now, and the guard lets it through (once: a newer row is guarded as
    usual). Exit 1 if some ID is not a held row (the others are released)."""
    from skysync.store.db import session_scope
    from skysync.store.models import utcnow
    from skysync.store.settle import release_held

    with session_scope(ctx.settings.database_url) as session:
        refused = release_held(session, list(dict.fromkeys(ids)), utcnow())
    released = len(set(ids)) - len(refused)
    click.echo(f"released {released} row(s): they go out with the next batch")
    for row_id, why in sorted(refused.items()):
        click.echo(f"skysync: row {row_id} not released: {why}", err=True)
    if refused:
        sys.exit(1)


@cli.group()
def item() -> None:
    """What SkyHub acknowledged per SKU, and its frozen state."""


@item.command("show")
@click.argument("sku")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def item_show(ctx: Context, sku: str, as_json: bool) -> None:
    """Acknowledged values, linked/frozen state and the SKU's recent rows with their reasons."""
    from skysync.reporting import reports
    from skysync.store.db import session_scope

    with session_scope(ctx.settings.database_url, readonly=True) as session:
        data = reports.item_report(session, sku)
    if as_json:
        _echo_json(data)
        return
    if not data["known"]:
        click.echo(f"{sku}: skysync has not delivered anything for this SKU yet")
    else:
        state = "frozen" if data["frozen"] else "not frozen"
        if data["frozen"]:
            state += f" since {data['frozen_since']} (linked to the marketplace)"
        click.echo(f"{sku}: {'in SkyHub' if data['in_skyhub'] else 'not in SkyHub yet'}, {state}")
        if data["parent_sku"]:
            click.echo(f"  variation of {data['parent_sku']}")
        click.echo("  acknowledged by SkyHub:")
        for name, value in sorted(data["acknowledged"].items()):
            line = f"    {name} = {json.dumps(value, ensure_ascii=False)[:100]}"
            if name in data["erp_values"]:
                why = _ERP_VALUE_WHY.get(name, "")
                line += f"  (the ERP wrote {data['erp_values'][name]}{why})"
            click.echo(line)
        if data["unknown"]:
            names = ", ".join(data["unknown"])
            click.echo(f"  unknown (sent, no answer recorded; resent with the next value): {names}")
    click.echo("  recent rows:")
    for r in data["recent_rows"]:
        origin = f"[{r['origin']}] " if r["origin"] != "erp" else ""
        click.echo(f"    {r['id']:>8} {r['state']:<10} {r['kind']:<8} {origin}{r['reason'] or ''}")
    if data["sync_errors"]:
        click.echo("  SkyHub's own errors about it:")
        for e in data["sync_errors"]:
            click.echo("    " + _error_line(e))


# why SkyHub holds another value than the ERP wrote (skysync item show)
_ERP_VALUE_WHY = {
    "qty": "; the stock buffer kept back the rest",
    "promotional_price": "; capped at the price: never a promotion above the price",
}


@item.command("unfreeze")
@click.argument("sku")
@pass_ctx
def item_unfreeze(ctx: Context, sku: str) -> None:
    """Let attribute changes of a linked product through again (an operator's decision: the
    marketplace may still ignore them). Withheld rows can then be requeued."""
    from skysync.store.db import session_scope
    from skysync.store.items import unfreeze
    from skysync.store.models import utcnow

    with session_scope(ctx.settings.database_url) as session:
        if not unfreeze(session, sku, utcnow()):
            click.echo(f"skysync: unknown SKU {sku!r}", err=True)
            sys.exit(1)
    click.echo(
        f"{sku} unfrozen: attribute changes go out again. "
        f"Requeue its withheld rows with `skysync outbox requeue ID...`."
    )


@cli.group()
def orders() -> None:
    """Orders from SkyHub's queue, and the status steps sent back."""


@orders.command("pull")
@click.option("--max-orders", default=500, show_default=True, type=click.IntRange(1))
@pass_ctx
def orders_pull(ctx: Context, max_orders: int) -> None:
    """Drain SkyHub's order queue into the inbox once, in this process."""
    from skysync.relay.pull_orders import pull_orders

    relay_ = _relay_or_exit(ctx.settings)
    with closing(relay_.client):
        summary = pull_orders(relay_.url, relay_.client, max_orders=max_orders)
    _echo_json(summary.as_dict())
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
    from skysync.store.db import session_scope

    with session_scope(ctx.settings.database_url, readonly=True) as session:
        found = reports.orders(session, status=status, unconsumed=unconsumed, limit=limit)
    if as_json:
        _echo_json(found)
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
    from skysync.store.db import session_scope

    with session_scope(ctx.settings.database_url, readonly=True) as session:
        data = reports.order_report(session, code)
    if data is None:
        click.echo(f"skysync: unknown order {code!r}", err=True)
        sys.exit(1)
    if as_json:
        _echo_json(data)
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


@cli.group()
def errors() -> None:
    """SkyHub's own errors about products and orders it accepted (/sync_errors)."""


def _error_line(e: dict[str, Any]) -> str:
    state = "open"
    if e["ignored_at"]:
        state = "ignored"
    elif e["resolved_at"]:
        state = "resolved"
    what = "SKU" if e["entity_type"] == "products" else "order"
    return (
        f"{e['id']:>6} {state:<8} {what} {e['entity_id']}: "
        f"{e['error_category_code']}/{e['error_code']}: {e['message'] or ''} "
        f"(last {e['last_occurrence'] or '?'})"
    )


@errors.command("pull")
@pass_ctx
def errors_pull(ctx: Context) -> None:
    """Read SkyHub's errors now and store them (beat does it every
    SKYSYNC_SYNC_ERRORS_INTERVAL)."""
    from skysync.relay.sync_errors import pull_sync_errors

    relay_ = _relay_or_exit(ctx.settings)
    with closing(relay_.client):
        summary = pull_sync_errors(relay_)
    _echo_json(summary.as_dict())
    if summary.stopped:
        sys.exit(1)


@errors.command("list")
@click.option("--sku", help="Only this SKU's errors.")
@click.option("--order", "order_code", help="Only this order's errors.")
@click.option("--all", "include_closed", is_flag=True, help="Resolved and ignored ones too.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def errors_list(
    ctx: Context,
    sku: str | None,
    order_code: str | None,
    include_closed: bool,
    limit: int,
    as_json: bool,
) -> None:
    """SkyHub's errors, newest first: open ones (neither resolved nor ignored) unless --all."""
    from skysync.store import sync_errors
    from skysync.store.db import session_scope

    if sku and order_code:
        raise click.UsageError("give --sku or --order, not both")
    entity_type = "products" if sku else "orders" if order_code else None
    with session_scope(ctx.settings.database_url, readonly=True) as session:
        found = [
            sync_errors.as_dict(e)
            for e in sync_errors.listed(
                session,
                entity_id=sku or order_code,
                entity_type=entity_type,
                include_closed=include_closed,
                limit=limit,
            )
        ]
    if as_json:
        _echo_json(found)
        return
    if not found:
        click.echo("no errors")
    for e in found:
        click.echo(_error_line(e))


@errors.command("ignore")
@click.argument("ids", nargs=-1, type=int, required=True)
@pass_ctx
def errors_ignore(ctx: Context, ids: tuple[int, ...]) -> None:
    """Ask SkyHub to ignore these errors (after fixing their cause): it stops listing them,
    and they are kept here marked ignored."""
    from skysync.relay.sync_errors import ignore_sync_errors
    from skysync.skyhub.errors import SkyHubError

    relay_ = _relay_or_exit(ctx.settings)
    with closing(relay_.client):
        try:
            ignored, unknown = ignore_sync_errors(relay_, list(ids))
        except SkyHubError as exc:
            click.echo(f"skysync: SkyHub did not take it: {exc}", err=True)
            sys.exit(1)
    if ignored:
        click.echo(f"ignored {len(ignored)} error(s): {', '.join(map(str, ignored))}")
    if unknown:
        click.echo(f"skysync: unknown error id(s): {', '.join(map(str, unknown))}", err=True)
        sys.exit(1)


def erp_role_sql(role: str) -> str:
    """The least-privilege grants for the ERP's database role (PostgreSQL)."""
    return f"""\
-- skysync: least-privilege role for the ERP (PostgreSQL). Run as the owner of the tables.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
    CREATE ROLE "{role}" LOGIN;
  END IF;
END
$$;
REVOKE ALL ON skysync_outbox, skysync_item, skysync_order_inbox, skysync_order, skysync_run,
  skysync_request_stat, alembic_version FROM "{role}";
GRANT USAGE ON SCHEMA public TO "{role}";
-- write changes: only the ERP's columns; id, created_at and the rest come from defaults
GRANT INSERT (kind, ref, payload) ON skysync_outbox TO "{role}";
GRANT USAGE ON SEQUENCE skysync_outbox_id_seq TO "{role}";
-- read new orders and mark them consumed
GRANT SELECT ON skysync_order_inbox TO "{role}";
GRANT UPDATE (consumed_at) ON skysync_order_inbox TO "{role}";
-- then set its password: ALTER ROLE "{role}" PASSWORD '...';
"""


@cli.command("erp-role")
@click.argument("role", default="skysync_erp")
@click.option("--apply", is_flag=True, help="Run the grants against SKYSYNC_DATABASE_URL.")
@pass_ctx
def erp_role(ctx: Context, role: str, apply: bool) -> None:
    """Print (or --apply) the SQL that creates a least-privilege PostgreSQL role for the ERP."""
    if not ROLE_NAME.fullmatch(role):
        raise click.BadParameter("lower-case letters, digits and _ only", param_hint="ROLE")
    sql = erp_role_sql(role)
    if not apply:
        click.echo(sql, nl=False)
        return
    if ctx.settings.is_sqlite:
        click.echo("skysync: erp-role --apply needs PostgreSQL; SQLite has no roles", err=True)
        sys.exit(2)
    from skysync.store.db import get_engine

    with get_engine(ctx.settings.database_url).begin() as conn:
        conn.exec_driver_sql(sql)
    click.echo(f"role {role} can now INSERT outbox rows and read/consume the order inbox")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8710, show_default=True, type=int)
@click.option("--rate-limit", type=float, default=None, help="Replace SkyHub's 9/s limits.")
@click.option("--latency-ms", type=float, default=0.0, show_default=True)
@click.option("--fail-rate", type=float, default=0.0, show_default=True, help="Share of 5xx.")
@click.option("--timeout-rate", type=float, default=0.0, show_default=True)
@click.option("--lost-answer-rate", type=float, default=0.0, show_default=True)
@click.option("--visibility-timeout", type=float, default=300.0, show_default=True)
@click.option("--seed", type=int, default=None)
@pass_ctx
def sandbox(
    ctx: Context,
    host: str,
    port: int,
    rate_limit: float | None,
    latency_ms: float,
    fail_rate: float,
    timeout_rate: float,
    lost_answer_rate: float,
    visibility_timeout: float,
    seed: int | None,
) -> None:
    """Run the SkyHub emulator: a local SkyHub for tests and ERP teams."""
    from skysync.emulator import SandboxConfig, main_sandbox

    for name, value in (
        ("--fail-rate", fail_rate),
        ("--timeout-rate", timeout_rate),
        ("--lost-answer-rate", lost_answer_rate),
    ):
        if not 0.0 <= value <= 1.0:
            raise click.BadParameter(f"must be between 0 and 1, got {value}", param_hint=name)
    settings = ctx.settings
    # Configured credentials are enforced (the emulator stands in for that account);
    # with none configured, any non-empty ones pass.
    credentials: dict[str, str | None] = {"email": None, "api_key": None, "account_key": None}
    if settings.has_skyhub_credentials:
        assert settings.skyhub_api_key is not None and settings.skyhub_account_key is not None
        credentials = {
            "email": settings.skyhub_email,
            "api_key": settings.skyhub_api_key.get_secret_value(),
            "account_key": settings.skyhub_account_key.get_secret_value(),
        }
    _stop_on_sigterm()
    main_sandbox(
        SandboxConfig(
            **credentials,
            host=host,
            port=port,
            rate_limit=rate_limit,
            latency_ms=latency_ms,
            fail_rate=fail_rate,
            timeout_rate=timeout_rate,
            lost_answer_rate=lost_answer_rate,
            visibility_timeout=visibility_timeout,
            seed=seed,
        )
    )


def main() -> None:
    cli(prog_name="skysync")
