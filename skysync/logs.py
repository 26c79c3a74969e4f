"""Logging set-up: readable lines on a terminal, one JSON object per line otherwise, and a filter
that masks anything that looks like a SkyHub credential or a DSN password on every record."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from skysync.config import mask_dsns_in

_context: ContextVar[dict[str, Any] | None] = ContextVar("skysync_log_context", default=None)


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Add ``values`` (claim_token, sku, order...) to every log record inside the block."""
    merged = {**(_context.get() or {}), **{k: v for k, v in values.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Puts the log context and the current Celery task id on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not hasattr(record, "task_id"):
            try:
                from celery import current_task

                task_id = current_task.request.id if current_task else None
            except Exception:
                task_id = None
            if task_id:
                record.task_id = task_id
        return True


_PATTERNS = [
    # header or setting names followed by a value
    re.compile(
        r"(?P<k>(x-api-key|x-accountmanager-key|api[_-]?key|account[_-]?key|password|"
        r"authorization)['\"]?\s*[:=]\s*['\"]?)(?P<v>[^'\"\s,;}&]+)",
        re.I,
    ),
    # (user:password@ in URLs: config.mask_dsns_in, the same masking `check-config` shows)
]


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: f"{m['k']}***", text)
    return mask_dsns_in(text)


# Secrets learnt after logging was set up (an accounts file re-read at runtime): every
# RedactingFilter masks them too. Replaced whole, never changed in place, so that a filter can
# tell by identity whether it has seen the current set.
_added_secrets: tuple[str, ...] = ()
_added_lock = threading.Lock()


def add_secrets(values: Iterable[str]) -> int:
    """Mask ``values`` (at least 4 characters each) in every record from now on, in every
    :class:`RedactingFilter`, those already installed by :func:`configure_logging` included.
    Returns how many were new. A secret once added stays masked for the life of the process."""
    global _added_secrets
    with _added_lock:
        new = {value for value in values if len(value) >= 4} - set(_added_secrets)
        if new:
            _added_secrets = (*_added_secrets, *sorted(new))
    return len(new)


class RedactingFilter(logging.Filter):
    """Masks credentials in the final message (and exception text) of every record: anything
    shaped like a key or a DSN password, the configured secret values wherever they appear,
    and those given to :func:`add_secrets` since."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self._own = set(secrets or [])
        self._added_seen: tuple[str, ...] | None = None
        self.secrets: list[str] = []
        self._refresh()

    def _refresh(self) -> None:
        added = _added_secrets
        if added is not self._added_seen:
            self.secrets = sorted(self._own | set(added), key=len, reverse=True)
            self._added_seen = added

    def _clean(self, text: str) -> str:
        self._refresh()
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return redact(text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self._clean(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        return True


_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")
    }


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, with the context at the end: ``[claim_token=... sku=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += "  [" + " ".join(f"{k}={v}" for k, v in sorted(extras.items())) + "]"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any ``extra`` context (task id, claim token, sku...)."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(_extras(record))
        if record.exc_text:
            data["exc"] = record.exc_text
        elif record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class TerminalChatterFilter(logging.Filter):
    """On a terminal, Celery's per-task INFO lines (``Task ... received``, ``Task ...
    succeeded in 0.2s: {...}``) bury skysync's own lines, which already say what happened to
    each row. They are dropped there; JSON logs (off a terminal) keep them, and warnings and
    errors from these loggers always pass."""

    CHATTY = ("celery.worker.strategy", "celery.app.trace")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(self.CHATTY)


def configure_logging(
    level: str = "INFO", *, json_lines: bool | None = None, secrets: list[str] | None = None
) -> None:
    """Root logging for the daemon and the CLI (idempotent)."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = _StderrHandler()
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter(secrets))
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    if not json_lines:
        handler.addFilter(TerminalChatterFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_skysync", False):
            root.removeHandler(old)
    handler._skysync = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request at INFO; ours already say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
