"""The one Settings object: every knob skysync has, read from ``SKYSYNC_*`` variables and ``.env``.

No other module reads ``os.environ``. Secrets are ``SecretStr`` so that a repr, a log line or a
validation error never shows them; :func:`load_settings` turns a validation failure into a
message that names the variable and the problem, never the value.
"""

from __future__ import annotations

import re
from contextlib import suppress
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from skysync.domain.fast_lane import LaneMode, LaneRule
from skysync.domain.late import LateRules

DEFAULT_SQLITE_FILE = "skysync.db"
DEFAULT_SKYHUB_URL = "https://api.skyhub.com.br"
DEFAULT_REQUEST_DEADLINE = 30.0  # seconds (SKYSYNC_SKYHUB_REQUEST_DEADLINE unset)

_SECRET_FIELDS = frozenset(
    {
        "skyhub_api_key",
        "skyhub_account_key",
        "flower_basic_auth",
        "console_viewers",
        "console_operators",
    }
)
# The secrets that hold "user:password" (the console's: several, comma-separated): only the
# passwords are held to the placeholder check.
_USER_PASSWORD_FIELDS = frozenset({"flower_basic_auth", "console_viewers", "console_operators"})
# A console user's name: what a browser's login box accepts and a log line can show.
_CONSOLE_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
# Values that mean "fill me in": .env.example's placeholders and their usual cousins.
_PLACEHOLDER = re.compile(
    r"^(<.*>|x{3,}|\.{3,}|change[-_ ]?me.*|placeholder|secret|password|your[-_ ].*|todo|tbd)$",
    re.I,
)


def is_placeholder(value: str) -> bool:
    """``value`` is a "fill me in" (CHANGE_ME, <your key>, xxx...), not a real secret."""
    return bool(_PLACEHOLDER.match(value.strip()))


# user:password@ after a scheme. The password runs to the LAST "@" (of the value, or of the
# run of non-blank characters in a text): a password with an unescaped "@" (u:p@ss@host) is
# then hidden whole, where a URL parser would take "p" for it and "ss@host" for the host.
_DSN_HEAD = r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)"
_DSN_PASSWORD = re.compile(_DSN_HEAD + r"(?P<pw>.*)(?P<tail>@)", re.I | re.S)
_DSN_PASSWORD_IN_TEXT = re.compile(_DSN_HEAD + r"(?P<pw>\S*)(?P<tail>@)", re.I)


def dsn_password(url: str) -> str | None:
    """The password of a database or broker URL, whatever its characters (None: none)."""
    found = _DSN_PASSWORD.match(url.strip())
    return found["pw"] if found and found["pw"] else None


def user_passwords(value: str) -> list[tuple[str, str]]:
    """``user:password`` entries, comma-separated (blank entries skipped): the console's users.
    The password runs from the first ":" to the next ","; a ValueError names the entry by its
    position, never by its text."""
    found = []
    entries = [entry.strip() for entry in value.split(",")]
    for position, entry in enumerate((e for e in entries if e), start=1):
        user, sep, password = entry.partition(":")
        if not (sep and password.strip()):
            raise ValueError(
                f'entry {position} must be "user:password" with both parts non-empty '
                '(entries are comma-separated: "ana:pw1,rui:pw2")'
            )
        if not _CONSOLE_USER.fullmatch(user):
            raise ValueError(
                f"entry {position}: the user name must be letters, digits, '.', '_', '@' or '-' "
                "(at most 64, starting with a letter or a digit)"
            )
        found.append((user, password.strip()))
    if not found:
        raise ValueError('must hold at least one "user:password" entry')
    return found


def mask_dsn(url: str) -> str:
    """Hide the password in a database or broker URL (``postgresql://u:***@host/db``), whatever
    its characters: everything between the user's ``:`` and the last ``@``."""
    return _DSN_PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", url)


def mask_dsns_in(text: str) -> str:
    """Hide the password of every URL in a text (a log line, an error message)."""
    return _DSN_PASSWORD_IN_TEXT.sub(lambda m: f"{m['head']}***{m['tail']}", text)


