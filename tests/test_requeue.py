"""An operator's requeue (skysync/store/settle.py, `skysync outbox requeue`): dead, rejected
and withheld rows back to pending with their attempts reset, only those asked for. On both
databases."""

from __future__ import annotations

import sqlalchemy as sa
from click.testing import CliRunner

from skysync.domain.kinds import RowState
from skysync.entrypoints.cli import cli
from skysync.store.db import session_scope
from skysync.store.models import OutboxRow, utcnow
from skysync.store.settle import requeue

ENDED = ("dead", "rejected", "withheld", "sent")


def _rows(url: str) -> dict[str, int]:
    """One stock row in each of ENDED, tried 3 times: their ids by state."""
    with session_scope(url) as session:
        rows = {
            state: OutboxRow(kind="stock", ref=f"RQ-{state}", payload={"qty": 1}, state=state)
            for state in ENDED
        }
        for state, row in rows.items():
            row.attempts = 3
            row.reason = None if state == "sent" else f"{state} for the test"
        session.add_all(rows.values())
        session.flush()
        return {state: row.id for state, row in rows.items()}


def _states(url: str) -> dict[int, tuple[str, int]]:
    with session_scope(url, readonly=True) as session:
        query = sa.select(OutboxRow.id, OutboxRow.state, OutboxRow.attempts)
        return {i: (state, attempts) for i, state, attempts in session.execute(query)}


def test_an_empty_list_of_ids_requeues_nothing(db_url: str) -> None:
    """``ids=[]`` used to mean "no filter" and requeued every dead, rejected and withheld row."""
    _rows(db_url)
    before = _states(db_url)
    with session_scope(db_url) as session:
        assert requeue(session, ids=[], now=utcnow()) == 0
        assert requeue(session, ids=[], state=RowState.DEAD, now=utcnow()) == 0
    assert _states(db_url) == before


def test_requeue_takes_the_ids_given_or_a_state_never_a_sent_row(db_url: str) -> None:
    ids = _rows(db_url)
    with session_scope(db_url) as session:
        assert requeue(session, ids=[ids["rejected"], ids["sent"]], now=utcnow()) == 1
    states = _states(db_url)
    assert states[ids["rejected"]] == ("pending", 0)
    assert states[ids["sent"]] == ("sent", 3)
    assert states[ids["dead"]] == ("dead", 3)
    with session_scope(db_url) as session:  # no ids: every row in that state
        assert requeue(session, state=RowState.DEAD, now=utcnow()) == 1
    assert _states(db_url)[ids["dead"]] == ("pending", 0)
    assert _states(db_url)[ids["withheld"]] == ("withheld", 3)


def test_the_command_wants_ids_or_a_state(db_url: str) -> None:
    """`skysync outbox requeue` with neither refuses (it never means "everything"); with a
    state it requeues that state's rows."""
    ids = _rows(db_url)
    env = {"SKYSYNC_DATABASE_URL": db_url}
    refused = CliRunner().invoke(cli, ["outbox", "requeue"], env=env)
    assert refused.exit_code == 2
    assert "give row IDS or --state" in refused.output
    done = CliRunner().invoke(cli, ["outbox", "requeue", "--state", "withheld"], env=env)
    assert done.exit_code == 0, done.output
    assert "requeued 1 row(s)" in done.output
    states = _states(db_url)
    assert states[ids["withheld"]] == ("pending", 0)
    assert states[ids["dead"]] == ("dead", 3)
