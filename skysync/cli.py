"""The ``skysync`` command line. Each command parses its input, builds Settings once, and calls
a service function; the work itself lives in the modules named by the commands.

Exit codes: 0 success; 1 the command ran and found a problem (invalid row, unhealthy status);
2 bad usage or bad configuration.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click

from skysync import __version__
from skysync.config import ConfigError, Settings, load_settings, mask_dsn

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
        return self._settings


pass_ctx = click.make_pass_decorator(Context, ensure=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="skysync")
def cli() -> None:
    """skysync: keeps a SkyHub account in step with the ERP's outbox table."""


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@cli.command()
@pass_ctx
def migrate(ctx: Context) -> None:
    """Create or upgrade the tables (alembic upgrade head)."""
    from skysync.db import current_revision
    from skysync.db import migrate as run_migrations

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
    from skysync.db import session_scope
    from skysync.outbox import enqueue as write_row
    from skysync.validation import ValidationFailed, parse_payload_text

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
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Outbox rows by state, the oldest due row, the last runs, orders waiting for the ERP."""
    from skysync.db import session_scope
    from skysync.status import collect_status

    with session_scope(ctx.settings.database_url) as session:
        report = collect_status(session)
    if as_json:
        _echo_json(report)
        return
    click.echo(f"database: {mask_dsn(ctx.settings.database_url)}")
    click.echo("outbox:")
    for state, n in report["outbox"].items():
        click.echo(f"  {state:<11} {n}")
    age = report["oldest_pending_age_s"]
    click.echo(f"oldest due pending row: {'none' if age is None else f'{age:.0f} s old'}")
    for key, label in (("last_relay", "last relay"), ("last_order_pull", "last order pull")):
        run = report[key]
        click.echo(f"{label}: {'never' if run is None else run['started_at']}")
        if run and run["error"]:
            click.echo(f"  stopped: {run['error']}")
    orders = report["orders"]
    click.echo(f"orders waiting for the ERP: {orders['unconsumed']} ({orders['flagged']} flagged)")


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
  alembic_version FROM "{role}";
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
    from skysync.db import get_engine

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
def sandbox(
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
    from skysync.skyhub.sandbox import SandboxConfig, main_sandbox

    for name, value in (
        ("--fail-rate", fail_rate),
        ("--timeout-rate", timeout_rate),
        ("--lost-answer-rate", lost_answer_rate),
    ):
        if not 0.0 <= value <= 1.0:
            raise click.BadParameter(f"must be between 0 and 1, got {value}", param_hint=name)
    main_sandbox(
        SandboxConfig(
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
