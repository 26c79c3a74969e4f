"""An operator's actions, each in two steps: a :class:`Preview` (what it would touch, counted
now, in words) that the confirmation page shows, then the action itself, which runs what the
command line runs and is recorded in the run log (``skysync_run``, kind ``console_action``)
with who did it, on which rows and with what result.

=============  =========================================  ====================================
action         what it runs                               the command that does the same
=============  =========================================  ====================================
requeue        store/settle.py ``requeue``                ``skysync outbox requeue``
release        store/settle.py ``release_held``           ``skysync outbox release``
ignore         relay/sync_errors.py ``ignore_sync_errors``  ``skysync errors ignore``
repair         relay/reconcile.py ``reconcile(repair=)``  ``skysync reconcile --repair``
=============  =========================================  ====================================

Rows chosen by a filter are counted at the preview, and the action reaches no row newer than
the newest counted then (``RowSelection.upto``): a row that went into trouble while the
operator read the confirmation waits for the next look. ``ignore`` and ``repair`` talk to
SkyHub with the account's credentials through the shared rate limiter, as the commands do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from skysync.accounts import Account
from skysync.config import Settings
from skysync.console.auth import User
from skysync.domain.kinds import RowState
from skysync.domain.selection import RELEASABLE, REQUEUEABLE, RowSelection
from skysync.store import outbox_reads, runs, settle
from skysync.store import sync_errors as error_store
from skysync.store.db import Database
from skysync.store.models import utcnow

log = logging.getLogger("skysync.console")


@dataclass(frozen=True)
class Preview:
    """What an action would do, for the operator to confirm: ``count`` things, ``what`` names
    them, ``effect`` says what happens to them. ``upto`` (rows by filter) bounds the action to
    the rows counted; ``ids`` (errors) are exactly the ones it sends."""

    action: str
    title: str
    count: int
    what: str
    effect: str
    upto: int | None = None
    ids: tuple[int, ...] = ()
    sample: tuple[int, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Done:
    """An action's result: the run log entry that records it, and the message shown."""

    run_id: int
    message: str
    ok: bool


@dataclass(frozen=True)
class RowAction:
    """An action on outbox rows in trouble: the states it takes, and what it does."""

    name: str
    verb: str
    allowed: tuple[RowState, ...]
    effect: str


REQUEUE = RowAction(
    "requeue",
    "requeue",
    REQUEUEABLE,
    "back to pending with their attempts reset; the next batch sends them "
    "(as `skysync outbox requeue`)",
)
RELEASE = RowAction(
    "release",
    "release",
    RELEASABLE,
    "back to pending, due now; the price drop guard lets each through once "
    "(as `skysync outbox release`)",
)
ROW_ACTIONS = {action.name: action for action in (REQUEUE, RELEASE)}


def _rows(n: int, thing: str = "row") -> str:
    return f"{n:,} {thing}{'' if n == 1 else 's'}"


def preview_rows(db: Database, action: RowAction, chosen: RowSelection) -> Preview:
    """How many of ``chosen``'s rows ``action`` would take (only those in its states)."""
    applicable = chosen.for_action(action.allowed)
    count, upto = 0, None
    sample: tuple[int, ...] = ()
    if applicable is not None:
        with db.scope(readonly=True) as session:
            count = outbox_reads.count_selected(session, applicable)
            upto = outbox_reads.newest_selected(session, applicable)
            if chosen.ids is not None:
                sample = tuple(outbox_reads.selected_ids(session, applicable)[:20])
    states = " or ".join(action.allowed)
    return Preview(
        action=action.name,
        title=f"{action.verb.capitalize()} {_rows(count)}",
        count=count,
        what=f"the {states} rows of: {chosen.describe()}",
        effect=action.effect,
        upto=upto,
        sample=sample,
    )


def run_rows(
    db: Database,
    action: RowAction,
    chosen: RowSelection,
    user: User,
    *,
    clock: Callable[[], datetime] = utcnow,
) -> Done:
    """``action`` on ``chosen``'s rows in its states (none newer than ``chosen.upto``)."""
    started = clock()
    applicable = chosen.for_action(action.allowed)
    touched, refused = 0, {}
    with db.for_account(chosen.account).scope() as session:
        if applicable is not None and action is REQUEUE:
            touched = settle.requeue(session, selection=applicable, now=started)
        elif applicable is not None:
            ids = outbox_reads.selected_ids(session, applicable)
            refused = settle.release_held(session, ids, started)
            touched = len(ids) - len(refused)
        past = {"requeue": "requeued", "release": "released"}[action.name]
        message = f"{past} {_rows(touched)} ({chosen.describe()})"
        if action is RELEASE and touched:
            message += ": they go out with the next batch"
        run_id = _record(
            session,
            user,
            action.name,
            touched,
            started=started,
            finished=clock(),
            message=message,
            details={"selection": chosen.as_dict(), "not_released": len(refused)},
        )
    log.info("console: %s by %s: %s", action.name, user.name, message)
    return Done(run_id, message, ok=True)


