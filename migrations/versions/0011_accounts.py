"""Several SkyHub accounts in one deployment: every table says whose its rows are.

* ``skysync_outbox.account``: the account the ERP names (``INSERT ... (account, kind, ref,
  payload)``); a row without it belongs to ``default``, the account of the single-account
  settings (SKYSYNC_SKYHUB_EMAIL, ...), so an ERP that never names one keeps working unchanged.
  The ERP's role is granted the column (``skysync erp-role``). The due index and the
  (ref, state, id) index lead with it: a claim reads one account's rows; the (state, id) index
  becomes (state, account, id), for one account's oldest pending row.
* ``skysync_item`` and ``skysync_order`` are keyed by (account, SKU) and (account, order code):
  the same SKU in two accounts is two items, each with its own acknowledged values, frozen
  state and attempt records.
* ``skysync_chunk``: the chunks a claim handed out and those waiting their turn: an account has
  at most SKYSYNC_CHUNKS_PER_ACCOUNT chunks with the workers at once (relay/handout.py), so one
  account's backlog never takes every worker from the others.
* ``skysync_order_inbox``, ``skysync_run``, ``skysync_request_stat`` and
  ``skysync_sync_error`` carry the account too; the inbox's dedupe key and a sync error's key
  are unique per account.

Everything written before this migration is the ``default`` account's (the column's default),
so the upgrade moves a single-account database into ``default`` without touching a row. On
SQLite the tables whose key changes are rebuilt (Alembic's batch mode copies every row, ids
included); the outbox is never rebuilt, so its AUTOINCREMENT sequence stays as it is.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from skysync.store.models import UTCDateTime

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT = "default"
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def _account() -> sa.Column[str]:
    return sa.Column("account", sa.Text(), nullable=False, server_default=DEFAULT)


@contextmanager
def _new_key_warning_silenced() -> Iterator[None]:
    """SQLAlchemy warns that the rebuilt table's key differs from the old one's: the point."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Table '_alembic_tmp_", sa.exc.SAWarning)
        yield


def _rekey(table: str, pk_name: str, columns: list[str]) -> None:
    """Give ``table`` the primary key ``columns`` (after adding its account column)."""
    if op.get_bind().dialect.name == "postgresql":
        op.add_column(table, _account())
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {pk_name}")
        op.create_primary_key(pk_name, table, columns)
        return
    with _new_key_warning_silenced(), op.batch_alter_table(table, recreate="always") as batch:
        batch.add_column(_account())
        batch.create_primary_key(pk_name, columns)


