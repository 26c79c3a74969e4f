"""The outbox as the ERP contract writes it (docs/erp-contract.md): a row of ``kind``, ``ref``
and ``payload``, pending, of the session's account (db.account_of). The relay claims rows in
``claims.py`` and settles them in ``settle.py``; the read-only queries are in
``outbox_reads.py``."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from skysync.domain.kinds import Origin
from skysync.domain.validation import validate
from skysync.store.db import account_of
from skysync.store.models import OutboxRow


def enqueue(session: Session, kind: str, ref: str, payload: Any) -> OutboxRow:
    """Validate one change and write it as a pending outbox row (what ``skysync enqueue`` does).

    The ERP normally INSERTs rows itself; this is the same row, refused up front when bad.
    """
    validate(kind, ref, payload)
    row = OutboxRow(account=account_of(session), kind=kind, ref=ref, payload=payload)
    session.add(row)
    session.flush()
    return row


def insert_unchecked(session: Session, kind: str, ref: str, payload: Any) -> None:
    """A row exactly as an ERP's plain INSERT writes it, not validated (the demo's bad row)."""
    session.add(OutboxRow(account=account_of(session), kind=kind, ref=ref, payload=payload))


def enqueue_correction(session: Session, kind: str, ref: str, payload: Any) -> OutboxRow:
    """A corrective row from reconciliation: validated as the ERP's are, pending, and marked
    ``origin = 'reconcile'`` (a value the ERP's role cannot write)."""
    validate(kind, ref, payload)
    row = OutboxRow(
        account=account_of(session), kind=kind, ref=ref, payload=payload, origin=Origin.RECONCILE
    )
    session.add(row)
    session.flush()
    return row