# -- SkyHub's own errors -----------------------------------------------------------------------
def preview_ignore(
    db: Database, account: str, *, ids: list[int] | None, entity_id: str | None
) -> Preview:
    """The open errors of ``account`` an ignore would send: those of ``ids`` that are open
    (others, another account's, are left out), or every open one of ``entity_id`` (a SKU or
    an order) or of the account."""
    with db.scope(readonly=True) as session:
        open_ = error_store.open_ids(session, account=account, entity_id=entity_id)
    chosen = open_ if ids is None else [i for i in ids if i in set(open_)]
    what = f"account {account}"
    if ids is not None:
        what += f", error{'s' if len(ids) != 1 else ''} {', '.join(map(str, ids[:20]))}"
    elif entity_id:
        what += f", SKU or order {entity_id}"
    return Preview(
        action="ignore",
        title=f"Ignore {_rows(len(chosen), 'SkyHub error')}",
        count=len(chosen),
        what=f"the open SkyHub errors of {what}",
        effect=(
            "SkyHub is asked to stop listing them (PATCH /sync_errors, through the shared rate "
            "limiter) and they are kept here marked ignored (as `skysync errors ignore`). "
            "Fix their cause first: SkyHub lists them again if it finds it again"
        ),
        ids=tuple(chosen),
        sample=tuple(chosen[:20]),
    )


def run_ignore(
    settings: Settings,
    db: Database,
    account: Account,
    ids: list[int],
    user: User,
    *,
    clock: Callable[[], datetime] = utcnow,
) -> Done:
    """Ask SkyHub to ignore these errors of ``account`` (only its open ones are sent)."""
    from skysync.bootstrap import NoSkyHubTarget, build_relay
    from skysync.relay.sync_errors import ignore_sync_errors
    from skysync.skyhub.errors import SkyHubError

    started = clock()
    with db.scope(readonly=True) as session:
        open_ = set(error_store.open_ids(session, account=account.name))
    chosen = [i for i in ids if i in open_]
    ignored: list[int] = []
    error = None
    if chosen:
        try:
            relay = build_relay(settings, account)
            with closing(relay.client):
                ignored, _unknown = ignore_sync_errors(relay.deps, chosen)
        except (SkyHubError, NoSkyHubTarget) as exc:
            error = f"SkyHub did not take it: {exc}"
    message = f"asked SkyHub to ignore {_rows(len(ignored), 'error')}"
    if ignored:
        message += f": {', '.join(map(str, ignored[:20]))}"
    if error:
        message = error
    with db.for_account(account.name).scope() as session:
        run_id = _record(
            session,
            user,
            "ignore",
            len(ignored),
            started=started,
            finished=clock(),
            message=message,
            details={"ids": chosen},
            error=error,
        )
    log.info("console: ignore by %s: %s", user.name, message)
    return Done(run_id, message, ok=error is None)


# -- reconciliation ----------------------------------------------------------------------------
def preview_repair(last: dict[str, Any] | None, account: str) -> Preview:
    """What a repair would start from: the last run's drift and missing SKUs (``last``: a
    reporting.reconcile.last_run())."""
    drift = (last or {}).get("drift", 0)
    missing = (last or {}).get("missing", 0)
    pages = (last or {}).get("pages", 0)
    effect = (
        "SkyHub's catalogue is read again (GET /products, through the shared rate limiter"
        + (f": {pages} pages last time" if pages else "")
        + ") and a correction row (origin reconcile) is enqueued for each product whose drift "
        "or absence is still there; frozen attributes, orphans and SKUs with a newer row on "
        "its way are never repaired (as `skysync reconcile --repair`). The page waits until "
        "the run ends"
    )
    return Preview(
        action="repair",
        title=f"Repair the drift of account {account}",
        count=drift + missing,
        what=(
            f"the last reconciliation of account {account} found {_rows(drift, 'drifted field')}"
            f" and {_rows(missing, 'missing SKU')}"
        ),
        effect=effect,
    )


def run_repair(
    settings: Settings,
    db: Database,
    account: Account,
    user: User,
    *,
    clock: Callable[[], datetime] = utcnow,
) -> Done:
    """A reconciliation with repair of ``account``, as `skysync reconcile --repair` runs it."""
    from skysync.bootstrap import NoSkyHubTarget, build_relay
    from skysync.relay.reconcile import reconcile

    started = clock()
    error = None
    repaired = 0
    details: dict[str, Any] = {}
    try:
        relay = build_relay(settings, account)
        with closing(relay.client):
            report = reconcile(relay.deps, repair=True)
        repaired = len(report.repaired)
        error = report.error
        details = {
            "drift": len(report.drift),
            "missing": len(report.missing),
            "repaired": report.repaired[:50],
            "not_repaired": report.not_repaired[:50],
        }
        message = (
            f"reconciled {report.skus_compared:,} SKUs: {len(report.drift)} drifted field(s), "
            f"{len(report.missing)} missing; enqueued {_rows(repaired, 'correction row')}"
        )
        if report.not_repaired:
            message += f", {len(report.not_repaired)} not repaired (a newer row is on its way)"
        if error:
            message += f"; the run {error}"
    except NoSkyHubTarget as exc:
        error = message = str(exc)
    with db.for_account(account.name).scope() as session:
        run_id = _record(
            session,
            user,
            "repair",
            repaired,
            started=started,
            finished=clock(),
            message=message,
            details=details,
            error=error,
        )
    log.info("console: repair by %s: %s", user.name, message)
    return Done(run_id, message, ok=error is None)


def _record(
    session: Any,
    user: User,
    action: str,
    count: int,
    *,
    started: datetime,
    finished: datetime,
    message: str,
    details: dict[str, Any],
    error: str | None = None,
) -> int:
    """The run log's line: who (and as what), which action, how many, on what, and how it
    went; of the session's account."""
    summary = {
        "user": user.name,
        "role": str(user.role),
        "action": action,
        "count": count,
        "message": message,
        **details,
    }
    return runs.add(
        session,
        runs.CONSOLE_ACTION,
        started_at=started,
        finished_at=finished,
        summary=summary,
        error=error,
    )
