"""The console's actions (POST), each in two steps. The first POST (a button on a page) shows
what the action would do, counted now ("Requeue 37 rows: the dead, rejected or withheld rows
of account default, state dead, kind stock"), with a confirm button: a second form, with its
own CSRF token, carrying the same choice and the bound of what was counted. The second POST
(``confirm=yes``) runs it (skysync/console/actions.py), which records it in the run log, and
answers 303 back to the page it came from with ``?done=<run id>``: the page shows that run's
message.

Every POST is refused (403) for a read-only user when it changes anything, and for anyone
without the CSRF token of their own page. Reading a SKU from SkyHub changes nothing, so
viewers may (it still needs the token: a request to SkyHub is no GET for other sites to
trigger)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from skysync.console import actions, forms
from skysync.console.auth import User
from skysync.console.context import Console, console_of, render, user_of
from skysync.console.pages import doctor
from skysync.reporting import reconcile as reconcile_view


def _refused(request: Request, form: FormData, *, changes: bool) -> Response | None:
    """403 for a viewer's action (``changes``) and for a form without its user's token."""
    console, user = console_of(request), user_of(request)
    reason = None
    if changes and not user.can_act:
        reason = (
            f"{user.name} is a read-only user (SKYSYNC_CONSOLE_VIEWERS): viewers see "
            "everything and change nothing. An operator (SKYSYNC_CONSOLE_OPERATORS) can do it."
        )
    elif not console.csrf.valid(user, form.get("csrf")):
        reason = (
            "This form's security token is missing, expired or not yours (CSRF protection). "
            "Go back, reload the page and try again."
        )
    if reason is None:
        return None
    return render(request, "refused.html", reason=reason, status_code=403)


@dataclass(frozen=True)
class _Post:
    """An accepted POST: its form, who sent it, for which account, where to go back."""

    form: FormData
    console: Console
    user: User
    account: str
    back: str

    @property
    def confirmed(self) -> bool:
        return self.form.get("confirm") == "yes"


async def _accepted(request: Request, *, changes: bool, back: str) -> _Post | Response:
    """The POST's form if its user may send it (``changes``: operators only) with their own
    token; else the 403 page to answer with."""
    form = await request.form()
    refused = _refused(request, form, changes=changes)
    if refused is not None:
        return refused
    console = console_of(request)
    return _Post(form, console, user_of(request), console.account(form), forms.back_to(form, back))


def _done(back: str, done: actions.Done) -> Response:
    return RedirectResponse(forms.with_params(back, done=done.run_id), status_code=303)


def _confirm(
    request: Request,
    preview: actions.Preview,
    *,
    account: str,
    fields: list[tuple[str, Any]],
    back: str,
) -> Response:
    """The confirmation page: ``preview`` in words, and a form that sends ``fields`` again with
    ``confirm=yes``."""
    hidden = [(k, str(v)) for k, v in fields if v is not None and v != "" and k != "account"]
    hidden += [("account", account), ("back", back), ("confirm", "yes")]
    return render(
        request,
        "confirm.html",
        account=account,
        preview=preview,
        hidden=hidden,
        action_url=request.url.path,
        cancel=back,
    )


async def row_action(request: Request) -> Response:
    """Requeue (dead, rejected, withheld) or release (held) rows in trouble: one row
    (``row``), the checked ones (``scope=checked``, ``id``...) or the filter's."""
    action = actions.ROW_ACTIONS.get(request.path_params["action"])
    if action is None:
        raise HTTPException(404, f"no action {request.path_params['action']!r} on rows")
    post = await _accepted(request, changes=True, back="/trouble")
    if isinstance(post, Response):
        return post
    form, account = post.form, post.account
    chosen = forms.selection(form, account)
    one = forms.row_id(form, "row")
    fields: list[tuple[str, Any]] = list(forms.filter_params(chosen).items())
    if one is not None:
        chosen = replace(chosen, ids=(one,))
        fields.append(("row", one))
    elif form.get("scope") == "checked":
        ids = forms.row_ids(form, "id")
        if not ids:
            raise forms.BadInput("id: check at least one row, or act on every row that matches")
        chosen = replace(chosen, ids=tuple(ids))
        fields += [("scope", "checked"), *(("id", i) for i in ids)]
    db = post.console.db
    if not post.confirmed:
        preview = await run_in_threadpool(actions.preview_rows, db, action, chosen)
        fields.append(("upto", preview.upto))
        return _confirm(request, preview, account=account, fields=fields, back=post.back)
    bounded = chosen.up_to(forms.row_id(form, "upto"))
    done = await run_in_threadpool(
        actions.run_rows, db, action, bounded, post.user, clock=post.console.clock
    )
    return _done(post.back, done)


async def ignore_errors(request: Request) -> Response:
    """Ask SkyHub to ignore its errors: one (``error_row``), the checked ones
    (``scope=checked``, ``error``...) or every open one of the filter's ref and account."""
    post = await _accepted(request, changes=True, back="/trouble")
    if isinstance(post, Response):
        return post
    form, console, account = post.form, post.console, post.account
    if post.confirmed:
        done = await run_in_threadpool(
            actions.run_ignore,
            console.settings,
            console.db,
            console.accounts[account],
            forms.row_ids(form, "ids"),
            post.user,
            clock=console.clock,
        )
        return _done(post.back, done)
    one = forms.row_id(form, "error_row")
    ids: list[int] | None = None
    if one is not None:
        ids = [one]
    elif form.get("scope") == "checked":
        ids = forms.row_ids(form, "error")
        if not ids:
            raise forms.BadInput("error: check at least one error (or ignore every one shown)")
    ref = forms.text(form, "ref")
    preview = await run_in_threadpool(
        actions.preview_ignore, console.db, account, ids=ids, entity_id=ref
    )
    fields = [("ids", i) for i in preview.ids]
    return _confirm(request, preview, account=account, fields=fields, back=post.back)


async def repair(request: Request) -> Response:
    """Reconcile the account with repair (as `skysync reconcile --repair`)."""
    post = await _accepted(request, changes=True, back="/reconcile")
    if isinstance(post, Response):
        return post
    console, account = post.console, post.account
    if not post.confirmed:

        def preview() -> actions.Preview:
            with console.db.scope(readonly=True) as session:
                last = reconcile_view.last_run(session, account)
            return actions.preview_repair(last, account)

        shown = await run_in_threadpool(preview)
        return _confirm(request, shown, account=account, fields=[], back=post.back)
    done = await run_in_threadpool(
        actions.run_repair,
        console.settings,
        console.db,
        console.accounts[account],
        post.user,
        clock=console.clock,
    )
    return _done(post.back, done)


async def read_from_skyhub(request: Request) -> Response:
    """The SKU doctor's "read from SkyHub now": one GET through the shared limiter, shown
    beside the ERP's values. Changes nothing: viewers may."""
    from skysync.bootstrap import NoSkyHubTarget, build_relay
    from skysync.relay.reconcile import read_now

    post = await _accepted(request, changes=False, back="/sku")
    if isinstance(post, Response):
        return post
    console, account = post.console, post.account
    sku = forms.text(post.form, "sku")
    if sku is None:
        raise forms.BadInput("sku: which SKU to read from SkyHub")

    def read() -> dict[str, Any]:
        try:
            relay = build_relay(console.settings, console.accounts[account])
        except NoSkyHubTarget as exc:
            return {"sku": sku, "error": str(exc), "fields": [], "in_skyhub": False}
        try:
            return read_now(relay.deps, sku)
        finally:
            relay.client.close()

    lookup = await run_in_threadpool(read)
    return await run_in_threadpool(doctor, request, account, sku, lookup)
