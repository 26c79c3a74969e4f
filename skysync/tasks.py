"""Celery tasks: thin. Ids, a claim token and an account name in, a service call, nothing else.
Never a payload, never a secret in the arguments (they show in Flower and in the broker).

Each SkyHub account has its own relay (bootstrap.get_relay). The tasks beat starts take no
account: each runs for every configured account, as one task per account (a batch, an order
pull, a reconciliation, a pull of SkyHub's errors: each account's is its own, and its result in
Flower names it) or in turn (the looks for a backlog and the fast lane, which are cheap when
there is nothing to do). An account added to the accounts file is in the next one.

What every task shares is in :class:`SkysyncTask`, the base of them all: the delivery contract,
the task id on every log line, and the relay of an account."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from celery import Task

from skysync.bootstrap import UnknownAccount, get_accounts, get_relay
from skysync.celery_app import app
from skysync.domain.kinds import DEFAULT_ACCOUNT
from skysync.logs import log_context
from skysync.relay import Relay
from skysync.relay.handout import Handout
from skysync.store import settle
from skysync.store.models import utcnow

log = logging.getLogger("skysync")


class SkysyncTask(Task):  # type: ignore[misc]  # celery has no type hints: Task is Any
    """What every task here promises: late acks (delivered again if its worker dies), no result
    kept, and another go while the database is away (a PostgreSQL restart, a failover, a
    dropped connection): the same task runs again shortly. Its rows are still claimed by its
    token, so it carries on where it stopped instead of leaving them to wait out their lease;
    what it already recorded is not sent again.

    Each run's log lines carry its task id, and its account when it has one."""

    acks_late = True
    ignore_result = True
    autoretry_for = (sa.exc.OperationalError, sa.exc.InterfaceError)
    retry_backoff = 2
    retry_backoff_max = 30
    retry_jitter = True
    max_retries = 40

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with log_context(task_id=self.request.id, account=kwargs.get("account")):
            return super().__call__(*args, **kwargs)


