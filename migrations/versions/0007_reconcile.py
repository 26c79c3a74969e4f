"""Where an outbox row came from: ``origin``, 'erp' unless skysync's reconciliation wrote it.

The ERP cannot mark a row as a correction:

* ``origin`` defaults to 'erp' and a CHECK allows only 'erp' and 'reconcile'.
* On PostgreSQL the ERP's least-privilege role (``skysync erp-role``) may INSERT only
  ``kind``, ``ref`` and ``payload``: an INSERT naming ``origin`` is refused by the database
  ("permission denied"), and the role has no UPDATE on the outbox at all.
* On both databases a trigger refuses any UPDATE that changes ``origin`` after the row was
  written, so nobody relabels an ERP row as a correction (or the other way) later.
* SQLite has no roles: whoever can write the file can write any column. There the column
  records who wrote the row for people and reports; it is not a security boundary.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ORIGINS_AT_0007 = ("erp", "reconcile")
_ORIGIN_FIXED = "skysync_outbox.origin is written once, by the writer of the row"


def upgrade() -> None:
    # The same statement on both databases: SQLite adds a column with a CHECK without
    # rebuilding the table; PostgreSQL adds a constant default without rewriting it.
    allowed = ", ".join(repr(o) for o in ORIGINS_AT_0007)
    op.execute(
        "ALTER TABLE skysync_outbox ADD COLUMN origin TEXT NOT NULL DEFAULT 'erp' "
        f"CONSTRAINT ck_skysync_outbox_origin CHECK (origin IN ({allowed}))"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION skysync_outbox_origin_fixed() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.origin IS DISTINCT FROM OLD.origin THEN
                RAISE EXCEPTION '{_ORIGIN_FIXED}';
              END IF;
              RETURN NEW;
            END
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER skysync_outbox_origin_fixed BEFORE UPDATE OF origin ON skysync_outbox "
            "FOR EACH ROW EXECUTE FUNCTION skysync_outbox_origin_fixed()"
        )
    else:
        op.execute(
            "CREATE TRIGGER skysync_outbox_origin_fixed BEFORE UPDATE OF origin ON skysync_outbox "
            "FOR EACH ROW WHEN NEW.origin IS NOT OLD.origin "
            f"BEGIN SELECT RAISE(ABORT, '{_ORIGIN_FIXED}'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS skysync_outbox_origin_fixed ON skysync_outbox")
        op.execute("DROP FUNCTION IF EXISTS skysync_outbox_origin_fixed()")
        op.execute("ALTER TABLE skysync_outbox DROP COLUMN origin")
        return
    op.execute("DROP TRIGGER IF EXISTS skysync_outbox_origin_fixed")
    # SQLite: the CHECK on origin is the column's own, or, once 0012 rebuilt the table, the
    # table's; a rebuild without both works either way (AUTOINCREMENT and its sequence kept)
    seq = (
        op.get_bind()
        .exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'skysync_outbox'")
        .scalar()
    )
    with op.batch_alter_table(
        "skysync_outbox", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.drop_constraint("ck_skysync_outbox_origin", type_="check")
        batch.drop_column("origin")
    if seq is not None:
        op.execute("DELETE FROM sqlite_sequence WHERE name = 'skysync_outbox'")
        op.get_bind().exec_driver_sql(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('skysync_outbox', ?)", (seq,)
        )
