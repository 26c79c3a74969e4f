"""The composition root: builds the database, the SkyHub client, the rate limiter and the relay
from Settings, once per process. Entrypoints (Celery tasks, CLI) ask here; nothing else wires
objects together.

One relay per SkyHub account (``get_relay(name)``), built for the accounts of the accounts file
(skysync/accounts.py) as they are now: an account added to the file gets its relay at its first
task, a removed or changed one loses it, without a restart.

Where requests go: the configured SkyHub when all three credentials are set. Without them, the
emulator: the one this process started (``skysync run``), or the one SKYSYNC_SKYHUB_URL points at
when that is not SkyHub's own address. Credentials never go to SkyHub empty.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from skysync.accounts import Account, AccountRegistry, Accounts
from skysync.config import DEFAULT_SKYHUB_URL, Settings, get_settings
from skysync.domain.kinds import DEFAULT_ACCOUNT
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


# Seconds between looks at the accounts file for a change (its stamp): an account added or
# removed there takes effect within this, without a restart.
ACCOUNTS_CHECK_EVERY = 5.0


class UnknownAccount(LookupError):
    """An account name that is not (or no longer) configured."""


@dataclass
class _State:
    emulator_url: str | None = None
    settings: Settings | None = None
    registry: AccountRegistry | None = None
    # the relay of each account, built for these accounts (rebuilt when the file changes)
    built_for: Accounts | None = None
    relays: dict[str, Relay] = field(default_factory=dict)


_state = _State()
_lock = threading.Lock()


def use_emulator(url: str) -> None:
    """This process started an emulator at ``url``: send there (``skysync run`` with no
    credentials)."""
    with _lock:
        _state.emulator_url = url
        _close_relays()


def skyhub_target(settings: Settings, account: Account | None = None) -> tuple[str, bool]:
    """(base URL, is it the emulator) for ``account`` (None: the single-account settings'). An
    account with its own email and key goes to SKYSYNC_SKYHUB_URL with them, whatever it is
    (SkyHub, or an emulator that tells accounts apart by their credentials)."""
    if account is None:
        own = settings.has_skyhub_credentials
    else:
        # its own email and key; without an account-manager key (only on an emulator) it is
        # sent the emulator's placeholder, never another account's credentials, and never to
        # SkyHub's own address
        keyed = account.account_key is not None or settings.skyhub_url != DEFAULT_SKYHUB_URL
        own = bool(account.email and account.api_key) and keyed
    if own:
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


def build_limiter(settings: Settings, account: Account | None = None) -> RateLimiter:
    """The shared limiter's view of ``account``'s buckets: SkyHub limits each account on its
    own, so each has its own keys in Redis (by SkyHub URL and email, hashed)."""
    email = account.email if account is not None else settings.skyhub_email
    return RateLimiter(
        settings.rate_limit,
        storage_url=settings.redis_url,
        namespace=account_namespace(settings.skyhub_url, email),
        rate_for=lambda bucket: bucket_rate(bucket, settings.rate_limit),
    )


def build_client(
    settings: Settings, *, limiter: RateLimiter | None = None, account: Account | None = None
) -> SkyHubClient:
    url, emulated = skyhub_target(settings, account)
    bounds: dict[str, Any] = {
        "deadline": settings.request_deadline,
        "retry_after_max": settings.skyhub_retry_after_max,
    }
    if emulated:
        return SkyHubClient(url, limiter=limiter, **EMULATOR_CREDENTIALS, **bounds)
    if account is None:
        return SkyHubClient.from_settings(settings, base_url=url, limiter=limiter, **bounds)
    return SkyHubClient(
        url,
        email=account.email or "",
        api_key=_secret(account.api_key),
        account_key=_secret(account.account_key) or EMULATOR_CREDENTIALS["account_key"],
        limiter=limiter,
        **bounds,
    )


def _secret(value: Any) -> str:
    return value.get_secret_value() if value is not None else ""


def build_database(settings: Settings) -> Database:
    """The process's database (its engine and sessions), which the relay and the commands use."""
    return Database.for_url(settings.database_url)


def build_relay(settings: Settings, account: Account | None = None) -> Relay:
    """The relay of ``account`` (None: the single-account settings', as ``default``): its own
    client, credentials and limiter buckets, the database seen as its rows, and its own
    stock buffer and price drop guard when the accounts file overrides them."""
    limiter = build_limiter(settings, account)
    database = build_database(settings)
    if account is None:
        return Relay(settings, build_client(settings, limiter=limiter), database=database)
    return Relay(
        settings,
        build_client(settings, limiter=limiter, account=account),
        database=database.for_account(account.name),
        account=account,
    )


def _registry() -> AccountRegistry:
    if _state.registry is None:
        _state.settings = _state.settings or get_settings()
        _state.registry = AccountRegistry(_state.settings, check_every=ACCOUNTS_CHECK_EVERY)
    return _state.registry


def get_accounts() -> Accounts:
    """The configured accounts now (SKYSYNC_ACCOUNTS_FILE is re-read when it changed)."""
    with _lock:
        return _registry().current()


def get_relay(account: str = DEFAULT_ACCOUNT) -> Relay:
    """The process-wide relay of ``account`` (built on first use, after a fork too, and again
    when the accounts file changed that account). UnknownAccount when it is not configured."""
    with _lock:
        accounts = _registry().current()
        if accounts is not _state.built_for:
            _rebuild(accounts)
        relay = _state.relays.get(account)
        if relay is None:
            if account not in accounts:
                raise UnknownAccount(f"SkyHub account {account!r} is not configured")
            assert _state.settings is not None
            relay = _state.relays[account] = build_relay(_state.settings, accounts[account])
        return relay


def _rebuild(accounts: Accounts) -> None:
    """The accounts changed: drop the relays of accounts that are gone or whose settings
    changed (each built again on first use); keep the others, and their connections."""
    previous = _state.built_for
    for name in list(_state.relays):
        before = previous.by_name.get(name) if previous is not None else None
        if before is None or accounts.by_name.get(name) != before:
            _state.relays.pop(name).client.close()
    _state.built_for = accounts


def _close_relays() -> None:
    for relay in _state.relays.values():
        relay.client.close()
    _state.relays.clear()
    _state.built_for = None


def reset() -> None:
    """Forget the built objects (after fork, in tests)."""
    with _lock:
        _close_relays()
        _state.registry = None
        _state.settings = None
