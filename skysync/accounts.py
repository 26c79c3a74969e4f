"""Several SkyHub accounts (issue #21): which accounts there are and their credentials.

The ``default`` account always exists: the single-account settings (SKYSYNC_SKYHUB_EMAIL,
_API_KEY, _ACCOUNT_KEY, unset on the emulator). SKYSYNC_ACCOUNTS_FILE names a TOML file (a
Docker secret, typically) with more, one ``[accounts.NAME]`` table each::

    [accounts.loja-sul]
    email = "sul@example.com"
    api_key_file = "loja-sul.key"     # or api_key = "..."; relative to this file
    account_key = "..."               # else SKYSYNC_SKYHUB_ACCOUNT_KEY
    stock_buffer = 2                  # else SKYSYNC_STOCK_BUFFER
    price_drop_guard = false          # a percent, or false/0: off; else SKYSYNC_PRICE_DROP_GUARD

Pure parsing and validation (no database, no HTTP): :func:`load_accounts` gives the accounts or
raises :class:`~skysync.config.ConfigError` with one line per problem, each naming the file and
the field (``accounts.loja-sul.api_key``), never a secret. :class:`AccountRegistry` re-reads the
file when it changes and keeps the last good accounts when an edit breaks it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import SecretStr

from skysync.config import DEFAULT_SKYHUB_URL, ConfigError, Settings, is_placeholder
from skysync.domain.kinds import DEFAULT_ACCOUNT
from skysync.domain.reservation import Reserving
from skysync.logs import add_secrets

log = logging.getLogger("skysync.accounts")

ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # names as the ERP writes them
SINGLE_ACCOUNT_SOURCE = "single-account settings"
PRICE_GUARD_OFF = 0.0  # Account.price_drop_guard: explicitly off for this account
MAX_STOCK_BUFFER = 1_000_000

_KEYS = ("email", "api_key", "api_key_file", "account_key", "stock_buffer", "price_drop_guard")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_MASK = "**********"


def is_account_name(name: str) -> bool:
    """``name`` is a valid account name (the whole of it: ACCOUNT_NAME's ``$`` alone would let
    a trailing newline through)."""
    return ACCOUNT_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class Account:
    """One SkyHub account. Its repr shows no secret (SecretStr)."""

    name: str
    email: str | None  # None only for the default account on the emulator
    api_key: SecretStr | None
    account_key: SecretStr | None  # from the file, else Settings.skyhub_account_key
    stock_buffer: int | None = None  # None: Settings.stock_buffer
    price_drop_guard: float | None = None  # None: Settings.price_drop_guard; 0.0: off here

    @property
    def has_credentials(self) -> bool:
        """All three credentials are set (else the bootstrap uses the emulator's)."""
        return bool(self.email and self.api_key and self.account_key)

    def effective_stock_buffer(self, settings: Settings) -> int:
        """Units kept back from this account's quantities."""
        return settings.stock_buffer if self.stock_buffer is None else self.stock_buffer

    def reserving(self, settings: Settings) -> Reserving | None:
        """SKYSYNC_RESERVE_OPEN_ORDERS with this account's stock buffer (what `item show` and
        the console explain a quantity with); None when it is off."""
        if not settings.reserve_open_orders:
            return None
        return Reserving(stock_buffer=self.effective_stock_buffer(settings))

    def effective_price_drop_guard(self, settings: Settings) -> float | None:
        """This account's price drop guard in percent; None: the guard is off for it."""
        if self.price_drop_guard is None:
            return settings.price_drop_guard
        return self.price_drop_guard or None  # PRICE_GUARD_OFF

    def masked(self, settings: Settings) -> dict[str, Any]:
        """For display (check-config): the keys only as set or not, never their values."""
        guard = self.price_drop_guard
        return {
            "name": self.name,
            "email": self.email,
            "api_key": _MASK if self.api_key else None,
            "account_key": _MASK if self.account_key else None,
            "stock_buffer": self.stock_buffer,
            "price_drop_guard": False if guard == PRICE_GUARD_OFF else guard,
            "effective_stock_buffer": self.effective_stock_buffer(settings),
            "effective_price_drop_guard": self.effective_price_drop_guard(settings),
        }


@dataclass(frozen=True)
class Accounts:
    """Every account by name: ``default`` first, then the file's in its order."""

    by_name: Mapping[str, Account]
    source: str  # "SKYSYNC_ACCOUNTS_FILE=/run/secrets/accounts.toml" or SINGLE_ACCOUNT_SOURCE

    def names(self) -> list[str]:
        return list(self.by_name)

    def __getitem__(self, name: str) -> Account:
        try:
            return self.by_name[name]
        except KeyError:
            known = ", ".join(self.by_name)
            raise KeyError(f"no SkyHub account {name!r} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        """``"loja-sul" in accounts``; an Account is in when it is the one of its name."""
        if isinstance(name, Account):
            return self.by_name.get(name.name) == name
        return name in self.by_name

    def __iter__(self) -> Iterator[Account]:
        """The accounts themselves (``names()`` gives their names), default first."""
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    def secret_values(self) -> list[str]:
        """Every api_key and account_key (4 characters or more), for the log filter."""
        values: list[str] = []
        for account in self.by_name.values():
            for secret in (account.api_key, account.account_key):
                value = secret.get_secret_value() if secret is not None else ""
                if len(value) >= 4 and value not in values:
                    values.append(value)
        return values

    def masked(self, settings: Settings) -> dict[str, Any]:
        """For display (check-config): names, emails, overrides; keys only as set or not."""
        return {
            "source": self.source,
            "accounts": [account.masked(settings) for account in self.by_name.values()],
        }


class AccountsFileError(ConfigError):
    """SKYSYNC_ACCOUNTS_FILE does not load; ``problems``: one line each, naming the file and
    the field, never a secret."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


# (inode, size, mtime) of a file as read; None: could not be looked at
_Stamp = tuple[int, int, int] | None
_Fingerprint = tuple[tuple[Path, _Stamp], ...]


def _stamp_of(stat: os.stat_result) -> _Stamp:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _stamp(path: Path) -> _Stamp:
    try:
        return _stamp_of(path.stat())
    except OSError:
        return None


def settings_default(settings: Settings) -> Account:
    """The default account of the single-account settings."""
    return Account(
        DEFAULT_ACCOUNT,
        settings.skyhub_email,
        settings.skyhub_api_key,
        settings.skyhub_account_key,
    )


def load_accounts(settings: Settings) -> Accounts:
    """The accounts of ``settings``: the default one, and SKYSYNC_ACCOUNTS_FILE's when set.
    Raises ConfigError (an :class:`AccountsFileError`) naming every problem of the file."""
    return _load(settings)[0]


def _load(settings: Settings) -> tuple[Accounts, _Fingerprint]:
    """The accounts, and the files they were read from as they were when read."""
    if settings.accounts_file is None:
        only = {DEFAULT_ACCOUNT: settings_default(settings)}
        return Accounts(MappingProxyType(only), SINGLE_ACCOUNT_SOURCE), ()
    reader = _FileReader(settings, settings.accounts_file)
    return reader.accounts(), tuple(reader.read)


class _FileReader:
    """One reading of the accounts file: collects every problem, then raises them together."""

    def __init__(self, settings: Settings, path: Path) -> None:
        self.settings = settings
        self.path = path
        self.real_skyhub = settings.skyhub_url == DEFAULT_SKYHUB_URL
        self.problems: list[str] = []
        self.read: list[tuple[Path, _Stamp]] = []  # files read, with their stamps

    # -- reporting --------------------------------------------------------------------------
    def fail(self, where: str, problem: str) -> None:
        self.problems.append(f"SKYSYNC_ACCOUNTS_FILE ({self.path}): {where}{problem}")

    def error(self) -> AccountsFileError:
        return AccountsFileError(self.problems)

    # -- the file ---------------------------------------------------------------------------
    def accounts(self) -> Accounts:
        tables = self._tables()
        found: dict[str, Account] = {}
        for name, table in tables.items():
            found[name] = self._account(name, table)
        if DEFAULT_ACCOUNT in found:
            self._refuse_two_defaults()
        else:
            found[DEFAULT_ACCOUNT] = settings_default(self.settings)
        ordered = {DEFAULT_ACCOUNT: found.pop(DEFAULT_ACCOUNT), **found}
        self._refuse_shared_emails(ordered, defined_here=DEFAULT_ACCOUNT in tables)
        if self.problems:
            raise self.error()
        return Accounts(MappingProxyType(ordered), f"SKYSYNC_ACCOUNTS_FILE={self.path}")

    def _text(self, path: Path, where: str) -> str | None:
        """The UTF-8 text of ``path``, its stamp noted as it was read; None: reported."""
        try:
            with path.open("rb") as file:
                stamp = _stamp_of(os.fstat(file.fileno()))
                data = file.read()
        except FileNotFoundError:
            self.fail(where, "does not exist")
            return None
        except IsADirectoryError:
            self.fail(where, "is a directory, not a file")
            return None
        except OSError as exc:
            self.fail(where, f"cannot be read ({exc.strerror or type(exc).__name__})")
            return None
        self.read.append((path, stamp))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(where, "is not UTF-8 text")
            return None

    def _tables(self) -> dict[str, Any]:
        """The ``accounts`` table's entries; raises on a file that is not an accounts file."""
        text = self._text(self.path, "")
        if text is None:
            raise self.error()
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            self.fail("", f"is not valid TOML: {exc}")
            raise self.error() from None
        unknown = sorted(set(document) - {"accounts"})
        if unknown:
            self.fail("", f"unknown top-level key(s) {', '.join(unknown)} (only [accounts.NAME])")
        tables = document.get("accounts")
        if not isinstance(tables, dict) or not tables:
            self.fail("accounts: ", "defines no account: add an [accounts.NAME] table for each")
            raise self.error()
        for name, table in tables.items():
            if not isinstance(table, dict):
                self.fail(f"{_where(name)}: ", f"must be a table ([accounts.{name}])")
        if self.problems:
            raise self.error()
        return tables

    # -- one account ------------------------------------------------------------------------
    def _account(self, name: str, table: dict[str, Any]) -> Account:
        where = _where(name)
        if not is_account_name(name):
            self.fail(
                f"{where}: ",
                "is not a valid account name: it must match ^[a-z0-9][a-z0-9_-]{0,62}$ "
                "(lower-case letters, digits, '-' and '_', starting with a letter or a digit, "
                "at most 63 characters), as the ERP writes it",
            )
        unknown = sorted(set(table) - set(_KEYS))
        if unknown:
            self.fail(
                f"{where}: ", f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(_KEYS)})"
            )
        return Account(
            name,
            self._email(where, table),
            self._api_key(where, table),
            self._account_key(where, table),
            self._stock_buffer(where, table),
            self._price_drop_guard(where, table),
        )

    def _email(self, where: str, table: dict[str, Any]) -> str | None:
        value = table.get("email")
        if value is None:
            self.fail(f"{where}.email: ", "is required (X-User-Email of the account)")
            return None
        if not isinstance(value, str) or not _EMAIL.fullmatch(value.strip()):
            self.fail(f"{where}.email: ", 'must be an e-mail address ("seller@example.com")')
            return None
        return value.strip()

    def _api_key(self, where: str, table: dict[str, Any]) -> SecretStr | None:
        if "api_key" in table and "api_key_file" in table:
            self.fail(f"{where}: ", "has both api_key and api_key_file: keep one")
            return None
        if "api_key" in table:
            return self._secret(f"{where}.api_key", table["api_key"])
        if "api_key_file" in table:
            return self._key_file(f"{where}.api_key_file", table["api_key_file"])
        self.fail(f"{where}.api_key: ", "is required (or api_key_file, a file that holds it)")
        return None

    def _key_file(self, field: str, raw: Any) -> SecretStr | None:
        if not isinstance(raw, str) or not raw.strip():
            self.fail(f"{field}: ", "must be a file path (relative to this file, or absolute)")
            return None
        path = Path(raw.strip())
        if not path.is_absolute():
            path = (self.path.parent / path).absolute()
        text = self._text(path, f"{field} ({path}): ")
        if text is None:
            return None
        if not text.strip():
            self.fail(f"{field} ({path}): ", "is empty")
            return None
        return self._secret(field, text, what="the key it holds")

    def _secret(self, field: str, raw: Any, *, what: str = "") -> SecretStr | None:
        """A key's value (never echoed): a non-empty string, one word, no placeholder."""
        label = f"{field}: {what + ' ' if what else ''}"
        if not isinstance(raw, str) or not raw.strip():
            self.fail(label, "must be a non-empty string")
            return None
        value = raw.strip()
        if self.real_skyhub and is_placeholder(value):
            self.fail(
                label,
                "is still a placeholder (as in .env.example); set the real value, or point "
                "SKYSYNC_SKYHUB_URL at an emulator",
            )
            return None
        if any(char.isspace() for char in value):
            self.fail(label, "must not contain spaces or line breaks")
            return None
        return SecretStr(value)

    def _account_key(self, where: str, table: dict[str, Any]) -> SecretStr | None:
        if "account_key" in table:
            return self._secret(f"{where}.account_key", table["account_key"])
        fallback = self.settings.skyhub_account_key
        if fallback is None and self.real_skyhub:
            self.fail(
                f"{where}.account_key: ",
                "is missing, and SKYSYNC_SKYHUB_ACCOUNT_KEY (its fallback) is unset: SkyHub "
                "needs X-Accountmanager-Key; set either, or point SKYSYNC_SKYHUB_URL at an "
                "emulator",
            )
        return fallback

    def _stock_buffer(self, where: str, table: dict[str, Any]) -> int | None:
        value = table.get("stock_buffer")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            value = -1  # (True and 1.5 are no counts)
        if not 0 <= value <= MAX_STOCK_BUFFER:
            self.fail(
                f"{where}.stock_buffer: ", f"must be a whole number from 0 to {MAX_STOCK_BUFFER}"
            )
            return None
        return value

    def _price_drop_guard(self, where: str, table: dict[str, Any]) -> float | None:
        value = table.get("price_drop_guard")
        if value is None:
            return None
        if value is False or (type(value) in (int, float) and value == 0):
            return PRICE_GUARD_OFF
        if type(value) in (int, float) and math.isfinite(value) and 0 < value < 100:
            return float(value)
        self.fail(
            f"{where}.price_drop_guard: ",
            "must be a percent above 0 and below 100, or false (or 0) for off here",
        )
        return None

    # -- across accounts --------------------------------------------------------------------
    def _refuse_two_defaults(self) -> None:
        both = [
            variable
            for variable, value in (
                ("SKYSYNC_SKYHUB_EMAIL", self.settings.skyhub_email),
                ("SKYSYNC_SKYHUB_API_KEY", self.settings.skyhub_api_key),
            )
            if value is not None
        ]
        if both:
            self.fail(
                f"{_where(DEFAULT_ACCOUNT)}: ",
                f"is ambiguous: the file defines the default account and {' and '.join(both)} "
                f"{'are' if len(both) > 1 else 'is'} set too; keep one of them",
            )

    def _refuse_shared_emails(self, accounts: dict[str, Account], *, defined_here: bool) -> None:
        """Two accounts with one e-mail would share SkyHub's rate limits and order queue."""
        first: dict[str, str] = {}
        for account in accounts.values():
            if account.email is None:
                continue
            if account.name == DEFAULT_ACCOUNT and not defined_here:
                field = "the default account's SKYSYNC_SKYHUB_EMAIL"
            else:
                field = f"{_where(account.name)}.email"
            earlier = first.setdefault(account.email.casefold(), field)
            if earlier != field:
                self.fail(
                    f"{_where(account.name)}.email: ",
                    f"is the same e-mail as {earlier}: two accounts with one e-mail would "
                    "share SkyHub's rate limits and order queue; give each its own",
                )


