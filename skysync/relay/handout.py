"""Handing a claim's chunks to the workers, a few at a time per account.

A chunk holds its worker until its last key is sent, and an account's requests go at its own
pace (9/s per bucket): a worker with one of account A's chunks spends most of its time waiting
for A's buckets. Were every chunk of A's backlog (a 1,000,000-row catch-up) queued at once, the
workers would all end up waiting on A's buckets, and account B's fresh rows would queue behind
them, although B's buckets are idle. So an account has at most ``chunks_at_once``
(SKYSYNC_CHUNKS_PER_ACCOUNT, 2) chunks with the workers; the others wait in ``skysync_chunk``,
and each chunk that finishes hands out the account's next one. Two chunks keep an account's
buckets busy (each sends up to 8 requests at once), and the broker's queue holds at most two
per account: every account's next chunk is near its head, whatever the others' backlogs.

:class:`Handout` is what the Celery tasks pass as the relay's ``dispatch``; a caller that
delivers in its own process (``skysync relay``, ``drain``, the tests) needs none of this."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from skysync.relay.deps import RelayDeps
from skysync.store import chunks

Send = Callable[[str, list[int]], Any]


@dataclass(frozen=True)
class Handout:
    """A ``dispatch(token, row_ids)`` for one account's claims: queue the chunk, and send
    (``send``: a Celery task) what the account's turn allows."""

    deps: RelayDeps
    send: Send

    def __call__(self, token: str, row_ids: list[int]) -> None:
        with self.deps.db.scope() as session:
            chunks.queue(session, token, [row_ids], self.deps.clock())
        self.next_turn()

    def next_turn(self) -> int:
        """Send the account's next chunks, as many as are free; how many were sent."""
        with self.deps.db.scope() as session:
            ready = chunks.take_turns(
                session,
                at_once=self.deps.chunks_at_once,
                now=self.deps.clock(),
                lost_after=self.deps.lease_seconds,
            )
        for token, row_ids in ready:
            self.send(token, row_ids)
        return len(ready)

    def finished(self, token: str, row_ids: Sequence[int]) -> int:
        """A chunk is done: the account's next one goes out."""
        with self.deps.db.scope() as session:
            chunks.finish(session, token, row_ids)
        return self.next_turn()
