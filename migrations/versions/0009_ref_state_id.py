"""The SKU index ends with the id: a claim reads each SKU's pending rows newest first.

The claim folds a SKU's backlog into its newest rows as it reads them (the older rows are
superseded on the spot, never put in flight), so it reads each SKU's pending rows newest first,
a page at a time. ``(ref, state)`` found them but not in id order: PostgreSQL sorted the whole
backlog of a SKU for every page. ``(ref, state, id)`` replaces it, so the ERP's INSERT still
pays for the same number of indexes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_skysync_outbox_ref_state_id", "skysync_outbox", ["ref", "state", "id"])
    op.drop_index("ix_skysync_outbox_ref_state", table_name="skysync_outbox")


def downgrade() -> None:
    op.create_index("ix_skysync_outbox_ref_state", "skysync_outbox", ["ref", "state"])
    op.drop_index("ix_skysync_outbox_ref_state_id", table_name="skysync_outbox")
