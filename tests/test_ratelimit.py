"""The shared request pacer on its real storages: in-process memory and Redis (db 15).

Each test uses a namespace of its own and resets it at teardown. What is checked is pacing as
a caller sees it (when ``acquire`` returns, what ``try_acquire`` answers), not the algorithm.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from typing import Any

import pytest
from conftest import free_port, max_in_window

from skysync.skyhub.ratelimit import (
    RateLimiter,
    RateLimiterUnavailable,
    RateLimitTimeout,
    account_namespace,
)

REDIS_URL = "redis://127.0.0.1:6379/15"
STORAGES = pytest.mark.parametrize("storage_url", ["memory://", REDIS_URL], ids=["memory", "redis"])


# The times are taken after ``acquire`` returns, so thread scheduling adds jitter: 20 ms of
# each one-second window are allowed for it.
WINDOW = 0.98


def test_account_namespace_is_stable_and_does_not_hold_the_email() -> None:
    a = account_namespace("https://api.skyhub.com.br", "loja@example.com")
    assert a == account_namespace("https://api.skyhub.com.br", "loja@example.com")
    assert a.startswith("skysync:rl:")
    assert "loja" not in a and "example" not in a
    assert a != account_namespace("https://api.skyhub.com.br", "outra@example.com")
    assert a != account_namespace("http://127.0.0.1:8080", "loja@example.com")


@STORAGES
def test_first_request_goes_at_once_then_the_bucket_waits(
    storage_url: str, make_limiter: Any
) -> None:
    limiter = make_limiter(2, storage_url)

    answers = [limiter.try_acquire("products:PUT") for _ in range(5)]

    assert answers[0] == 0.0
    assert answers.count(0.0) <= 2  # at most the rate at once
    assert all(0 < wait <= 1.0 for wait in answers if wait != 0.0)
    # another bucket has its own budget
    assert limiter.try_acquire("products:GET") == 0.0


@pytest.mark.slow
@STORAGES
@pytest.mark.parametrize("rate", [5, 8.5])
def test_acquire_keeps_every_one_second_window_under_the_rate(
    storage_url: str, rate: float, make_limiter: Any
) -> None:
    limiter = make_limiter(rate, storage_url)
    started = time.monotonic()
    times = []
    for _ in range(math.ceil(rate) + 4):
        limiter.acquire("queues:GET")
        times.append(time.monotonic())

    assert max_in_window(times, WINDOW) <= math.ceil(rate)
    assert times[-1] - started >= 0.4  # it did wait


@pytest.mark.slow
@STORAGES
def test_threads_sharing_a_limiter_stay_under_the_rate(storage_url: str, make_limiter: Any) -> None:
    limiter = make_limiter(6, storage_url)
    times: list[float] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                limiter.acquire("products:PUT")
                now = time.monotonic()
                with lock:
                    times.append(now)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)

    assert failures == []
    assert len(times) == 12
    assert max_in_window(times, WINDOW) <= 6


@STORAGES
def test_acquire_gives_up_after_max_wait(storage_url: str, make_limiter: Any) -> None:
    limiter = make_limiter(1, storage_url)
    limiter.acquire("other:x:GET")
    started = time.monotonic()

    with pytest.raises(RateLimitTimeout):
        limiter.acquire("other:x:GET", max_wait=0.2)

    assert time.monotonic() - started < 0.3


@pytest.mark.slow
@STORAGES
def test_rate_for_sets_each_buckets_own_rate(storage_url: str, make_limiter: Any) -> None:
    limiter = make_limiter(
        20, storage_url, rate_for=lambda bucket: 2.0 if bucket.startswith("orders:GET") else 20.0
    )

    started = time.monotonic()
    for _ in range(3):
        limiter.acquire("products:GET")
    fast = time.monotonic() - started
    started = time.monotonic()
    for _ in range(3):
        limiter.acquire("orders:GET:one")
    slow = time.monotonic() - started

    assert fast < 0.3
    assert 0.9 <= slow < 1.5


@STORAGES
def test_reset_forgets_the_budget(storage_url: str, make_limiter: Any) -> None:
    limiter = make_limiter(1, storage_url)
    limiter.try_acquire("b")
    assert limiter.try_acquire("b") > 0

    limiter.reset()

    assert limiter.try_acquire("b") == 0.0


def test_redis_limiters_on_one_namespace_share_the_budget(make_limiter: Any) -> None:
    namespace = f"skysync:test:{uuid.uuid4().hex}"
    first = make_limiter(1, REDIS_URL, namespace)
    second = make_limiter(1, REDIS_URL, namespace)
    elsewhere = make_limiter(1, REDIS_URL)

    assert first.try_acquire("p") == 0.0
    assert second.try_acquire("p") > 0  # two processes, one budget
    assert elsewhere.try_acquire("p") == 0.0  # another account is untouched

    elsewhere.reset()  # resets only its own namespace
    assert second.try_acquire("p") > 0


def test_unreachable_redis_is_reported_as_unavailable() -> None:
    port = free_port()
    limiter = RateLimiter(5, storage_url=f"redis://127.0.0.1:{port}/0")

    with pytest.raises(RateLimiterUnavailable):
        limiter.try_acquire("p")


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)
