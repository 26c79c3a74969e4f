"""Who may use the console, and proof that a form was sent from the console's own page.

* **Users** come from SKYSYNC_CONSOLE_VIEWERS and SKYSYNC_CONSOLE_OPERATORS
  (``user:password`` entries, checked in skysync/config.py). HTTP Basic authentication on every
  request, the static files included: no credentials, or wrong ones, get 401 with a
  ``WWW-Authenticate`` challenge. Passwords are compared with ``hmac.compare_digest``, every
  configured user's each time, so the time taken says nothing about which name exists.
* **Roles**: a viewer sees every page and changes nothing; an operator may act. Each action
  checks it (403 for a viewer), never the page alone.
* **CSRF**: a browser sends its cached Basic credentials with any form POSTed to the console,
  from any site. So every POST carries a token (a hidden field) that only the console's own
  pages hold: ``<issued>.<HMAC-SHA256(key, user|issued)>``, bound to the user, good for
  TOKEN_LIFETIME, checked with ``hmac.compare_digest``; missing, forged, another user's or
  expired: 403. The key is derived from the configured users' credentials (every process
  with the same settings agrees on it, and a restart keeps pages open in a browser valid;
  changing any password renews it), so there is no third secret to configure.

Every response also carries headers that keep the pages from being framed (the confirmation
buttons cannot be clickjacked), sniffed or cached, and a Content-Security-Policy with no script
at all: the console uses none.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skysync.config import Settings

TOKEN_LIFETIME = 12 * 3600  # seconds a page's form stays good
REALM = "skysync console"
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"


@dataclass(frozen=True)
class User:
    name: str
    role: Role

    @property
    def can_act(self) -> bool:
        return self.role is Role.OPERATOR


class Users:
    """The configured users: name -> (password, role)."""

    def __init__(self, entries: dict[str, tuple[str, Role]]) -> None:
        self._entries = entries

    @classmethod
    def from_settings(cls, settings: Settings) -> Users:
        entries: dict[str, tuple[str, Role]] = {}
        for name, role in (("console_viewers", Role.VIEWER), ("console_operators", Role.OPERATOR)):
            for user, password in settings.console_users(name):
                entries[user] = (password, role)
        return cls(entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def authenticate(self, authorization: str | None) -> User | None:
        """The user an ``Authorization: Basic ...`` header names with the right password;
        None for anything else."""
        if not authorization:
            return None
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        name, sep, password = decoded.partition(":")
        if not sep:
            return None
        found: User | None = None
        given = password.encode("utf-8")
        for user, (expected, role) in self._entries.items():
            right = hmac.compare_digest(given, expected.encode("utf-8"))
            if hmac.compare_digest(name.encode("utf-8"), user.encode("utf-8")) and right:
                found = User(user, role)
        return found

    def csrf_key(self) -> bytes:
        """The key CSRF tokens are signed with: from every user's role, name and password."""
        material = "\n".join(
            f"{role}:{user}:{password}" for user, (password, role) in sorted(self._entries.items())
        )
        return hmac.new(b"skysync console csrf", material.encode("utf-8"), "sha256").digest()


class Csrf:
    """Tokens bound to a user and signed with the console's key."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._clock = clock

    def _sign(self, user: str, issued: int) -> str:
        message = f"{user}|{issued}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def token(self, user: User) -> str:
        issued = int(self._clock())
        return f"{issued}.{self._sign(user.name, issued)}"

    def valid(self, user: User, token: object) -> bool:
        """``token`` was issued by this console to ``user`` within TOKEN_LIFETIME."""
        if not isinstance(token, str):
            return False
        issued_text, _, signature = token.partition(".")
        if not issued_text.isdigit() or not signature:
            return False
        issued = int(issued_text)
        if not 0 <= self._clock() - issued <= TOKEN_LIFETIME:
            return False
        expected = self._sign(user.name, issued)
        return hmac.compare_digest(signature.encode(), expected.encode())


class BasicAuth:
    """ASGI middleware: every HTTP request needs a configured user's credentials (401 with a
    challenge otherwise); the user is put in ``scope["state"]["user"]`` for the pages. Every
    response gets SECURITY_HEADERS, and HTML ones ``Cache-Control: no-store``."""

    def __init__(self, app: ASGIApp, users: Users) -> None:
        self.app = app
        self.users = users

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        raw = headers.get("authorization")
        user = self.users.authenticate(raw.decode("latin-1") if raw is not None else None)
        if user is None:
            await _unauthorized(send)
            return
        scope.setdefault("state", {})["user"] = user

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _secured(message.get("headers", []))
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _secured(headers: list[Any]) -> list[tuple[bytes, bytes]]:
    present = {bytes(k).lower() for k, _ in headers}
    found = [(bytes(k), bytes(v)) for k, v in headers]
    for name, value in SECURITY_HEADERS.items():
        if name.encode() not in present:
            found.append((name.encode(), value.encode()))
    content_type = next((bytes(v) for k, v in headers if bytes(k).lower() == b"content-type"), b"")
    if content_type.startswith(b"text/html") and b"cache-control" not in present:
        found.append((b"cache-control", b"no-store"))
    return found


async def _unauthorized(send: Send) -> None:
    body = b"401: the skysync console needs a user name and password\n"
    challenge = f'Basic realm="{REALM}", charset="UTF-8"'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": _secured(
                [
                    (b"www-authenticate", challenge),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ]
            ),
        }
    )
    await send({"type": "http.response.body", "body": body})
