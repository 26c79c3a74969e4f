"""How long SkyHub's 429 asks us to wait (``Retry-After``), never beyond a cap.

RFC 9110 allows delta-seconds (``120``) or an HTTP date (``Wed, 21 Oct 2026 07:28:00 GMT``).
SkyHub documents neither (skyhub-api.md, section 5), so skysync honours one when it comes, up
to ``cap`` (SKYSYNC_SKYHUB_RETRY_AFTER_MAX): the longest a 429 may park a row. A header that
asks for more (``1e9``, a date in the year 9999), or that is no sane wait at all (negative,
``inf``, ``nan``, garbage, a date past what ``datetime`` holds), counts as the cap: SkyHub said
"wait", so we wait as long as we ever do, and no wait ever becomes a date out of range. A date
already past means now. A decimal number (``1.5``) is taken as it is.

Pure: no clock of its own (the caller gives ``now``), no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

SETTING = "SKYSYNC_SKYHUB_RETRY_AFTER_MAX"


@dataclass(frozen=True)
class RetryAfter:
    """The wait to honour, in seconds (0 <= seconds <= cap), and a note for the row's reason
    that quotes the header and says when the cap replaced it."""

    seconds: float
    note: str


def retry_after_seconds(value: str | None, *, cap: float, now: datetime) -> RetryAfter | None:
    """The wait a ``Retry-After`` header value asks for, within ``[0, cap]``; None without one."""
    if value is None:
        return None
    text = value.strip()
    shown = repr(text[:40])
    at_cap = f"taken as the {cap:g} s maximum ({SETTING})"
    seconds = _delta_seconds(text)
    if seconds is None:
        seconds = _seconds_until_date(text, now)
    if seconds is None:
        return RetryAfter(cap, f"Retry-After {shown} is not a wait in seconds or a date: {at_cap}")
    if seconds > cap:
        return RetryAfter(cap, f"Retry-After {shown} is longer than the maximum: {at_cap}")
    return RetryAfter(seconds, f"Retry-After {shown}: {seconds:g} s")


def bounded_wait(seconds: float, cap: float) -> float:
    """``seconds`` as a wait within ``[0, cap]``; anything not a finite number is ``cap``.
    The last guard before a wait becomes a due time (``now + timedelta(seconds=...)``)."""
    if not math.isfinite(seconds):
        return cap
    return min(max(0.0, seconds), cap)


def _delta_seconds(text: str) -> float | None:
    """A non-negative finite number of seconds, or None (not a number, negative, inf, nan)."""
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _seconds_until_date(text: str, now: datetime) -> float | None:
    """Seconds from ``now`` to an HTTP date (0 when it is past), or None if it is no date."""
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, as RFC 5322 says
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
