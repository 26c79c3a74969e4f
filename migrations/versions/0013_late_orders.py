"""An index for ``skysync orders late``: the orders still to ship or to invoice, by status.

``skysync_order`` keeps every order skysync has seen, so it grows for ever, while the orders
that can be late (paid and not shipped, approved and not invoiced) are the few still open. The
late queries, which `skysync status` and every metrics scrape run too, ask for those statuses
and an expedition limit up to a cutoff: ``(status, account, expedition_limit_at)`` reaches them
without reading the shipped and cancelled history. (Unconsumed inbox rows already have their
partial index, ``ix_skysync_order_inbox_unconsumed``.)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_skysync_order_status_limit",
        "skysync_order",
        ["status", "account", "expedition_limit_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_skysync_order_status_limit", table_name="skysync_order")
