"""Statements that do not grow with the backlog: a list of ids or refs goes into SQL in slices
of IN_CHUNK bound parameters (PostgreSQL allows 65,535 per statement, SQLite 32,766)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

IN_CHUNK = 500


def in_slices(values: Sequence[T]) -> Iterator[list[T]]:
    """``values`` in lists of at most IN_CHUNK, in order."""
    for start in range(0, len(values), IN_CHUNK):
        yield list(values[start : start + IN_CHUNK])
