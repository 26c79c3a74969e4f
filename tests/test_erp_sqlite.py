"""An ERP writing to the embedded SQLite database with a plain driver, while the daemon writes
too: what docs/erp-contract.md ("Writing to the embedded SQLite database") promises."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from relay_helpers import insert, relay_for, rows

from skysync.emulator import Sandbox
from skysync.relay import drain
from skysync.store.db import dispose_engines, migrate

ERP_ROWS = 1000


@pytest.mark.slow
@pytest.mark.parametrize("timeout", [30.0, 0.0], ids=["documented", "none"])
def test_plain_sqlite3_inserts_with_the_documented_busy_timeout_all_land_while_the_relay_writes(
    tmp_path: Path, sb: Sandbox, timeout: float
) -> None:
    """The relay claims and records in transactions that hold SQLite's write lock; an ERP's
    INSERT that meets the lock waits for it with a busy timeout (`timeout=30` in Python's
    sqlite3, as documented), where without one it fails at once with "database is locked".
    Every one of the ERP's INSERTs, each its own transaction, lands while the relay drains a
    backlog of its own."""
    path = tmp_path / "skysync.db"
    url = f"sqlite:///{path}"
    migrate(url)
    for n in range(300):
        insert(url, "stock", f"BUSY-{n % 60}", {"qty": n})
    failures: list[str] = []
    written: list[int] = []
    draining = threading.Event()

    def erp() -> None:
        draining.wait(10)
        erp_db = sqlite3.connect(path, timeout=timeout, isolation_level=None)  # the doc's line
        try:
            for n in range(ERP_ROWS):
                if n % 5 == 0:
                    time.sleep(0.002)  # an ERP's pace: spread over the relay's batches
                try:
                    cursor = erp_db.execute(
                        "INSERT INTO skysync_outbox (kind, ref, payload) VALUES (?, ?, ?)",
                        ("stock", f"ERP-{n % 40}", f'{{"qty": {n}}}'),
                    )
                    written.append(cursor.lastrowid or 0)
                except sqlite3.OperationalError as exc:
                    failures.append(str(exc))
        finally:
            erp_db.close()

    writer = threading.Thread(target=erp)
    writer.start()
    try:
        with relay_for(url, sb, settings_kw={"batch_size": 20}) as relay:
            draining.set()
            while writer.is_alive():
                drain(relay.deps, max_batches=50)
            drain(relay.deps)
    finally:
        writer.join(60)
        dispose_engines()
    if not timeout:  # the writer is real: without a busy timeout some INSERTs fail
        assert failures and all("database is locked" in f for f in failures), failures[:3]
        return
    assert failures == [], failures[:3]
    assert len(written) == ERP_ROWS
    states = {r.state for i, r in rows(url).items() if i in set(written)}
    assert states <= {"sent", "superseded", "rejected"}, states  # each one handled
