"""Tables. Created only by the Alembic migrations in ``migrations/``; these definitions describe
them for queries. They run on PostgreSQL (production) and SQLite (the embedded default)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from skysync.domain.kinds import DEFAULT_ACCOUNT, Kind, Origin, RowState, UnreadableJSON
from skysync.domain.selection import TROUBLE_STATES


def utcnow() -> datetime:
    return datetime.now(UTC)


def lenient_json_loads(text: str | bytes) -> Any:
    """json.loads that never raises: garbage or absurd nesting comes back as UnreadableJSON,
    so one bad row is rejected with a reason instead of failing the query that read it."""
    try:
        return json.loads(text)
    except RecursionError:
        return UnreadableJSON(str(text)[:200], "is nested too deeply to read")
    except (TypeError, ValueError):
        return UnreadableJSON(str(text)[:200])


def payload_from_stored(value: str | bytes | None) -> Any:
    """A payload as stored (JSON text; on SQLite an ERP may have written bytes) read as
    :class:`LenientJSON` reads it: garbage comes back as UnreadableJSON, never raised."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return UnreadableJSON(repr(value[:200]))
    return lenient_json_loads(value)


def payload_text(column: Any, dialect: str) -> sa.ColumnElement[Any]:
    """``column`` (a :class:`LenientJSON` payload) selected as its stored JSON text, left for
    the caller to read (:func:`payload_from_stored`): jsonb printed as text on PostgreSQL, the
    raw value on SQLite (a cast there would fail on bytes that are not UTF-8)."""
    if dialect == "postgresql":
        return sa.cast(column, sa.Text)
    return sa.type_coerce(column, sa.Text)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite stores naive UTC text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        # a str: CURRENT_TIMESTAMP text written by a plain-SQL default
        stamp: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        if stamp.tzinfo is None:
            return stamp.replace(tzinfo=UTC)
        return stamp.astimezone(UTC)


