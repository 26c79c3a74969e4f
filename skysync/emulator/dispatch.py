"""The order every SkyHub request goes through, and the request log it leaves behind.

1. ``latency_ms`` is slept before anything else.
2. Auth (401), then routing (404), then the rate limit (429, :mod:`~skysync.emulator.limits`).
3. A fault (:mod:`~skysync.emulator.faults`), scripted or drawn.
4. The body is checked (415 not UTF-8, 400 empty/invalid/unwrapped) and the room's handler runs
   with the state's lock held.

Every request (admin calls aside) is logged with the status sent (None when the socket was
dropped or hung) and the fault it met.  The credential header values are never logged,
stored or echoed.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Mapping
from email.message import Message
from typing import Any

from skysync.emulator.faults import pick_fault_locked, with_fault
from skysync.emulator.limits import admit_locked, too_many_requests
from skysync.emulator.replies import ApiError, Reply, error_reply, json_reply
from skysync.emulator.routes import Request, Route, Target, match_route, parse_body
from skysync.emulator.state import EmulatorState

_AUTH_HEADERS = (
    ("X-User-Email", "email"),
    ("X-Api-Key", "api_key"),
    ("X-Accountmanager-Key", "account_key"),
)

Handler = Callable[[Request], tuple[int, Any]]


class Dispatcher:
    """Answers one account's SkyHub requests: the pipeline above, over the rooms that hold the
    handlers, with that account's credential check."""

    def __init__(
        self,
        state: EmulatorState,
        rooms: Mapping[str, object],
        check_auth: Callable[[Message], None],
    ) -> None:
        self.state = state
        self.rooms = rooms
        # raises the 401 for a request the account refuses (see check_credentials)
        self.check_auth = check_auth

    def answer(
        self, method: str, raw_path: str, target: Target, headers: Message, body: bytes
    ) -> Reply:
        """Decide the answer to one SkyHub request (runs in the connection's thread)."""
        st = self.state
        latency = st.config.latency_ms
        if latency > 0:
            st.stopping.wait(latency / 1000.0)
        now = time.monotonic()
        route, params = match_route(method, target.segments)
        route_name = route.template if route is not None else target.decoded_path
        fault: str | None = None
        try:
            self.check_auth(headers)
            if route is None:
                raise ApiError(404, f"Recurso não encontrado: {method} {target.decoded_path}")
            with st.lock:
                admitted = admit_locked(st, route, now)
                if admitted:
                    fault = pick_fault_locked(st, method, target.decoded_path)
            if not admitted:
                reply = too_many_requests(st.config)
            else:
                found = route
                reply = with_fault(
                    fault,
                    st.config,
                    lambda: self._run(found, params, target.query, body, now),
                )
        except ApiError as exc:
            reply = error_reply(exc.status, exc.message)
        self._record(
            {
                "t": now,
                "method": method,
                "path": raw_path,
                "route": route_name,
                "status": reply.status if reply.action == "send" else None,
                "body": _json_or_none(body),
                "fault": fault,
            }
        )
        return reply

    def _run(
        self,
        route: Route,
        params: dict[str, str],
        query: dict[str, list[str]],
        body: bytes,
        now: float,
    ) -> Reply:
        """Check the body, then run the route's handler under the lock."""
        data = parse_body(route, body)
        handler: Handler = getattr(self.rooms[route.room], route.handler)
        with self.state.lock:
            status, payload = handler(Request(params, query, data, now, route.action))
        return json_reply(status, payload)

    def _record(self, entry: dict[str, Any]) -> None:
        """Append to the request log and count "METHOD /route STATUS"."""
        key = f"{entry['method']} {entry['route']} {entry['status']}"
        with self.state.lock:
            self.state.log.append(entry)
            self.state.counts[key] = self.state.counts.get(key, 0) + 1


def check_credentials(
    headers: Message, expected: Mapping[str, str | None], revoked: bool = False
) -> None:
    """401 naming the missing or wrong header; the value itself is never repeated.

    ``expected`` maps "email", "api_key" and "account_key" to the value required (None: any
    non-empty one). A revoked key is refused as a wrong one is.
    """
    for header, attr in _AUTH_HEADERS:
        value = headers.get(header)
        if value is None or not value.strip():
            raise ApiError(401, f"Header {header} ausente ou vazio (missing credential)")
        wanted = expected.get(attr)
        if wanted is not None and not hmac.compare_digest(
            value.encode("utf-8"), wanted.encode("utf-8")
        ):
            raise ApiError(401, f"Header {header} inválido (invalid credential)")
    if revoked:
        raise ApiError(401, "Header X-Api-Key inválido (invalid credential)")


def _json_or_none(body: bytes) -> Any:
    """The request body as JSON for the request log; None when it is empty or not JSON."""
    if not body:
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
