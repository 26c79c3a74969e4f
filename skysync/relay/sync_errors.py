"""SkyHub's own errors in: ``GET /sync_errors/{products,orders}`` page by page through the
shared rate limiter (SkyHub's 1/s bucket for them), stored per SKU and order
(``skysync_sync_error``), never lost: an error SkyHub stops listing is marked resolved, not
deleted, and only after a complete read of its type. And out: ``skysync errors ignore`` asks
SkyHub (``PATCH``) to stop listing errors, then marks them ignored."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from skysync.relay import unit_of_work as unit
from skysync.relay.deps import RelayDeps
from skysync.skyhub.errors import AuthenticationError, SkyHubError
from skysync.store import runs
from skysync.store import sync_errors as store
from skysync.store.request_stats import save_request_counts

log = logging.getLogger("skysync.sync_errors")

ENTITY_TYPES = ("products", "orders")
PER_PAGE = 100
MAX_PAGES = 1000  # 100,000 errors per type and run: a bound, never reached in practice
RUN_KIND = "pull_sync_errors"


@dataclass
class SyncErrorsSummary:
    listed: dict[str, int] = field(default_factory=dict)
    new: int = 0
    seen_again: int = 0
    resolved: int = 0
    stopped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def pull_sync_errors(deps: RelayDeps) -> SyncErrorsSummary:
    """Read SkyHub's errors of every type and store them; the run goes to the run log."""
    summary = SyncErrorsSummary()
    started = deps.clock()
    try:
        for entity_type in ENTITY_TYPES:
            _pull_type(deps, entity_type, summary)
    except AuthenticationError as exc:
        summary.stopped = runs.auth_stop_reason(exc)
    except SkyHubError as exc:
        summary.stopped = f"stopped: {exc}"  # what was stored is kept; nothing is resolved
    with deps.db.scope() as session:
        save_request_counts(session, deps.client.counter.take())
        runs.add(
            session,
            RUN_KIND,
            started_at=started,
            finished_at=deps.clock(),
            summary=summary.as_dict(),
            error=summary.stopped,
        )
    return summary


def _pull_type(deps: RelayDeps, entity_type: str, summary: SyncErrorsSummary) -> None:
    """Every page of one type, each stored as it arrives; errors not listed in the complete
    read are resolved afterwards."""
    read_from = deps.clock()
    listed = 0
    for page in range(1, MAX_PAGES + 1):
        errors, total = unit.call(
            deps, partial(deps.client.sync_errors, entity_type, page=page, per_page=PER_PAGE)
        )
        with deps.db.scope() as session:
            new, again = store.record_seen(session, entity_type, errors, deps.clock())
        summary.new += new
        summary.seen_again += again
        listed += len(errors)
        if len(errors) < PER_PAGE or (total is not None and listed >= total):
            break
    else:
        log.warning("%s errors: stopped after %d pages; nothing resolved", entity_type, MAX_PAGES)
        summary.listed[entity_type] = listed
        return
    summary.listed[entity_type] = listed
    with deps.db.scope() as session:
        summary.resolved += store.resolve_unseen(session, entity_type, read_from, deps.clock())


def ignore_sync_errors(deps: RelayDeps, ids: list[int]) -> tuple[list[int], list[int]]:
    """Ask SkyHub to ignore these errors (one PATCH per type), then mark them ignored.
    Returns (ignored ids, unknown ids)."""
    with deps.db.scope(readonly=True) as session:
        found = {
            e.id: (e.entity_type, {k: getattr(e, k) for k in store.KEY_FIELDS})
            for e in store.by_ids(session, ids)
        }
    unknown = [i for i in ids if i not in found]
    for entity_type in ENTITY_TYPES:
        chosen = [i for i, (t, _) in found.items() if t == entity_type]
        if not chosen:
            continue
        unit.call(
            deps,
            partial(deps.client.ignore_sync_errors, entity_type, [found[i][1] for i in chosen]),
        )
        with deps.db.scope() as session:
            store.mark_ignored(session, chosen, deps.clock())
    with deps.db.scope() as session:
        save_request_counts(session, deps.client.counter.take())
    return sorted(found), unknown
