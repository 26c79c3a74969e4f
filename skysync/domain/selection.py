"""What an operator picks out of the outbox's rows in trouble (the console's "Rows in trouble"):
one account's rows in some of the trouble states, narrowed by kind, ref and the time they ended
there, or given by id; and which of them an action may touch. Plain data and pure decisions:
``skysync/store/outbox_reads.py`` turns a selection into SQL, the console parses it from a
request and shows it back in words.

``upto`` is the newest row an operator saw when asked to confirm: an action on a filtered
selection never reaches a row written (or gone into trouble with a newer id) after the count
it confirmed was taken.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from skysync.domain.kinds import RowState

#: The states an operator looks at: each row in them waits on a person (or on the ERP's fix).
TROUBLE_STATES: tuple[RowState, ...] = (
    RowState.REJECTED,
    RowState.DEAD,
    RowState.HELD,
    RowState.WITHHELD,
)
#: What `skysync outbox requeue` puts back to pending (store/settle.py: requeue).
REQUEUEABLE: tuple[RowState, ...] = (RowState.DEAD, RowState.REJECTED, RowState.WITHHELD)
#: What `skysync outbox release` lets through (store/settle.py: release_held).
RELEASABLE: tuple[RowState, ...] = (RowState.HELD,)


@dataclass(frozen=True)
class RowSelection:
    """Rows of ``account`` in ``states`` (some of TROUBLE_STATES), narrowed by the others when
    given: ``kind``, ``ref`` (exact), the time they ended in their state (``since`` <=
    finished_at < ``until``), ``ids`` (only these rows), ``upto`` (id at most this)."""

    account: str
    states: tuple[RowState, ...] = TROUBLE_STATES
    kind: str | None = None
    ref: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    ids: tuple[int, ...] | None = None
    upto: int | None = None

    def __post_init__(self) -> None:
        unknown = [s for s in self.states if s not in TROUBLE_STATES]
        if unknown or not self.states:
            raise ValueError(f"states must be some of {', '.join(TROUBLE_STATES)}")

    def for_action(self, allowed: tuple[RowState, ...]) -> RowSelection | None:
        """The part of this selection an action that takes rows in ``allowed`` states may
        touch; None when it holds none of them (requeue on held rows, say)."""
        states = tuple(s for s in self.states if s in allowed)
        return replace(self, states=states) if states else None

    def up_to(self, row_id: int | None) -> RowSelection:
        """The same rows, none newer than ``row_id`` (None: no row at all, so nothing)."""
        return replace(self, upto=row_id if row_id is not None else 0)

    def describe(self) -> str:
        """The selection in words, as the confirmation and the run log name it:
        ``account default, state dead, kind stock, ref SKU-1, ended since 2026-12-01T00:00``."""
        parts = [f"account {self.account}"]
        if self.ids is not None:
            shown = ", ".join(map(str, self.ids[:20]))
            more = f" and {len(self.ids) - 20} more" if len(self.ids) > 20 else ""
            parts.append(f"row{'s' if len(self.ids) != 1 else ''} {shown}{more}")
        if tuple(self.states) != TROUBLE_STATES or self.ids is None:
            parts.append(f"state {' or '.join(self.states)}")
        if self.kind:
            parts.append(f"kind {self.kind}")
        if self.ref:
            parts.append(f"ref {self.ref}")
        if self.since:
            parts.append(f"ended since {self.since.isoformat(timespec='minutes')}")
        if self.until:
            parts.append(f"ended before {self.until.isoformat(timespec='minutes')}")
        if self.upto is not None:
            parts.append(f"rows up to id {self.upto}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, object]:
        """For the run log: what was chosen, as plain JSON values."""
        return {
            "account": self.account,
            "states": [str(s) for s in self.states],
            "kind": self.kind,
            "ref": self.ref,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "ids": list(self.ids) if self.ids is not None else None,
            "upto": self.upto,
        }
