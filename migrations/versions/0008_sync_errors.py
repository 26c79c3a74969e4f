"""SkyHub's own errors about products and orders it accepted (``/sync_errors``), kept per SKU
and order: one row per (entity type, entity, category, code), never deleted; resolved when SkyHub
stops listing it, ignored when an operator asked SkyHub to ignore it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from skysync.store.models import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "skysync_sync_error",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("entity_type", sa.Text(), nullable=False),
        sa.Column("entity_id", sa.Text(), nullable=False),
        sa.Column("error_category_code", sa.Text(), nullable=False),
        sa.Column("error_code", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("last_occurrence", sa.Text(), nullable=True),
        sa.Column("raw", Json, nullable=False, server_default="{}"),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
        sa.Column("ignored_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "entity_type IN ('products', 'orders')", name="ck_skysync_sync_error_entity_type"
        ),
        sa.UniqueConstraint(
            "entity_type",
            "entity_id",
            "error_category_code",
            "error_code",
            name="uq_skysync_sync_error_key",
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_skysync_sync_error_entity", "skysync_sync_error", ["entity_id"])


def downgrade() -> None:
    op.drop_index("ix_skysync_sync_error_entity", table_name="skysync_sync_error")
    op.drop_table("skysync_sync_error")
