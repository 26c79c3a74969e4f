"""Catching up with a backlog, as a pure decision (docs/relay.md, "Catching up").

A batch claims at most SKYSYNC_BATCH_SIZE rows, and beat starts one every SKYSYNC_SYNC_INTERVAL
(15 minutes): after an outage, a backlog of 10,000 SKUs would take 20 beats, five hours, though
SkyHub's limits would take it in about 20 minutes. So when a batch claimed all it could (it hit
its limit: more rows are due), another follows as soon as the workers are half done with what
is in flight, and so on until a batch comes back short of its limit. Half done, not done: the
next batch is claimed while the last keys of the one before are still being sent, so the
buckets never idle; and never more: claimed keys do not pile up in the queue and wait out
their leases.
"""

from __future__ import annotations


def catch_up_now(
    *, last_was_full: bool, last_stopped: bool, keys_in_flight: int, batch_size: int
) -> bool:
    """Should a batch start now? Only after a batch whose claim hit its limit
    (``last_was_full``) and that was not stopped (SkyHub refusing the credentials: every
    request would fail the same way until an operator fixes them), and only while the keys
    still in flight are at most half a batch. (The caller asks under the claimers' lock, so
    no claim is under way.)"""
    if not last_was_full or last_stopped:
        return False
    return keys_in_flight <= batch_size // 2
