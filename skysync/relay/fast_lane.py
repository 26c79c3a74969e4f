"""The fast lane (docs/fast-lane.md): chosen rows go out within seconds of the ERP's commit,
instead of waiting for the next batch. Off by default (SKYSYNC_FAST_LANE=off).

Two parts:

* :func:`run_fast` is a batch over the families of the due rows the lane picks
  (``claims.pick_due(lane=...)``): the same claim, coalescing, freeze/diff, shared rate
  limiter and outcomes as every batch, so the lane can neither exceed SkyHub's limits nor send
  a value that a newer row of the same SKU would overwrite.
* :class:`LaneWatcher` is the doorbell: a thread (started in each Celery worker, see
  celery_app.py) that wakes the lane (``wake()``, which queues the ``skysync.relay_fast``
  task) when a picked row is due. On PostgreSQL it LISTENs for the outbox trigger's NOTIFY,
  one watcher at a time across all workers (an advisory lock; the others stand by); it also
  checks every ``fast_lane_poll`` seconds, for rows that waited behind an in-flight SKU or a
  backoff, and polls alone where LISTEN is unavailable and on SQLite. Bursts coalesce: after a
  notification it waits ``debounce`` seconds for more, and it wakes the lane at most once every
  ``min_gap`` seconds; each wake costs one cheap query first and queues a task only when a
  picked row is due and its SKU is not in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from skysync.config import Settings
from skysync.domain.kinds import DEFAULT_ACCOUNT
from skysync.relay import batch
from skysync.relay.deps import RelayDeps
from skysync.relay.outcome import BatchSummary
from skysync.store import claims
from skysync.store.db import Database
from skysync.store.models import utcnow

log = logging.getLogger("skysync.fast_lane")

DEBOUNCE = 0.25  # seconds a notification waits for the rest of its burst
MIN_GAP = 0.5  # seconds between two wakes of the lane
STANDBY = 5.0  # seconds between a standing-by watcher's tries to take over, or after an error
POLL_ONLY_FOR = 60.0  # seconds of polling after LISTEN failed, before trying LISTEN again


def run_fast(
    deps: RelayDeps, dispatch: Callable[[str, list[int]], Any] | None = None
) -> BatchSummary:
    """One run of the lane: claim the families of the due rows it picks and hand them out
    like a batch does; with the lane off, nothing (an empty summary)."""
    rule = deps.lane_rule
    if not rule.on:
        return BatchSummary(token="")
    summary = batch.run_batch(deps, dispatch, lane=rule)
    assert summary is not None  # only a gated batch may not happen
    return summary


class LaneWatcher(threading.Thread):
    """Wakes the fast lane when one of its rows is due (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        wake: Callable[[], Any],
        *,
        accounts: Callable[[], list[str]] | None = None,
        debounce: float = DEBOUNCE,
        min_gap: float = MIN_GAP,
        standby: float = STANDBY,
    ):
        super().__init__(name="skysync-fast-lane", daemon=True)
        if not settings.lane_rule.on:
            raise ValueError("the fast lane is off (SKYSYNC_FAST_LANE=off): nothing to watch")
        self.settings = settings
        self.rule = settings.lane_rule
        self.db = Database.for_url(settings.database_url)
        self.wake = wake
        # the accounts whose rows it watches, asked at each look (the accounts file may change)
        self.accounts = accounts or (lambda: [DEFAULT_ACCOUNT])
        self.poll = settings.fast_lane_poll
        self.debounce = debounce
        self.min_gap = min_gap
        self.standby = standby
        self.how = "starting"  # then "listen", "standby" or "poll"
        self.wakes = 0
        self._stopping = threading.Event()
        self._last_wake = float("-inf")

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        log.info(
            "fast lane on (%s, stock-out at qty <= %s): watching the outbox",
            self.rule.mode,
            self.rule.threshold,
        )
        while not self._stopping.is_set():
            try:
                if self.settings.is_sqlite:
                    self._watch(self._sleep, "poll")
                else:
                    self._listen()
            except Exception as exc:  # the database went away: try again shortly
                log.warning("fast lane: %s: %s; retrying", type(exc).__name__, exc)
                self._stopping.wait(self.standby)
        log.info("fast lane watcher stopped")

    def _listen(self) -> None:
        from skysync.store.notify import LaneListener

        try:
            listener = LaneListener(self.db.url)
        except Exception as exc:
            log.warning(
                "fast lane: cannot LISTEN (%s: %s); polling every %s s instead",
                type(exc).__name__,
                exc,
                self.poll,
            )
            self._watch(self._sleep, "poll", until=time.monotonic() + POLL_ONLY_FOR)
            return
        with listener:
            if not listener.try_lead():
                if self.how != "standby":
                    log.info("fast lane: another worker watches the outbox; standing by")
                self.how = "standby"
                self._stopping.wait(self.standby)
                return
            listener.listen()
            self._watch(listener.wait, "listen")

    def _sleep(self, timeout: float) -> bool:
        self._stopping.wait(timeout)
        return False

    def _watch(
        self, wait: Callable[[float], bool], how: str, *, until: float = float("inf")
    ) -> None:
        """Wait for a notification (or the poll interval), then wake the lane if a row of
        its is due, at most once every ``min_gap`` seconds."""
        if self.how != how:
            log.info("fast lane: %s (checking every %s s)", how, self.poll)
        self.how = how
        while not self._stopping.is_set() and time.monotonic() < until:
            if wait(self.poll):
                self._stopping.wait(self.debounce)  # let the rest of the burst commit
            gap = self._last_wake + self.min_gap - time.monotonic()
            if gap > 0:
                self._stopping.wait(gap)
            if self._stopping.is_set():
                return
            if self._due():
                self._last_wake = time.monotonic()
                self.wakes += 1
                self.wake()

    def _due(self) -> bool:
        """Has any account a row for the lane (one cheap query per account)?"""
        for account in self.accounts():
            with self.db.for_account(account).scope(readonly=True) as session:
                if claims.lane_rows_due(session, self.rule, utcnow()):
                    return True
        return False
