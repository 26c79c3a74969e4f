"""Accounts: each seller's credentials see their own SkyHub, as on SkyHub itself.

An account is a name, an email and an api_key (the account key stays the emulator-wide one:
the configured one, or any non-empty one).  Each holds its own
:class:`~skysync.emulator.state.EmulatorState` (catalogue, order queue, sync errors, request
log, rate-limit windows, scripted faults and random draws) and its own dispatcher; the config
(latency, rate limit values, fail rates...) and the lock are shared.

A request goes to the registered account whose email its ``X-User-Email`` carries; any other
goes to ``default``, which always exists and authenticates as the single-account emulator did
(the configured credentials, or any non-empty ones when none are configured).  A revoked
account refuses its key (401, as a wrong key) until it is restored.  The api_key is never
shown: not in a repr, an answer or a log.
"""

from __future__ import annotations

import threading
from email.message import Message
from typing import Any

from skysync.emulator.catalog import Catalog
from skysync.emulator.config import (
    DEFAULT_ACCOUNT,
    SandboxAccount,
    SandboxConfig,
    check_accounts,
)
from skysync.emulator.dispatch import Dispatcher, check_credentials
from skysync.emulator.orders import Orders
from skysync.emulator.state import EmulatorState
from skysync.emulator.sync_errors import SyncErrors


class UnknownAccountError(LookupError):
    """No account has this name (the admin API answers 404 naming it)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown sandbox account {name!r}")
        self.name = name


class AccountExistsError(ValueError):
    """An account with this name or email exists already (the admin API answers 409)."""


class Account:
    """One seller: its credentials, and everything SkyHub holds for it."""

    def __init__(
        self,
        spec: SandboxAccount | None,
        state: EmulatorState,
        *,
        from_config: bool = False,
    ) -> None:
        self.spec = spec  # None for the default account (its repr hides the key)
        self.from_config = from_config  # set at construction: a reset keeps it
        self.revoked = False
        self.state = state
        self.catalog = Catalog(state)
        self.orders = Orders(state)
        self.sync_errors = SyncErrors(state)
        self.dispatcher = Dispatcher(
            state,
            {"catalog": self.catalog, "orders": self.orders, "sync_errors": self.sync_errors},
            self.check_auth,
        )

    @property
    def name(self) -> str:
        return self.spec.name if self.spec is not None else DEFAULT_ACCOUNT

    @property
    def email(self) -> str | None:
        """The account's email; the configured one (or None) for ``default``."""
        return self.spec.email if self.spec is not None else self.state.config.email

    def __repr__(self) -> str:
        return f"Account(name={self.name!r}, email={self.email!r}, revoked={self.revoked})"

    def describe(self) -> dict[str, Any]:
        """Name, email and whether it is revoked: never the key."""
        return {"name": self.name, "email": self.email, "revoked": self.revoked}

    def check_auth(self, headers: Message) -> None:
        """401 unless the headers carry this account's credentials and it is not revoked."""
        cfg = self.state.config
        if self.spec is None:
            expected = {"email": cfg.email, "api_key": cfg.api_key, "account_key": cfg.account_key}
        else:
            # the email chose this account already
            expected = {"email": None, "api_key": self.spec.api_key, "account_key": cfg.account_key}
        check_credentials(headers, expected, revoked=self.revoked)


class Accounts:
    """The accounts the emulator serves, ``default`` first; guarded by the shared lock."""

    def __init__(
        self, config: SandboxConfig, lock: threading.Lock, stopping: threading.Event
    ) -> None:
        self._config = config
        self._lock = lock
        self._stopping = stopping
        self.default = Account(None, self._new_state())
        self._by_name: dict[str, Account] = {DEFAULT_ACCOUNT: self.default}
        check_accounts(config.accounts, config.email)
        for spec in config.accounts:
            self._by_name[spec.name] = Account(spec, self._new_state(), from_config=True)

    def _new_state(self) -> EmulatorState:
        return EmulatorState(self._config, self._lock, self._stopping)

    def get(self, name: str) -> Account:
        """The account named `name`; UnknownAccountError when there is none."""
        with self._lock:
            account = self._by_name.get(name)
        if account is None:
            raise UnknownAccountError(name)
        return account

    def for_email(self, email: str | None) -> Account:
        """The registered account with this email, else ``default``."""
        with self._lock:
            for account in self._by_name.values():
                if account is not self.default and account.email == email:
                    return account
        return self.default

    def all(self) -> list[Account]:
        """Every account, ``default`` first, then in the order they were added."""
        with self._lock:
            return list(self._by_name.values())

    def add(self, spec: SandboxAccount) -> Account:
        """Register a new, empty account; AccountExistsError when its name or email is taken."""
        with self._lock:
            taken = [a.spec for a in self._by_name.values() if a.spec is not None]
            try:
                check_accounts([*taken, spec], self._config.email)
            except ValueError as exc:
                raise AccountExistsError(str(exc)) from None
            account = Account(spec, self._new_state())
            self._by_name[spec.name] = account
            return account

    def set_revoked(self, name: str, revoked: bool) -> None:
        """Refuse (or accept again) the account's key; UnknownAccountError when unknown."""
        account = self.get(name)
        with self._lock:
            account.revoked = revoked

    def reset(self, name: str | None = None) -> None:
        """Empty one account (and restore its key), or all of them: then the accounts added
        at runtime are dropped, those from the config and ``default`` stay, emptied."""
        if name is not None:
            account = self.get(name)
            with self._lock:
                account.state.clear()
                account.revoked = False
            return
        with self._lock:
            kept = {n: a for n, a in self._by_name.items() if a is self.default or a.from_config}
            self._by_name = kept
            for account in kept.values():
                account.state.clear()
                account.revoked = False
