"""A real Celery worker process for tests: started with ``python -m celery``, its output captured
line by line, always stopped by the test that started it (by its own pid, never by name)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
WORKER_COMMAND = [
    sys.executable,
    "-m",
    "celery",
    "-A",
    "skysync.celery_app",
    "worker",
    "--pool=threads",
    "--concurrency=4",
    "--loglevel=INFO",
]


def flush_redis(*dbs: int) -> None:
    """Empty these databases of the local Redis (a test's broker and limiter)."""
    import redis

    for db in dbs:
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        try:
            client.flushdb()
        finally:
            client.close()


def clean_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any SKYSYNC_* variable, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYSYNC_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


class Worker:
    """``celery worker`` in a subprocess; ``output`` is everything it printed so far."""

    def __init__(self, env: Mapping[str, str], cwd: Path, *, concurrency: int = 4):
        self.env = dict(env)
        self.cwd = cwd
        self.command = [
            f"--concurrency={concurrency}" if a.startswith("--concurrency=") else a
            for a in WORKER_COMMAND
        ]
        self.proc: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def start(self, *, timeout: float = 30.0) -> Worker:
        self.proc = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name="worker-output", daemon=True)
        self._reader.start()
        wait_for(
            lambda: " ready." in self.output or self.proc.poll() is not None,  # type: ignore[union-attr]
            timeout,
            "the worker to be ready",
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"the worker exited at start:\n{self.output}")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self._lines.append(line)

    def kill(self) -> None:
        """SIGKILL: the worker dies on the spot, as on an OOM kill or a pulled plug."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._join()

    def stop(self) -> None:
        """Warm shutdown (SIGTERM); SIGKILL if it does not end in time. Safe to call twice."""
        if self.proc is None or self.proc.poll() is not None:
            self._join()
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._join()

    def _join(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            if self._reader is not None:
                self._reader.join(timeout=5)
            self.proc.stdout.close()


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, *, interval: float = 0.05
) -> None:
    """Poll ``condition`` every ``interval`` seconds until it is true; fail naming ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def run_skysync(args: list[str], env: Mapping[str, str], cwd: Path) -> str:
    """Run the ``skysync`` CLI of this venv; return its output, fail on a non-zero exit."""
    done = subprocess.run(
        [str(VENV_BIN / "skysync"), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"skysync {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def run_python(code: str, env: Mapping[str, str], cwd: Path) -> str:
    """Run a snippet in a fresh interpreter with ``env`` (so skysync's Settings and Celery app
    are built from it, not from this process)."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"snippet failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout
