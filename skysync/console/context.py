"""What every page and action of the console shares: the :class:`Console` (the settings, the
database, the accounts, the users and the CSRF signer, built once by ``create_app``), and
``render``, which fills a template with what every page shows (the user, the account picker,
the CSRF token, the flash of the last action) and the filters the templates use."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from skysync.accounts import AccountRegistry, Accounts
from skysync.config import Settings
from skysync.console import forms
from skysync.console.auth import Csrf, User, Users
from skysync.domain.kinds import DEFAULT_ACCOUNT
from skysync.store import runs
from skysync.store.db import Database
from skysync.store.models import utcnow

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 50

NAV = (
    ("/", "overview", "Overview"),
    ("/trouble", "trouble", "Rows in trouble"),
    ("/sku", "sku", "SKU doctor"),
    ("/orders", "orders", "Orders"),
    ("/reconcile", "reconcile", "Reconciliation"),
)


@dataclass
class Console:
    """The console's collaborators, built once per app (``create_app``)."""

    settings: Settings
    db: Database
    registry: AccountRegistry
    users: Users
    csrf: Csrf
    templates: Jinja2Templates
    clock: Callable[[], datetime] = utcnow

    @property
    def accounts(self) -> Accounts:
        """The configured SkyHub accounts now (the accounts file is re-read when it changes)."""
        return self.registry.current()

    def account(self, params: forms.Params) -> str:
        """The account a request names (``account``), or the default one."""
        return forms.account(params, self.accounts.names(), DEFAULT_ACCOUNT)


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def user_of(request: Request) -> User:
    user: User = request.state.user
    return user


def render(
    request: Request,
    template: str,
    *,
    account: str | None = None,
    status_code: int = 200,
    **context: Any,
) -> Response:
    """``template`` with ``context`` and what every page shows."""
    console = console_of(request)
    user = user_of(request)
    names = console.accounts.names()
    page = {
        "user": user,
        "csrf": console.csrf.token(user),
        "account": account or DEFAULT_ACCOUNT,
        "accounts": names,
        "several_accounts": len(names) > 1,
        "nav": NAV,
        "flash": _flash(request, console),
        "back": _here(request),
        "url": forms.with_params,
        "now": console.clock(),
    }
    return console.templates.TemplateResponse(
        request, template, {**page, **context}, status_code=status_code
    )


def _here(request: Request) -> str:
    """This page's path and query: where an action started here comes back to."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _flash(request: Request, console: Console) -> dict[str, Any] | None:
    """The action a redirect came back from (``?done=<run id>``), read from the run log: only a
    recorded action shows, so a crafted link cannot put words on the page."""
    try:
        run_id = forms.row_id(request.query_params, "done")
    except forms.BadInput:
        return None
    if run_id is None:
        return None
    with console.db.scope(readonly=True) as session:
        run = runs.by_id(session, run_id, kind=runs.CONSOLE_ACTION)
        if run is None:
            return None
        summary = dict(run.summary or {})
        return {
            "message": summary.get("message", ""),
            "user": summary.get("user"),
            "ok": run.error is None,
            "at": run.started_at,
        }


# -- template filters ------------------------------------------------------------------------
def _moment(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def when(value: object) -> str:
    """A time as the pages show it: ``2026-12-07 14:03:11 UTC``."""
    moment = _moment(value)
    return "never" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def ago(value: object, now: datetime | None = None) -> str:
    """How long ago: ``42 s ago``, ``5 min ago``, ``3 h ago``, ``2 days ago``."""
    moment = _moment(value)
    if moment is None:
        return ""
    seconds = ((now or utcnow()) - moment).total_seconds()
    return f"{duration(seconds)} ago" if seconds >= 0 else f"in {duration(-seconds)}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def number(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def as_json(value: object) -> str:
    """A value as JSON, shortened to 200 characters (what a table cell can hold)."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:199] + "…"


def path_segment(value: object) -> str:
    """An order code or SKU as one segment of a path (``/orders/<code>``)."""
    return quote(str(value), safe="")


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters.update(
        when=when, ago=ago, num=number, json=as_json, duration=duration, q=path_segment
    )
    env.globals.update(page_size=PAGE_SIZE)
    return templates
