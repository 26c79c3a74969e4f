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

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from relay_helpers import insert, row, sandbox_config

from skysync.emulator import Sandbox
from skysync.entrypoints.cli import cli
from skysync.skyhub.client import SkyHubClient
from skysync.skyhub.errors import RateLimited
from skysync.skyhub.retry_after import bounded_wait, retry_after_seconds
from skysync.store.models import utcnow

BIN = Path(sys.executable).parent
DEFAULT_CAP = 3600.0  # SKYSYNC_SKYHUB_RETRY_AFTER_MAX's default
GUARD = 90.0  # seconds a command may take before the test calls it hung (and fails)

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with Sandbox(sandbox_config()) as sandbox:
        yield sandbox


def _cli(args: list[str], db_url: str, skyhub_url: str, **env: str) -> Result:
    return CliRunner().invoke(
        cli, args, env={"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_SKYHUB_URL": skyhub_url, **env}
    )


def _status(db_url: str, **env: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(
        cli, ["status", "--json"], env={"SKYSYNC_DATABASE_URL": db_url, **env}
    )
    return result.exit_code, json.loads(result.stdout)


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

    code, report = _status(db_url)  # parked an hour, past the next batch (900 s)
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
    code, report = _status(db_url)  # 600 s: the next batch (900 s) takes it
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
    assert _status(db_url)[0] == 0
