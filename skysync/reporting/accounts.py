"""What `skysync accounts list` reports of each configured SkyHub account: its rows by state,
when SkyHub last accepted one of its rows, and whether SkyHub refused its credentials; never a
secret (an account's keys are not read here at all, only its name and e-mail). ``status`` and
``drain`` use the same pieces. Read-only queries, gathered into plain dicts, and those dicts
in words for a terminal."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from skysync.accounts import Accounts
from skysync.domain.kinds import RowState
from skysync.store import runs
from skysync.store.models import OutboxRow, RunLog
from skysync.store.outbox_reads import count_by_account_and_state, count_by_state

# The runs that talk to SkyHub with an account's credentials on every beat, and how status
# names them: the last of each says whether SkyHub refuses the account's credentials.
CREDENTIAL_RUNS = (("relay", "relay batch"), ("pull_orders", "order pull"))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def run_dict(run: RunLog | None) -> dict[str, Any] | None:
    """A run log row as status shows it; None stays None."""
    if run is None:
        return None
    return {
        "started_at": run.started_at.isoformat(),
        "finished_at": _iso(run.finished_at),
        "summary": run.summary,
        "error": run.error,
    }


def outbox_counts(session: Session, account: str) -> dict[str, int]:
    """The account's rows by state, every state present."""
    return count_by_state(session, account=account)


def refused_credentials(session: Session, account: str) -> list[tuple[str, str]]:
    """(label, error) of each of the account's last runs of CREDENTIAL_RUNS that SkyHub
    refused the credentials of (empty: not stopped on its credentials)."""
    found = []
    for kind, label in CREDENTIAL_RUNS:
        run = runs.last(session, kind, account=account)
        if run is not None and runs.is_auth_stop(run.error):
            found.append((label, str(run.error)))
    return found


def last_accepted(session: Session, account: str) -> datetime | None:
    """When SkyHub last accepted one of the account's rows: the finished_at of its newest
    ``sent`` row (the highest id, down the (state, account, id) index, so it stays one index
    step however many rows were sent)."""
    query = (
        sa.select(OutboxRow.finished_at)
        .where(OutboxRow.state == RowState.SENT, OutboxRow.account == account)
        .order_by(OutboxRow.id.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def accounts_overview(session: Session, accounts: Accounts) -> dict[str, Any]:
    """Every configured account (default first): its name, e-mail, rows by state, when SkyHub
    last accepted one of its rows, its last relay batch, and whether it is stopped on its
    credentials (and the error that says so)."""
    counts = count_by_account_and_state(session)
    listed = []
    for account in accounts:
        name = account.name
        refused = refused_credentials(session, name)
        last_relay = runs.last(session, "relay", account=name)
        listed.append(
            {
                "name": name,
                "email": account.email,
                "outbox": counts.get(name, {str(s): 0 for s in RowState}),
                "last_accepted_at": _iso(last_accepted(session, name)),
                "last_relay_at": last_relay.started_at.isoformat() if last_relay else None,
                "stopped_on_credentials": bool(refused),
                "stop_reason": refused[0][1] if refused else None,
            }
        )
    return {"source": accounts.source, "accounts": listed}


# -- for the terminal ----------------------------------------------------------------------------


def counts_text(outbox: dict[str, int]) -> str:
    """``pending 2, sent 10``: the states that hold rows; ``no rows`` when none does."""
    held = [f"{state} {n}" for state, n in outbox.items() if n]
    return ", ".join(held) or "no rows"


def accounts_lines(overview: dict[str, Any]) -> list[str]:
    """`skysync accounts list`: an accounts_overview() in words."""
    lines = [f"accounts from {overview['source']}:"]
    for a in overview["accounts"]:
        lines.append(f"{a['name']} ({a['email'] or 'no e-mail: the emulator'})")
        lines.append(f"  rows: {counts_text(a['outbox'])}")
        lines.append(f"  last row accepted by SkyHub: {a['last_accepted_at'] or 'never'}")
        lines.append(f"  last relay batch: {a['last_relay_at'] or 'never'}")
        if a["stopped_on_credentials"]:
            lines.append(f"  STOPPED: {a['stop_reason']}: its rows wait")
        else:
            lines.append("  credentials: not refused")
    return lines
