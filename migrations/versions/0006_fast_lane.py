"""The fast lane's doorbell: on PostgreSQL, a trigger that NOTIFYs ``skysync_fast_lane`` when a
price or stock row is INSERTed into the outbox (docs/fast-lane.md).

The ERP's INSERT stays a plain INSERT. The trigger fires only for kind price or stock (its WHEN
clause is checked before any function runs), and the notification has an empty payload, so
PostgreSQL folds all of a transaction's notifications into one, delivered at COMMIT. Whether a
row is a stock-out, and whether the lane is on at all, is decided by the listener
(SKYSYNC_FAST_LANE): with nobody listening a notification is dropped. SQLite has no
LISTEN/NOTIFY: there the lane polls, and this revision changes nothing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION skysync_outbox_fast_lane_notify() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('skysync_fast_lane', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER skysync_outbox_fast_lane
        AFTER INSERT ON skysync_outbox
        FOR EACH ROW WHEN (NEW.kind IN ('price', 'stock'))
        EXECUTE FUNCTION skysync_outbox_fast_lane_notify()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS skysync_outbox_fast_lane ON skysync_outbox")
    op.execute("DROP FUNCTION IF EXISTS skysync_outbox_fast_lane_notify()")
