"""Running and looking after skysync: the daemon and its parts (run, trigger, flower, metrics,
console, sandbox; relay and drain are in batches.py), its health (status, check-config) and its
database (migrate, erp-role)."""

from __future__ import annotations

import contextlib
import re
import sys
import textwrap
from typing import Any

import click

from skysync.config import mask_dsn
from skysync.entrypoints.cli.common import (
    Context,
    account_option,
    echo_json,
    pass_ctx,
    stop_on_sigterm,
)

ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
ALEMBIC_VERSION_TABLE = "alembic_version"  # Alembic's default, which migrations/env.py keeps


@click.command()
@pass_ctx
def migrate(ctx: Context) -> None:
    """Create or upgrade the tables (alembic upgrade head)."""
    from skysync.store.db import current_revision
    from skysync.store.db import migrate as run_migrations

    url = ctx.settings.database_url
    run_migrations(url)
    click.echo(f"database {mask_dsn(url)} at revision {current_revision(url)}")


@click.command("check-config")
@pass_ctx
def check_config(ctx: Context) -> None:
    """Print the effective settings (secrets masked) and the SkyHub accounts (names, e-mails,
    overrides; never a key), and exit 2 if any is invalid, the accounts file included."""
    from skysync.accounts import load_accounts
    from skysync.config import ConfigError

    settings = ctx.settings
    try:
        accounts = load_accounts(settings)
    except ConfigError as exc:  # (load_settings checked it: the file changed since)
        click.echo(f"skysync: {exc}", err=True)
        sys.exit(2)
    echo_json({**settings.masked(), "accounts": accounts.masked(settings)})


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--max-pending-age",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds a due row may wait before status exits 1 [default: 2 x SKYSYNC_SYNC_INTERVAL].",
)
@account_option(every=True)
@pass_ctx
def status(ctx: Context, as_json: bool, max_pending_age: float | None, account: str | None) -> None:
    """Outbox rows by state, the oldest due row, the last runs, orders waiting for the ERP and
    those late, and each SkyHub account's rows, last batch, late orders and credentials: of
    every account, or of --account only.

    Exits 1 when something needs an operator: the oldest due row is older than
    --max-pending-age, SkyHub's rate limit (a long Retry-After) parked rows past the next
    batch, SkyHub refused an account's credentials in its last batch or pull (the problem
    names the account), rows name an account that is not configured, no batch ran for two
    intervals (beat is down), or orders are late (to ship, to invoice, or waiting for the ERP
    to consume them: `skysync orders late` lists them). Cron or a monitor can alert on that."""
    from skysync.reporting.status import collect_status, health_problems, status_lines

    settings = ctx.settings
    names = [account] if account else ctx.accounts.names()
    with ctx.db.scope(readonly=True) as session:
        report = collect_status(
            session, account=account, accounts=names, late_rules=settings.late_rules
        )
    problems = health_problems(
        report,
        sync_interval=settings.sync_interval,
        order_poll_interval=settings.order_poll_interval,
        max_pending_age=max_pending_age
        if max_pending_age is not None
        else 2 * settings.sync_interval,
        late_rules=settings.late_rules,
    )
    report["healthy"] = not problems
    report["problems"] = problems
    if as_json:
        echo_json(report)
    else:
        for line in status_lines(report, database=mask_dsn(settings.database_url)):
            click.echo(line)
    if problems:
        sys.exit(1)


@click.command()
@pass_ctx
def trigger(ctx: Context) -> None:
    """Ask the workers for a relay batch now (instead of waiting for beat)."""
    ctx.settings  # noqa: B018 - validate the configuration before touching the broker
    from skysync.tasks import relay_batch

    result = relay_batch.delay()
    click.echo(f"relay batch queued as task {result.id}")