class LenientJSON(sa.TypeDecorator[Any]):
    """JSON (jsonb on PostgreSQL) that reads malformed text as :class:`UnreadableJSON`."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB())
        # On SQLite read the raw text ourselves so that garbage cannot raise inside the driver.
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if dialect.name == "postgresql":
            return value
        return None if value is None else json.dumps(value, ensure_ascii=False)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        if dialect.name == "postgresql":
            return value
        return payload_from_stored(value)


class Base(DeclarativeBase):
    pass


def account_column(*, primary_key: bool = False) -> Mapped[str]:
    """The SkyHub account a row belongs to (migration 0011): ``default`` unless written."""
    return mapped_column(
        sa.Text(), primary_key=primary_key, nullable=False, server_default=DEFAULT_ACCOUNT
    )


def _in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class OutboxRow(Base):
    """One change written by the ERP. The ERP writes kind, ref and payload; the rest is ours."""

    __tablename__ = "skysync_outbox"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    # the database's time of the ERP's write; milliseconds on SQLite (migration 0012)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=sa.func.current_timestamp()
    )
    # the SkyHub account the ERP names (migration 0011); a row without one is default's
    account: Mapped[str] = account_column()
    kind: Mapped[str] = mapped_column(sa.Text(), nullable=False)
    ref: Mapped[str] = mapped_column(sa.Text(), nullable=False)
    payload: Mapped[Any] = mapped_column(LenientJSON(), nullable=True)
    state: Mapped[str] = mapped_column(
        sa.Text(), nullable=False, server_default=RowState.PENDING.value
    )
    attempts: Mapped[int] = mapped_column(sa.Integer(), nullable=False, server_default="0")
    available_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=sa.func.current_timestamp()
    )
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    claim_token: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    reason: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    superseded_by: Mapped[int | None] = mapped_column(sa.BigInteger(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    last_status: Mapped[int | None] = mapped_column(sa.Integer(), nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # an operator released this held row: the price guard lets it through (migration 0005)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # who wrote the row: the ERP (the default, the only value its role can get) or skysync's
    # reconciliation (a correction); fixed once written (a trigger refuses a change)
    origin: Mapped[str] = mapped_column(sa.Text(), nullable=False, server_default=Origin.ERP.value)
    # the first claim that put the row in flight (migration 0010): a key's rows are ordered by
    # (claim_epoch, id), a row no claim has read yet (NULL) after all of them
    claim_epoch: Mapped[int | None] = mapped_column(sa.BigInteger(), nullable=True)
    # on a row skysync writes (origin reconcile or reservation): the ERP row whose quantity it
    # repeats; a reservation counts from that row's created_at (migration 0012)
    basis_id: Mapped[int | None] = mapped_column(sa.BigInteger(), nullable=True)

    __table_args__ = (
        sa.CheckConstraint(_in("kind", Kind), name="ck_skysync_outbox_kind"),
        sa.CheckConstraint(_in("origin", Origin), name="ck_skysync_outbox_origin"),
        sa.CheckConstraint(_in("state", RowState), name="ck_skysync_outbox_state"),
        sa.CheckConstraint(  # every row that is not (yet) sent says why
            _in("state", (RowState.PENDING, RowState.IN_FLIGHT, RowState.SENT))
            + " OR reason IS NOT NULL",
            name="ck_skysync_outbox_reason",
        ),
        sa.CheckConstraint("attempts >= 0", name="ck_skysync_outbox_attempts"),
        sa.Index("ix_skysync_outbox_ref_state_id", "account", "ref", "state", "id"),  # 0011
        sa.Index("ix_skysync_outbox_state_id", "state", "account", "id"),  # 0011
        sa.Index(
            "ix_skysync_outbox_due",
            "account",
            "available_at",
            "id",
            postgresql_where=sa.text(f"state = '{RowState.PENDING}'"),
            sqlite_where=sa.text(f"state = '{RowState.PENDING}'"),
        ),
        sa.Index(  # the console's rows in trouble, by keyset (migration 0014)
            "ix_skysync_outbox_trouble",
            "account",
            "id",
            postgresql_where=sa.text(_in("state", TROUBLE_STATES)),
            sqlite_where=sa.text(_in("state", TROUBLE_STATES)),
        ),
        sa.Index(  # the console's rows sent per minute (migration 0014)
            "ix_skysync_outbox_sent_at",
            "account",
            "finished_at",
            postgresql_where=sa.text(f"state = '{RowState.SENT}'"),
            sqlite_where=sa.text(f"state = '{RowState.SENT}'"),
        ),
        sa.Index(  # the relay's updates under a claim, by token and SKU (migration 0004)
            "ix_skysync_outbox_claim",
            "claim_token",
            "ref",
            postgresql_where=sa.text(f"state = '{RowState.IN_FLIGHT}'"),
            sqlite_where=sa.text(f"state = '{RowState.IN_FLIGHT}'"),
        ),
        {"sqlite_autoincrement": True},
    )


class Item(Base):
    """Per account and SKU: what SkyHub last acknowledged, and whether the marketplace froze it."""

    __tablename__ = "skysync_item"

    account: Mapped[str] = account_column(primary_key=True)
    sku: Mapped[str] = mapped_column(sa.Text(), primary_key=True)
    parent_sku: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    in_skyhub: Mapped[bool] = mapped_column(sa.Boolean(), nullable=False, server_default=sa.false())
    acknowledged: Mapped[dict[str, Any]] = mapped_column(
        sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False, server_default="{}"
    )
    linked: Mapped[bool] = mapped_column(sa.Boolean(), nullable=False, server_default=sa.false())
    linked_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    frozen: Mapped[bool] = mapped_column(sa.Boolean(), nullable=False, server_default=sa.false())
    frozen_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    unfrozen_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_applied: Mapped[dict[str, Any]] = mapped_column(
        sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False, server_default="{}"
    )
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # fields of a write sent without a recorded answer yet: SkyHub's value for them is unknown
    attempt: Mapped[dict[str, Any]] = mapped_column(
        sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False, server_default="{}"
    )
    # per field, the claim epoch of the row last_applied names (0: applied before 0010)
    applied_epochs: Mapped[dict[str, Any]] = mapped_column(
        sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False, server_default="{}"
    )

    __table_args__ = (sa.Index("ix_skysync_item_parent", "account", "parent_sku"),)


class Counter(Base):
    """Numbers skysync hands out in order: ``claim_epoch``, one per claim (migration 0010)."""

    __tablename__ = "skysync_counter"

    name: Mapped[str] = mapped_column(sa.Text(), primary_key=True)
    value: Mapped[int] = mapped_column(sa.BigInteger(), nullable=False, server_default="0")


class Chunk(Base):
    """A chunk of a claim (its rows by id) handed to the workers (``sent_at``) or waiting its
    turn: an account has at most SKYSYNC_CHUNKS_PER_ACCOUNT out at once (relay/handout.py)."""

    __tablename__ = "skysync_chunk"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    account: Mapped[str] = mapped_column(sa.Text(), nullable=False)
    token: Mapped[str] = mapped_column(sa.Text(), nullable=False)
    first_id: Mapped[int] = mapped_column(sa.BigInteger(), nullable=False)
    row_ids: Mapped[list[int]] = mapped_column(
        sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False
    )
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        sa.UniqueConstraint("token", "first_id", name="uq_skysync_chunk_token_first"),
        sa.Index("ix_skysync_chunk_account", "account", "sent_at", "id"),
        {"sqlite_autoincrement": True},
    )


class OrderInbox(Base):
    """One row per order state received from SkyHub's queue, for the ERP to read."""

    __tablename__ = "skysync_order_inbox"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    account: Mapped[str] = account_column()  # whose queue the order came from
    code: Mapped[str] = mapped_column(sa.Text(), nullable=False)
    status: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    dedupe_key: Mapped[str] = mapped_column(sa.Text(), nullable=False)
    raw: Mapped[Any] = mapped_column(LenientJSON(), nullable=False)
    parse_error: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    received_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=sa.func.current_timestamp()
    )
    consumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        sa.UniqueConstraint("account", "dedupe_key", name="uq_skysync_order_inbox_dedupe_key"),
        sa.Index("ix_skysync_order_inbox_code", "account", "code"),
        sa.Index(
            "ix_skysync_order_inbox_unconsumed",
            "id",
            postgresql_where=sa.text("consumed_at IS NULL"),
            sqlite_where=sa.text("consumed_at IS NULL"),
        ),
        {"sqlite_autoincrement": True},
    )


