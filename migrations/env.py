"""Alembic environment: the URL comes from Settings (or from the caller's config), never from
alembic.ini. On PostgreSQL the run holds an advisory lock, so two `migrate` containers starting
together apply each revision once, and uses a lock timeout so it fails loudly instead of
queueing behind a long transaction."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from skysync.config import get_settings
from skysync.store.db import get_engine
from skysync.store.models import Base

MIGRATION_LOCK_ID = 0x5C75_1C00  # arbitrary, fixed: "skysync migrate"

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.attributes.get("database_url") or get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = _url()
    engine = get_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SET lock_timeout = '30s'"))
            connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_ID})
            connection.commit()
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_ID}
                )
                connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