def _where(name: str) -> str:
    """``accounts.NAME`` as TOML writes it (quoted when it is no bare key)."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return f"accounts.{name}"
    return "accounts." + '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AccountRegistry:
    """The current accounts, re-read when SKYSYNC_ACCOUNTS_FILE (or a key file it names)
    changes: its inode, size or mtime, looked at no more than every ``check_every`` seconds.
    Thread-safe. An edit that does not load keeps the last good accounts: one ERROR is logged
    per distinct problem (naming it, never a value) and :attr:`last_error` holds it until a
    good edit. New keys are handed to the log filter (:func:`skysync.logs.add_secrets`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        check_every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.check_every = check_every
        self.last_error: str | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts, self._read = _load(settings)  # raises ConfigError: refuse to start
        add_secrets(self._accounts.secret_values())
        self._checked = clock()

    def current(self) -> Accounts:
        """The last good accounts, re-read first if the file changed since."""
        with self._lock:
            now = self._clock()
            if self._read and now - self._checked >= self.check_every:
                self._checked = now
                if any(_stamp(path) != stamp for path, stamp in self._read):
                    self._reload()
            return self._accounts

    def reload(self) -> Accounts:
        """Re-read the file now, changed or not (a SIGHUP, an operator's command)."""
        with self._lock:
            self._checked = self._clock()
            if self.settings.accounts_file is not None:
                self._reload()
            return self._accounts

    def _reload(self) -> None:
        try:
            accounts, read = _load(self.settings)
        except ConfigError as exc:
            problem = "; ".join(getattr(exc, "problems", None) or [str(exc)])
            if problem != self.last_error:
                log.error(
                    "accounts file changed and does not load; keeping the last good "
                    "accounts (%s): %s",
                    ", ".join(self._accounts.names()),
                    problem,
                )
            self.last_error = problem
            return  # self._read unchanged: tried again at the next check until it loads
        add_secrets(accounts.secret_values())
        before, after = set(self._accounts.names()), set(accounts.names())
        log.info(
            "accounts reloaded from %s: %s (added: %s; removed: %s)",
            accounts.source,
            ", ".join(accounts.names()),
            ", ".join(sorted(after - before)) or "none",
            ", ".join(sorted(before - after)) or "none",
        )
        self._accounts, self._read, self.last_error = accounts, read, None
