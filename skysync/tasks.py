"""Celery tasks: thin. Ids and a claim token in, a service call, nothing else. Never a payload,
never a secret in the arguments (they show in Flower and in the broker).

What every task shares is in :class:`SkysyncTask`, the base of them all: the delivery contract,
the task id on every log line, and the process's relay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from celery import Task

from skysync.bootstrap import get_relay
from skysync.celery_app import app
from skysync.logs import log_context
from skysync.relay import Relay


class SkysyncTask(Task):  # type: ignore[misc]  # celery has no type hints: Task is Any
    """What every task here promises: late acks (delivered again if its worker dies), no result
    kept, and another go while the database is away (a PostgreSQL restart, a failover, a
    dropped connection): the same task runs again shortly. Its rows are still claimed by its
    token, so it carries on where it stopped instead of leaving them to wait out their lease;
    what it already recorded is not sent again.

    Each run's log lines carry its task id, and :attr:`relay` is the process's relay."""

    acks_late = True
    ignore_result = True
    autoretry_for = (sa.exc.OperationalError, sa.exc.InterfaceError)
    retry_backoff = 2
    retry_backoff_max = 30
    retry_jitter = True
    max_retries = 40

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with log_context(task_id=self.request.id):
            return super().__call__(*args, **kwargs)

    @property
    def relay(self) -> Relay:
        return get_relay()


def task(name: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``app.task`` for a :class:`SkysyncTask` named ``name``, bound (its body gets the task)."""
    decorator: Callable[[Callable[..., Any]], Any] = app.task(
        name=name, base=SkysyncTask, bind=True, **options
    )
    return decorator


def to_workers(token: str, row_ids: list[int]) -> None:
    """How every claim here hands a chunk out: a deliver_chunk task (a token and ids only)."""
    deliver_chunk.delay(token, row_ids)


@task("skysync.relay_batch")
def relay_batch(self: SkysyncTask) -> dict[str, Any]:
    """One batch: claim due rows and hand them to deliver_chunk in chunks by key."""
    return self.relay.run_batch(dispatch=to_workers).as_dict()


@task("skysync.relay_catch_up")
def relay_catch_up(self: SkysyncTask) -> dict[str, Any]:
    """Beat's look for a backlog (SKYSYNC_CATCH_UP_INTERVAL): a batch if the last one left one
    and the workers are half done, else nothing (docs/relay.md, "Catching up")."""
    summary = self.relay.run_catch_up(dispatch=to_workers)
    return {"caught_up": False} if summary is None else {"caught_up": True, **summary.as_dict()}


@task("skysync.relay_fast")
def relay_fast(self: SkysyncTask) -> dict[str, Any]:
    """The fast lane (relay/fast_lane.py): claim the families of the due rows it picks and
    hand them to deliver_chunk, like a batch; nothing while SKYSYNC_FAST_LANE is off."""
    return self.relay.run_fast(dispatch=to_workers).as_dict()


# A lane wake not run within this many seconds is dropped: the watcher wakes it again if its
# rows are still due, so a backed-up queue never piles up stale wakes.
FAST_WAKE_EXPIRES = 30


def wake_fast_lane() -> None:
    """Queue one run of the fast lane (what the lane's watcher calls)."""
    relay_fast.apply_async(expires=FAST_WAKE_EXPIRES)


@task("skysync.deliver_chunk")
def deliver_chunk(self: SkysyncTask, token: str, row_ids: list[int]) -> dict[str, Any]:
    """Push the rows of one chunk still claimed by ``token`` (a repeat finds none and stops);
    then, if the last batch left a backlog and half of it is sent, claim the next one
    (catching up, docs/relay.md)."""
    relay = self.relay
    result = relay.deliver(token, [int(i) for i in row_ids]).as_dict()
    relay.run_catch_up(dispatch=to_workers)
    return result


@task("skysync.pull_orders")
def pull_orders(self: SkysyncTask) -> dict[str, Any]:
    """Drain SkyHub's order queue into the inbox; acknowledge each order after it is stored."""
    from skysync.relay.pull_orders import pull_orders as pull

    relay = self.relay
    return pull(relay.db, relay.client).as_dict()


@task(
    "skysync.reconcile",
    # A catalogue takes about pages / 8.5 s (2,500,000 SKUs: 50 min), more than the relay's
    # limits allow; kept under the Redis broker's visibility timeout (1 h), which would
    # deliver a longer task a second time.
    soft_time_limit=3000,
    time_limit=3300,
)
def reconcile(self: SkysyncTask) -> dict[str, Any]:
    """Hold SkyHub's catalogue against the ERP's latest accepted values; repair only when
    SKYSYNC_RECONCILE_REPAIR says so. No arguments: nothing to show in Flower."""
    from skysync.relay.reconcile import reconcile as run

    relay = self.relay
    return run(relay.deps, repair=relay.settings.reconcile_repair).summary(sample=0)


@task("skysync.pull_sync_errors")
def pull_sync_errors(self: SkysyncTask) -> dict[str, Any]:
    """Store SkyHub's own errors about accepted products and orders (/sync_errors)."""
    from skysync.relay.sync_errors import pull_sync_errors as pull

    return pull(self.relay.deps).as_dict()
