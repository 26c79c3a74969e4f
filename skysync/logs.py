"""Logging set-up: readable lines on a terminal, one JSON object per line otherwise, and a filter
that masks anything that looks like a SkyHub credential or a DSN password on every record."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

_PATTERNS = [
    # header or setting names followed by a value
    re.compile(
        r"(?P<k>(x-api-key|x-accountmanager-key|api[_-]?key|account[_-]?key|password|"
        r"authorization)['\"]?\s*[:=]\s*['\"]?)(?P<v>[^'\"\s,;}&]+)",
        re.I,
    ),
    # user:password@ in URLs
    re.compile(r"(?P<k>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<v>[^@\s]+)(?=@)", re.I),
]


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: f"{m['k']}***", text)
    return text


class RedactingFilter(logging.Filter):
    """Masks credentials in the final message (and exception text) of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any ``extra`` context (task id, claim token, sku...)."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_text or record.exc_info:
            data["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", *, json_lines: bool | None = None) -> None:
    """Root logging for the daemon and the CLI (idempotent)."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
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