class Order(Base):
    """The current state of each order skysync has seen or pushed."""

    __tablename__ = "skysync_order"

    account: Mapped[str] = account_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.Text(), primary_key=True)
    status: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    status_source: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    last_inbox_id: Mapped[int | None] = mapped_column(sa.BigInteger(), nullable=True)
    parse_error: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # SkyHub's dates of the order (migration 0012), from its latest parsed state
    placed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expedition_limit_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    estimated_delivery_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (  # the orders still open, for `skysync orders late` (migration 0013)
        sa.Index("ix_skysync_order_status_limit", "status", "account", "expedition_limit_at"),
    )


class OrderLine(Base):
    """The units of one SKU an order holds (its items of that SKU summed), from the order as
    SkyHub last delivered it: what the stock reservation counts (migration 0012)."""

    __tablename__ = "skysync_order_line"

    account: Mapped[str] = account_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.Text(), primary_key=True)
    sku: Mapped[str] = mapped_column(sa.Text(), primary_key=True)
    qty: Mapped[int] = mapped_column(sa.Integer(), nullable=False)

    __table_args__ = (
        sa.CheckConstraint("qty >= 0", name="ck_skysync_order_line_qty"),
        sa.Index("ix_skysync_order_line_sku", "account", "sku"),
    )


class RunLog(Base):
    """One row per relay batch or order pull: when it ran, what it did, why it stopped."""

    __tablename__ = "skysync_run"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    account: Mapped[str] = account_column()
    kind: Mapped[str] = mapped_column(sa.Text(), nullable=False)
    claim_token: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    summary: Mapped[dict[str, Any]] = mapped_column(
        sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False, server_default="{}"
    )
    error: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)

    __table_args__ = (
        sa.Index("ix_skysync_run_kind_started", "account", "kind", "started_at"),
        # the newest run of a kind of any account (status of every account; migration 0014)
        sa.Index("ix_skysync_run_kind_started_at", "kind", "started_at"),
        sa.Index("ix_skysync_run_claim_token", "claim_token"),
        {"sqlite_autoincrement": True},
    )


class RequestStat(Base):
    """How many requests skysync made to SkyHub, by method, route template and status."""

    __tablename__ = "skysync_request_stat"

    account: Mapped[str] = account_column(primary_key=True)
    method: Mapped[str] = mapped_column(sa.Text(), primary_key=True)
    route: Mapped[str] = mapped_column(sa.Text(), primary_key=True)
    status: Mapped[str] = mapped_column(sa.Text(), primary_key=True)
    count: Mapped[int] = mapped_column(sa.BigInteger(), nullable=False, server_default="0")


class SyncError(Base):
    """One of SkyHub's own errors about a product or order it accepted (``/sync_errors``):
    never deleted; resolved when SkyHub stops listing it, ignored when an operator asked SkyHub
    to ignore it."""

    __tablename__ = "skysync_sync_error"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    account: Mapped[str] = account_column()
    entity_type: Mapped[str] = mapped_column(sa.Text(), nullable=False)  # products | orders
    entity_id: Mapped[str] = mapped_column(sa.Text(), nullable=False)  # SKU or order code
    error_category_code: Mapped[str] = mapped_column(sa.Text(), nullable=False)
    error_code: Mapped[str] = mapped_column(sa.Text(), nullable=False)
    message: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)
    last_occurrence: Mapped[str | None] = mapped_column(sa.Text(), nullable=True)  # SkyHub's
    raw: Mapped[dict[str, Any]] = mapped_column(
        sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False, server_default="{}"
    )
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ignored_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        sa.CheckConstraint(
            "entity_type IN ('products', 'orders')", name="ck_skysync_sync_error_entity_type"
        ),
        sa.UniqueConstraint(
            "account",
            "entity_type",
            "entity_id",
            "error_category_code",
            "error_code",
            name="uq_skysync_sync_error_key",
        ),
        sa.Index("ix_skysync_sync_error_entity", "account", "entity_id"),
        {"sqlite_autoincrement": True},
    )