def _unkey(table: str, pk_name: str, columns: list[str]) -> None:
    """The reverse of :func:`_rekey`: ``columns`` (without the account) as the key again."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {pk_name}")
        op.drop_column(table, "account")
        op.create_primary_key(pk_name, table, columns)
        return
    with _new_key_warning_silenced(), op.batch_alter_table(table, recreate="always") as batch:
        batch.drop_column("account")
        batch.create_primary_key(pk_name, columns)


def _reunique(table: str, name: str, columns: list[str], *, add_account: bool) -> None:
    with op.batch_alter_table(table) as batch:
        if add_account:
            batch.add_column(_account())
        batch.drop_constraint(name, type_="unique")
        batch.create_unique_constraint(name, columns)


def upgrade() -> None:
    op.create_table(
        "skysync_chunk",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("first_id", sa.BigInteger(), nullable=False),
        sa.Column("row_ids", Json, nullable=False),
        sa.Column("queued_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("token", "first_id", name="uq_skysync_chunk_token_first"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_skysync_chunk_account", "skysync_chunk", ["account", "sent_at", "id"])
    op.add_column("skysync_outbox", _account())
    op.drop_index("ix_skysync_outbox_due", table_name="skysync_outbox")
    op.create_index(
        "ix_skysync_outbox_due",
        "skysync_outbox",
        ["account", "available_at", "id"],
        postgresql_where=sa.text("state = 'pending'"),
        sqlite_where=sa.text("state = 'pending'"),
    )
    op.drop_index("ix_skysync_outbox_ref_state_id", table_name="skysync_outbox")
    op.create_index(
        "ix_skysync_outbox_ref_state_id", "skysync_outbox", ["account", "ref", "state", "id"]
    )
    op.drop_index("ix_skysync_outbox_state_id", table_name="skysync_outbox")
    op.create_index("ix_skysync_outbox_state_id", "skysync_outbox", ["state", "account", "id"])

    _rekey("skysync_item", "skysync_item_pkey", ["account", "sku"])
    op.drop_index("ix_skysync_item_parent", table_name="skysync_item")
    op.create_index("ix_skysync_item_parent", "skysync_item", ["account", "parent_sku"])
    _rekey("skysync_order", "skysync_order_pkey", ["account", "code"])
    _rekey(
        "skysync_request_stat",
        "skysync_request_stat_pkey",
        ["account", "method", "route", "status"],
    )

    _reunique(
        "skysync_order_inbox",
        "uq_skysync_order_inbox_dedupe_key",
        ["account", "dedupe_key"],
        add_account=True,
    )
    op.drop_index("ix_skysync_order_inbox_code", table_name="skysync_order_inbox")
    op.create_index("ix_skysync_order_inbox_code", "skysync_order_inbox", ["account", "code"])

    _reunique(
        "skysync_sync_error",
        "uq_skysync_sync_error_key",
        ["account", "entity_type", "entity_id", "error_category_code", "error_code"],
        add_account=True,
    )
    op.drop_index("ix_skysync_sync_error_entity", table_name="skysync_sync_error")
    op.create_index("ix_skysync_sync_error_entity", "skysync_sync_error", ["account", "entity_id"])

    op.add_column("skysync_run", _account())
    op.drop_index("ix_skysync_run_kind_started", table_name="skysync_run")
    op.create_index("ix_skysync_run_kind_started", "skysync_run", ["account", "kind", "started_at"])


_TABLES = (
    "skysync_outbox",
    "skysync_item",
    "skysync_order",
    "skysync_order_inbox",
    "skysync_sync_error",
    "skysync_run",
    "skysync_request_stat",
)


def _refuse_other_accounts() -> None:
    """A single-account schema cannot hold another account's rows, and dropping them would lose
    them: refuse, saying where they are."""
    bind = op.get_bind()
    found = {
        table: bind.execute(
            sa.text(f"SELECT count(*) FROM {table} WHERE account <> :d"), {"d": DEFAULT}
        ).scalar_one()
        for table in _TABLES
    }
    held = {table: n for table, n in found.items() if n}
    if held:
        where = ", ".join(f"{table}: {n}" for table, n in held.items())
        raise RuntimeError(
            f"cannot downgrade below 0011: rows of accounts other than {DEFAULT!r} exist "
            f"({where}); a single-account schema cannot hold them"
        )


def downgrade() -> None:
    _refuse_other_accounts()
    op.drop_table("skysync_chunk")
    op.drop_index("ix_skysync_run_kind_started", table_name="skysync_run")
    op.create_index("ix_skysync_run_kind_started", "skysync_run", ["kind", "started_at"])
    op.execute("ALTER TABLE skysync_run DROP COLUMN account")

    op.drop_index("ix_skysync_sync_error_entity", table_name="skysync_sync_error")
    op.create_index("ix_skysync_sync_error_entity", "skysync_sync_error", ["entity_id"])
    with op.batch_alter_table("skysync_sync_error") as batch:
        batch.drop_constraint("uq_skysync_sync_error_key", type_="unique")
        batch.drop_column("account")
        batch.create_unique_constraint(
            "uq_skysync_sync_error_key",
            ["entity_type", "entity_id", "error_category_code", "error_code"],
        )

    op.drop_index("ix_skysync_order_inbox_code", table_name="skysync_order_inbox")
    op.create_index("ix_skysync_order_inbox_code", "skysync_order_inbox", ["code"])
    with op.batch_alter_table("skysync_order_inbox") as batch:
        batch.drop_constraint("uq_skysync_order_inbox_dedupe_key", type_="unique")
        batch.drop_column("account")
        batch.create_unique_constraint("uq_skysync_order_inbox_dedupe_key", ["dedupe_key"])

    _unkey("skysync_request_stat", "skysync_request_stat_pkey", ["method", "route", "status"])
    _unkey("skysync_order", "skysync_order_pkey", ["code"])
    op.drop_index("ix_skysync_item_parent", table_name="skysync_item")
    _unkey("skysync_item", "skysync_item_pkey", ["sku"])
    op.create_index("ix_skysync_item_parent", "skysync_item", ["parent_sku"])

    op.drop_index("ix_skysync_outbox_ref_state_id", table_name="skysync_outbox")
    op.create_index("ix_skysync_outbox_ref_state_id", "skysync_outbox", ["ref", "state", "id"])
    op.drop_index("ix_skysync_outbox_state_id", table_name="skysync_outbox")
    op.create_index("ix_skysync_outbox_state_id", "skysync_outbox", ["state", "id"])
    op.drop_index("ix_skysync_outbox_due", table_name="skysync_outbox")
    op.create_index(
        "ix_skysync_outbox_due",
        "skysync_outbox",
        ["available_at", "id"],
        postgresql_where=sa.text("state = 'pending'"),
        sqlite_where=sa.text("state = 'pending'"),
    )
    op.execute("ALTER TABLE skysync_outbox DROP COLUMN account")
