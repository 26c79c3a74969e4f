"""The composition root: builds the database, the SkyHub client, the rate limiter and the relay
from Settings, once per process. Entrypoints (Celery tasks, CLI) ask here; nothing else wires
objects together.

Where requests go: the configured SkyHub when all three credentials are set. Without them, the
emulator: the one this process started (``skysync run``), or the one SKYSYNC_SKYHUB_URL points at
when that is not SkyHub's own address. Credentials never go to SkyHub empty.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from skysync.config import DEFAULT_SKYHUB_URL, Settings, get_settings
from skysync.relay import Relay
from skysync.skyhub.buckets import bucket_rate
from skysync.skyhub.client import SkyHubClient
from skysync.skyhub.ratelimit import RateLimiter, account_namespace
from skysync.store.db import Database

log = logging.getLogger("skysync")

# Any non-empty credentials open the emulator; these say where they came from.
EMULATOR_CREDENTIALS: dict[str, Any] = {
    "email": "emulator@skysync.local",
    "api_key": "emulator-key",
    "account_key": "emulator-account",
}


class NoSkyHubTarget(RuntimeError):
    """No credentials and no emulator: refusing to send anonymous requests to SkyHub."""


@dataclass
class _State:
    emulator_url: str | None = None
    relay: Relay | None = None
    settings: Settings | None = None


_state = _State()
_lock = threading.Lock()


def use_emulator(url: str) -> None:
    """This process started an emulator at ``url``: send there (``skysync run`` with no
    credentials)."""
    with _lock:
        _state.emulator_url = url
        _state.relay = None


def skyhub_target(settings: Settings) -> tuple[str, bool]:
    """(base URL, is it the emulator)."""
    if settings.has_skyhub_credentials:
        return settings.skyhub_url, False
    if _state.emulator_url:
        return _state.emulator_url, True
    if settings.skyhub_url != DEFAULT_SKYHUB_URL:
        return settings.skyhub_url, True
    raise NoSkyHubTarget(
        "no SkyHub credentials: set SKYSYNC_SKYHUB_EMAIL, SKYSYNC_SKYHUB_API_KEY and "
        "SKYSYNC_SKYHUB_ACCOUNT_KEY, or point SKYSYNC_SKYHUB_URL at an emulator "
        "(`skysync sandbox`), or use `skysync run`, which starts one"
    )


def build_limiter(settings: Settings) -> RateLimiter:
    return RateLimiter(
        settings.rate_limit,
        storage_url=settings.redis_url,
        namespace=account_namespace(settings.skyhub_url, settings.skyhub_email),
        rate_for=lambda bucket: bucket_rate(bucket, settings.rate_limit),
    )


def build_client(settings: Settings, *, limiter: RateLimiter | None = None) -> SkyHubClient:
    url, emulated = skyhub_target(settings)
    bounds: dict[str, Any] = {
        "deadline": settings.request_deadline,
        "retry_after_max": settings.skyhub_retry_after_max,
    }
    if emulated:
        return SkyHubClient(url, limiter=limiter, **EMULATOR_CREDENTIALS, **bounds)
    return SkyHubClient.from_settings(settings, base_url=url, limiter=limiter, **bounds)


def build_database(settings: Settings) -> Database:
    """The process's database (its engine and sessions), which the relay and the commands use."""
    return Database.for_url(settings.database_url)


def build_relay(settings: Settings) -> Relay:
    return Relay(
        settings,
        build_client(settings, limiter=build_limiter(settings)),
        database=build_database(settings),
    )


def get_relay() -> Relay:
    """The process-wide relay (built on first use, after a fork too)."""
    with _lock:
        if _state.relay is None:
            _state.settings = _state.settings or get_settings()
            _state.relay = build_relay(_state.settings)
        return _state.relay


def reset() -> None:
    """Forget the built objects (after fork, in tests)."""
    with _lock:
        if _state.relay is not None:
            _state.relay.client.close()
        _state.relay = None
        _state.settings = None
