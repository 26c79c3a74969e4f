"""Celery tasks: thin. Ids and a claim token in, a service call, nothing else. Never a payload,
never a secret in the arguments (they show in Flower and in the broker)."""

from __future__ import annotations

from typing import Any

from skysync.bootstrap import get_relay
from skysync.celery_app import app


@app.task(name="skysync.relay_batch", acks_late=True, ignore_result=True)
def relay_batch() -> dict[str, Any]:
    """One batch: claim due rows and hand them to deliver_chunk in chunks by key."""
    summary = get_relay().run_batch(dispatch=lambda token, ids: deliver_chunk.delay(token, ids))
    return summary.as_dict()


@app.task(name="skysync.deliver_chunk", acks_late=True, ignore_result=True)
def deliver_chunk(token: str, row_ids: list[int]) -> dict[str, Any]:
    """Push the rows of one chunk still claimed by ``token`` (a repeat finds none and stops)."""
    return get_relay().deliver(token, [int(i) for i in row_ids]).as_dict()


@app.task(name="skysync.pull_orders", acks_late=True, ignore_result=True)
def pull_orders() -> dict[str, Any]:
    """Drain SkyHub's order queue into the inbox; acknowledge each order after it is stored."""
    from skysync.orders import pull_orders as pull

    relay = get_relay()
    return pull(relay.url, relay.client).as_dict()
