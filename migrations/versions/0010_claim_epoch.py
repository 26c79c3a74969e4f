"""The row that commits last wins, whatever its id: claim epochs.

Ids come from a sequence at INSERT time, but a row becomes visible at COMMIT: an ERP
transaction that inserted ``stock CO 5`` (id 1) and committed after another one inserted and
committed ``stock CO 3`` (id 2) wrote the ERP's last word, although its id is lower. What a
claim knows settles it: a row that was not visible to the claim that put another row of its SKU
in flight committed after that claim read the SKU, so it is newer, whatever its id.

* ``skysync_counter`` holds ``claim_epoch``: each claim takes the next number under the
  claimers' lock, so claims are numbered in the order they read the outbox.
* ``skysync_outbox.claim_epoch``: the number of the first claim that put the row in flight
  (NULL: no claim has read it yet; a row a claim read and did not put in flight ended there,
  superseded or rejected). Rows are ordered by ``(claim_epoch, id)``, NULL after every number.
* ``skysync_item.applied_epochs``: per field, the claim epoch of the row named by
  ``last_applied``; rows applied before this migration count as epoch 0, older than any claim
  after it (they were all read by a claim before it).

The ERP's role is not granted the new column: it writes ``kind``, ``ref`` and ``payload`` only.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "skysync_counter",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.execute("INSERT INTO skysync_counter (name, value) VALUES ('claim_epoch', 0)")
    op.add_column("skysync_outbox", sa.Column("claim_epoch", sa.BigInteger(), nullable=True))
    op.add_column(
        "skysync_item",
        sa.Column(
            "applied_epochs",
            sa.JSON().with_variant(JSONB(), "postgresql"),
            nullable=False,
            server_default="{}",
        ),
    )


def downgrade() -> None:
    # a plain DROP COLUMN on both databases (SQLite >= 3.35): no table rebuilt, so the
    # outbox's AUTOINCREMENT sequence stays as it is
    op.execute("ALTER TABLE skysync_item DROP COLUMN applied_epochs")
    op.execute("ALTER TABLE skysync_outbox DROP COLUMN claim_epoch")
    op.drop_table("skysync_counter")
