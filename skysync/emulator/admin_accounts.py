"""The ``/_sandbox/accounts`` admin calls: register accounts, list them, revoke their keys.

====  =====================================  ==================================================
POST  /_sandbox/accounts                     ``{"name", "email", "api_key"}``: a new, empty
                                             account -> 201 ``{"name", "email", "revoked"}``;
                                             400 not an object, 422 naming the bad field,
                                             409 name or email taken
GET   /_sandbox/accounts                     ``{"accounts": [{"name", "email", "revoked"}]}``,
                                             ``default`` first; never a key
POST  /_sandbox/accounts/{name}/revoke       the account's key is refused (401) from now on
POST  /_sandbox/accounts/{name}/restore      ...and accepted again; 204, 404 unknown name
====  =====================================  ==================================================

The api_key is never repeated: not in an answer, not in an error message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from skysync.emulator.accounts import AccountExistsError
from skysync.emulator.config import SandboxAccount
from skysync.emulator.replies import ApiError, Reply, json_reply

if TYPE_CHECKING:
    from skysync.emulator.sandbox import Sandbox


def answer_accounts(sandbox: Sandbox, method: str, segments: list[str], data: Any) -> Reply:
    """The reply to ``/_sandbox/accounts[/...]``; `segments` follow ``accounts``.
    UnknownAccountError (the caller's 404) for an unknown name."""
    if (method, *segments) == ("GET",):
        return json_reply(200, {"accounts": sandbox.accounts()})
    if (method, *segments) == ("POST",):
        return _add(sandbox, data)
    if method == "POST" and len(segments) == 2 and segments[1] in ("revoke", "restore"):
        name, action = segments
        if action == "revoke":
            sandbox.revoke_account(name)
        else:
            sandbox.restore_account(name)
        return Reply(204)
    raise ApiError(
        404,
        f"Endpoint de administração desconhecido: {method} "
        f"/_sandbox/{'/'.join(['accounts', *segments])}",
    )


def _add(sandbox: Sandbox, data: Any) -> Reply:
    """POST /_sandbox/accounts: 400 for a non-object, 422 naming the bad field, 409 taken."""
    if not isinstance(data, dict):
        raise ApiError(400, 'Envie {"name": ..., "email": ..., "api_key": ...}')
    try:
        spec = SandboxAccount.from_mapping(data)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    try:
        added = sandbox.add_account(spec.name, spec.email, spec.api_key)
    except AccountExistsError as exc:
        raise ApiError(409, str(exc)) from None
    return json_reply(201, added)
