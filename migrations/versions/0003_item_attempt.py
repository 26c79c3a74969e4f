"""Per SKU, the fields and values of a write that went out without a recorded answer yet.

A write is recorded here in its own committed transaction before the request leaves, and
cleared when SkyHub's answer is recorded. While a field is here skysync does not know what
SkyHub holds for it (the write may have been applied and its answer lost to a crash), so a
later value for it is sent, never withheld as "unchanged".

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("skysync_item") as batch:
        batch.add_column(sa.Column("attempt", Json, nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("skysync_item") as batch:
        batch.drop_column("attempt")
