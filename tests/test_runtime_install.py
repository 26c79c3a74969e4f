"""The production install, without the dev extras: ``pip install .`` (a normal, non-editable
install, as the Dockerfile does) into a fresh virtual environment.

The rest of the suite runs in the dev venv, where pytest and friends bring packages that the
runtime dependencies might not (kombu's Redis transport imports ``packaging``, which only kombu's
``redis`` extra declares: a green suite once hid a worker that could not start). Here a real
worker, a real beat and ``skysync trigger`` run from that runtime-only venv on a Redis broker
and deliver rows to the emulator (also run from that venv), on a PostgreSQL database that
``skysync migrate`` built from the scripts shipped inside the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy as sa
from conftest import create_pg_database, drop_pg_database, free_port

pytestmark = pytest.mark.slow  # builds a venv (the module's fixture)

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "README.md", "skysync", "migrations")
BROKER_DB, LIMITER_DB = 8, 9  # this machine's Redis databases for this test (flushed)


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def runtime_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``pip install <copy of the project>``: runtime dependencies only."""
    base = tmp_path_factory.mktemp("runtime")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, src / name)
    venv = base / "venv"
    done = _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    assert done.returncode == 0, done.stderr
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    done = _run([*pip, "install", "--quiet", str(src)], timeout=900)
    assert done.returncode == 0, f"pip install failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}"
    shutil.rmtree(src)  # nothing at run time may read the source tree
    return venv / "bin"