@click.command()
@click.option("--demo", is_flag=True, help="Seed demo rows into an empty outbox.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option("--emulator-port", default=8710, show_default=True, type=int)
@pass_ctx
def run(ctx: Context, demo: bool, concurrency: int, emulator_port: int) -> None:
    """The daemon in one process: a Celery worker with embedded beat (and, without SkyHub
    credentials, the built-in SkyHub emulator)."""
    from skysync.entrypoints.embedded import run_daemon

    run_daemon(ctx.settings, demo=demo, concurrency=concurrency, emulator_port=emulator_port)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
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


@click.command()
@click.option("--port", default=9108, show_default=True, type=int)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; 0.0.0.0 for every one (no authentication: mind who reaches it).",
)
@pass_ctx
def metrics(ctx: Context, port: int, address: str) -> None:
    """Serve Prometheus metrics about the outbox, SkyHub requests and orders (late ones
    included, by SKYSYNC_LATE_*) at /metrics, each with an ``account`` label: one value per
    configured account (the accounts file is read again when it changes), rows of any other
    account under "(unconfigured)"."""
    from skysync.accounts import AccountRegistry
    from skysync.reporting.metrics import serve

    settings = ctx.settings
    ctx.accounts  # noqa: B018 - refuse to start (exit 2) on an accounts file that does not load
    registry = AccountRegistry(settings)  # re-read when the file changes: labels follow it
    click.echo(f"serving metrics on http://{address}:{port}/metrics", err=True)
    stop_on_sigterm()
    serve(
        ctx.db,
        port,
        address,
        accounts=lambda: registry.current().names(),
        late_rules=settings.late_rules,
    )


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; 0.0.0.0 for every one (compose does, inside its container).",
)
@click.option("--port", default=8720, show_default=True, type=click.IntRange(0, 65535))
@pass_ctx
def console(ctx: Context, host: str, port: int) -> None:
    """The operator's console in a browser: what is stuck and why, what SkyHub holds, and the
    fix a click away (docs/console.md). Every page needs a user of SKYSYNC_CONSOLE_VIEWERS
    (read-only) or SKYSYNC_CONSOLE_OPERATORS (who may act); it refuses to start (exit 2)
    with neither set."""
    from skysync.accounts import AccountRegistry
    from skysync.console.app import NoUsers, create_app

    settings = ctx.settings
    ctx.accounts  # noqa: B018 - refuse to start (exit 2) on an accounts file that does not load
    try:
        app = create_app(settings, registry=AccountRegistry(settings))
    except NoUsers as exc:
        click.echo(f"skysync: refusing to start the console: {exc}", err=True)
        sys.exit(2)
    import uvicorn

    click.echo(f"serving the console on http://{host}:{port}/", err=True)
    # uvicorn shuts down gracefully on SIGTERM (`docker stop`) or Ctrl-C, then raises the signal
    # again for the handler it found: ours turns it into KeyboardInterrupt, so the process
    # exits 0 instead of dying by the signal. log_config=None: uvicorn's lines go through
    # skysync's logging (its secret masking, JSON off a terminal).
    stop_on_sigterm()
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(app, host=host, port=port, log_config=None, server_header=False)


def erp_role_sql(role: str) -> str:
    """The least-privilege grants for the ERP's database role (PostgreSQL). Everything is revoked
    on every table skysync makes (read from its metadata, so a new table is never left out) and
    on Alembic's, then the outbox and the inbox grant what the ERP contract needs."""
    from skysync.store.models import Base

    tables = [*Base.metadata.tables, ALEMBIC_VERSION_TABLE]
    revoke = textwrap.fill(
        ", ".join(tables) + f' FROM "{role}";',
        width=100,
        initial_indent="REVOKE ALL ON ",
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return f"""\
-- skysync: least-privilege role for the ERP (PostgreSQL). Run as the owner of the tables.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
    CREATE ROLE "{role}" LOGIN;
  END IF;
END
$$;
{revoke}
GRANT USAGE ON SCHEMA public TO "{role}";
-- write changes: only the ERP's columns; id, created_at and the rest come from defaults
GRANT INSERT (account, kind, ref, payload) ON skysync_outbox TO "{role}";
GRANT USAGE ON SEQUENCE skysync_outbox_id_seq TO "{role}";
-- read new orders and mark them consumed
GRANT SELECT ON skysync_order_inbox TO "{role}";
GRANT UPDATE (consumed_at) ON skysync_order_inbox TO "{role}";
-- then set its password: ALTER ROLE "{role}" PASSWORD '...';
"""


@click.command("erp-role")
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
    with ctx.db.engine.begin() as conn:
        conn.exec_driver_sql(sql)
    click.echo(f"role {role} can now INSERT outbox rows and read/consume the order inbox")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8710, show_default=True, type=int)
@click.option("--rate-limit", type=float, default=None, help="Replace SkyHub's 9/s limits.")
@click.option("--latency-ms", type=float, default=0.0, show_default=True)
@click.option("--fail-rate", type=float, default=0.0, show_default=True, help="Share of 5xx.")
@click.option("--timeout-rate", type=float, default=0.0, show_default=True)
@click.option("--lost-answer-rate", type=float, default=0.0, show_default=True)
@click.option("--visibility-timeout", type=float, default=300.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option(
    "--account",
    "accounts",
    multiple=True,
    metavar="NAME=EMAIL:API_KEY",
    help="Serve this SkyHub account too (its own catalogue, orders, limits); repeatable.",
)
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
    accounts: tuple[str, ...],
) -> None:
    """Run the SkyHub emulator: a local SkyHub for tests and ERP teams."""
    from skysync.emulator import SandboxAccount, SandboxConfig, main_sandbox
    from skysync.emulator.config import check_accounts

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
    credentials: dict[str, Any] = {"email": None, "api_key": None, "account_key": None}
    if settings.has_skyhub_credentials:
        assert settings.skyhub_api_key is not None and settings.skyhub_account_key is not None
        credentials = {
            "email": settings.skyhub_email,
            "api_key": settings.skyhub_api_key.get_secret_value(),
            "account_key": settings.skyhub_account_key.get_secret_value(),
        }
    try:  # the messages never repeat an api_key
        registered = [SandboxAccount.parse(spec) for spec in accounts]
        check_accounts(registered, credentials["email"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--account") from None
    stop_on_sigterm()
    main_sandbox(
        SandboxConfig(
            **credentials,
            accounts=registered,
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


COMMANDS = (
    migrate,
    check_config,
    status,
    trigger,
    run,
    flower,
    metrics,
    console,
    erp_role,
    sandbox,
)
