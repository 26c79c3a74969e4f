"""The console's application: its routes, its authentication around every one of them (the
static files too), and what an error looks like. ``create_app(settings)`` builds it; `skysync
console` serves it with uvicorn, the tests with Starlette's TestClient or a real browser.

    GET  /                      overview                      pages.overview_page
    GET  /trouble               rows in trouble               pages.trouble_page
    POST /trouble/requeue       requeue (confirm, then run)   posts.row_action
    POST /trouble/release       release held rows             posts.row_action
    POST /errors/ignore         ignore SkyHub's errors        posts.ignore_errors
    GET  /sku                   SKU doctor                    pages.sku_page
    POST /sku/read              read the SKU from SkyHub now  posts.read_from_skyhub
    GET  /orders                the order flow                pages.orders_page
    GET  /orders/{code}         one order's history           pages.order_page
    GET  /reconcile             the last reconciliation       pages.reconcile_page
    POST /reconcile/repair      repair its drift              posts.repair
    GET  /static/console.css    the one stylesheet
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from skysync.accounts import AccountRegistry
from skysync.config import Settings
from skysync.console import pages, posts
from skysync.console.auth import BasicAuth, Csrf, Users
from skysync.console.context import HERE, Console, make_templates, render
from skysync.console.forms import BadInput
from skysync.store.db import Database, database_problem
from skysync.store.models import utcnow

log = logging.getLogger("skysync.console")


class NoUsers(ValueError):
    """Neither SKYSYNC_CONSOLE_VIEWERS nor SKYSYNC_CONSOLE_OPERATORS is set."""


def create_app(
    settings: Settings,
    *,
    registry: AccountRegistry | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Starlette:
    """The console for ``settings``' database and accounts (``registry``: the accounts, re-read
    when their file changes; built from ``settings`` when not given). NoUsers when no user is
    configured: a console nobody may open is a mistake, not a locked door."""
    users = Users.from_settings(settings)
    if not users:
        raise NoUsers(
            "no console user is configured: set SKYSYNC_CONSOLE_OPERATORS (users who may act) "
            'and/or SKYSYNC_CONSOLE_VIEWERS (read-only), each "user:password,..."'
        )
    console = Console(
        settings=settings,
        db=Database.for_url(settings.database_url),
        registry=registry or AccountRegistry(settings),
        users=users,
        csrf=Csrf(users.csrf_key()),
        templates=make_templates(),
        clock=clock,
    )
    app = Starlette(
        routes=[
            Route("/", pages.overview_page),
            Route("/trouble", pages.trouble_page),
            Route("/trouble/{action:str}", posts.row_action, methods=["POST"]),
            Route("/errors/ignore", posts.ignore_errors, methods=["POST"]),
            Route("/sku", pages.sku_page),
            Route("/sku/read", posts.read_from_skyhub, methods=["POST"]),
            Route("/orders", pages.orders_page),
            Route("/orders/{code:path}", pages.order_page),
            Route("/reconcile", pages.reconcile_page),
            Route("/reconcile/repair", posts.repair, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(BasicAuth, users=users)],
        exception_handlers={
            BadInput: _bad_input,
            HTTPException: _http_error,
            sa.exc.DBAPIError: _database_error,
        },
    )
    app.state.console = console
    return app


def _bad_input(request: Request, exc: Exception) -> Response:
    return render(request, "refused.html", reason=str(exc), title="Bad request", status_code=400)


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "Refused")
    return render(
        request, "refused.html", reason=exc.detail, title=title, status_code=exc.status_code
    )


def _database_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BaseException)
    console = request.app.state.console
    problem = database_problem(exc, console.settings.database_url)
    log.error("console: %s", problem or f"database error: {type(exc).__name__}")
    return render(
        request,
        "refused.html",
        reason=problem or "the database answered with an error; the log has it",
        title="Database unavailable",
        status_code=503,
    )
