"""The embedded default, as `make run` starts it on a fresh machine: no configuration at all, so a
SQLite database, a SQLite-backed Celery broker, a worker with embedded beat in one process, and
the built-in SkyHub emulator, announced loudly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import free_port

from skysync.store.db import dispose_engines, get_engine

pytestmark = pytest.mark.slow  # each test runs `skysync run` in a process

BIN = Path(sys.executable).parent


def _start(tmp_path: Path, args: list[str], **env: str) -> subprocess.Popen[str]:
    """`skysync run ARGS` in ``tmp_path`` with no SKYSYNC_* variable but ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SKYSYNC_")}
    return subprocess.Popen(
        [str(BIN / "skysync"), "run", *args, "--concurrency=2"],
        cwd=tmp_path,
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM to its process group (SIGKILL if it does not end); returns what it printed."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    dispose_engines()
    return output


def test_skysync_run_demo_delivers_on_the_embedded_default(tmp_path: Path) -> None:
    port = free_port()
    proc = _start(tmp_path, ["--demo", f"--emulator-port={port}"])
    url = f"sqlite:///{tmp_path / 'skysync.db'}"
    try:
        deadline = time.monotonic() + 60
        states: dict[str, int] = {}
        orders = 0
        while time.monotonic() < deadline:
            assert proc.poll() is None, "skysync run exited early"
            if (tmp_path / "skysync.db").exists():
                try:
                    with get_engine(url).connect() as conn:
                        states = dict(
                            conn.execute(
                                sa.text("SELECT state, count(*) FROM skysync_outbox GROUP BY state")
                            ).all()
                        )
                        orders = conn.execute(
                            sa.text("SELECT count(*) FROM skysync_order_inbox")
                        ).scalar_one()
                except sa.exc.OperationalError:
                    pass  # tables not migrated yet
            if states and not states.get("pending") and not states.get("in_flight") and orders:
                break
            time.sleep(0.5)
        # the demo rows went through the emulator: one sent, folded rows, bad rows rejected
        assert states == {"sent": 1, "superseded": 3, "rejected": 2}, states
        assert orders == 2
        emulator = httpx.get(f"http://127.0.0.1:{port}/_sandbox/state", timeout=5).json()
        assert emulator["products"]["DEMO-CANECA-AZUL"]["qty"] == 0
        assert emulator["products"]["DEMO-CANECA-AZUL"]["price"] == 42.5
        assert (tmp_path / "skysync.broker.db").exists()  # the serverless broker
    finally:
        output = _stop(proc)
    assert "BUILT-IN SKYHUB EMULATOR" in output
    assert "DEMO" in output


def test_skysync_run_fast_lane_polls_sqlite(tmp_path: Path) -> None:
    """`skysync run` with SKYSYNC_FAST_LANE=stockouts and an hour between batches: a stock-out
    written after the first batch goes out through the lane (SQLite: its poll), the batch does
    not run again."""
    port = free_port()
    proc = _start(
        tmp_path,
        [f"--emulator-port={port}"],
        SKYSYNC_FAST_LANE="stockouts",
        SKYSYNC_SYNC_INTERVAL="3600",
    )
    url = f"sqlite:///{tmp_path / 'skysync.db'}"

    def query(sql: str) -> list[tuple]:
        try:
            with get_engine(url).connect() as conn:
                return [tuple(r) for r in conn.execute(sa.text(sql)).all()]
        except sa.exc.OperationalError:
            return []  # not there or not migrated yet

    def wait(condition: object, what: str) -> None:
        deadline = time.monotonic() + 60
        while not condition():  # type: ignore[operator]
            assert proc.poll() is None, "skysync run exited early"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.3)

    runs = "SELECT kind, count(*) FROM skysync_run WHERE finished_at IS NOT NULL GROUP BY kind"
    try:
        wait(lambda: (tmp_path / "skysync.db").exists() and dict(query(runs)).get("relay"),
             "the first batch")  # fmt: skip
        with get_engine(url).begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO skysync_outbox (kind, ref, payload) VALUES "
                "('product', 'LANE-1', '{\"name\": \"Caneca\", \"qty\": 4, \"price\": 9.5}'), "
                "('stock', 'LANE-1', '{\"qty\": 0}')"
            ))  # fmt: skip
        open_rows = "SELECT count(*) FROM skysync_outbox WHERE state IN ('pending', 'in_flight')"
        wait(lambda: query(open_rows) == [(0,)], "the lane to send the stock-out")
        emulator = httpx.get(f"http://127.0.0.1:{port}/_sandbox/state", timeout=5).json()
        assert emulator["products"]["LANE-1"]["qty"] == 0
        done = dict(query(runs))
        assert done["relay"] == 1 and done["fast_lane"] >= 1, done
    finally:
        output = _stop(proc)
    assert "fast lane: poll" in output