def scrub_dsn_secret(text: str, url: str) -> str:
    """``text`` (a driver's error about ``url``) without any piece of ``url``'s password. A
    password with an unescaped "@" is parsed short by the driver, whose errors then name the
    rest of it as part of the host (``failed to resolve host 'ss@db'``): that rest goes too."""
    password = dsn_password(url)
    if password:
        text = text.replace(password, "***")
        for at, char in enumerate(password):
            if char == "@" and password[at + 1 :]:
                text = text.replace(password[at + 1 :] + "@", "***@")
        try:
            import sqlalchemy as sa

            parsed = sa.make_url(url.strip())
        except Exception:
            parsed = None
        for part in (parsed.host, parsed.database) if parsed is not None else ():
            if part and part in password:  # the driver took part of the password for it
                for quote in "'\"":
                    text = text.replace(f"{quote}{part}{quote}", f"{quote}***{quote}")
    return mask_dsns_in(text)


class ConfigError(Exception):
    """A setting has a bad value. The message names the variable and never echoes a secret."""


class _SettingsFields(BaseSettings):
    """The fields of :class:`Settings` (read from ``SKYSYNC_*``), apart from their checks and
    what is derived from them."""

    model_config = SettingsConfigDict(
        env_prefix="SKYSYNC_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_SQLITE_FILE}",
        description="SQLAlchemy URL of the outbox database (default: a SQLite file here).",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL. Unset: a SQLite-backed broker beside the database.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL for the shared rate limiter. Unset: an in-process limiter.",
    )
    skyhub_url: str = Field(default=DEFAULT_SKYHUB_URL, description="SkyHub API base URL.")
    skyhub_email: str | None = Field(default=None, description="X-User-Email.")
    skyhub_api_key: SecretStr | None = Field(default=None, description="X-Api-Key (secret).")
    skyhub_account_key: SecretStr | None = Field(
        default=None, description="X-Accountmanager-Key (secret)."
    )
    accounts_file: Path | None = Field(
        default=None,
        description=(
            "A TOML file of several SkyHub accounts ([accounts.NAME] tables: email, api_key or "
            "api_key_file, account_key, overrides), re-read when it changes "
            "(docs/configuration.md, 'Several SkyHub accounts'). Unset: the one account of "
            "SKYSYNC_SKYHUB_EMAIL/_API_KEY/_ACCOUNT_KEY."
        ),
    )
    skyhub_request_deadline: float | None = Field(
        default=None,
        ge=0.1,
        le=600,
        allow_inf_nan=False,
        description=(
            "Seconds one SkyHub request (connect, send, the whole answer) may take in all; "
            "then the connection is dropped and the rows retry with backoff. Per-read "
            "timeouts alone never end an answer that trickles in. Must be below the workers' "
            "soft time limit (from SKYSYNC_LEASE_SECONDS). Unset: 30, or half that limit when "
            "a short lease makes it less than 60."
        ),
    )
    skyhub_retry_after_max: float = Field(
        default=3600.0,
        ge=1,
        le=86400,
        allow_inf_nan=False,
        description=(
            "The longest a 429's Retry-After may park rows, in seconds; a longer, absurd or "
            "unreadable Retry-After counts as this."
        ),
    )
    sync_interval: float = Field(
        default=900.0,
        gt=0,
        le=7 * 86400,
        allow_inf_nan=False,
        description="Seconds between batches.",
    )
    catch_up_interval: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description=(
            "Seconds between looks for a backlog: after a batch that claimed all it could "
            "(SKYSYNC_BATCH_SIZE rows) another follows as soon as the workers are half done, "
            "until the backlog is gone (docs/relay.md, 'Catching up'). 0: off."
        ),
    )
    order_poll_interval: float = Field(
        default=60.0, gt=0, le=86400, allow_inf_nan=False, description="Seconds between polls."
    )
    rate_limit: float = Field(
        default=8.5, gt=0, le=1000, allow_inf_nan=False, description="Requests/s per bucket."
    )
    batch_size: int = Field(default=500, ge=1, le=100_000, description="Rows claimed per batch.")
    chunks_per_account: int = Field(
        default=2,
        ge=1,
        le=1000,
        description=(
            "Chunks of one account with the workers at once; the others wait their turn "
            "(relay/handout.py), so one account's backlog never takes every worker. Two keep an "
            "account's buckets busy."
        ),
    )
    max_attempts: int = Field(
        default=8, ge=1, le=100, description="Failed attempts before a row is dead."
    )
    lease_seconds: float = Field(
        default=300.0,
        ge=5,
        le=86400,
        allow_inf_nan=False,
        description="How long a claim holds rows before it is reclaimed.",
    )
    price_drop_guard: float | None = Field(
        default=None,
        gt=0,
        lt=100,
        allow_inf_nan=False,
        description=(
            "Percent: a price or promotional price more than this below the last price SkyHub "
            "acknowledged is held back until released (unset: the guard is off)."
        ),
    )
    stock_buffer: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Units kept back from every quantity: SkyHub gets max(qty - buffer, 0).",
    )
    reserve_open_orders: bool = Field(
        default=False,
        description=(
            "Hold back the units of marketplace orders the ERP has not consumed yet: SkyHub "
            "gets the ERP's quantity less those units (docs/orders.md)."
        ),
    )
    reconcile_interval: float = Field(
        default=86400.0,
        ge=60,
        le=30 * 86400,
        allow_inf_nan=False,
        description="Seconds between reconciliations with SkyHub's catalogue (daily).",
    )
    reconcile_repair: bool = Field(
        default=False,
        description="Scheduled reconciliations enqueue corrective rows for the drift they find.",
    )
    sync_errors_interval: float = Field(
        default=3600.0,
        ge=60,
        le=7 * 86400,
        allow_inf_nan=False,
        description="Seconds between pulls of SkyHub's own errors (/sync_errors).",
    )
    discovery_max_pages: int = Field(
        default=300,
        ge=0,
        le=100_000,
        description="The longest listing of SkyHub's catalogue (pages of 100 products) that a "
        "batch reads to learn SKUs it has not seen (which exist, which are variations of "
        "which product); 0: never (relay/catalogue.py).",
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    fast_lane: LaneMode = Field(
        default=LaneMode.OFF,
        description="The fast lane (docs/fast-lane.md): off (default), stockouts (stock rows "
        "with qty <= fast_lane_stock_threshold go out within seconds) or all (every price and "
        "stock row).",
    )
    fast_lane_stock_threshold: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="A stock row with qty at or below this is a stock-out for the fast lane.",
    )
    fast_lane_poll: float = Field(
        default=1.0,
        ge=0.2,
        le=60,
        allow_inf_nan=False,
        description="Seconds between the fast lane's checks for due rows (its fallback when "
        "no notification comes, and its only trigger on SQLite).",
    )
    flower_basic_auth: SecretStr | None = Field(
        default=None,
        description='Flower\'s "user:password" (secret); Flower refuses to start without.',
    )
    late_ship_margin_hours: float = Field(
        default=4.0,
        ge=0,
        le=720,
        allow_inf_nan=False,
        description=(
            "Hours before its expedition limit at which an order paid and not shipped counts "
            "as late (`skysync orders late`, `skysync status`, the metrics); 0: only once the "
            "limit has passed."
        ),
    )
    late_invoice_hours: float = Field(
        default=24.0,
        gt=0,
        le=720,
        allow_inf_nan=False,
        description=(
            "Hours an approved order (payment_received) may wait for its invoice before it "
            "counts as late."
        ),
    )
    late_inbox_minutes: float = Field(
        default=30.0,
        gt=0,
        le=10080,
        allow_inf_nan=False,
        description=(
            "Minutes an order stored in the inbox may wait for the ERP to consume it before it "
            "counts as late: an ERP that stopped reading orders."
        ),
    )
    console_viewers: SecretStr | None = Field(
        default=None,
        description=(
            'The operator console\'s read-only users: "user:password" entries, comma-separated '
            "(secret). They see every page and change nothing (docs/console.md)."
        ),
    )
    console_operators: SecretStr | None = Field(
        default=None,
        description=(
            "The operator console's users who may act (requeue, release, ignore, repair): "
            '"user:password" entries, comma-separated (secret). `skysync console` refuses to '
            "start with neither set."
        ),
    )


