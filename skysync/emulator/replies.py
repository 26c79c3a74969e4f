"""What an answer is: a SkyHub-style error raised anywhere, and the reply the socket acts on."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class ApiError(Exception):
    """A SkyHub-style error answer: raised anywhere in handling, turned into `{"error": msg}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Reply:
    """What the connection handler must do: send an answer, drop the socket, or hang first."""

    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    action: str = "send"  # "send" | "drop" | "hang"
    hang_seconds: float = 0.0


def dumps(obj: Any) -> bytes:
    """JSON as SkyHub writes it: UTF-8, accents kept."""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def json_reply(status: int, payload: Any = None) -> Reply:
    """An answer with a JSON body, or no body at all when payload is None (201/204 answers)."""
    if payload is None:
        return Reply(status)
    return Reply(status, dumps(payload))


def error_reply(status: int, message: str) -> Reply:
    """SkyHub's error shape: ``{"error": message}``."""
    return Reply(status, dumps({"error": message}))
