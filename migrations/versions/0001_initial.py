"""Initial tables: outbox, item, order inbox, order, run log.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from skysync.store.models import LenientJSON, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")
NOW = sa.func.current_timestamp()


# The lists as they were at this revision (skysync.domain.kinds holds today's: a new kind or
# state comes with a migration of its own that changes the CHECK, never by editing this one).
KINDS_AT_0001 = (
    "product", "price", "stock", "order_invoice", "order_shipment", "order_delivery",
    "order_cancel", "order_shipment_exception",
)  # fmt: skip
STATES_AT_0001 = ("pending", "in_flight", "sent", "superseded", "withheld", "rejected", "dead")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "skysync_outbox",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("created_at", UTCDateTime(), nullable=False, server_default=NOW),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("ref", sa.Text(), nullable=False),
        sa.Column("payload", LenientJSON(), nullable=True),
        sa.Column("state", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("available_at", UTCDateTime(), nullable=False, server_default=NOW),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("claim_token", sa.Text(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("superseded_by", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(_in("kind", KINDS_AT_0001), name="ck_skysync_outbox_kind"),
        sa.CheckConstraint(_in("state", STATES_AT_0001), name="ck_skysync_outbox_state"),
        sa.CheckConstraint(
            "state IN ('pending', 'in_flight', 'sent') OR reason IS NOT NULL",
            name="ck_skysync_outbox_reason",
        ),
        sa.CheckConstraint("attempts >= 0", name="ck_skysync_outbox_attempts"),
        sqlite_autoincrement=True,  # ids never reused: id order is the ERP's write order
    )
    op.create_index("ix_skysync_outbox_ref_state", "skysync_outbox", ["ref", "state"])
    op.create_index("ix_skysync_outbox_state_id", "skysync_outbox", ["state", "id"])
    # The claim query's index: only due pending rows, oldest first.
    op.create_index(
        "ix_skysync_outbox_due",
        "skysync_outbox",
        ["available_at", "id"],
        postgresql_where=sa.text("state = 'pending'"),
        sqlite_where=sa.text("state = 'pending'"),
    )

    op.create_table(
        "skysync_item",
        sa.Column("sku", sa.Text(), primary_key=True),
        sa.Column("parent_sku", sa.Text(), nullable=True),
        sa.Column("in_skyhub", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("acknowledged", Json, nullable=False, server_default="{}"),
        sa.Column("linked", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("linked_since", UTCDateTime(), nullable=True),
        sa.Column("frozen", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("frozen_since", UTCDateTime(), nullable=True),
        sa.Column("unfrozen_at", UTCDateTime(), nullable=True),
        sa.Column("last_applied", Json, nullable=False, server_default="{}"),
        sa.Column("checked_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_skysync_item_parent", "skysync_item", ["parent_sku"])

    op.create_table(
        "skysync_order_inbox",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("dedupe_key", sa.Text(), nullable=False),
        sa.Column("raw", LenientJSON(), nullable=False),
        sa.Column("parse_error", sa.Text(), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False, server_default=NOW),
        sa.Column("consumed_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("dedupe_key", name="uq_skysync_order_inbox_dedupe_key"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_skysync_order_inbox_code", "skysync_order_inbox", ["code"])
    op.create_index(
        "ix_skysync_order_inbox_unconsumed",
        "skysync_order_inbox",
        ["id"],
        postgresql_where=sa.text("consumed_at IS NULL"),
        sqlite_where=sa.text("consumed_at IS NULL"),
    )

    op.create_table(
        "skysync_order",
        sa.Column("code", sa.Text(), primary_key=True),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("status_source", sa.Text(), nullable=True),
        sa.Column("last_inbox_id", sa.BigInteger(), nullable=True),
        sa.Column("parse_error", sa.Text(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=True),
    )

    op.create_table(
        "skysync_run",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("claim_token", sa.Text(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("summary", Json, nullable=False, server_default="{}"),
        sa.Column("error", sa.Text(), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_skysync_run_kind_started", "skysync_run", ["kind", "started_at"])
    op.create_index("ix_skysync_run_claim_token", "skysync_run", ["claim_token"])


def downgrade() -> None:
    op.drop_table("skysync_run")
    op.drop_table("skysync_order")
    op.drop_index("ix_skysync_order_inbox_unconsumed", table_name="skysync_order_inbox")
    op.drop_index("ix_skysync_order_inbox_code", table_name="skysync_order_inbox")
    op.drop_table("skysync_order_inbox")
    op.drop_index("ix_skysync_item_parent", table_name="skysync_item")
    op.drop_table("skysync_item")
    op.drop_index("ix_skysync_outbox_due", table_name="skysync_outbox")
    op.drop_index("ix_skysync_outbox_state_id", table_name="skysync_outbox")
    op.drop_index("ix_skysync_outbox_ref_state", table_name="skysync_outbox")
    op.drop_table("skysync_outbox")
