"""The Celery application: ``celery -A skysync.celery_app worker|beat|flower``.

Delivery contract: JSON only, late acks (a task whose worker dies is delivered again, and the
tasks are idempotent: they act only on rows still claimed by their token), results ignored,
time limits under the relay's lease so a stuck task is killed before its rows are reclaimed.
The database is the source of truth; the broker is a doorbell that may lose messages.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import setup_logging, worker_process_init, worker_ready, worker_shutdown

from skysync.config import get_settings

if TYPE_CHECKING:
    from skysync.relay.fast_lane import LaneWatcher


def _every(task: str, seconds: float) -> dict[str, Any]:
    """A beat entry: ``task`` every ``seconds``; a run not started by the next one is dropped."""
    return {"task": task, "schedule": timedelta(seconds=seconds), "options": {"expires": seconds}}


def make_app() -> Celery:
    settings = get_settings()
    soft, hard = settings.task_time_limits
    app = Celery("skysync", broker=settings.effective_broker_url, include=["skysync.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_soft_time_limit=soft,
        task_time_limit=hard,
        worker_prefetch_multiplier=1,
        # Flower shows tasks from these events (their arguments are a token and row ids only).
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        beat_schedule={
            "relay": _every("skysync.relay_batch", settings.sync_interval),
            "pull-orders": _every("skysync.pull_orders", settings.order_poll_interval),
            "pull-sync-errors": _every("skysync.pull_sync_errors", settings.sync_errors_interval),
            "reconcile": _every("skysync.reconcile", settings.reconcile_interval),
            **(
                {"relay-catch-up": _every("skysync.relay_catch_up", settings.catch_up_interval)}
                if settings.catch_up_interval > 0
                else {}
            ),
        },
        timezone="UTC",
        enable_utc=True,
    )
    if settings.effective_broker_url.startswith(("redis", "rediss", "sqs")):
        # These brokers redeliver an unacknowledged task after this; keep it well above the
        # task time limit. (The SQLAlchemy transport hands its options to create_engine.)
        app.conf.broker_transport_options = {"visibility_timeout": max(3600, int(hard * 4))}
    return app


app = make_app()


@worker_process_init.connect  # type: ignore[untyped-decorator]  # celery has no type hints
def _after_fork(**_kwargs: object) -> None:
    # Pooled connections must not cross a fork.
    from skysync import bootstrap
    from skysync.store.db import dispose_engines

    dispose_engines()
    bootstrap.reset()
    # Build the relay and open a database connection now, beside the pool's start, so that
    # a child's first chunk starts sending at once, as the others do (docs/relay.md, "Every
    # bucket at once"). In the background: a database that is down must not stop the child.
    threading.Thread(target=_warm_up, name="skysync-warm-up", daemon=True).start()


def _warm_up() -> None:
    from skysync import bootstrap

    try:
        relays = [bootstrap.get_relay(name) for name in bootstrap.get_accounts().names()]
        with relays[0].db.engine.connect():
            pass
    except Exception:  # the first task meets the same problem, and reports it
        logging.getLogger("skysync").debug("worker warm-up failed", exc_info=True)


@setup_logging.connect  # type: ignore[untyped-decorator]  # celery has no type hints
def _logging(**_kwargs: object) -> None:
    # Our handlers (JSON off a terminal, context on every line, secrets masked) for every
    # `celery -A skysync.celery_app ...` process.
    from skysync.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, secrets=settings.secret_values())


# The fast lane's watcher (relay/fast_lane.py): one thread in each worker's main process, only
# when SKYSYNC_FAST_LANE is on, so a worker (compose's `worker`, or `skysync run`) needs no other
# change to run it. On PostgreSQL the workers elect one watcher among them.
_lane_watcher: list[LaneWatcher] = []


@worker_ready.connect  # type: ignore[untyped-decorator]  # celery has no type hints
def _start_fast_lane(**_kwargs: object) -> None:
    settings = get_settings()
    if not settings.lane_rule.on:
        return
    from skysync.bootstrap import get_accounts
    from skysync.relay.fast_lane import LaneWatcher
    from skysync.tasks import wake_fast_lane

    watcher = LaneWatcher(settings, wake_fast_lane, accounts=lambda: get_accounts().names())
    watcher.start()
    _lane_watcher.append(watcher)


@worker_shutdown.connect  # type: ignore[untyped-decorator]  # celery has no type hints
def _stop_fast_lane(**_kwargs: object) -> None:
    while _lane_watcher:
        _lane_watcher.pop().stop()
