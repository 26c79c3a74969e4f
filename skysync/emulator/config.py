"""What shapes the emulator's behaviour (`SandboxConfig`), and which values it refuses; the
accounts it serves besides ``default`` (`SandboxAccount`) and how one is written."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

_SECRET_FIELDS = frozenset({"api_key", "account_key"})

#: The account every request goes to unless its X-User-Email names a registered one.
DEFAULT_ACCOUNT = "default"

_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ACCOUNT_FIELDS = ("name", "email", "api_key")


@dataclass(frozen=True)
class SandboxAccount:
    """A seller's SkyHub account: requests carrying its email (and its api_key, with the
    emulator-wide account key) see its own catalogue, orders, errors, limits and faults.
    The api_key is never shown: not in the repr, not in an answer, not in a log."""

    name: str
    email: str
    api_key: str = field(repr=False)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SandboxAccount:
        """An account from ``{"name", "email", "api_key"}``; ValueError naming the bad field
        (never repeating the api_key)."""
        unknown = sorted(set(data) - set(_ACCOUNT_FIELDS))
        if unknown:
            raise ValueError(f"unknown account field(s): {', '.join(map(str, unknown))}")
        name = data.get("name")
        if not isinstance(name, str) or not _ACCOUNT_NAME.fullmatch(name):
            raise ValueError(
                "name is required: 1 to 64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        for key in ("email", "api_key"):
            value = data.get(key)
            if not isinstance(value, str) or not _is_header_value(value):
                raise ValueError(
                    f"{key} is required: a non-empty printable ASCII string "
                    "without spaces around it"
                )
        return cls(name, data["email"], data["api_key"])

    @classmethod
    def parse(cls, spec: str) -> SandboxAccount:
        """``NAME=EMAIL:API_KEY`` (the ``--account`` option); ValueError that never repeats
        the api_key."""
        name, equals, rest = spec.partition("=")
        email, colon, api_key = rest.partition(":")
        if not equals or not colon:
            raise ValueError("an account is written NAME=EMAIL:API_KEY")
        return cls.from_mapping({"name": name, "email": email, "api_key": api_key})


def _is_header_value(value: str) -> bool:
    """Something a client can send as a header value and the emulator compare as it is."""
    return bool(value) and value == value.strip() and value.isascii() and value.isprintable()


def check_accounts(accounts: Iterable[SandboxAccount], default_email: str | None) -> None:
    """ValueError when two accounts share a name or an email, one is named ``default``, or one
    takes the default account's configured email."""
    names: set[str] = {DEFAULT_ACCOUNT}
    emails: set[str] = {default_email} if default_email is not None else set()
    for account in accounts:
        if not isinstance(account, SandboxAccount):
            raise ValueError("accounts must be SandboxAccount values")
        if account.name in names:
            raise ValueError(f"account name {account.name!r} is already taken")
        if account.email in emails:
            raise ValueError(f"account email {account.email!r} is already taken")
        names.add(account.name)
        emails.add(account.email)


@dataclass
class SandboxConfig:
    """Everything that shapes the emulator's behaviour; most fields can change at runtime."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 = ephemeral
    # When all three credentials are None, any non-empty values are accepted.
    email: str | None = None
    api_key: str | None = field(default=None, repr=False)
    account_key: str | None = field(default=None, repr=False)
    # None = SkyHub's limits (9/s and 1/s buckets). R replaces every 9/s limit by R and scales
    # the 1/s ones by R/9.
    rate_limit: float | None = None
    rate_limits_enabled: bool = True
    retry_after_header: bool = False  # 429 answers carry `Retry-After` when True
    # ...with this value: a number of seconds, or a string sent as it is (an HTTP date, or
    # something a misbehaving server might send: "1e12", "soon"), for tests of the client
    retry_after_seconds: float | str = 1.0
    refused_categories: list[str] = field(default_factory=list)  # 422 on products naming them
    latency_ms: float = 0.0
    fail_rate: float = 0.0
    timeout_rate: float = 0.0
    lost_answer_rate: float = 0.0
    hang_seconds: float = 30.0
    visibility_timeout: float = 300.0
    link_delay: float | None = 0.0  # None = never linked automatically (only via admin)
    seed: int | None = None
    # Accounts served besides "default" (set at construction; at runtime through
    # Sandbox.add_account or POST /_sandbox/accounts).
    accounts: list[SandboxAccount] = field(default_factory=list)


def is_number(value: Any) -> bool:
    """A JSON number: int or float, never a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_setting_names(changes: Mapping[str, Any]) -> None:
    """ValueError naming every key that is not a SandboxConfig field."""
    known = {f.name for f in fields(SandboxConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"unknown sandbox setting(s): {', '.join(unknown)}")


def masked_config(config: SandboxConfig) -> dict[str, Any]:
    """The config as JSON-ready data, with the credential values replaced by ``***``."""
    data = asdict(config)
    for name in _SECRET_FIELDS:
        if data[name] is not None:
            data[name] = "***"
    data["accounts"] = [{"name": a.name, "email": a.email} for a in config.accounts]
    return data


def validate_config_changes(changes: Mapping[str, Any]) -> None:
    """Reject values that would make the emulator misbehave in confusing ways."""
    if "accounts" in changes:
        raise ValueError("accounts cannot change through the config; add one as an account")
    for name in ("fail_rate", "timeout_rate", "lost_answer_rate"):
        if name in changes:
            value = changes[name]
            if not is_number(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number between 0 and 1")
    if "refused_categories" in changes:
        value = changes["refused_categories"]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("refused_categories must be a list of strings")
    for name in ("latency_ms", "hang_seconds", "visibility_timeout", "retry_after_seconds"):
        if name == "retry_after_seconds" and isinstance(changes.get(name), str):
            if not changes[name].isprintable():
                raise ValueError("retry_after_seconds must be a number >= 0 or a printable string")
            continue
        if name in changes:
            value = changes[name]
            if not is_number(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0")
    if "link_delay" in changes:
        value = changes["link_delay"]
        if value is not None and (not is_number(value) or value < 0):
            raise ValueError("link_delay must be None or a number >= 0")
    if "rate_limit" in changes:
        value = changes["rate_limit"]
        if value is not None and (not is_number(value) or value <= 0):
            raise ValueError("rate_limit must be None or a number > 0")
    for name in ("rate_limits_enabled", "retry_after_header"):
        if name in changes and not isinstance(changes[name], bool):
            raise ValueError(f"{name} must be true or false")
    for name in ("email", "api_key", "account_key"):
        if name in changes and changes[name] is not None and not isinstance(changes[name], str):
            raise ValueError(f"{name} must be a string or None")
    if "seed" in changes:
        value = changes["seed"]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError("seed must be an integer or None")
