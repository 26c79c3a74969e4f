"""An index for the relay's own bookkeeping on the rows a claim holds.

Every update the relay makes under a claim names the claim token and either row ids or SKUs
(the older rows of a SKU, folded into its newest, are settled by token and SKU). Without this
index PostgreSQL reached those rows through ``(state, id)``, reading every row in flight for
each SKU it settled: a claim of 50,000 rows over 500 SKUs read 25 million index entries.

Partial (``state = 'in_flight'``): the ERP's INSERT writes pending rows, which never enter it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IN_FLIGHT = sa.text("state = 'in_flight'")


def upgrade() -> None:
    op.create_index(
        "ix_skysync_outbox_claim",
        "skysync_outbox",
        ["claim_token", "ref"],
        postgresql_where=IN_FLIGHT,
        sqlite_where=IN_FLIGHT,
    )


def downgrade() -> None:
    op.drop_index("ix_skysync_outbox_claim", table_name="skysync_outbox")