def test_runtime_install_is_complete_and_carries_no_dev_extras(
    runtime_bin: Path, tmp_path: Path
) -> None:
    python = str(runtime_bin / "python")
    done = _run([python, "-m", "pip", "check"], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # The point of this venv: none of the dev extras is there to hide a missing dependency.
    for dev_only in ("pytest", "hypothesis", "yaml", "jsonschema"):
        done = _run([python, "-c", f"import {dev_only}"], cwd=tmp_path, timeout=60)
        assert done.returncode != 0, f"{dev_only} is importable in the runtime-only venv"
    # Every module of the package and every broker transport skysync configures imports.
    script = (
        "import importlib, pkgutil, skysync\n"
        "names = [m.name for m in pkgutil.walk_packages(skysync.__path__, 'skysync.')\n"
        "         if not m.name.startswith(('skysync._migrations', 'skysync.__main__'))]\n"
        "for name in names + ['kombu.transport.redis', 'kombu.transport.sqlalchemy']:\n"
        "    importlib.import_module(name)\n"
        "from skysync.store.db import ALEMBIC_DIR\n"
        "print(ALEMBIC_DIR)\n"
    )
    # (in an empty directory: `python -c` puts the working directory first on sys.path)
    done = _run([python, "-c", script], cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    alembic_dir = Path(done.stdout.strip())
    assert "site-packages" in alembic_dir.parts, f"migrations read from {alembic_dir}"
    assert (alembic_dir / "versions").is_dir()


def _flush() -> None:
    for db in (BROKER_DB, LIMITER_DB):
        with redis.Redis(host="127.0.0.1", port=6379, db=db) as client:
            client.flushdb()


def _wait(what: str, condition: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def pg_database() -> Iterator[str]:
    url = create_pg_database("skysync_runtime")
    yield url
    drop_pg_database(url)


@pytest.mark.celery
def test_worker_beat_and_trigger_deliver_on_redis(
    runtime_bin: Path, pg_database: str, tmp_path: Path
) -> None:
    _flush()
    sandbox_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SKYSYNC_")},
        "SKYSYNC_DATABASE_URL": pg_database,
        "SKYSYNC_BROKER_URL": f"redis://127.0.0.1:6379/{BROKER_DB}",
        "SKYSYNC_REDIS_URL": f"redis://127.0.0.1:6379/{LIMITER_DB}",
        "SKYSYNC_SKYHUB_URL": f"http://127.0.0.1:{sandbox_port}",
        "SKYSYNC_SYNC_INTERVAL": "2",
        "SKYSYNC_ORDER_POLL_INTERVAL": "3600",
    }
    skysync = str(runtime_bin / "skysync")
    celery = str(runtime_bin / "celery")

    done = _run([skysync, "migrate"], env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr

    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("sandbox", "worker", "beat")}  # noqa: SIM115
    commands = {
        "sandbox": [skysync, "sandbox", "--port", str(sandbox_port)],
        "worker": [celery, "-A", "skysync.celery_app", "worker", "-c", "2", "--loglevel=INFO"],
        "beat": [
            celery,
            "-A",
            "skysync.celery_app",
            "beat",
            f"--schedule={tmp_path / 'celerybeat-schedule'}",
            "--loglevel=INFO",
        ],
    }
    procs = {
        name: subprocess.Popen(
            command,
            env=env,
            cwd=tmp_path,
            stdout=logs[name],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for name, command in commands.items()
    }
    engine = sa.create_engine(pg_database, poolclass=sa.pool.NullPool)

    def row_state(ref: str) -> str | None:
        with engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT state FROM skysync_outbox WHERE ref = :ref"), {"ref": ref}
            ).scalar()

    def insert(ref: str, payload: dict[str, object]) -> None:
        with engine.begin() as conn:  # plain SQL, as the ERP writes
            conn.execute(
                sa.text(
                    "INSERT INTO skysync_outbox (kind, ref, payload) VALUES ('product', :r, :p)"
                ),
                {"r": ref, "p": json.dumps(payload)},
            )

    try:
        _wait(
            "the emulator",
            lambda: _get_ok(f"http://127.0.0.1:{sandbox_port}/_sandbox/state"),
            30,
        )
        insert("RT-1", {"name": "Caneca", "price": 10.5, "qty": 3, "status": "enabled"})
        done = _run([skysync, "trigger"], env=env, cwd=tmp_path, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        _wait("RT-1 sent", lambda: row_state("RT-1") == "sent", 60)

        # beat alone (every 2 s) delivers the next one
        insert("RT-2", {"name": "Prato", "price": 20.0, "qty": 0, "status": "enabled"})
        _wait("RT-2 sent by beat", lambda: row_state("RT-2") == "sent", 60)

        state = httpx.get(f"http://127.0.0.1:{sandbox_port}/_sandbox/state", timeout=5).json()
        assert state["products"]["RT-1"]["price"] == 10.5
        assert state["products"]["RT-2"]["qty"] == 0
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited {proc.returncode}"
    except BaseException:
        for name in logs:
            logs[name].flush()
            print(f"--- {name} log\n{(tmp_path / f'{name}.log').read_text()[-4000:]}")
        raise
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for handle in logs.values():
            handle.close()
        engine.dispose()
        _flush()


def _get_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_console_serves_its_pages_from_a_runtime_install(
    runtime_bin: Path, pg_database: str, tmp_path: Path
) -> None:
    """`skysync console` from the runtime-only venv: its templates and stylesheet come from
    the installed package (the source tree is gone), behind its authentication; SIGTERM stops
    it with exit 0."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SKYSYNC_")},
        "SKYSYNC_DATABASE_URL": pg_database,
        "SKYSYNC_SKYHUB_URL": "http://127.0.0.1:9",  # an emulator's address: no SkyHub call here
        "SKYSYNC_CONSOLE_OPERATORS": "ops:runtime-console-pw",
    }
    skysync = str(runtime_bin / "skysync")
    done = _run([skysync, "migrate"], env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    log = open(tmp_path / "console.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [skysync, "console", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait("the console", lambda: _answers(f"{base}/"), 60)
        assert httpx.get(f"{base}/", timeout=10).status_code == 401
        auth = ("ops", "runtime-console-pw")
        for path in ("/", "/trouble", "/sku?sku=X", "/orders", "/reconcile"):
            page = httpx.get(f"{base}{path}", auth=auth, timeout=30)
            assert page.status_code == 200, (path, page.text[:300])
            assert "skysync console" in page.text
        css = httpx.get(f"{base}/static/console.css", auth=auth, timeout=10)
        assert css.status_code == 200 and "hand-written" in css.text
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    except BaseException:
        log.flush()
        print((tmp_path / "console.log").read_text()[-4000:])
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.TransportError:
        return False
    return True