def task(name: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``app.task`` for a :class:`SkysyncTask` named ``name``, bound (its body gets the task)."""
    decorator: Callable[[Callable[..., Any]], Any] = app.task(
        name=name, base=SkysyncTask, bind=True, **options
    )
    return decorator


def handout(relay: Relay) -> Handout:
    """How an account's claims hand chunks out: a deliver_chunk task each (a token, ids and the
    account's name), a few of the account's at a time (relay/handout.py)."""
    account = relay.account

    def send(token: str, row_ids: list[int]) -> None:
        deliver_chunk.delay(token, row_ids, account=account)

    return Handout(relay.deps, send)


def _for_each_account(task_: Any) -> dict[str, Any]:
    """One ``task_`` per configured account; what Flower shows as this task's result."""
    names = get_accounts().names()
    for name in names:
        task_.delay(account=name)
    return {"accounts": names}


def _for_account(
    task_: Any, account: str | None, run: Callable[[Relay], dict[str, Any]]
) -> dict[str, Any]:
    """``run`` on ``account``'s relay, its result naming the account; without an account (beat),
    one ``task_`` per configured account. An account removed from the accounts file since the
    task was queued: nothing to do (its rows in flight go back at their lease's end; pending
    ones are rejected, naming it)."""
    if account is None:
        return _for_each_account(task_)
    try:
        relay = get_relay(account)
    except UnknownAccount as exc:
        log.warning("%s: skipped", exc)
        return {"account": account, "skipped": str(exc)}
    return {"account": account, **run(relay)}


def _in_turn() -> Iterator[Relay]:
    """Each configured account's relay in turn, its name on the log lines meanwhile."""
    for name in get_accounts().names():
        try:
            relay = get_relay(name)
        except UnknownAccount:  # removed since the names were read
            continue
        with log_context(account=name):
            yield relay


@task("skysync.relay_batch")
def relay_batch(self: SkysyncTask, account: str | None = None) -> dict[str, Any]:
    """One batch of ``account``: claim due rows and hand them to deliver_chunk in chunks by
    key. Without an account (beat): reject the pending rows of accounts that are not
    configured, then one batch per configured account."""
    if account is None:
        configured = get_accounts().names()
        with get_relay(configured[0]).db.scope() as session:
            rejected = settle.reject_unconfigured(session, configured, utcnow())
        if rejected:
            log.warning("%s rows name an account that is not configured: rejected", rejected)
        return {**_for_each_account(relay_batch), "rejected_unconfigured": rejected}
    return _for_account(
        relay_batch, account, lambda relay: relay.run_batch(dispatch=handout(relay)).as_dict()
    )


@task("skysync.relay_catch_up")
def relay_catch_up(self: SkysyncTask) -> dict[str, Any]:
    """Beat's look for a backlog (SKYSYNC_CATCH_UP_INTERVAL), for each account in turn: hand
    out its chunks whose turn came (one whose task was lost), then a batch if its last one
    left a backlog and the workers are half done (docs/relay.md, "Catching up")."""
    caught_up: dict[str, bool] = {}
    for relay in _in_turn():
        out = handout(relay)
        out.next_turn()
        caught_up[relay.account] = relay.run_catch_up(dispatch=out) is not None
    return {"caught_up": caught_up}


@task("skysync.relay_fast")
def relay_fast(self: SkysyncTask) -> dict[str, Any]:
    """The fast lane (relay/fast_lane.py), for each account in turn: claim the families of the
    due rows it picks and hand them to deliver_chunk, like a batch; nothing while
    SKYSYNC_FAST_LANE is off."""
    claimed = {
        relay.account: relay.run_fast(dispatch=handout(relay)).claimed for relay in _in_turn()
    }
    return {"claimed": claimed}


# A lane wake not run within this many seconds is dropped: the watcher wakes it again if its
# rows are still due, so a backed-up queue never piles up stale wakes.
FAST_WAKE_EXPIRES = 30


def wake_fast_lane() -> None:
    """Queue one run of the fast lane (what the lane's watcher calls)."""
    relay_fast.apply_async(expires=FAST_WAKE_EXPIRES)


@task("skysync.deliver_chunk")
def deliver_chunk(
    self: SkysyncTask, token: str, row_ids: list[int], account: str = DEFAULT_ACCOUNT
) -> dict[str, Any]:
    """Push the rows of one chunk still claimed by ``token`` (a repeat finds none and stops);
    hand out the account's next chunk; then, if its last batch left a backlog and half of it
    is sent, claim the next one (catching up, docs/relay.md)."""
    ids = [int(i) for i in row_ids]

    def run(relay: Relay) -> dict[str, Any]:
        out = handout(relay)
        # the account's next chunk starts as soon as this one's last key is taken, so its
        # set-up overlaps this one's last requests (and again here, for a chunk that ended early)
        result = relay.deliver(token, ids, drained=lambda: out.finished(token, ids)).as_dict()
        out.finished(token, ids)
        relay.run_catch_up(dispatch=out)
        return result

    return _for_account(deliver_chunk, account, run)


@task("skysync.pull_orders")
def pull_orders(self: SkysyncTask, account: str | None = None) -> dict[str, Any]:
    """Drain ``account``'s order queue into the inbox; acknowledge each order after it is
    stored. Without an account (beat): one pull per configured account."""
    from skysync.relay.pull_orders import pull_orders as pull

    return _for_account(
        pull_orders,
        account,
        lambda relay: pull(relay.db, relay.client, reserving=relay.deps.reserving).as_dict(),
    )


@task(
    "skysync.reconcile",
    # A catalogue takes about pages / 8.5 s (2,500,000 SKUs: 50 min), more than the relay's
    # limits allow; kept under the Redis broker's visibility timeout (1 h), which would
    # deliver a longer task a second time.
    soft_time_limit=3000,
    time_limit=3300,
)
def reconcile(self: SkysyncTask, account: str | None = None) -> dict[str, Any]:
    """Hold ``account``'s SkyHub catalogue against the ERP's latest accepted values; repair
    only when SKYSYNC_RECONCILE_REPAIR says so. Without an account (beat): one per configured
    account."""
    from skysync.relay.reconcile import reconcile as run

    return _for_account(
        reconcile,
        account,
        lambda relay: run(relay.deps, repair=relay.settings.reconcile_repair).summary(sample=0),
    )


@task("skysync.pull_sync_errors")
def pull_sync_errors(self: SkysyncTask, account: str | None = None) -> dict[str, Any]:
    """Store ``account``'s own errors from SkyHub (/sync_errors). Without an account (beat):
    one pull per configured account."""
    from skysync.relay.sync_errors import pull_sync_errors as pull

    return _for_account(pull_sync_errors, account, lambda relay: pull(relay.deps).as_dict())