class Settings(_SettingsFields):
    """Every setting of skysync (the fields of :class:`_SettingsFields`). Field ``x`` is read
    from ``SKYSYNC_X``; the checks below name the variable of a bad value."""

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        if value.startswith(("postgresql://", "postgres://")):
            # psycopg 3 is the driver we ship; the bare scheme would ask for psycopg2.
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("skyhub_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator(
        "skyhub_email",
        "broker_url",
        "redis_url",
        "price_drop_guard",
        "skyhub_request_deadline",
        "accounts_file",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator(
        "skyhub_api_key",
        "skyhub_account_key",
        "flower_basic_auth",
        "console_viewers",
        "console_operators",
        mode="before",
    )
    @classmethod
    def _blank_secret_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            user, sep, password = value.get_secret_value().partition(":")
            if not (user and sep and password):
                raise ValueError('must be "user:password" with both parts non-empty')
        return value

    @field_validator("console_viewers", "console_operators")
    @classmethod
    def _console_users(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            user_passwords(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _console_users_once(self) -> Settings:
        """One name, one password and one role: a user listed twice (in one variable, or as
        a viewer and an operator) would leave which of them holds to chance."""
        seen: dict[str, str] = {}
        for name in ("console_viewers", "console_operators"):
            for user, _password in self.console_users(name):
                variable = f"SKYSYNC_{name.upper()}"
                if user in seen:
                    where = variable if seen[user] == variable else f"{seen[user]} and {variable}"
                    raise ValueError(f'{where}: the user "{user}" is listed twice')
                seen[user] = variable
        return self

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("fast_lane", mode="before")
    @classmethod
    def _fast_lane_mode(cls, value: Any) -> Any:
        """Any case, spaces around. An unknown mode's message lists the modes as the variable
        takes them (pydantic's own would quote them as Python literals)."""
        if not isinstance(value, str):
            return value  # a LaneMode already, or pydantic refuses it
        try:
            return LaneMode(value.strip().lower())
        except ValueError:
            raise ValueError(f"must be one of {', '.join(LaneMode)}") from None

    @model_validator(mode="after")
    def _deadline_within_the_task_limit(self) -> Settings:
        """A request that may outlast the Celery task sending it would be ended by the soft time
        limit instead of its deadline: the rows would get "internal error:
        SoftTimeLimitExceeded" rather than a reason that says what happened."""
        soft, _hard = self.task_time_limits
        if self.skyhub_request_deadline is not None and self.skyhub_request_deadline >= soft:
            raise ValueError(
                f"SKYSYNC_SKYHUB_REQUEST_DEADLINE: must be below the workers' soft time limit, "
                f"{soft:g} s with SKYSYNC_LEASE_SECONDS={self.lease_seconds:g}: lower it or "
                "raise the lease"
            )
        return self

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> Settings:
        """A secret still set to a placeholder (CHANGE_ME...) would send garbage to SkyHub or
        leave Flower or the console guarded by a published password: refuse it, unless the
        target is an emulator (SKYSYNC_SKYHUB_URL is not SkyHub's own address)."""
        if self.skyhub_url != DEFAULT_SKYHUB_URL:
            return self
        for name in sorted(_SECRET_FIELDS):
            secret = getattr(self, name)
            if secret is None:
                continue
            value = secret.get_secret_value()
            parts = [value]
            if name == "flower_basic_auth":
                parts = value.split(":", 1)[1:]
            elif name in _USER_PASSWORD_FIELDS:
                parts = [password for _user, password in user_passwords(value)]
            if any(_PLACEHOLDER.match(part.strip()) for part in parts):
                raise ValueError(
                    f"SKYSYNC_{name.upper()}: is still a placeholder (as in .env.example); "
                    "set the real value, or point SKYSYNC_SKYHUB_URL at an emulator"
                )
        for name in ("database_url", "broker_url", "redis_url"):
            password = dsn_password(getattr(self, name) or "")
            if password and _PLACEHOLDER.match(password):
                raise ValueError(
                    f"SKYSYNC_{name.upper()}: its password is still a placeholder "
                    "(as in .env.example); set the real one"
                )
        return self

    def secret_values(self) -> list[str]:
        """The configured secrets themselves, for the log filter to mask wherever they appear:
        those of the variables and the keys of SKYSYNC_ACCOUNTS_FILE's accounts (as the file
        reads now; a file that does not load adds none, and its error is reported where it is
        loaded)."""
        values = [
            getattr(self, name).get_secret_value()
            for name in sorted(_SECRET_FIELDS)
            if getattr(self, name) is not None
        ]
        for name in ("console_viewers", "console_operators"):  # each password on its own
            values += [password for _user, password in self.console_users(name)]
        if self.accounts_file is not None:
            from skysync.accounts import load_accounts

            with suppress(ConfigError):
                values += load_accounts(self).secret_values()
        for name in ("database_url", "broker_url", "redis_url"):
            password = dsn_password(getattr(self, name) or "")
            if password:
                values.append(password)
                # past an unescaped "@", a driver takes the rest for the host: "ss@" of "p@ss"
                values += [password[i + 1 :] + "@" for i, c in enumerate(password) if c == "@"]
        return [v for v in values if len(v) >= 4]

    # -- derived values -------------------------------------------------------------------
    def console_users(self, name: str) -> list[tuple[str, str]]:
        """The (user, password) entries of ``console_viewers`` or ``console_operators``
        (empty when unset)."""
        secret = getattr(self, name)
        return [] if secret is None else user_passwords(secret.get_secret_value())

    @property
    def has_skyhub_credentials(self) -> bool:
        """All three SkyHub credentials are set: talk to the configured SkyHub."""
        return bool(self.skyhub_email and self.skyhub_api_key and self.skyhub_account_key)

    @property
    def task_time_limits(self) -> tuple[float, float]:
        """(soft, hard) time limits of a Celery task, in seconds: the hard one under the lease
        (a stuck task is killed before its rows are reclaimed), 10 s to 10 min."""
        hard = max(10.0, min(600.0, self.lease_seconds * 0.9))
        return hard * 0.9, hard

    @property
    def request_deadline(self) -> float:
        """Seconds one SkyHub request may take in all: SKYSYNC_SKYHUB_REQUEST_DEADLINE, else
        30, or half the soft time limit when that is shorter (a short lease), so that the
        deadline, not the task's time limit, ends a request and names the reason."""
        if self.skyhub_request_deadline is not None:
            return self.skyhub_request_deadline
        return min(DEFAULT_REQUEST_DEADLINE, self.task_time_limits[0] / 2)

    @property
    def lane_rule(self) -> LaneRule:
        """The fast lane's choice of rows (mode off: the lane does nothing)."""
        return LaneRule(self.fast_lane, self.fast_lane_stock_threshold)

    @property
    def late_rules(self) -> LateRules:
        """When an order or an inbox row counts as late (domain/late.py)."""
        return LateRules(
            ship_margin=timedelta(hours=self.late_ship_margin_hours),
            invoice_after=timedelta(hours=self.late_invoice_hours),
            inbox_after=timedelta(minutes=self.late_inbox_minutes),
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file behind ``database_url``, or None (PostgreSQL, in-memory)."""
        if not self.is_sqlite:
            return None
        path = self.database_url.split(":///", 1)[-1]
        return None if path in ("", ":memory:") else Path(path)

    @property
    def effective_broker_url(self) -> str:
        """The broker Celery uses: the configured one, else SQLite (kombu SQLAlchemy transport)."""
        if self.broker_url:
            return self.broker_url
        base = self.sqlite_path or Path(DEFAULT_SQLITE_FILE)
        return f"sqla+sqlite:///{base.with_suffix('.broker.db')}"

    def masked(self) -> dict[str, Any]:
        """Effective settings for display: secrets as ``**********``, DSN passwords hidden."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in _SECRET_FIELDS:
                shown[name] = "**********" if value else None
            elif isinstance(value, Path):
                shown[name] = str(value)
            elif isinstance(value, str):
                shown[name] = mask_dsn(value)
            else:
                shown[name] = value
        shown["effective_broker_url"] = mask_dsn(self.effective_broker_url)
        shown["skyhub_target"] = "configured SkyHub" if self.has_skyhub_credentials else "emulator"
        return shown


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad setting, naming its variable, without the offending value."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        if error["loc"]:
            lines.append(f"SKYSYNC_{str(error['loc'][0]).upper()}: {error['msg']}")
        else:  # a check across fields: its message names the variable itself
            lines.append(error["msg"].removeprefix("Value error, "))
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment, ``.env`` and ``overrides``; raise ConfigError if bad,
    the accounts file (SKYSYNC_ACCOUNTS_FILE, when set) included: a bad one stops every command
    at start, as a bad variable does."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    if settings.accounts_file is not None:
        from skysync.accounts import load_accounts

        load_accounts(settings)
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide Settings (entrypoints call this once; tests build their own)."""
    return load_settings()
