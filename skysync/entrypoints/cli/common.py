"""What the command modules share: the Settings of one invocation, its SkyHub accounts and the
``--account`` option that picks one, the relay built for an account, JSON output, the progress
display of long runs, and stopping on SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from skysync.config import ConfigError, Settings, load_settings
from skysync.domain.kinds import DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from skysync.accounts import Accounts
    from skysync.relay import Relay
    from skysync.store.db import Database

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    """Lazily built Settings, and the database they name, shared by the commands of one
    invocation."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._accounts: Accounts | None = None

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

    @property
    def db(self) -> Database:
        from skysync.bootstrap import build_database

        return build_database(self.settings)

    @property
    def accounts(self) -> Accounts:
        """The configured SkyHub accounts (default first); exit 2 when the accounts file does
        not load."""
        if self._accounts is None:
            from skysync.accounts import load_accounts

            try:
                self._accounts = load_accounts(self.settings)
            except ConfigError as exc:
                click.echo(f"skysync: {exc}", err=True)
                sys.exit(2)
        return self._accounts

    @property
    def several_accounts(self) -> bool:
        """More than one account is configured: lists show each line's account."""
        return len(self.accounts) > 1

    def db_of(self, account: str) -> Database:
        """The database as ``account``'s rows (its sessions' db.account_of)."""
        return self.db.for_account(account)

    def relay_of(self, account: str) -> Relay:
        """A relay for ``account`` in this process, built as the workers build it (exit 2 when
        there is no SkyHub to send to)."""
        from skysync.bootstrap import NoSkyHubTarget, build_relay

        try:
            return build_relay(self.settings, self.accounts[account])
        except NoSkyHubTarget as exc:
            click.echo(f"skysync: {exc}", err=True)
            sys.exit(2)


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _configured_account(click_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
    """``--account``'s check: a configured account's name (or none given)."""
    if value is None or value == DEFAULT_ACCOUNT:  # the default account always exists
        return value
    accounts = click_ctx.ensure_object(Context).accounts
    if value not in accounts:
        raise click.BadParameter(
            f'no SkyHub account "{value}" is configured '
            f"(configured: {', '.join(accounts.names())}; see `skysync accounts list`)"
        )
    return value


def account_option(*, every: bool) -> Callable[[F], F]:
    """``--account NAME``, checked against the configured accounts (exit 2 naming the unknown
    one and the configured ones). ``every``: a list or count, of every account when not given
    (None); else a command about one SKU, order or account, of ``default`` when not given."""
    if every:
        return click.option(
            "--account",
            metavar="NAME",
            default=None,
            callback=_configured_account,
            help="Only this SkyHub account's [default: every account].",
        )
    return click.option(
        "--account",
        metavar="NAME",
        default=DEFAULT_ACCOUNT,
        show_default=True,
        callback=_configured_account,
        help="The SkyHub account (a name from the accounts file).",
    )


progress_every_option = click.option(
    "--progress-every",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds between progress lines in the log when not on a terminal.",
)


class ProgressDisplay:
    """On a terminal, one progress line rewritten in place after each batch; elsewhere (a
    cron job, a container log) a log line every ``every`` seconds."""

    def __init__(self, *, terminal: bool, every: float, label: str = "") -> None:
        self.terminal, self.every, self.label = terminal, every, label
        self.last = float("-inf")
        self.shown = False

    def __call__(self, progress: Any) -> None:
        if self.terminal:
            click.echo("\r" + self.label + progress.line() + "\x1b[K", err=True, nl=False)
            self.shown = True
        elif time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            logging.getLogger("skysync").info(self.label + progress.line())

    def close(self) -> None:
        if self.shown:
            click.echo("", err=True)


def stop_on_sigterm() -> None:
    """`docker stop` (and systemd, and Kubernetes) send SIGTERM: stop as on Ctrl-C, closing the
    server cleanly, and exit 0 rather than being killed by the signal (exit 143)."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
