"""What a request asks for, parsed and checked: the account, a selection of rows in trouble (from
a page's query or an action's form), ids, page keys and the page to go back to. A bad value is a
:class:`BadInput` (400, naming the parameter and the values it takes), never a traceback."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import ImmutableMultiDict

from skysync.domain.kinds import Kind
from skysync.domain.selection import TROUBLE_STATES, RowSelection

MAX_TEXT = 200  # a ref or SKU longer than this is no SKU
MAX_IDS = 10_000  # checked rows in one form


class BadInput(ValueError):
    """A parameter the console cannot use; its message names it."""


# A request's query parameters or form fields (Starlette's QueryParams and FormData).
Params = ImmutableMultiDict[str, object]


def text(params: Params, name: str) -> str | None:
    """A stripped text parameter; None when absent or blank."""
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadInput(f"{name}: must be text")
    value = value.strip()
    if len(value) > MAX_TEXT:
        raise BadInput(f"{name}: at most {MAX_TEXT} characters")
    return value or None


def account(params: Params, configured: Iterable[str], default: str) -> str:
    """The ``account`` parameter: a configured account's name, ``default`` when not given."""
    name = text(params, "account") or default
    names = list(configured)
    if name not in names:
        raise BadInput(f'account: no SkyHub account "{name}" is configured ({", ".join(names)})')
    return name


def row_id(params: Params, name: str) -> int | None:
    """A positive integer parameter (a row id, a page key); None when absent."""
    value = text(params, name)
    if value is None:
        return None
    if not value.isdigit() or int(value) <= 0 or len(value) > 18:
        raise BadInput(f"{name}: must be a row id (a positive whole number)")
    return int(value)


def row_ids(params: Params, name: str) -> list[int]:
    """Every ``name`` parameter (checked boxes), each a row id; in the order given, once."""
    found: list[int] = []
    for value in params.getlist(name):
        if not isinstance(value, str) or not value.strip().isdigit():
            raise BadInput(f"{name}: must be row ids (positive whole numbers)")
        found.append(int(value))
    if len(found) > MAX_IDS:
        raise BadInput(f"{name}: at most {MAX_IDS} rows at once; use the filter instead")
    return list(dict.fromkeys(found))


def _moment(params: Params, name: str) -> datetime | None:
    """A ``datetime-local`` value (``2026-12-07T14:30``), read as UTC as the pages show time."""
    value = text(params, name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{name}: must be a date and time, e.g. 2026-12-07T14:30 (UTC)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def selection(params: Params, account_name: str) -> RowSelection:
    """The filter of "Rows in trouble": ``state`` (one of the trouble states, or all of them),
    ``kind``, ``ref`` and the time the rows ended in their state (``since``, ``until``)."""
    state = text(params, "state")
    if state is not None and state not in TROUBLE_STATES:
        raise BadInput(f"state: one of {', '.join(TROUBLE_STATES)}, or none for all of them")
    kind = text(params, "kind")
    if kind is not None and kind not in set(Kind):
        raise BadInput(f"kind: one of {', '.join(Kind)}")
    states = TROUBLE_STATES if state is None else tuple(s for s in TROUBLE_STATES if s == state)
    return RowSelection(
        account=account_name,
        states=states,
        kind=kind,
        ref=text(params, "ref"),
        since=_moment(params, "since"),
        until=_moment(params, "until"),
    )


def filter_params(chosen: RowSelection) -> dict[str, str]:
    """``chosen``'s filter as the page's query parameters (what the forms carry along)."""
    found = {"account": chosen.account}
    if tuple(chosen.states) != TROUBLE_STATES:
        found["state"] = str(chosen.states[0])
    for name in ("kind", "ref"):
        value = getattr(chosen, name)
        if value:
            found[name] = value
    for name in ("since", "until"):
        moment = getattr(chosen, name)
        if moment is not None:
            found[name] = moment.strftime("%Y-%m-%dT%H:%M")
    return found


def back_to(params: Params, default: str = "/") -> str:
    """Where an action returns: a path of this console (never another site), without the
    flash of an earlier action (``done``)."""
    value = params.get("back")
    target = value.strip() if isinstance(value, str) and value.strip() else default
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    path, _, query = target.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=False) if k != "done"]
    return f"{path}?{urlencode(kept)}" if kept else path


def with_params(path: str, **params: object) -> str:
    """``path`` with ``params`` (those not None or empty) added to its query."""
    given = {k: str(v) for k, v in params.items() if v is not None and v != ""}
    if not given:
        return path
    return f"{path}{'&' if '?' in path else '?'}{urlencode(given)}"
