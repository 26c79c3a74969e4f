"""No wait and no request without a bound (issue 19, part 3).

* Retry-After: whatever SkyHub's 429 carries (1e12, 1e9, inf, NaN, a negative number, garbage,
  an HTTP date in the year 9999), no row is parked beyond SKYSYNC_SKYHUB_RETRY_AFTER_MAX, no
  datetime overflows, and `skysync status` names rows SkyHub parked past the next batch.
* An answer that never ends: SkyHub's answer trickling one byte at a time passes every per-read
  timeout; SKYSYNC_SKYHUB_REQUEST_DEADLINE bounds the whole exchange, and the rows go back to
  pending with a reason naming the deadline. The stand-in is a real HTTP server (``Trickle``).

The relay runs as the operator runs it (`skysync relay` / `skysync drain`), on both databases.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from conftest import sandbox_fixture
from relay_helpers import cli_status, insert, row

from skysync.config import ConfigError, load_settings
from skysync.emulator import Sandbox
from skysync.entrypoints.cli import cli
from skysync.skyhub.client import SkyHubClient
from skysync.skyhub.errors import (
    DeadlineExceeded,
    RateLimited,
    RetryableError,
    TransportError,
)
from skysync.skyhub.retry_after import bounded_wait, retry_after_seconds
from skysync.store.models import utcnow

BIN = Path(sys.executable).parent
DEFAULT_CAP = 3600.0  # SKYSYNC_SKYHUB_RETRY_AFTER_MAX's default
GUARD = 90.0  # seconds a command may take before the test calls it hung (and fails)

pytestmark = pytest.mark.usefixtures("clean_env")


sb = sandbox_fixture(scope="module")


def _cli(args: list[str], db_url: str, skyhub_url: str, **env: str) -> Result:
    return CliRunner().invoke(
        cli, args, env={"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_SKYHUB_URL": skyhub_url, **env}
    )


# -- Retry-After: the pure reading -----------------------------------------------------------

NOW = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("3600", 3600.0),
        ("3601", 3600.0),
        ("1e9", 3600.0),
        ("1e12", 3600.0),
        ("9" * 400, 3600.0),  # float() makes it inf
        ("inf", 3600.0),
        ("-inf", 3600.0),
        ("nan", 3600.0),
        ("-5", 3600.0),
        ("", 3600.0),
        ("soon", 3600.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 3600.0),
        ("Sat, 01 Jan 10000 00:00:00 GMT", 3600.0),  # past datetime's range
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        (format_datetime(NOW + timedelta(hours=5), usegmt=True), 3600.0),
        (format_datetime(NOW - timedelta(hours=5), usegmt=True), 0.0),  # already past: now
    ],
)
def test_retry_after_is_read_within_the_cap(header: str, seconds: float) -> None:
    wait = retry_after_seconds(header, cap=DEFAULT_CAP, now=NOW)
    assert wait is not None
    assert wait.seconds == seconds
    assert repr(header.strip()[:40]) in wait.note or header.strip() == ""
    if seconds == DEFAULT_CAP and header.strip() != "3600":
        assert "maximum" in wait.note


def test_no_retry_after_header_is_none() -> None:
    assert retry_after_seconds(None, cap=DEFAULT_CAP, now=NOW) is None


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e300, -1.0, 5000.0])
def test_any_wait_is_bounded_before_it_becomes_a_date(value: float) -> None:
    wait = bounded_wait(value, 600.0)
    assert 0.0 <= wait <= 600.0
    NOW + timedelta(seconds=wait)  # never an OverflowError


# -- Retry-After: the client -----------------------------------------------------------------


def test_an_absurd_retry_after_is_raised_at_the_cap_without_sleeping(sb: Sandbox) -> None:
    sb.reset()
    slept: list[float] = []
    with SkyHubClient(
        sb.base_url,
        email="e",
        api_key="k",
        account_key="a",
        retry_after_max=900.0,
        sleep=slept.append,
    ) as client:
        sb.configure(retry_after_header=True, retry_after_seconds="1e12")
        sb.script_fault("GET", "/products/", "429")
        with pytest.raises(RateLimited) as info:
            client.get_product("ANY")
    sb.configure(retry_after_header=False, retry_after_seconds=1.0)
    assert info.value.retry_after == 900.0
    assert "'1e12'" in str(info.value) and "maximum" in str(info.value)
    assert slept == []


def test_the_waits_inside_one_request_together_stay_under_the_in_request_cap(
    sb: Sandbox,
) -> None:
    """Each 429 of 50 s is under the 60 s a request may sleep, but two are not: the second
    goes back to the caller (the rows wait in the database, not in a worker thread)."""
    sb.reset()
    slept: list[float] = []
    with SkyHubClient(
        sb.base_url,
        email="e",
        api_key="k",
        account_key="a",
        max_retry_after=60.0,
        sleep=slept.append,
    ) as client:
        sb.configure(retry_after_header=True, retry_after_seconds=50)
        sb.script_fault("GET", "/products/", "429", count=5)
        with pytest.raises(RateLimited) as info:
            client.get_product("ANY")
    sb.configure(retry_after_header=False, retry_after_seconds=1.0)
    assert slept == [50.0]
    assert info.value.retry_after == 50.0


# -- Retry-After: the relay and `skysync status`, on both databases --------------------------

FAR_DATE = format_datetime(datetime.now(UTC) + timedelta(hours=2), usegmt=True)


@pytest.mark.parametrize(
    "header",
    ["1e12", "1e9", "inf", "nan", "-5", "soon", "Fri, 31 Dec 9999 23:59:59 GMT", FAR_DATE],
)
def test_an_absurd_retry_after_parks_the_row_at_most_the_cap_and_status_says_so(
    db_url: str, sb: Sandbox, header: str
) -> None:
    sb.reset()
    sb.configure(retry_after_header=True, retry_after_seconds=header)
    sb.script_fault("*", "/products/RA-1", "429", count=10)
    value = insert(db_url, "stock", "RA-1", {"qty": 4})
    before = utcnow()
    result = _cli(["relay"], db_url, sb.base_url)
    after = utcnow()
    sb.configure(retry_after_header=False, retry_after_seconds=1.0)

    assert result.exit_code == 0, (result.output, result.exception)
    got = row(db_url, value)
    assert (got.state, got.attempts, got.last_status) == ("pending", 0, 429), got
    assert before + timedelta(seconds=DEFAULT_CAP - 5) <= got.available_at, got
    assert got.available_at <= after + timedelta(seconds=DEFAULT_CAP), got
    assert "rate limited" in (got.reason or "") and "Retry-After" in (got.reason or ""), got
    assert "maximum" in (got.reason or ""), got

    code, report = cli_status(db_url)  # parked an hour, past the next batch (900 s)
    assert code == 1, report
    parked = [p for p in report["problems"] if "Retry-After" in p]
    assert len(parked) == 1, report["problems"]
    assert "1 row(s)" in parked[0] and "900 s" in parked[0], parked
    assert report["parked_by_skyhub"]["rows"] == 1


def test_the_cap_is_a_setting_and_a_park_within_a_batch_interval_is_healthy(
    db_url: str, sb: Sandbox
) -> None:
    sb.reset()
    sb.configure(retry_after_header=True, retry_after_seconds="1e9")
    sb.script_fault("*", "/products/RA-2", "429", count=10)
    value = insert(db_url, "stock", "RA-2", {"qty": 4})
    result = _cli(["relay"], db_url, sb.base_url, SKYSYNC_SKYHUB_RETRY_AFTER_MAX="600")
    sb.configure(retry_after_header=False, retry_after_seconds=1.0)

    assert result.exit_code == 0, (result.output, result.exception)
    got = row(db_url, value)
    assert got.state == "pending", got
    assert got.available_at <= utcnow() + timedelta(seconds=600), got
    assert "600 s maximum" in (got.reason or ""), got
    code, report = cli_status(db_url)  # 600 s: the next batch (900 s) takes it
    assert code == 0, report
    assert report["parked_by_skyhub"]["rows"] == 1


def test_a_sane_retry_after_is_honoured_as_sent(db_url: str, sb: Sandbox) -> None:
    sb.reset()
    sb.configure(retry_after_header=True, retry_after_seconds=120)
    sb.script_fault("*", "/products/RA-3", "429", count=10)
    value = insert(db_url, "stock", "RA-3", {"qty": 4})
    before = utcnow()
    result = _cli(["relay"], db_url, sb.base_url)
    sb.configure(retry_after_header=False, retry_after_seconds=1.0)

    assert result.exit_code == 0, (result.output, result.exception)
    got = row(db_url, value)
    assert got.state == "pending", got
    assert before + timedelta(seconds=115) <= got.available_at <= utcnow() + timedelta(seconds=120)
    assert "maximum" not in (got.reason or ""), got
    assert cli_status(db_url)[0] == 0


# -- an answer that never ends ---------------------------------------------------------------


class Trickle:
    """A SkyHub stand-in, a real HTTP server, whose every answer trickles: the status line and
    headers, then one byte of body every ``every`` seconds (with ``in_headers``, one byte of
    an endless header instead), for as long as the client listens. ``every`` is well under
    any read timeout, so only an overall deadline can end the exchange."""

    def __init__(self, *, every: float = 0.3, in_headers: bool = False):
        self.every = every
        self.in_headers = in_headers
        self.requests = 0
        self.hung_up = 0  # answers the client walked away from
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests += 1
            if self.in_headers:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            else:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100000\r\n\r\n"
                )
            while not self._stop.wait(self.every):
                try:
                    conn.sendall(b"a" if self.in_headers else b" ")
                except OSError:
                    self.hung_up += 1
                    return

    def wait_hung_up(self, n: int, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while self.hung_up < n and time.monotonic() < end:
            time.sleep(0.05)
        return self.hung_up >= n


def test_the_deadline_is_a_setting_below_the_workers_soft_time_limit() -> None:
    assert load_settings().request_deadline == 30.0
    assert load_settings(skyhub_request_deadline=5).request_deadline == 5.0
    short = load_settings(lease_seconds=30)  # soft time limit 24.3 s
    assert short.request_deadline < short.task_time_limits[0]
    with pytest.raises(ConfigError) as info:
        load_settings(lease_seconds=60, skyhub_request_deadline=50)  # soft limit 48.6 s
    assert "SKYSYNC_SKYHUB_REQUEST_DEADLINE: must be below" in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("in_headers", [False, True], ids=["body", "headers"])
def test_the_deadline_ends_a_trickling_answer(in_headers: bool) -> None:
    with (
        Trickle(in_headers=in_headers) as skyhub,
        SkyHubClient(
            skyhub.base_url,
            email="e",
            api_key="k",
            account_key="a",
            deadline=1.0,
            timeout=httpx.Timeout(2.0),
        ) as client,
    ):
        done: list[BaseException] = []

        def call() -> None:
            try:
                client.update_product("T-1", {"qty": 1})
            except BaseException as exc:  # handed to the test thread
                done.append(exc)

        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        worker.join(GUARD)
        assert not worker.is_alive(), "the request hung past every timeout"
        assert skyhub.wait_hung_up(1), "the trickling connection was not dropped"
    (exc,) = done
    assert isinstance(exc, DeadlineExceeded)
    assert isinstance(exc, TransportError) and isinstance(exc, RetryableError)
    assert "PUT /products/T-1" in str(exc)
    assert "did not complete within 1 s" in str(exc)
    assert "SKYSYNC_SKYHUB_REQUEST_DEADLINE" in str(exc)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["relay", "drain"])
def test_relay_and_drain_return_from_a_trickling_skyhub_with_the_reason_on_the_row(
    db_url: str, tmp_path: Path, command: str
) -> None:
    """The commands as an operator runs them, as real processes: each returns, and the row is
    back to pending (one attempt counted, backing off) with a reason naming the deadline."""
    value = insert(db_url, "stock", "TR-1", {"qty": 4})
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SKYSYNC_")},
        "SKYSYNC_DATABASE_URL": db_url,
        "SKYSYNC_SKYHUB_REQUEST_DEADLINE": "1",
    }
    with Trickle() as skyhub:
        env["SKYSYNC_SKYHUB_URL"] = skyhub.base_url
        try:
            done = subprocess.run(
                [str(BIN / "skysync"), command],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=GUARD,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"`skysync {command}` hung on a trickling answer")
        assert skyhub.requests >= 1
        assert skyhub.wait_hung_up(skyhub.requests), "a trickling connection was left open"
    # relay prints its summary and exits 0; drain exits 1: a row is left backing off
    assert done.returncode == (0 if command == "relay" else 1), done.stderr
    got = row(db_url, value)
    assert (got.state, got.attempts) == ("pending", 1), got
    assert got.available_at > utcnow(), got
    assert "did not complete within 1 s" in (got.reason or ""), got
    assert "SKYSYNC_SKYHUB_REQUEST_DEADLINE" in (got.reason or ""), got
    assert got.claim_token is None and got.lease_until is None, got
