"""The Celery tasks' contract, held by one base class (skysync/tasks.py, ``SkysyncTask``): every
task keeps its name, late acks, no result, another go while the database is away, and its time
limits; each run's log context carries its task id. No worker here (tests/test_celery.py runs
real ones)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from celery import Celery

from skysync import logs, tasks
from skysync.celery_app import app

NAMES = {
    "skysync.relay_batch",
    "skysync.relay_catch_up",
    "skysync.relay_fast",
    "skysync.deliver_chunk",
    "skysync.pull_orders",
    "skysync.reconcile",
    "skysync.pull_sync_errors",
}


def test_every_task_keeps_its_name_and_delivery_contract() -> None:
    registered = {name for name in app.tasks if name.startswith("skysync.")}
    assert registered == NAMES
    assert tasks.relay_batch.name == "skysync.relay_batch"
    for name in NAMES:
        task = app.tasks[name]
        assert isinstance(task, tasks.SkysyncTask), name
        assert task.acks_late is True, name
        assert task.ignore_result is True, name
        assert set(task.autoretry_for) == {sa.exc.OperationalError, sa.exc.InterfaceError}, name
        assert (task.retry_backoff, task.retry_backoff_max, task.retry_jitter) == (2, 30, True)
        assert task.max_retries == 40, name
        assert hasattr(task, "_orig_run"), f"{name}: autoretry not wrapped around its body"
        limits = (task.soft_time_limit, task.time_limit)
        default = (app.conf.task_soft_time_limit, app.conf.task_time_limit)
        assert limits == ((3000, 3300) if name == "skysync.reconcile" else default), name


def test_a_task_runs_with_its_id_in_the_log_context() -> None:
    probe_app = Celery("probe", set_as_current=False)

    @probe_app.task(base=tasks.SkysyncTask, bind=True)
    def probe(self: tasks.SkysyncTask, sku: str) -> dict[str, Any]:
        with logs.log_context(sku=sku):
            return dict(logs._context.get() or {})

    seen = probe.apply(("SKU-1",), task_id="task-42").get()
    assert seen == {"task_id": "task-42", "sku": "SKU-1"}
    assert logs._context.get() is None  # nothing left behind after the run
