"""SkyHub's own errors about products and orders it accepted (``/sync_errors``): marketplace
rejections, category mapping problems. Listed per entity type with ``page``/``per_page`` and an
optional ``error_category_code``; ``PATCH`` with ``{"errors": [{"entity_id",
"error_category_code", "error_code"}]}`` ignores them (they are not listed again).

The shape of an error, from SkyHub's guide: ``entity_id`` (the SKU or order code), ``message``,
``last_occurrence``, ``error_code``, ``error_category_code``; a list answers
``{"error_qty": total, "errors": [...]}``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from skysync.emulator.paging import first, page_window
from skysync.emulator.replies import ApiError
from skysync.emulator.routes import Request
from skysync.emulator.state import EmulatorState

ENTITY_TYPES = ("products", "orders")
_KEY = ("entity_id", "error_category_code", "error_code")

Answer = tuple[int, Any]


class SyncErrors:
    """The errors room; handlers run with the state's lock held (the route's action is the
    entity type)."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def add(self, entity_type: str, error: Mapping[str, Any]) -> dict[str, Any]:
        """An error SkyHub noticed about a product or order (a test's or demo's doing).
        The same entity, category and code again updates it. ValueError for a bad one."""
        if entity_type not in ENTITY_TYPES:
            raise ValueError(f"entity_type must be one of {', '.join(ENTITY_TYPES)}")
        for name in (*_KEY, "message"):
            if not isinstance(error.get(name), str) or not error[name]:
                raise ValueError(f"{name} is required (a non-empty string)")
        stored = {
            **{k: error[k] for k in (*_KEY, "message")},
            "last_occurrence": error.get("last_occurrence")
            or datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with self.state.lock:
            errors = self.state.sync_errors[entity_type]
            errors[:] = [e for e in errors if _key(e) != _key(stored)]
            errors.append(stored)
        return copy.deepcopy(stored)

    def list_errors(self, req: Request) -> Answer:
        """GET /sync_errors/{products,orders}: a page of the errors not ignored."""
        errors = self.state.sync_errors[req.action or ""]
        category = first(req.query, "error_category_code")
        matching = [e for e in errors if not category or e["error_category_code"] == category]
        offset, per_page = page_window(req.query, 100)
        return 200, {
            "error_qty": len(matching),
            "errors": copy.deepcopy(matching[offset : offset + per_page]),
        }

    def ignore(self, req: Request) -> Answer:
        """PATCH /sync_errors/{products,orders}: these errors are not listed again."""
        wanted = req.data
        if not isinstance(wanted, list) or not all(isinstance(e, dict) for e in wanted):
            raise ApiError(422, "errors deve ser uma lista de objetos")
        for entry in wanted:
            for name in _KEY:
                if not isinstance(entry.get(name), str) or not entry[name]:
                    raise ApiError(422, f"errors[].{name} é obrigatório")
        keys = {_key(e) for e in wanted}
        errors = self.state.sync_errors[req.action or ""]
        errors[:] = [e for e in errors if _key(e) not in keys]
        return 204, None


def _key(error: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(error.get(k) for k in _KEY)
