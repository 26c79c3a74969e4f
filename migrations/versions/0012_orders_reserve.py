"""Orders that hold stock back, and the dates that make an order late.

* ``skysync_order_line``: the units of each SKU an order holds (summed over its lines), from the
  ``items`` of the order as SkyHub delivered it. With ``SKYSYNC_RESERVE_OPEN_ORDERS`` the
  quantity sent for a SKU is the ERP's less the units of the orders the ERP has not reflected
  yet (docs/orders.md). Orders already in the inbox get their lines (and dates) from their
  latest parsed state.
* ``skysync_order`` gets the order's dates: placed, approved, the expedition limit (the date by
  which the seller must ship) and the estimated delivery, for ``skysync orders late``.
* ``skysync_outbox.origin`` may be ``reservation`` too: a stock row skysync writes when an order
  changes what a SKU may offer. ``basis_id`` is, on a row skysync writes (a correction or a
  reservation row), the ERP row whose quantity it repeats: the reservation counts from the time
  the ERP wrote that quantity, not from the time skysync repeated it. The ERP's role is not
  granted the column.
* On SQLite ``created_at`` gets millisecond precision (CURRENT_TIMESTAMP has whole seconds): an
  order consumed in the second after a stock row was written must not count as reflected by it.
  SQLite cannot change a CHECK or a default in place, so the outbox is rebuilt (Alembic's batch
  mode, as in 0005: indexes kept, AUTOINCREMENT and its sequence kept) and the trigger that
  keeps ``origin`` fixed (0007) is made again.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from skysync.domain.order_flow import ORDER_DATES, order_dates
from skysync.domain.reservation import order_lines
from skysync.store.models import UTCDateTime

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ORIGINS_AT_0007 = ("erp", "reconcile")
ORIGINS_AT_0012 = (*ORIGINS_AT_0007, "reservation")
SQLITE_NOW_MS = "(strftime('%Y-%m-%d %H:%M:%f', 'now'))"
_ORIGIN_FIXED = "skysync_outbox.origin is written once, by the writer of the row"


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def _outbox_batch() -> Any:
    return op.batch_alter_table(
        "skysync_outbox", recreate="auto", table_kwargs={"sqlite_autoincrement": True}
    )


def _sqlite_sequence() -> int | None:
    if not _sqlite():
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


def _sqlite_origin_trigger() -> None:
    op.execute(
        "CREATE TRIGGER skysync_outbox_origin_fixed BEFORE UPDATE OF origin ON skysync_outbox "
        "FOR EACH ROW WHEN NEW.origin IS NOT OLD.origin "
        f"BEGIN SELECT RAISE(ABORT, '{_ORIGIN_FIXED}'); END"
    )


def _outbox(origins: tuple[str, ...], *, basis: bool, now: str) -> None:
    seq = _sqlite_sequence()
    if _sqlite():
        op.execute("DROP TRIGGER IF EXISTS skysync_outbox_origin_fixed")
    with _outbox_batch() as batch:
        if basis:
            batch.add_column(sa.Column("basis_id", sa.BigInteger(), nullable=True))
        else:
            batch.drop_column("basis_id")
        batch.drop_constraint("ck_skysync_outbox_origin", type_="check")
        batch.create_check_constraint("ck_skysync_outbox_origin", _in("origin", origins))
        if _sqlite():
            batch.alter_column(
                "created_at", existing_type=UTCDateTime(), server_default=sa.text(now)
            )
    _restore_sqlite_sequence(seq)
    if _sqlite():
        _sqlite_origin_trigger()


def upgrade() -> None:
    _outbox(ORIGINS_AT_0012, basis=True, now=SQLITE_NOW_MS)
    with op.batch_alter_table("skysync_order") as batch:
        for name in ("placed_at", "approved_at", "expedition_limit_at", "estimated_delivery_at"):
            batch.add_column(sa.Column(name, UTCDateTime(), nullable=True))
    op.create_table(
        "skysync_order_line",
        sa.Column("account", sa.Text(), nullable=False, server_default="default"),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("account", "code", "sku", name="skysync_order_line_pkey"),
        sa.CheckConstraint("qty >= 0", name="ck_skysync_order_line_qty"),
    )
    op.create_index("ix_skysync_order_line_sku", "skysync_order_line", ["account", "sku"])
    _backfill()


def _backfill() -> None:
    """Orders pulled before this migration: their lines and dates from the latest parsed state
    in the inbox, as the pull now stores them (so switching the reservation on counts them)."""
    bind = op.get_bind()
    inbox = sa.table(
        "skysync_order_inbox",
        sa.column("id"),
        sa.column("account"),
        sa.column("code"),
        sa.column("raw", sa.JSON()),
        sa.column("parse_error"),
    )
    latest: dict[tuple[str, str], Any] = {}
    query = (
        sa.select(inbox.c.account, inbox.c.code, inbox.c.raw)
        .where(inbox.c.parse_error.is_(None), inbox.c.code != "?")
        .order_by(inbox.c.id)
    )
    for account, code, raw in bind.execute(query):
        latest[(account, code)] = json.loads(raw) if isinstance(raw, str) else raw
    line = sa.table(
        "skysync_order_line",
        sa.column("account"),
        sa.column("code"),
        sa.column("sku"),
        sa.column("qty"),
    )
    order = sa.table(
        "skysync_order",
        sa.column("account"),
        sa.column("code"),
        *(sa.column(name, UTCDateTime()) for name in ORDER_DATES),
    )
    for (account, code), raw in latest.items():
        if not isinstance(raw, dict):
            continue
        lines = order_lines(raw.get("items"))
        if lines:
            bind.execute(
                line.insert(),
                [{"account": account, "code": code, "sku": k, "qty": v} for k, v in lines.items()],
            )
        dates = {k: v for k, v in order_dates(raw).items() if v is not None}
        if dates:
            bind.execute(
                order.update()
                .where(order.c.account == account, order.c.code == code)
                .values(**dates)
            )


def downgrade() -> None:
    op.drop_index("ix_skysync_order_line_sku", table_name="skysync_order_line")
    op.drop_table("skysync_order_line")
    with op.batch_alter_table("skysync_order") as batch:
        for name in ("estimated_delivery_at", "expedition_limit_at", "approved_at", "placed_at"):
            batch.drop_column(name)
    # skysync's own reservation rows go; the ERP's and the corrections stay
    op.execute("DELETE FROM skysync_outbox WHERE origin = 'reservation'")
    _outbox(ORIGINS_AT_0007, basis=False, now="CURRENT_TIMESTAMP")
