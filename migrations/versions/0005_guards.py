"""Guardrails: the ``held`` state and the operator's release.

A price or promotional price far below the last one SkyHub acknowledged (more than
``SKYSYNC_PRICE_DROP_GUARD`` percent) is held back: its row waits in the new state ``held``,
with a reason that names both prices, until an operator releases it (``skysync outbox release``,
which sets ``released_at``: the guard lets that row through once) or a newer row replaces it.

SQLite cannot change a CHECK constraint in place: the table is rebuilt (Alembic's batch mode),
with its indexes, partial ones included.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from skysync.store.models import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES_AT_0001 = ("pending", "in_flight", "sent", "superseded", "withheld", "rejected", "dead")
STATES_AT_0005 = (*STATES_AT_0001, "held")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _outbox_batch() -> Any:
    # On SQLite the rebuilt table keeps AUTOINCREMENT (ids never reused: id order is the ERP's
    # write order); its sequence is restored below, in case it ran past the highest id left.
    return op.batch_alter_table(
        "skysync_outbox", recreate="auto", table_kwargs={"sqlite_autoincrement": True}
    )


def _sqlite_sequence() -> int | None:
    if op.get_bind().dialect.name != "sqlite":
        return None
    return (
        op.get_bind()
        .exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'skysync_outbox'")
        .scalar()
    )


def _restore_sqlite_sequence(seq: int | None) -> None:
    if seq is None:
        return
    bind = op.get_bind()
    bind.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = 'skysync_outbox'")
    bind.exec_driver_sql(
        "INSERT INTO sqlite_sequence (name, seq) VALUES ('skysync_outbox', ?)", (seq,)
    )


def upgrade() -> None:
    seq = _sqlite_sequence()
    with _outbox_batch() as batch:
        batch.add_column(sa.Column("released_at", UTCDateTime(), nullable=True))
        batch.drop_constraint("ck_skysync_outbox_state", type_="check")
        batch.create_check_constraint("ck_skysync_outbox_state", _in("state", STATES_AT_0005))
    _restore_sqlite_sequence(seq)


def downgrade() -> None:
    op.execute(
        "UPDATE skysync_outbox SET state = 'withheld', released_at = NULL WHERE state = 'held'"
    )
    seq = _sqlite_sequence()
    with _outbox_batch() as batch:
        batch.drop_constraint("ck_skysync_outbox_state", type_="check")
        batch.create_check_constraint("ck_skysync_outbox_state", _in("state", STATES_AT_0001))
        batch.drop_column("released_at")
    _restore_sqlite_sequence(seq)
