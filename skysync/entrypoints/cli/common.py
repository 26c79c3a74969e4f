"""What the command modules share: the Settings of one invocation, the relay built from them,
JSON output, the progress display of long runs, and stopping on SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from skysync.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from skysync.store.db import Database


class Context:
    """Lazily built Settings, and the database they name, shared by the commands of one
    invocation."""

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

    @property
    def db(self) -> Database:
        from skysync.bootstrap import build_database

        return build_database(self.settings)


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def relay_or_exit(settings: Settings) -> Any:
    from skysync.bootstrap import NoSkyHubTarget, build_relay

    try:
        return build_relay(settings)
    except NoSkyHubTarget as exc:
        click.echo(f"skysync: {exc}", err=True)
        sys.exit(2)


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


def stop_on_sigterm() -> None:
    """`docker stop` (and systemd, and Kubernetes) send SIGTERM: stop as on Ctrl-C, closing the
    server cleanly, and exit 0 rather than being killed by the signal (exit 143)."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
