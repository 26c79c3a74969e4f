"""How list endpoints read their query: page numbers, the 10,000-entry depth limit, cursors."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from skysync.emulator.replies import ApiError, dumps

MAX_PAGE_DEPTH = 10_000  # SkyHub refuses pages beyond 10,000 entries with a 400


def first(query: Mapping[str, list[str]], name: str) -> str | None:
    """The first value of a query parameter, or None when absent."""
    values = query.get(name)
    return values[0] if values else None


def int_param(query: Mapping[str, list[str]], name: str, default: int) -> int:
    """A positive integer query parameter; 400 for anything else, `default` when absent."""
    raw = first(query, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"Parâmetro '{name}' inválido: deve ser um inteiro") from None
    if value < 1:
        raise ApiError(400, f"Parâmetro '{name}' inválido: deve ser maior que zero")
    return value


def page_window(query: Mapping[str, list[str]], default_per_page: int) -> tuple[int, int]:
    """(offset, per_page) from ``page`` and ``per_page`` (at most 100)."""
    per_page = min(int_param(query, "per_page", default_per_page), 100)
    page = int_param(query, "page", 1)
    return (page - 1) * per_page, per_page


def check_depth(offset: int) -> None:
    """400 for a page starting beyond SkyHub's 10,000 entries."""
    if offset >= MAX_PAGE_DEPTH:
        raise ApiError(400, "Paginação além de 10.000 registros não é permitida")


def encode_cursor(state: dict[str, Any]) -> str:
    """An opaque cursor for ``{"a": after serial, "n": per_page, "f": filters}``."""
    return base64.urlsafe_b64encode(dumps(state)).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> dict[str, Any]:
    """The state inside a cursor from :func:`encode_cursor`; 400 when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        state = json.loads(raw.decode("utf-8"))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "Parâmetro 'cursor' inválido") from None
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("a"), int)
        or not isinstance(state.get("n"), int)
        or not isinstance(state.get("f"), dict)
    ):
        raise ApiError(400, "Parâmetro 'cursor' inválido")
    return state
